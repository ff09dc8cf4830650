//! DOWNLOADING progress, the idle timeout and the rate cap, all applied to
//! the object's body as it streams to the writer.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use tracing::info;

use super::Runner;
use crate::firmware::FirmwareJob;
use crate::messages::{ByteStream, TransferError};
use crate::status::{State, StatusSink};

impl Runner {
    /// The meter for a GET of bytes `from..size`.
    pub(super) fn meter(&self, job: &FirmwareJob, from: u64, size: u64) -> Meter {
        let p = &self.policy;
        Meter {
            idle: p.idle_timeout,
            rate: p.max_bytes_per_second,
            started: Instant::now(),
            base: from,
            sent: 0,
            total: size,
            step: p.progress_step.max(1),
            next_pct: next_step(from, size, p.progress_step.max(1)),
            status: self.status.clone(),
            msg_id: job.msg_id.clone(),
            file_name: job.file_name.clone(),
        }
    }
}

fn next_step(done: u64, total: u64, step: u8) -> u8 {
    let pct = percent(done, total);
    (pct / step + 1).saturating_mul(step).min(100)
}

fn percent(done: u64, total: u64) -> u8 {
    if total == 0 {
        100
    } else {
        ((done as u128 * 100) / total as u128).min(100) as u8
    }
}

/// What the download stream keeps while it runs.
pub(super) struct Meter {
    idle: Duration,
    /// Bytes per second; 0 is no cap.
    rate: u64,
    started: Instant,
    base: u64,
    sent: u64,
    total: u64,
    step: u8,
    next_pct: u8,
    status: StatusSink,
    msg_id: String,
    file_name: String,
}

/// Wraps the object's body with an idle timeout, the rate cap and
/// DOWNLOADING progress.
pub(super) fn meter(
    body: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    m: Meter,
) -> ByteStream {
    stream::unfold(Some((body, m)), |state| async move {
        let (mut body, mut m) = state?;
        match tokio::time::timeout(m.idle, body.next()).await {
            Err(_) => Some((Err(TransferError::Idle(m.idle)), None)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(TransferError::Store(e)), None)),
            Ok(Some(Ok(bytes))) => {
                m.sent += bytes.len() as u64;
                m.status.metrics.add_downloaded(bytes.len() as u64);
                if m.rate > 0 {
                    let due = m.started + Duration::from_secs_f64(m.sent as f64 / m.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let pct = percent(m.base + m.sent, m.total);
                if pct >= m.next_pct && pct < 100 {
                    let shown = pct / m.step * m.step;
                    m.status.send(
                        &m.msg_id,
                        &m.file_name,
                        State::Downloading,
                        Some(shown),
                        None,
                    );
                    info!(percent = shown, "DOWNLOADING");
                    m.next_pct = next_step(m.base + m.sent, m.total, m.step);
                }
                Some((Ok(bytes), Some((body, m))))
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_steps() {
        assert_eq!(next_step(0, 100, 10), 10);
        assert_eq!(next_step(15, 100, 10), 20);
        assert_eq!(next_step(99, 100, 10), 100);
    }
}
