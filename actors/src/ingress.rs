//! MQTT ingress: turns broker messages into SCARECRO envelopes.
//!
//! Each payload is size-checked before it is parsed, matched to its receive
//! address by topic, and wrapped as `{msg_id, msg_time, msg_type,
//! msg_content}` using the message's `id_field` and `time_field`. The next
//! message is taken only after the router accepted this one, so a full job
//! queue slows ingress down instead of losing work.
//!
//! Two paths: a message for a task (`firmware_image`) is held in the
//! fsynced inbox before the broker's acknowledgement; the Data Gators' own
//! reports (a receive address that carries only device message types) are
//! lossy by nature, as a device reports again within minutes, and wait in
//! memory instead, at most `pipeline.device_queue` of them: past that they
//! are dropped and counted, never a job.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{Actor, ActorFutureExt, AsyncContext, Context, Recipient, StreamHandler};
use gator_ota_settings::MessageSpec;
use paho_mqtt as paho;
use serde_json::Value;
use tracing::{debug, error, info, warn};

use crate::egress::Link;
use crate::messages::{Envelope, Receipt};
use crate::metrics::Metrics;
use crate::mqtt::{self, topic_matches};
use crate::scarecro_topics::TopicMap;
use crate::spool::{self, Spool, Spooled};
use crate::status::{Reason, StatusSink};
use crate::time;

/// A receive address as ingress needs it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub address: String,
    pub topic: String,
    pub message_types: Vec<String>,
}

pub struct MqttIngress {
    /// The MQTT carrier's name, for log lines.
    carrier: Arc<str>,
    /// How journal records name this carrier's inbox (`None`: the main one).
    inbox_of: Option<Arc<str>>,
    status: StatusSink,
    client: paho::AsyncClient,
    connect: paho::ConnectOptions,
    subscriptions: Vec<Subscription>,
    specs: HashMap<String, MessageSpec>,
    router: Recipient<Envelope>,
    inbox: Arc<Spool>,
    /// Device messages waiting in memory, shared with the message callback.
    device_queued: Arc<AtomicUsize>,
    max_payload: usize,
    retry: Duration,
    retry_max: Duration,
    topic_map: Option<TopicMap>,
}

/// Everything ingress is built from.
pub struct IngressConfig {
    pub carrier: Arc<str>,
    /// `None` for the main carrier, whose inbox journal records name by
    /// number alone; the carrier's name for the others.
    pub inbox_of: Option<Arc<str>>,
    pub client: paho::AsyncClient,
    pub connect: paho::ConnectOptions,
    pub subscriptions: Vec<Subscription>,
    pub specs: HashMap<String, MessageSpec>,
    pub router: Recipient<Envelope>,
    pub qos: i32,
    /// Where messages are held from paho's callback until a job is journaled.
    pub inbox: Arc<Spool>,
    /// Messages a previous run held but did not hand on, oldest first.
    pub held: Vec<u64>,
    pub max_payload: usize,
    /// Inbox backlog past which a warning is logged (`pipeline.inbox_warning`).
    pub backlog_warning: usize,
    /// Device messages held in memory at most (`pipeline.device_queue`).
    pub device_queue: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// SCARECRO's topic → address table; `None` matches subscription filters.
    pub topic_map: Option<TopicMap>,
    /// Where rejections are reported as FAILED statuses.
    pub status: StatusSink,
    /// Told when the connection comes and goes (egress sends its outbox).
    pub link: Recipient<Link>,
}

impl MqttIngress {
    /// Builds the actor inside `ctx` so the message stream, which cannot be
    /// a field, is attached before the first connection.
    pub fn create(cfg: IngressConfig, ctx: &mut Context<Self>) -> Self {
        let client = cfg.client;
        let device_queued = Arc::new(AtomicUsize::new(0));
        let stream = StreamConfig {
            inbox: cfg.inbox.clone(),
            max_payload: cfg.max_payload,
            warn_at: cfg.backlog_warning,
            devices: DeviceLane {
                topics: Routing {
                    subscriptions: cfg.subscriptions.clone(),
                    topic_map: cfg.topic_map.clone(),
                },
                queued: device_queued.clone(),
                bound: cfg.device_queue.max(1),
                metrics: cfg.status.metrics.clone(),
            },
        };
        attach_stream(&client, stream, cfg.held, ctx);
        let topics: Vec<String> = cfg.subscriptions.iter().map(|s| s.topic.clone()).collect();
        let qos = vec![cfg.qos; topics.len()];
        let (up, down) = (cfg.link.clone(), cfg.link);
        let (name, lost) = (cfg.carrier.clone(), cfg.carrier.clone());
        client.set_connected_callback(move |c| {
            info!(carrier = %name, "connected to the broker");
            up.do_send(Link { up: true });
            let token = c.subscribe_many(&topics, &qos);
            let topics = topics.clone();
            // The callback runs on paho's thread, which must not block; the
            // acknowledgement is awaited on a short-lived thread instead.
            let name = name.clone();
            std::thread::spawn(move || match token.wait() {
                Ok(_) => info!(carrier = %name, ?topics, "subscribed"),
                Err(e) => {
                    error!(carrier = %name, ?topics, error = %e, "the broker refused the subscription")
                }
            });
        });
        client.set_connection_lost_callback(move |_| {
            warn!(carrier = %lost, "lost the broker connection; reconnecting");
            down.do_send(Link { up: false });
        });
        Self {
            carrier: cfg.carrier,
            inbox_of: cfg.inbox_of,
            client,
            connect: cfg.connect,
            subscriptions: cfg.subscriptions,
            specs: cfg.specs,
            router: cfg.router,
            inbox: cfg.inbox,
            device_queued,
            max_payload: cfg.max_payload,
            retry: cfg.retry_min,
            retry_max: cfg.retry_max,
            status: cfg.status,
            topic_map: cfg.topic_map,
        }
    }

    /// The receive address a message on `topic` is for.
    fn subscription_for(&self, topic: &str) -> Option<&Subscription> {
        subscription_for(&self.subscriptions, self.topic_map.as_ref(), topic)
    }

    /// The first connection is retried here; after it, paho reconnects.
    fn connect(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        let client = self.client.clone();
        let opts = self.connect.clone();
        ctx.run_later(delay, move |_, ctx| {
            let fut = async move { client.connect(opts).await };
            ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| match res {
                Ok(_) => {}
                Err(e) => {
                    let next = (act.retry * 2).min(act.retry_max);
                    let hint = mqtt::connect_failure_hint(&act.client.server_uri(), &e);
                    warn!(carrier = %act.carrier, error = %e, retry_in = ?act.retry, hint, "cannot reach the broker");
                    let wait = act.retry;
                    act.retry = next;
                    act.connect(ctx, wait);
                }
            }));
        });
    }

    fn envelope(&self, msg_type: &str, topic: &str, content: &Value) -> Envelope {
        let spec = self.specs.get(msg_type);
        let field = |name: Option<&String>| name.and_then(|f| content.get(f.as_str()));
        let msg_id = match field(spec.map(|s| &s.id_field)) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Number(_)) => v.to_string(),
            _ => String::new(),
        };
        let msg_time = match field(spec.map(|s| &s.time_field)) {
            Some(Value::String(s)) => s.clone(),
            _ => time::now(),
        };
        Envelope {
            msg_id,
            msg_time,
            msg_type: msg_type.to_string(),
            msg_content: content.clone(),
            topic: topic.to_string(),
            receipt: None,
        }
    }
}

/// The receive address a message on `topic` is for.
fn subscription_for<'a>(
    subscriptions: &'a [Subscription],
    topic_map: Option<&TopicMap>,
    topic: &str,
) -> Option<&'a Subscription> {
    match topic_map {
        Some(map) => {
            let address = map.address_for(topic)?;
            let found = subscriptions.iter().find(|s| s.address == address);
            if found.is_none() {
                debug!(%topic, %address, "the topic belongs to a SCARECRO address gator-ota does not receive on");
            }
            found
        }
        None => subscriptions
            .iter()
            .find(|s| topic_matches(&s.topic, topic)),
    }
}

/// The receive addresses, as the message callback matches topics to them.
struct Routing {
    subscriptions: Vec<Subscription>,
    topic_map: Option<TopicMap>,
}

impl Routing {
    /// On a receive address that carries only device messages.
    fn is_device_topic(&self, topic: &str) -> bool {
        subscription_for(&self.subscriptions, self.topic_map.as_ref(), topic)
            .is_some_and(from_devices)
    }
}

/// The in-memory path of device messages: which topics take it, how many
/// wait now, the bound, and where drops are counted.
struct DeviceLane {
    topics: Routing,
    queued: Arc<AtomicUsize>,
    bound: usize,
    metrics: Arc<Metrics>,
}

impl DeviceLane {
    /// Takes one more message unless `bound` already wait; a refused one is
    /// counted as dropped. Returns whether it was taken, and the drops so
    /// far when it was not.
    fn admit(&self) -> Result<usize, u64> {
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if waiting < self.bound {
            return Ok(waiting + 1);
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Err(self.metrics.device_dropped())
    }
}

/// What the message stream is built from.
struct StreamConfig {
    inbox: Arc<Spool>,
    max_payload: usize,
    warn_at: usize,
    devices: DeviceLane,
}

/// What the message callback hands to the actor: a message held in the
/// inbox, or, when the disk refused it, the message itself; or a device
/// message, which is only ever held in memory.
pub enum Inbound {
    Held(u64),
    Unheld(Spooled),
    Device(Spooled),
    Oversize { topic: String, bytes: usize },
}

/// Feeds broker messages to the actor. paho acknowledges a QoS 1 message
/// when this callback returns, so the message is written to the inbox
/// (fsynced) first: once the broker forgets it, it is on disk. Only its
/// sequence number waits in memory, however long the job queue stays full.
/// The callback must not wait on anything else (paho holds its client lock
/// while calling it, so it would stall every publish); a disk write is
/// bounded. A payload over the limit is refused here, unwritten. A device
/// message skips the disk: it waits in memory, up to the lane's bound.
fn attach_stream(
    client: &paho::AsyncClient,
    cfg: StreamConfig,
    held: Vec<u64>,
    ctx: &mut Context<MqttIngress>,
) {
    let (tx, rx) = paho::async_channel::unbounded();
    for seq in held {
        let _ = tx.try_send(Inbound::Held(seq));
    }
    let StreamConfig {
        inbox,
        max_payload,
        warn_at,
        devices,
    } = cfg;
    let (mut warned, mut dropping) = (false, false);
    client.set_message_callback(move |_, msg| {
        let Some(msg) = msg else {
            return;
        };
        let (topic, payload) = (msg.topic(), msg.payload());
        let item = if payload.len() > max_payload {
            Inbound::Oversize {
                topic: topic.to_string(),
                bytes: payload.len(),
            }
        } else if devices.topics.is_device_topic(topic) {
            match devices.admit() {
                Ok(waiting) => {
                    if waiting <= devices.bound / 2 {
                        dropping = false;
                    }
                    Inbound::Device(Spooled {
                        topic: topic.to_string(),
                        payload: payload.to_vec(),
                    })
                }
                Err(dropped) => {
                    if !dropping {
                        warn!(%topic, bound = devices.bound, dropped,
                            "device messages dropped: pipeline.device_queue of them already wait; firmware jobs are not affected");
                        dropping = true;
                    }
                    return;
                }
            }
        } else {
            match inbox.put(topic, payload) {
                Ok(seq) => {
                    debug!(%topic, seq, bytes = payload.len(), "held in the inbox");
                    Inbound::Held(seq)
                }
                Err(e) => {
                    error!(%topic, error = %e, "cannot write the inbox; the message waits in memory and is lost if the process stops first");
                    Inbound::Unheld(Spooled {
                        topic: topic.to_string(),
                        payload: payload.to_vec(),
                    })
                }
            }
        };
        let _ = tx.try_send(item);
        let backlog = tx.len();
        if backlog > warn_at && !warned {
            warn!(
                backlog,
                "ingress is busy; messages wait in the inbox on disk until the job queue has room"
            );
            warned = true;
        } else if backlog <= warn_at / 2 {
            warned = false;
        }
    });
    ctx.add_stream(rx);
}

impl Actor for MqttIngress {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx, Duration::ZERO);
    }
}

/// Hands a message on, then forgets it from the inbox. A message the router
/// could not take stays there for the next start.
async fn deliver(
    disposition: Disposition,
    receipt: Option<Receipt>,
    router: Recipient<Envelope>,
    status: StatusSink,
    inbox: Arc<Spool>,
) {
    let seq = receipt.as_ref().map(|r| r.seq);
    match disposition {
        Disposition::Route(envelopes) => {
            for mut env in envelopes {
                env.receipt = receipt.clone();
                if gator_ota_settings::DEVICE_MESSAGE_TYPES.contains(&env.msg_type.as_str()) {
                    debug!(topic = %env.topic, msg_type = %env.msg_type, "received");
                } else {
                    info!(msg_id = %env.msg_id, msg_type = %env.msg_type, "received");
                }
                if let Err(e) = router.send(env).await {
                    error!(error = %e, "the task router is not running; the message stays in the inbox for the next start");
                    return;
                }
            }
        }
        Disposition::Reject(detail) => status.failed("", "", Reason::InvalidMessage, &detail).await,
        Disposition::Ignore => {}
    }
    if let Some(seq) = seq {
        let _ = spool::blocking(move || inbox.remove(seq)).await;
    }
}

/// A receive address that carries only the Data Gators' own messages: what
/// is wrong with one is logged, not reported to the cloud as a FAILED job.
fn from_devices(sub: &Subscription) -> bool {
    sub.message_types
        .iter()
        .all(|t| gator_ota_settings::DEVICE_MESSAGE_TYPES.contains(&t.as_str()))
}

/// What to do with one message.
enum Disposition {
    Route(Vec<Envelope>),
    Reject(String),
    Ignore,
}

impl MqttIngress {
    /// Parses a message and decides its fate; logs why it goes nowhere.
    fn dispose(&self, msg: &Spooled) -> Disposition {
        let topic = msg.topic.as_str();
        let Some(sub) = self.subscription_for(topic) else {
            warn!(%topic, "message on a topic no receive address listens to; dropped");
            return Disposition::Ignore;
        };
        let content: Value = match serde_json::from_slice(&msg.payload) {
            Ok(v) => v,
            Err(e) => {
                error!(%topic, address = %sub.address, error = %e, reason = %Reason::InvalidMessage, "payload is not JSON; dropped");
                if from_devices(sub) {
                    return Disposition::Ignore;
                }
                return Disposition::Reject(format!("payload on {topic} is not JSON: {e}"));
            }
        };
        Disposition::Route(
            sub.message_types
                .iter()
                .map(|t| self.envelope(t, topic, &content))
                .collect(),
        )
    }
}

impl MqttIngress {
    /// A message that cannot be parsed at all: over the size limit, or an
    /// inbox file that no longer reads.
    fn refused(&self, refusal: Refusal) -> Disposition {
        match refusal {
            Refusal::Oversize { topic, bytes } => {
                let max = self.max_payload;
                error!(%topic, bytes, max, reason = %Reason::InvalidMessage,
                    "payload larger than pipeline.max_payload_bytes; dropped unparsed");
                if self.subscription_for(&topic).is_some_and(from_devices) {
                    return Disposition::Ignore;
                }
                Disposition::Reject(format!(
                    "payload of {bytes} bytes on {topic} is over the {max}-byte limit"
                ))
            }
            Refusal::Unreadable(e) => {
                error!(error = %e, "a message held in the inbox cannot be read; dropped");
                Disposition::Ignore
            }
        }
    }
}

/// Why a message never reaches the parser.
enum Refusal {
    Oversize { topic: String, bytes: usize },
    Unreadable(String),
}

impl StreamHandler<Inbound> for MqttIngress {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let inbox = self.inbox.clone();
        let queued = self.device_queued.clone();
        let load = async move {
            match item {
                Inbound::Held(seq) => {
                    let read = spool::blocking(move || inbox.read(seq))
                        .await
                        .and_then(|r| r)
                        .map_err(|e| Refusal::Unreadable(e.to_string()));
                    (Some(seq), read)
                }
                Inbound::Unheld(msg) => (None, Ok(msg)),
                Inbound::Device(msg) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    (None, Ok(msg))
                }
                Inbound::Oversize { topic, bytes } => {
                    (None, Err(Refusal::Oversize { topic, bytes }))
                }
            }
        };
        // `wait` holds back the next message until the router took this one
        // (the job is journaled): a full job queue slows ingress down, and
        // the inbox, not memory, holds the rest.
        ctx.wait(wrap_future::<_, Self>(load).then(|(seq, msg), act, _| {
            let disposition = match msg {
                Ok(msg) => act.dispose(&msg),
                Err(refusal) => act.refused(refusal),
            };
            let (router, status, inbox) =
                (act.router.clone(), act.status.clone(), act.inbox.clone());
            let receipt = seq.map(|seq| Receipt {
                carrier: act.inbox_of.clone(),
                seq,
            });
            wrap_future(deliver(disposition, receipt, router, status, inbox))
        }));
    }

    /// The stream ends only if paho dropped the message callback, which it
    /// never does while the client lives. Should it happen, nothing is lost
    /// (the inbox holds every message): end the process so systemd starts a
    /// fresh one rather than run deaf.
    fn finished(&mut self, _: &mut Context<Self>) {
        error!(
            "the MQTT message stream closed; stopping so the service manager restarts gator-ota"
        );
        actix::System::current().stop_with_code(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_lane_takes_up_to_its_bound_and_counts_the_rest() {
        let lane = DeviceLane {
            topics: Routing {
                subscriptions: Vec::new(),
                topic_map: None,
            },
            queued: Arc::new(AtomicUsize::new(0)),
            bound: 2,
            metrics: Arc::new(Metrics::default()),
        };
        assert_eq!(lane.admit(), Ok(1));
        assert_eq!(lane.admit(), Ok(2));
        assert_eq!(lane.admit(), Err(1));
        assert_eq!(lane.admit(), Err(2));
        lane.queued.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(lane.admit(), Ok(2));
        assert_eq!(lane.metrics.device_messages(), (0, 2));
    }

    #[test]
    fn only_addresses_that_carry_device_types_alone_skip_the_inbox() {
        let sub = |topic: &str, types: &[&str]| Subscription {
            address: topic.into(),
            topic: topic.into(),
            message_types: types.iter().map(|t| t.to_string()).collect(),
        };
        let routing = Routing {
            subscriptions: vec![
                sub("datagator/tlm/+", &["datagator_tlm"]),
                sub("mixed/+", &["datagator_tlm", "firmware_image"]),
                sub("scarecro/firmware_image", &["firmware_image"]),
            ],
            topic_map: None,
        };
        assert!(routing.is_device_topic("datagator/tlm/246F28000001"));
        assert!(!routing.is_device_topic("mixed/x"));
        assert!(!routing.is_device_topic("scarecro/firmware_image"));
        assert!(!routing.is_device_topic("elsewhere"));
    }
}
