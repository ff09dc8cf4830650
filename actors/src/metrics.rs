//! Counters of what the gateway did since it started, for `/metrics`,
//! `/healthz`, `/status.json` and the status page.
//!
//! One [`Metrics`] is shared (behind an `Arc`) by the jobs, the firmware
//! server and the fleet actor. Every update is an atomic or a short lock,
//! never I/O, so any thread may count. Every map is bounded by something
//! that is itself bounded: job reasons by the [`Reason`] codes, images by
//! the index of installed images, running jobs by the job queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::status::{Reason, State};

/// The jobs the status page lists.
const RECENT_JOBS: usize = 10;

/// How an image request ended, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServedOutcome {
    /// Every byte of the whole image went out.
    Completed,
    /// A range, a HEAD, or a transfer the device cut short.
    Partial,
    /// `304`: the device has it already.
    NotModified,
}

impl ServedOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::NotModified => "not_modified",
        }
    }
}

/// A job that ended, for the status page's "last jobs".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub msg_id: String,
    pub file_name: String,
    pub status: String,
    pub reason: Option<String>,
    pub time: String,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (outcome, reason) → jobs; the reason is empty for INSTALLED.
    jobs: Mutex<BTreeMap<(String, String), u64>>,
    bytes_downloaded: AtomicU64,
    /// (image, outcome) → requests, and bytes sent per image.
    served: Mutex<BTreeMap<(String, ServedOutcome), u64>>,
    served_bytes: AtomicU64,
    /// msg_id → (when the oldest of its running jobs started, how many run).
    running: Mutex<HashMap<String, (Instant, usize)>>,
    recent: Mutex<VecDeque<JobSummary>>,
    /// Data Gator messages the registry took, and ones ingress dropped
    /// because its in-memory queue of them was full.
    device_messages: AtomicU64,
    device_dropped: AtomicU64,
    /// The last save of the device registry: its size, and the time taken
    /// to serialise it and to write it (microseconds).
    registry_bytes: AtomicU64,
    registry_serialise_us: AtomicU64,
    registry_write_us: AtomicU64,
}

impl Metrics {
    pub fn job_started(&self, msg_id: &str) {
        let mut running = lock(&self.running);
        let entry = running
            .entry(msg_id.to_string())
            .or_insert((Instant::now(), 0));
        entry.1 += 1;
    }

    /// A job's last status: counted by outcome and reason, listed as recent,
    /// and no longer running.
    pub fn job_ended(&self, msg_id: &str, file_name: &str, state: State, reason: Option<Reason>) {
        let reason_text = reason.map(|r| r.to_string());
        *lock(&self.jobs)
            .entry((state.to_string(), reason_text.clone().unwrap_or_default()))
            .or_default() += 1;
        {
            let mut running = lock(&self.running);
            if let Some(entry) = running.get_mut(msg_id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    running.remove(msg_id);
                }
            }
        }
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_JOBS {
            recent.pop_front();
        }
        recent.push_back(JobSummary {
            msg_id: msg_id.to_string(),
            file_name: file_name.to_string(),
            status: state.to_string(),
            reason: reason_text,
            time: crate::time::now(),
        });
    }

    pub fn add_downloaded(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn image_served(&self, image: &str, outcome: ServedOutcome, bytes: u64) {
        *lock(&self.served)
            .entry((image.to_string(), outcome))
            .or_default() += 1;
        self.served_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn jobs(&self) -> Vec<((String, String), u64)> {
        lock(&self.jobs)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn bytes_downloaded(&self) -> u64 {
        self.bytes_downloaded.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> Vec<((String, ServedOutcome), u64)> {
        lock(&self.served)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn served_bytes(&self) -> u64 {
        self.served_bytes.load(Ordering::Relaxed)
    }

    pub fn device_message(&self) {
        self.device_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one dropped device message; returns how many so far.
    pub fn device_dropped(&self) -> u64 {
        self.device_dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// (taken by the registry, dropped by ingress) since the start.
    pub fn device_messages(&self) -> (u64, u64) {
        (
            self.device_messages.load(Ordering::Relaxed),
            self.device_dropped.load(Ordering::Relaxed),
        )
    }

    pub fn registry_saved(&self, bytes: usize, serialise: Duration, write: Duration) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.registry_bytes.store(bytes as u64, Ordering::Relaxed);
        self.registry_serialise_us
            .store(us(serialise), Ordering::Relaxed);
        self.registry_write_us.store(us(write), Ordering::Relaxed);
    }

    /// The last registry save: (bytes, serialise µs, write µs).
    pub fn registry_save(&self) -> (u64, u64, u64) {
        (
            self.registry_bytes.load(Ordering::Relaxed),
            self.registry_serialise_us.load(Ordering::Relaxed),
            self.registry_write_us.load(Ordering::Relaxed),
        )
    }

    /// Jobs running now, and how long the oldest of them has run.
    pub fn running(&self) -> (usize, Duration) {
        let running = lock(&self.running);
        let count = running.values().map(|(_, n)| n).sum();
        let oldest = running
            .values()
            .map(|(t, _)| t.elapsed())
            .max()
            .unwrap_or_default();
        (count, oldest)
    }

    /// The last jobs that ended, newest first.
    pub fn recent(&self) -> Vec<JobSummary> {
        lock(&self.recent).iter().rev().cloned().collect()
    }
}

/// A poisoned lock only means a panic elsewhere (which aborts the process);
/// the counters are still good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_counted_and_leave_the_running_set() {
        let m = Metrics::default();
        m.job_started("a");
        m.job_started("a");
        m.job_started("b");
        assert_eq!(m.running().0, 3);
        m.job_ended("a", "fw", State::Installed, None);
        m.job_ended("b", "fw", State::Failed, Some(Reason::NotFound));
        assert_eq!(m.running().0, 1);
        let jobs = m.jobs();
        assert!(jobs.contains(&(("INSTALLED".into(), String::new()), 1)));
        assert!(jobs.contains(&(("FAILED".into(), "NOT_FOUND".into()), 1)));
        assert_eq!(m.recent()[0].msg_id, "b");
        for i in 0..20 {
            m.job_ended(&format!("x{i}"), "fw", State::Installed, None);
        }
        assert_eq!(m.recent().len(), RECENT_JOBS);
    }
}
