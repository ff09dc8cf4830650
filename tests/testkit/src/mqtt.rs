//! Synchronous MQTT helpers for driving and observing the code under test.
//!
//! They use paho's blocking client on purpose: a test's own plumbing should
//! not depend on an async runtime, and the same helpers then work from plain
//! `#[test]`s, `#[tokio::test]`s and actix tests alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paho_mqtt as mqtt;

use crate::tls::TestPki;

/// Upper bound for connect/subscribe/publish round-trips on loopback. paho's
/// default is minutes, which would turn a broken broker into a hung test.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// QoS used for both subscribing and publishing: at-least-once is what
/// gator-ota itself uses, and QoS 0 could silently drop the very message a
/// test is waiting for.
const QOS: i32 = 1;

/// Builds a client id no other client on the broker is using, so two helpers
/// in one test never kick each other off (MQTT allows one connection per id).
fn unique_client_id(role: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("gator-testkit-{role}-{}-{n}", std::process::id())
}

/// Creates and connects a clean-session client with no on-disk persistence
/// (paho's default would litter the working directory with session files).
fn connect(url: &str, role: &str) -> mqtt::Client {
    connect_as(url, &unique_client_id(role), role)
}

fn connect_as(url: &str, client_id: &str, role: &str) -> mqtt::Client {
    let create = mqtt::CreateOptionsBuilder::new()
        .server_uri(url)
        .client_id(client_id)
        .persistence(mqtt::PersistenceType::None)
        .finalize();
    let mut client = mqtt::Client::new(create)
        .unwrap_or_else(|e| panic!("create MQTT {role} client for {url}: {e}"));
    client.set_timeout(OP_TIMEOUT);
    client
}

/// Never drops a client whose connect failed. In paho-mqtt 0.14 the
/// connect's failure callback may still hold a handle to the client; if that
/// is the last one, the client is destroyed inside the callback, under the C
/// library's global lock, which deadlocks every client in the process
/// (eclipse-paho/paho.mqtt.rust#239). A test process makes few such clients.
fn keep_failed(client: mqtt::Client) {
    std::mem::forget(client);
}

/// With `tls`, the client trusts only that PKI's CA, checks the broker's
/// host name, and presents the PKI's client certificate.
fn connect_options(tls: Option<&TestPki>) -> mqtt::ConnectOptions {
    let mut b = mqtt::ConnectOptionsBuilder::new();
    b.clean_session(true)
        .connect_timeout(OP_TIMEOUT)
        .keep_alive_interval(Duration::from_secs(30));
    if let Some(pki) = tls {
        let mut ssl = mqtt::SslOptionsBuilder::new();
        ssl.trust_store(&pki.ca)
            .and_then(|s| s.key_store(&pki.client_cert))
            .and_then(|s| s.private_key(&pki.client_key))
            .expect("TLS file paths");
        ssl.enable_server_cert_auth(true).verify(true);
        b.ssl_options(ssl.finalize());
    }
    b.finalize()
}

/// Publishes `payload` to `topic` with QoS 1 and returns once the broker has
/// acknowledged it (PUBACK).
///
/// Returning only after the acknowledgement means that, once this returns,
/// every subscriber that was subscribed beforehand is guaranteed to be sent
/// the message — so tests can publish and then wait on the effect without
/// racing the broker.
#[track_caller]
pub fn publish(url: &str, topic: &str, payload: &str) {
    publish_with(url, topic, payload, None);
}

/// [`publish`] over TLS (`url` is `ssl://...`), trusting `pki`'s CA and
/// presenting its client certificate.
#[track_caller]
pub fn publish_tls(url: &str, topic: &str, payload: &str, pki: &TestPki) {
    publish_with(url, topic, payload, Some(pki));
}

#[track_caller]
fn publish_with(url: &str, topic: &str, payload: &str, tls: Option<&TestPki>) {
    let client = connect(url, "pub");
    if let Err(e) = client.connect(connect_options(tls)) {
        keep_failed(client);
        panic!("publisher could not connect to {url}: {e}");
    }
    client
        .publish(mqtt::Message::new(topic, payload, QOS))
        .unwrap_or_else(|e| panic!("publish to {topic} on {url} failed: {e}"));
    // The message is already acknowledged; a failed DISCONNECT changes nothing.
    let _ = client.disconnect(None);
}

/// One connection that publishes many messages, as a device does: a
/// simulated fleet would otherwise open a connection per message.
pub struct Publisher {
    client: mqtt::Client,
}

impl Publisher {
    #[track_caller]
    pub fn new(url: &str) -> Publisher {
        let client = connect(url, "device");
        if let Err(e) = client.connect(connect_options(None)) {
            keep_failed(client);
            panic!("publisher could not connect to {url}: {e}");
        }
        Publisher { client }
    }

    /// Publishes with QoS 1 and returns once the broker acknowledged it.
    #[track_caller]
    pub fn send(&self, topic: &str, payload: &str) {
        self.client
            .publish(mqtt::Message::new(topic, payload, QOS))
            .unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.client.disconnect(None);
    }
}

/// A clean-session client subscribed (QoS 1) to one topic filter, buffering
/// everything it receives until a test asks for it.
///
/// It does not reconnect: after [`Broker::restart`](crate::Broker::restart)
/// the subscription is gone with the broker's state, so create a new
/// `Subscriber` instead.
pub struct Subscriber {
    client: mqtt::Client,
    rx: mqtt::SyncReceiver<Option<mqtt::Message>>,
    topic: String,
}

impl Subscriber {
    /// Connects to `url` and subscribes to the topic filter `topic`
    /// (wildcards allowed), returning only after the broker's SUBACK.
    ///
    /// Waiting for the SUBACK is what makes "subscribe, then trigger, then
    /// [`recv`](Subscriber::recv)" race-free: anything published after
    /// `new` returns is delivered to this subscriber.
    #[track_caller]
    pub fn new(url: &str, topic: &str) -> Subscriber {
        Subscriber::new_with(url, topic, None)
    }

    /// [`new`](Subscriber::new) over TLS (`url` is `ssl://...`), trusting
    /// `pki`'s CA and presenting its client certificate.
    #[track_caller]
    pub fn new_tls(url: &str, topic: &str, pki: &TestPki) -> Subscriber {
        Subscriber::new_with(url, topic, Some(pki))
    }

    #[track_caller]
    fn new_with(url: &str, topic: &str, tls: Option<&TestPki>) -> Subscriber {
        Subscriber::subscribe(connect(url, "sub"), url, topic, connect_options(tls))
    }

    /// A subscriber with a persistent session (`client_id`, clean session
    /// off): the broker keeps its subscription and queues QoS 1 messages
    /// while it is away, so a new one with the same id gets them — the way a
    /// cloud listener sees messages sent while it (or the broker) was down.
    #[track_caller]
    pub fn persistent(url: &str, topic: &str, client_id: &str) -> Subscriber {
        let mut opts = mqtt::ConnectOptionsBuilder::new();
        opts.clean_session(false)
            .connect_timeout(OP_TIMEOUT)
            .keep_alive_interval(Duration::from_secs(30));
        Subscriber::subscribe(
            connect_as(url, client_id, "sub"),
            url,
            topic,
            opts.finalize(),
        )
    }

    #[track_caller]
    fn subscribe(
        client: mqtt::Client,
        url: &str,
        topic: &str,
        opts: mqtt::ConnectOptions,
    ) -> Subscriber {
        // Must be set up before connecting, or early messages could be lost.
        let rx = client.start_consuming();
        if let Err(e) = client.connect(opts) {
            keep_failed(client);
            panic!("subscriber could not connect to {url}: {e}");
        }
        let rsp = client
            .subscribe(topic, QOS)
            .unwrap_or_else(|e| panic!("subscribe to {topic} on {url} failed: {e}"));
        if let Some(granted) = rsp.subscribe_response() {
            // 0x80 (and above, for MQTT 5) is the broker refusing the filter.
            assert!(
                granted < 0x80,
                "broker refused subscription to {topic}: granted QoS {granted}"
            );
        }
        Subscriber {
            client,
            rx,
            topic: topic.to_owned(),
        }
    }

    /// The topic filter this subscriber listens on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits up to `timeout` for the next message, with its topic and flags.
    ///
    /// Use this over [`recv`](Subscriber::recv) when subscribed to a
    /// wildcard or when the retained flag matters.
    pub fn recv_message(&self, timeout: Duration) -> Option<mqtt::Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(remaining) {
                Ok(Some(msg)) => return Some(msg),
                // paho signals a lost connection with `None`. Nothing more will
                // arrive, but keep honouring the timeout so callers see a
                // uniform "nothing within T" rather than an early return.
                Ok(None) if !remaining.is_zero() => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the next message and returns its payload.
    ///
    /// Panics on a non-UTF-8 payload: everything gator-ota publishes is JSON
    /// text, so binary data here is a bug worth failing loudly on.
    #[track_caller]
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        let msg = self.recv_message(timeout)?;
        match String::from_utf8(msg.payload().to_vec()) {
            Ok(text) => Some(text),
            Err(e) => panic!("non-UTF-8 payload on {}: {e}", msg.topic()),
        }
    }

    /// Waits up to `timeout` for the next message and parses it as JSON.
    ///
    /// Panics if the payload is not valid JSON, for the same reason
    /// [`recv`](Subscriber::recv) panics on non-UTF-8.
    #[track_caller]
    pub fn recv_json(&self, timeout: Duration) -> Option<serde_json::Value> {
        let text = self.recv(timeout)?;
        match serde_json::from_str(&text) {
            Ok(value) => Some(value),
            Err(e) => panic!("invalid JSON on {}: {e}; payload: {text}", self.topic),
        }
    }

    /// Asserts that no message arrives within `within`.
    ///
    /// Absence can't be observed, only waited out, so this is the one place
    /// in the testkit that deliberately blocks for a fixed time. Keep
    /// `within` short — long enough that the code under test would have
    /// published by then had it been going to (hundreds of milliseconds on
    /// loopback), not a safety margin of seconds.
    #[track_caller]
    pub fn expect_none(&self, within: Duration) {
        if let Some(msg) = self.recv_message(within) {
            panic!(
                "expected no message on {} within {within:?}, got one on {}: {}",
                self.topic,
                msg.topic(),
                msg.payload_str()
            );
        }
    }
}

// paho's client has no `Debug`; the topic is what identifies a subscriber
// in assertion output anyway.
impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.topic)
            .field("client_id", &self.client.client_id())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.client.is_connected() {
            // Best effort: the broker drops the session anyway when the
            // socket closes.
            let _ = self.client.disconnect(None);
        }
    }
}

/// Publishes with QoS 1 until the broker acknowledges, trying again while it
/// is down or restarting; false if `deadline` passes first. For tests that
/// flap the broker: a message counts as sent only once it was acknowledged.
pub fn publish_until_acked(url: &str, topic: &str, payload: &str, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        let create = mqtt::CreateOptionsBuilder::new()
            .server_uri(url)
            .client_id(unique_client_id("pub"))
            .persistence(mqtt::PersistenceType::None)
            .finalize();
        let Ok(mut client) = mqtt::Client::new(create) else {
            return false;
        };
        client.set_timeout(Duration::from_secs(2));
        let mut opts = mqtt::ConnectOptionsBuilder::new();
        opts.clean_session(true)
            .connect_timeout(Duration::from_secs(2));
        if client.connect(opts.finalize()).is_err() {
            keep_failed(client);
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let sent = client.publish(mqtt::Message::new(topic, payload, QOS));
        let _ = client.disconnect(None);
        if sent.is_ok() {
            return true;
        }
    }
    false
}

/// Everything published on a topic filter, collected by a persistent session
/// (clean session off, a fixed client id) that reconnects by itself: the way
/// a cloud listener sees a gateway's messages across broker restarts. Use it
/// with [`Broker::start_persistent`](crate::Broker::start_persistent), whose
/// restarts keep the session's queue.
pub struct Collector {
    client: mqtt::AsyncClient,
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Collector {
    #[track_caller]
    pub fn start(url: &str, topic: &str) -> Collector {
        let create = mqtt::CreateOptionsBuilder::new()
            .server_uri(url)
            .client_id(unique_client_id("collector"))
            .persistence(mqtt::PersistenceType::None)
            .finalize();
        let client = mqtt::AsyncClient::new(create).expect("create the collector client");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        client.set_message_callback(move |_, msg| {
            if let Some(msg) = msg
                && let Ok(v) = serde_json::from_slice(msg.payload())
            {
                sink.lock().unwrap().push(v);
            }
        });
        let filter = topic.to_string();
        client.set_connected_callback(move |c| {
            // Harmless when the broker kept the subscription.
            c.subscribe(&filter, QOS);
        });
        let mut opts = mqtt::ConnectOptionsBuilder::new();
        opts.clean_session(false)
            .connect_timeout(OP_TIMEOUT)
            .keep_alive_interval(Duration::from_secs(5))
            .automatic_reconnect(Duration::from_millis(50), Duration::from_millis(500));
        client
            .connect(opts.finalize())
            .wait_for(OP_TIMEOUT)
            .unwrap_or_else(|e| panic!("collector could not connect to {url}: {e}"));
        client
            .subscribe(topic, QOS)
            .wait_for(OP_TIMEOUT)
            .unwrap_or_else(|e| panic!("collector could not subscribe to {topic}: {e}"));
        Collector { client, seen }
    }

    /// Every message so far, as JSON, duplicates included.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The distinct values of `field` seen so far.
    pub fn distinct(&self, field: &str) -> std::collections::BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|v| v[field].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until `n` distinct values of `field` were seen; false on timeout.
    pub fn wait_distinct(&self, field: &str, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.distinct(field).len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.distinct(field).len() >= n
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.client.is_connected() {
            let _ = self
                .client
                .disconnect(None)
                .wait_for(Duration::from_secs(2));
        }
    }
}
