//! The typed messages the actors exchange, in the order a firmware_image
//! travels: ingress → router ([`Envelope`]), router → carrier ([`RunTask`]),
//! carrier → writer ([`crate::writer::Append`], [`crate::writer::Commit`]),
//! carrier → egress ([`Publish`]).

use std::sync::Arc;

use actix::Message;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Serialize;

/// A message in SCARECRO's envelope, as every SCARECRO component sees it.
#[derive(Debug, Clone, Serialize, Message)]
#[rtype(result = "()")]
pub struct Envelope {
    pub msg_id: String,
    pub msg_time: String,
    pub msg_type: String,
    pub msg_content: serde_json::Value,
    /// The MQTT topic it came on: a Data Gator names itself only there
    /// (`datagator/tlm/<MAC>`).
    #[serde(skip)]
    pub topic: String,
    /// The inbox entry the message came from, so a job journaled just
    /// before a crash is not taken from the inbox a second time.
    #[serde(skip)]
    pub receipt: Option<Receipt>,
}

/// An inbox entry: its number, and the MQTT carrier whose inbox holds it
/// (`None`: the main carrier's, the only one before there were several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub carrier: Option<Arc<str>>,
    pub seq: u64,
}

/// Router → carrier: run `task` for one message. Resolves once the job is
/// queued, so a full queue holds the router (and ingress) back.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RunTask {
    pub task: Arc<str>,
    pub function: Arc<str>,
    pub envelope: Envelope,
}

/// Why the bytes of an object stopped coming.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("no data for {0:?}")]
    Idle(std::time::Duration),
    #[error("the transfer was stopped")]
    Stopped,
}

/// The body of an image as it arrives from the bucket.
pub type ByteStream = BoxStream<'static, Result<Bytes, TransferError>>;

/// Carrier → egress: send a message of `message_type` on every send address
/// that carries it. Resolves once a `durable` message is in the outbox (it
/// is then sent until the broker acknowledges it, across reconnects and
/// restarts); other messages go out only while the broker is connected.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), crate::egress::PublishError>")]
pub struct Publish {
    /// The job it is about, for egress's log lines.
    pub msg_id: Arc<str>,
    pub message_type: String,
    pub content: serde_json::Value,
    pub durable: bool,
}
