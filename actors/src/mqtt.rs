//! The MQTT connection shared by ingress and egress.
//!
//! One client, one broker session: ingress owns the message stream, egress
//! publishes through a clone of the same handle. paho reconnects by itself
//! once a first connection has been made; the connected callback subscribes
//! again every time, so a broker that lost its state still delivers.

use std::path::Path;

use gator_ota_settings::MqttCarrier;
use paho_mqtt as paho;

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("MQTT carrier `{carrier}`: {source}")]
    Paho {
        carrier: String,
        #[source]
        source: paho::Error,
    },
}

/// Builds the client. Outgoing messages are kept on disk under
/// `persistence_dir` while the broker is away, so a confirm_receipt produced
/// during an outage is delivered after it.
pub fn client(
    name: &str,
    carrier: &MqttCarrier,
    persistence_dir: &Path,
) -> Result<paho::AsyncClient, MqttSetupError> {
    let err = |source| MqttSetupError::Paho {
        carrier: name.to_string(),
        source,
    };
    leave_openssl_init_to_openssl();
    let url = normalise_url(&carrier.url);
    let opts = paho::CreateOptionsBuilder::new()
        .server_uri(url)
        .client_id(&carrier.client_id)
        .mqtt_version(carrier.version)
        .persistence(persistence_dir.to_path_buf())
        .max_buffered_messages(1000)
        .send_while_disconnected(true)
        .delete_oldest_messages(true)
        .finalize();
    paho::AsyncClient::new(opts).map_err(err)
}

/// Tells the paho C library not to initialise OpenSSL itself.
///
/// By default its first client calls `SSL_load_error_strings`,
/// `OpenSSL_add_all_algorithms` and friends, which loads every error string
/// and algorithm table: about 1.4 MiB more resident memory for the life of
/// the process, measured, even when the broker is plain `tcp://`. OpenSSL
/// 1.1 and later initialise themselves on first use, so an `ssl://`
/// connection works the same without it.
///
/// Must run before the process creates its first paho client (the call
/// re-initialises paho's global mutexes); the service creates exactly one,
/// here, and the `Once` makes repeated calls harmless.
fn leave_openssl_init_to_openssl() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut opts = paho_mqtt_sys::MQTTAsync_init_options {
            struct_id: [b'M' as _, b'Q' as _, b'T' as _, b'G' as _],
            struct_version: 0,
            do_openssl_init: 0,
        };
        // SAFETY: `opts` is a valid, initialised struct of the version the C
        // library expects, and it only reads it during the call. No paho
        // client exists yet in this process (see above).
        unsafe { paho_mqtt_sys::MQTTAsync_global_init(&mut opts) };
    });
}

/// Options for every (re)connection of `carrier`.
pub fn connect_options(
    name: &str,
    carrier: &MqttCarrier,
) -> Result<paho::ConnectOptions, MqttSetupError> {
    let mut b = if carrier.version == 5 {
        let mut b = paho::ConnectOptionsBuilder::new_v5();
        b.clean_start(carrier.clean_session);
        b
    } else {
        let mut b = paho::ConnectOptionsBuilder::with_mqtt_version(carrier.version);
        b.clean_session(carrier.clean_session);
        b
    };
    b.keep_alive_interval(carrier.keep_alive)
        .connect_timeout(carrier.connect_timeout)
        .automatic_reconnect(carrier.reconnect_min, carrier.reconnect_max);
    if !carrier.username.is_empty() {
        b.user_name(&carrier.username);
    }
    if !carrier.password.is_empty() {
        b.password(carrier.password.expose());
    }
    if carrier.uses_tls() {
        let mut ssl = paho::SslOptionsBuilder::new();
        let set = if carrier.ca_file.is_empty() {
            ssl.ca_path("/etc/ssl/certs").map(|_| ())
        } else {
            ssl.trust_store(&carrier.ca_file).map(|_| ())
        };
        set.map_err(|source| MqttSetupError::Paho {
            carrier: name.to_string(),
            source,
        })?;
        b.ssl_options(ssl.finalize());
    }
    Ok(b.finalize())
}

/// paho's C library spells the schemes `tcp://` and `ssl://`.
fn normalise_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("mqtt://") {
        format!("tcp://{rest}")
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        format!("ssl://{rest}")
    } else {
        url.to_string()
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn wildcards() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a/c"));
    }
}
