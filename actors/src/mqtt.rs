//! The MQTT connection shared by ingress and egress.
//!
//! One client, one broker session: ingress owns the message stream, egress
//! publishes through a clone of the same handle. paho reconnects by itself
//! once a first connection has been made; the connected callback subscribes
//! again every time, so a broker that lost its state still delivers.

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

/// Builds the client.
///
/// paho keeps its session state in memory only. Its file persistence, used
/// here before, corrupted the heap under rapid reconnects while messages
/// flowed (double frees in `MQTTProtocol_removePublication` and `pstget`),
/// and its offline buffer drops the oldest message past a limit. Durability
/// is gator-ota's own: the inbox and the outbox ([`crate::spool`]). paho
/// only ever holds the messages of the current connection window.
pub fn client(name: &str, carrier: &MqttCarrier) -> Result<paho::AsyncClient, MqttSetupError> {
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
        .persistence(paho::PersistenceType::None)
        .send_while_disconnected(false)
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
    if let Some(ssl) = ssl_options(name, carrier)? {
        b.ssl_options(ssl);
    }
    Ok(b.finalize())
}

/// Where the CA certificates of the system store are (hashed, as OpenSSL's
/// `CApath` wants them; Debian's ca-certificates keeps them so).
pub const SYSTEM_CA_DIR: &str = "/etc/ssl/certs";

/// TLS options for an `ssl://` / `mqtts://` carrier, `None` for plain MQTT.
///
/// The broker's certificate must chain to `ca_file` (or, when it is empty,
/// to the system store) and name the host of the URL (`verify`: paho checks
/// the DNS name or IP address after the handshake). A client certificate is
/// presented when `cert_file` and `key_file` are set.
pub fn ssl_options(
    name: &str,
    carrier: &MqttCarrier,
) -> Result<Option<paho::SslOptions>, MqttSetupError> {
    if !carrier.uses_tls() {
        return Ok(None);
    }
    let err = |source| MqttSetupError::Paho {
        carrier: name.to_string(),
        source,
    };
    let mut ssl = paho::SslOptionsBuilder::new();
    if carrier.ca_file.is_empty() {
        ssl.ca_path(SYSTEM_CA_DIR).map_err(err)?;
    } else {
        ssl.trust_store(&carrier.ca_file).map_err(err)?;
    }
    if !carrier.cert_file.is_empty() {
        ssl.key_store(&carrier.cert_file).map_err(err)?;
    }
    if !carrier.key_file.is_empty() {
        ssl.private_key(&carrier.key_file).map_err(err)?;
    }
    if !carrier.key_password.is_empty() {
        ssl.private_key_password(carrier.key_password.expose());
    }
    ssl.enable_server_cert_auth(true).verify(true);
    Ok(Some(ssl.finalize()))
}

/// How the connection is secured, for the log: file paths, never secrets.
pub fn describe_tls(carrier: &MqttCarrier) -> String {
    if !carrier.uses_tls() {
        return "plain MQTT (no TLS)".into();
    }
    let ca = if carrier.ca_file.is_empty() {
        format!("system store {SYSTEM_CA_DIR}")
    } else {
        carrier.ca_file.clone()
    };
    let client = if carrier.cert_file.is_empty() {
        "none".to_string()
    } else {
        carrier.cert_file.clone()
    };
    format!(
        "TLS, broker certificate and host name verified against {ca}; client certificate: {client}"
    )
}

/// What to check when a connection to `server_uri` fails with `error`; paho
/// reports a refused TCP connection and a failed TLS handshake alike.
pub fn connect_failure_hint(server_uri: &str, error: &paho::Error) -> &'static str {
    let tls = server_uri.starts_with("ssl://");
    match error {
        // A broker that wants a client certificate may only say so after
        // the client's side of a TLS 1.3 handshake is done: then paho
        // reports a failed connect completion.
        paho::Error::TcpTlsConnectFailure
        | paho::Error::TcpConnectCompletionFailure
        | paho::Error::TcpConnectTimeout
            if tls =>
        {
            "no TLS session: check that the broker runs at the URL, that its certificate chains to \
             ca_file (or the system store) and names the URL's host, and, if it requires client \
             certificates, cert_file, key_file and key_password"
        }
        paho::Error::ConnectReturn(_) | paho::Error::ReasonCode(..) => {
            "the broker refused the session: check username, password and client_id"
        }
        _ => "check that the broker runs at the URL",
    }
}

/// paho's C library spells the schemes `tcp://` and `ssl://`.
pub fn normalise_url(url: &str) -> String {
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
    use super::*;

    #[test]
    fn wildcards() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a/c"));
    }

    fn carrier(url: &str) -> MqttCarrier {
        let s = gator_ota_settings::load_with_env(
            None,
            &[(
                "GATOR_OTA__CARRIERS__MQTT__URL".to_string(),
                url.to_string(),
            )]
            .into(),
        )
        .unwrap();
        s.mqtt("mqtt").unwrap().clone()
    }

    #[test]
    fn tls_options_only_for_tls_urls() {
        assert!(
            ssl_options("mqtt", &carrier("tcp://127.0.0.1:1883"))
                .unwrap()
                .is_none()
        );
        assert!(
            ssl_options("mqtt", &carrier("mqtt://127.0.0.1:1883"))
                .unwrap()
                .is_none()
        );
        let tls = carrier("mqtts://broker.example:8883");
        let ssl = ssl_options("mqtt", &tls).unwrap().unwrap();
        assert!(ssl.enable_server_cert_auth());
        assert_eq!(ssl.ca_path(), std::path::PathBuf::from(SYSTEM_CA_DIR));
        assert_eq!(ssl.trust_store(), std::path::PathBuf::new());
        assert_eq!(normalise_url(&tls.url), "ssl://broker.example:8883");
        assert!(describe_tls(&tls).contains("system store /etc/ssl/certs"));
        assert_eq!(
            describe_tls(&carrier("tcp://h:1883")),
            "plain MQTT (no TLS)"
        );
    }

    #[test]
    fn connect_hints_name_the_tls_settings() {
        let e = paho::Error::TcpTlsConnectFailure;
        assert!(connect_failure_hint("ssl://h:8883", &e).contains("ca_file"));
        assert!(!connect_failure_hint("tcp://h:1883", &e).contains("ca_file"));
        let e = paho::Error::TcpConnectCompletionFailure;
        assert!(connect_failure_hint("ssl://h:8883", &e).contains("cert_file"));
    }
}
