//! The typed messages the actors exchange, in the order a firmware_image
//! travels: ingress → router ([`Envelope`]), router → carrier ([`RunTask`]),
//! carrier → writer ([`Install`]), carrier → egress ([`Publish`]).

use std::sync::Arc;

use actix::Message;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::paths::ConfinedPath;
use crate::writer::{InstallError, Installed};

/// A message in SCARECRO's envelope, as every SCARECRO component sees it.
#[derive(Debug, Clone, Serialize, Message)]
#[rtype(result = "()")]
pub struct Envelope {
    pub msg_id: String,
    pub msg_time: String,
    pub msg_type: String,
    pub msg_content: serde_json::Value,
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

/// The body of an image as it arrives from the bucket.
pub type ByteStream = BoxStream<'static, Result<Bytes, object_store::Error>>;

/// Carrier → writer: put an image at `image` and then `pointer_contents` at
/// `pointer`, each atomically, the pointer last.
#[derive(Message)]
#[rtype(result = "Result<Installed, InstallError>")]
pub struct Install {
    pub msg_id: String,
    pub image: ConfinedPath,
    pub pointer: ConfinedPath,
    pub pointer_contents: String,
    pub body: ByteStream,
    /// Bytes the bucket says the object has; anything else is a failure.
    pub expected_size: u64,
}

/// Carrier → egress: send a message of `message_type` on every send address
/// that carries it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), crate::egress::PublishError>")]
pub struct Publish {
    pub message_type: String,
    pub content: serde_json::Value,
}
