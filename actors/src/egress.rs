//! MQTT egress: sends messages such as confirm_receipt on their addresses.
//!
//! The route table (message type → topics) is fixed at start-up from the
//! send addresses. A durable message (a confirm_receipt, a terminal status)
//! is written to the outbox first and leaves it only when the broker has
//! acknowledged it: it is sent while connected, at most `window` at a time,
//! and what is not acknowledged is sent again after a reconnect or a
//! restart. No in-memory buffer of paho's is relied on, so no limit of one
//! can drop a confirm. Other messages (progress statuses) go out only while
//! the broker is connected.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::fut::wrap_future;
use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient, ResponseActFuture,
    ResponseFuture,
};
use paho_mqtt as paho;
use tracing::{debug, error, info, warn};

use crate::messages::Publish;
use crate::spool::{self, Spool};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot write the outbox: {0}")]
    Outbox(std::io::Error),
    #[error("MQTT egress of carrier `{0}` is not running")]
    Stopped(Arc<str>),
}

/// How long an unacknowledged publish may stay with paho before it is sent
/// again (a broker that lost the session never acknowledges it).
const ACK_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before retrying after paho refused a publish while connected.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The broker connection came up (or went down): from paho's callbacks.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Link {
    pub up: bool,
}

pub struct MqttEgress {
    client: paho::AsyncClient,
    /// message type → topics of the send addresses carrying it.
    routes: HashMap<String, Vec<String>>,
    qos: i32,
    outbox: Arc<Spool>,
    /// Outbox entries not handed to paho yet, oldest first.
    pending: VecDeque<Entry>,
    in_flight: usize,
    /// Most outbox entries handed to paho at once.
    window: usize,
    retry_scheduled: bool,
    /// Mailbox capacity (`pipeline.outbox_window`).
    mailbox: usize,
}

/// Everything egress is built from.
pub struct EgressConfig {
    pub client: paho::AsyncClient,
    pub routes: HashMap<String, Vec<String>>,
    pub qos: i32,
    pub outbox: Arc<Spool>,
    /// What a previous run left in the outbox, oldest first.
    pub held: Vec<u64>,
    pub window: usize,
    pub mailbox: usize,
}

impl MqttEgress {
    pub fn new(cfg: EgressConfig) -> Self {
        if !cfg.held.is_empty() {
            info!(
                messages = cfg.held.len(),
                "the outbox holds messages the broker has not acknowledged; they go out once it is connected"
            );
        }
        Self {
            client: cfg.client,
            routes: cfg.routes,
            qos: cfg.qos,
            outbox: cfg.outbox,
            pending: cfg.held.into_iter().map(Entry::from_last_run).collect(),
            in_flight: 0,
            window: cfg.window.max(1),
            retry_scheduled: false,
            mailbox: cfg.mailbox,
        }
    }

    /// Hands outbox entries to paho while connected and the window allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < self.window && self.client.is_connected() {
            let Some(entry) = self.pending.pop_front() else {
                return;
            };
            let seq = entry.seq;
            self.in_flight += 1;
            let (client, outbox, qos) = (self.client.clone(), self.outbox.clone(), self.qos);
            let send = async move {
                let msg = spool::blocking(move || outbox.read(seq))
                    .await
                    .and_then(|r| r);
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) => return Sent::Unreadable(e),
                };
                let mut token = client.publish(paho::Message::new(&msg.topic, msg.payload, qos));
                loop {
                    match tokio::time::timeout(ACK_DEADLINE, &mut token).await {
                        Ok(Ok(())) => return Sent::Acknowledged(msg.topic),
                        Ok(Err(e)) => return Sent::Refused(e.to_string()),
                        // paho sends it again itself when the session
                        // resumes: sending a copy too would duplicate it.
                        Err(_) if !client.is_connected() => continue,
                        Err(_) => {
                            return Sent::Refused(format!(
                                "no acknowledgement within {ACK_DEADLINE:?}"
                            ));
                        }
                    }
                }
            };
            ctx.spawn(wrap_future::<_, Self>(send).map(move |sent, act, ctx| {
                act.in_flight -= 1;
                act.settle(entry, sent, ctx);
            }));
        }
    }

    fn settle(&mut self, entry: Entry, sent: Sent, ctx: &mut Context<Self>) {
        let (seq, msg_id) = (entry.seq, entry.job());
        match sent {
            Sent::Acknowledged(topic) => {
                debug!(%msg_id, %topic, seq, "the broker acknowledged an outbox message");
                self.forget(seq, ctx);
            }
            Sent::Unreadable(e) => {
                error!(%msg_id, seq, error = %e, "an outbox message cannot be read; dropped");
                self.forget(seq, ctx);
            }
            Sent::Refused(e) => {
                warn!(%msg_id, seq, error = %e, "the broker did not acknowledge an outbox message; it is sent again");
                self.pending.push_front(entry);
                self.schedule_retry(ctx);
            }
        }
        self.pump(ctx);
    }

    fn forget(&self, seq: u64, ctx: &mut Context<Self>) {
        let outbox = self.outbox.clone();
        ctx.spawn(wrap_future(async move {
            let _ = spool::blocking(move || outbox.remove(seq)).await;
        }));
    }

    /// A refusal while paho still says "connected" (it notices a dead link
    /// late): try again shortly rather than in a tight loop.
    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        if self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        ctx.run_later(RETRY_PAUSE, |act, ctx| {
            act.retry_scheduled = false;
            act.pump(ctx);
        });
    }

    /// Best effort: a progress status missed during an outage is stale by
    /// the time the broker is back.
    fn send_now(&self, msg: &Publish, topics: Vec<String>, payload: Vec<u8>) {
        let (msg_id, message_type) = (msg.msg_id.clone(), msg.message_type.clone());
        if !self.client.is_connected() {
            debug!(%msg_id, %message_type, "not connected to the broker; status not sent");
            return;
        }
        for topic in topics {
            let token = self
                .client
                .publish(paho::Message::new(&topic, payload.clone(), self.qos));
            let (msg_id, message_type) = (msg_id.clone(), message_type.clone());
            actix::spawn(async move {
                if let Err(e) = token.await {
                    debug!(%msg_id, %topic, %message_type, error = %e, "status not delivered");
                }
            });
        }
    }
}

/// An outbox entry and, when this run put it there, the job it is about
/// (entries a previous run left are known by their number alone).
#[derive(Clone)]
struct Entry {
    seq: u64,
    msg_id: Option<Arc<str>>,
}

impl Entry {
    fn from_last_run(seq: u64) -> Self {
        Self { seq, msg_id: None }
    }

    /// For log fields: the job's msg_id, or `-` when not known.
    fn job(&self) -> &str {
        self.msg_id.as_deref().unwrap_or("-")
    }
}

/// How one outbox message fared.
enum Sent {
    Acknowledged(String),
    Refused(String),
    Unreadable(std::io::Error),
}

impl Actor for MqttEgress {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Status messages are offered with `try_send`; a burst of jobs must
        // not find the default 16-slot mailbox full.
        ctx.set_mailbox_capacity(self.mailbox);
        self.pump(ctx);
    }
}

impl Handler<Link> for MqttEgress {
    type Result = ();

    fn handle(&mut self, link: Link, ctx: &mut Context<Self>) {
        if link.up {
            if !self.pending.is_empty() {
                info!(
                    messages = self.pending.len(),
                    "connected: sending what the outbox holds"
                );
            }
            self.pump(ctx);
        }
    }
}

impl Handler<Publish> for MqttEgress {
    type Result = ResponseActFuture<Self, Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let topics = self
            .routes
            .get(&msg.message_type)
            .cloned()
            .unwrap_or_default();
        let payload = match serde_json::to_vec(&msg.content) {
            Ok(p) => p,
            Err(e) => return Box::pin(actix::fut::ready(Err(e.into()))),
        };
        if topics.is_empty() {
            // Optional messages (firmware_status) are off without an address.
            debug!(msg_id = %msg.msg_id, message_type = %msg.message_type, "no send address carries this message type");
            return Box::pin(actix::fut::ready(Ok(())));
        }
        if !msg.durable {
            self.send_now(&msg, topics, payload);
            return Box::pin(actix::fut::ready(Ok(())));
        }
        let outbox = self.outbox.clone();
        let hold = spool::blocking(move || {
            topics
                .iter()
                .map(|t| outbox.put(t, &payload))
                .collect::<std::io::Result<Vec<u64>>>()
        });
        let msg_id = msg.msg_id;
        Box::pin(wrap_future::<_, Self>(hold).map(move |held, act, ctx| {
            let seqs = held.and_then(|r| r).map_err(PublishError::Outbox)?;
            debug!(%msg_id, message_type = %msg.message_type, ?seqs, "held in the outbox");
            act.pending.extend(seqs.into_iter().map(|seq| Entry {
                seq,
                msg_id: Some(msg_id.clone()),
            }));
            act.pump(ctx);
            Ok(())
        }))
    }
}

/// One MQTT carrier's egress, and the message types its send addresses carry.
pub struct Route {
    pub carrier: Arc<str>,
    pub egress: Recipient<Publish>,
    pub message_types: HashSet<String>,
}

/// Hands each message to the egress of every MQTT carrier whose send
/// addresses carry its type: confirms to the cloud's broker, statuses to
/// whichever brokers an address asks for them on. A durable message is
/// accepted once every one of those outboxes holds it; a progress status
/// is offered to each, never waited for.
pub struct Fanout {
    routes: Vec<Route>,
    mailbox: usize,
}

impl Fanout {
    pub fn new(routes: Vec<Route>, mailbox: usize) -> Self {
        Self { routes, mailbox }
    }
}

impl Actor for Fanout {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Statuses arrive with `try_send`, as they would at one egress.
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Publish> for Fanout {
    type Result = ResponseFuture<Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let targets: Vec<(Arc<str>, Recipient<Publish>)> = self
            .routes
            .iter()
            .filter(|r| r.message_types.contains(&msg.message_type))
            .map(|r| (r.carrier.clone(), r.egress.clone()))
            .collect();
        if targets.is_empty() {
            debug!(msg_id = %msg.msg_id, message_type = %msg.message_type, "no send address carries this message type");
        }
        Box::pin(async move {
            for (carrier, egress) in targets {
                if !msg.durable {
                    let _ = egress.try_send(msg.clone());
                    continue;
                }
                match egress.send(msg.clone()).await {
                    Ok(result) => result?,
                    Err(_) => return Err(PublishError::Stopped(carrier)),
                }
            }
            Ok(())
        })
    }
}
