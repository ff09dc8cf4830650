//! MQTT ingress: turns broker messages into SCARECRO envelopes.
//!
//! Each payload is size-checked before it is parsed, matched to its receive
//! address by topic, and wrapped as `{msg_id, msg_time, msg_type,
//! msg_content}` using the message's `id_field` and `time_field`. The next
//! message is taken only after the router accepted this one, so a full job
//! queue slows ingress down instead of losing work.

use std::collections::HashMap;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Recipient, StreamHandler,
    Supervised, WrapFuture,
};
use gator_ota_settings::MessageSpec;
use paho_mqtt as paho;
use serde_json::Value;
use tracing::{debug, error, info, warn};

use crate::messages::Envelope;
use crate::mqtt::{self, topic_matches};
use crate::scarecro_topics::TopicMap;
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
    status: StatusSink,
    client: paho::AsyncClient,
    connect: paho::ConnectOptions,
    subscriptions: Vec<Subscription>,
    specs: HashMap<String, MessageSpec>,
    router: Recipient<Envelope>,
    stream_buffer: usize,
    max_payload: usize,
    retry: Duration,
    retry_max: Duration,
    topic_map: Option<TopicMap>,
}

/// Everything ingress is built from.
pub struct IngressConfig {
    pub client: paho::AsyncClient,
    pub connect: paho::ConnectOptions,
    pub subscriptions: Vec<Subscription>,
    pub specs: HashMap<String, MessageSpec>,
    pub router: Recipient<Envelope>,
    pub qos: i32,
    pub stream_buffer: usize,
    pub max_payload: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// SCARECRO's topic → address table; `None` matches subscription filters.
    pub topic_map: Option<TopicMap>,
    /// Where rejections are reported as FAILED statuses.
    pub status: StatusSink,
}

impl MqttIngress {
    /// Builds the actor inside `ctx` so the message stream, which cannot be
    /// a field, is attached before the first connection.
    pub fn create(cfg: IngressConfig, ctx: &mut Context<Self>) -> Self {
        let client = cfg.client;
        attach_stream(&client, cfg.stream_buffer, ctx);
        let topics: Vec<String> = cfg.subscriptions.iter().map(|s| s.topic.clone()).collect();
        let qos = vec![cfg.qos; topics.len()];
        client.set_connected_callback(move |c| {
            info!("connected to the broker");
            let token = c.subscribe_many(&topics, &qos);
            let topics = topics.clone();
            // The callback runs on paho's thread, which must not block; the
            // acknowledgement is awaited on a short-lived thread instead.
            std::thread::spawn(move || match token.wait() {
                Ok(_) => info!(?topics, "subscribed"),
                Err(e) => error!(?topics, error = %e, "the broker refused the subscription"),
            });
        });
        client.set_connection_lost_callback(|_| warn!("lost the broker connection; reconnecting"));
        Self {
            client,
            connect: cfg.connect,
            subscriptions: cfg.subscriptions,
            specs: cfg.specs,
            router: cfg.router,
            stream_buffer: cfg.stream_buffer,
            max_payload: cfg.max_payload,
            retry: cfg.retry_min,
            retry_max: cfg.retry_max,
            status: cfg.status,
            topic_map: cfg.topic_map,
        }
    }

    /// The receive address a message on `topic` is for.
    fn subscription_for(&self, topic: &str) -> Option<&Subscription> {
        match &self.topic_map {
            Some(map) => {
                let address = map.address_for(topic)?;
                let found = self.subscriptions.iter().find(|s| s.address == address);
                if found.is_none() {
                    debug!(%topic, %address, "the topic belongs to a SCARECRO address gator-ota does not receive on");
                }
                found
            }
            None => self
                .subscriptions
                .iter()
                .find(|s| topic_matches(&s.topic, topic)),
        }
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
                    warn!(error = %e, retry_in = ?act.retry, hint, "cannot reach the broker");
                    let wait = act.retry;
                    act.retry = next;
                    act.connect(ctx, wait);
                }
            }));
        });
    }

    fn envelope(&self, msg_type: &str, content: &Value) -> Envelope {
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
        }
    }
}

/// Feeds broker messages to the actor. paho's own stream drops messages
/// when its buffer is full, and its callback must not block (paho holds its
/// client lock while calling it, so a blocked callback would stall every
/// publish). So nothing is refused here: the hand-off is unbounded, ingress
/// takes one message at a time and waits while the job queue is full, and a
/// backlog beyond `pipeline.mqtt_buffer` is logged once per episode.
fn attach_stream(client: &paho::AsyncClient, warn_at: usize, ctx: &mut Context<MqttIngress>) {
    let (tx, rx) = paho::async_channel::unbounded();
    let mut warned = false;
    client.set_message_callback(move |_, msg| {
        let _ = tx.try_send(msg);
        let backlog = tx.len();
        if backlog > warn_at && !warned {
            warn!(
                backlog,
                "ingress is busy; messages wait in memory until the job queue has room"
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

impl Supervised for MqttIngress {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The old stream ended with the old actor; attach a new one.
        attach_stream(&self.client, self.stream_buffer, ctx);
    }
}

impl StreamHandler<Option<paho::Message>> for MqttIngress {
    fn handle(&mut self, item: Option<paho::Message>, ctx: &mut Context<Self>) {
        let Some(msg) = item else {
            // paho's marker for a lost connection; the callback logged it.
            return;
        };
        let topic = msg.topic();
        let Some(sub) = self.subscription_for(topic) else {
            warn!(%topic, "message on a topic no receive address listens to; dropped");
            return;
        };
        let payload = msg.payload();
        if payload.len() > self.max_payload {
            error!(%topic, address = %sub.address, bytes = payload.len(), max = self.max_payload, reason = %Reason::InvalidMessage,
                "payload larger than pipeline.max_payload_bytes; dropped unparsed");
            let detail = format!(
                "payload of {} bytes on {topic} is over the {}-byte limit",
                payload.len(),
                self.max_payload
            );
            self.status.failed("", "", Reason::InvalidMessage, &detail);
            return;
        }
        let content: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                error!(%topic, address = %sub.address, error = %e, reason = %Reason::InvalidMessage, "payload is not JSON; dropped");
                let detail = format!("payload on {topic} is not JSON: {e}");
                self.status.failed("", "", Reason::InvalidMessage, &detail);
                return;
            }
        };
        let envelopes: Vec<Envelope> = sub
            .message_types
            .iter()
            .map(|t| self.envelope(t, &content))
            .collect();
        let router = self.router.clone();
        // `wait` holds back the next stream item until the router took this
        // one: backpressure instead of an unbounded queue.
        ctx.wait(
            async move {
                for env in envelopes {
                    info!(msg_id = %env.msg_id, msg_type = %env.msg_type, "received");
                    if let Err(e) = router.send(env).await {
                        error!(error = %e, "the task router is not running; message not routed");
                    }
                }
            }
            .into_actor(self),
        );
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        error!("the MQTT message stream closed; restarting ingress");
        ctx.stop();
    }
}
