//! `firmware_status`: what happened to each job, for the cloud to see.
//!
//! Sent only when a send address carries `firmware_status`; a plain
//! SCARECRO cloud sees nothing but `confirm_receipt`.

use std::fmt;
use std::sync::Arc;

use actix::Recipient;
use serde_json::json;

use crate::messages::Publish;
use crate::metrics::Metrics;
use crate::time;

pub const MESSAGE_TYPE: &str = "firmware_status";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    Queued,
    Downloading,
    Downloaded,
    Verified,
    Installed,
    Failed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Queued => "QUEUED",
            State::Downloading => "DOWNLOADING",
            State::Downloaded => "DOWNLOADED",
            State::Verified => "VERIFIED",
            State::Installed => "INSTALLED",
            State::Failed => "FAILED",
        })
    }
}

/// Why a job failed, as a stable code a cloud can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    InvalidMessage,
    NotFound,
    Auth,
    ChecksumMismatch,
    SizeMismatch,
    TooLarge,
    NoSpace,
    SignatureInvalid,
    Timeout,
    Unreachable,
    Io,
    Internal,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::InvalidMessage => "INVALID_MESSAGE",
            Reason::NotFound => "NOT_FOUND",
            Reason::Auth => "AUTH",
            Reason::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Reason::SizeMismatch => "SIZE_MISMATCH",
            Reason::TooLarge => "TOO_LARGE",
            Reason::NoSpace => "NO_SPACE",
            Reason::SignatureInvalid => "SIGNATURE_INVALID",
            Reason::Timeout => "TIMEOUT",
            Reason::Unreachable => "UNREACHABLE",
            Reason::Io => "IO_ERROR",
            Reason::Internal => "INTERNAL",
        })
    }
}

/// Sends status messages for one gateway.
#[derive(Clone)]
pub struct StatusSink {
    pub egress: Recipient<Publish>,
    pub system_id: String,
    /// Where every job's end is counted, whether statuses are sent or not.
    pub metrics: Arc<Metrics>,
}

impl StatusSink {
    /// A FAILED status with its reason, kept until the broker has it.
    pub async fn failed(&self, msg_id: &str, file_name: &str, reason: Reason, detail: &str) {
        self.terminal(msg_id, file_name, State::Failed, Some((reason, detail)))
            .await;
    }

    /// A status that ends a job (INSTALLED, FAILED): written to the outbox,
    /// so it reaches the cloud after any outage. Waits for a full mailbox.
    pub async fn terminal(
        &self,
        msg_id: &str,
        file_name: &str,
        state: State,
        failure: Option<(Reason, &str)>,
    ) {
        self.metrics
            .job_ended(msg_id, file_name, state, failure.map(|(r, _)| r));
        let publish = self.publish(msg_id, file_name, state, None, failure, true);
        match self.egress.send(publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(%msg_id, status = %state, error = %e, "status message not sent")
            }
            Err(e) => {
                tracing::error!(%msg_id, status = %state, error = %e, "status message not sent: egress is not running")
            }
        }
    }

    /// Best effort: a progress status is information, so a full egress
    /// mailbox drops it (with a log line) rather than stalling a download,
    /// and it is not sent while the broker is away.
    pub fn send(
        &self,
        msg_id: &str,
        file_name: &str,
        state: State,
        percent: Option<u8>,
        failure: Option<(Reason, &str)>,
    ) {
        let publish = self.publish(msg_id, file_name, state, percent, failure, false);
        if let Err(e) = self.egress.try_send(publish) {
            tracing::warn!(%msg_id, status = %state, error = %e, "status message dropped");
        }
    }

    fn publish(
        &self,
        msg_id: &str,
        file_name: &str,
        state: State,
        percent: Option<u8>,
        failure: Option<(Reason, &str)>,
        durable: bool,
    ) -> Publish {
        let mut content = json!({
            "id": self.system_id,
            "msg_id": msg_id,
            "file_name": file_name,
            "status": state.to_string(),
            "time": time::now(),
        });
        if let Some(p) = percent {
            content["percent"] = json!(p);
        }
        if let Some((reason, detail)) = failure {
            content["reason"] = json!(reason.to_string());
            content["detail"] = json!(detail);
        }
        Publish {
            msg_id: msg_id.into(),
            message_type: MESSAGE_TYPE.into(),
            content,
            durable,
        }
    }
}
