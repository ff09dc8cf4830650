//! Who may run when: a job's [`Turn`] for its files, and its [`Slot`] among
//! the carrier's `jobs.concurrency`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Shared;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::Runner;
use crate::firmware::FirmwareJob;

/// The last job in line for each file some queued or running job will write.
pub(super) type Lines = Arc<Mutex<HashMap<PathBuf, Place>>>;

/// The last job in line for a file, and what resolves when it has ended.
#[derive(Clone)]
pub(super) struct Place {
    job: u64,
    done: Shared<oneshot::Receiver<()>>,
}

/// A job's place in line for its image and pointer. Taken in arrival order
/// without waiting, so a job waiting for its files never holds up jobs for
/// other files; [`Turn::wait`] resolves when every earlier job for them has
/// ended.
pub struct Turn {
    job: u64,
    paths: Vec<PathBuf>,
    before: Vec<Shared<oneshot::Receiver<()>>>,
    /// Dropped with the turn: wakes the next job in line.
    _done: oneshot::Sender<()>,
    lines: Lines,
}

impl Turn {
    pub async fn wait(&mut self) {
        for earlier in self.before.drain(..) {
            // Err: the earlier job's turn was dropped, which is the signal.
            let _ = earlier.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        for path in &self.paths {
            if lines.get(path).is_some_and(|p| p.job == self.job) {
                lines.remove(path);
            }
        }
    }
}

/// A job's claim on one of the carrier's `jobs.concurrency` slots. It is
/// given back while the job waits out a backoff: a job whose store hangs or
/// fails holds a slot only while it is trying.
pub struct Slot {
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub async fn take(slots: Arc<Semaphore>) -> Self {
        // The semaphore is never closed; a closed one would only mean no limit.
        let permit = slots.clone().acquire_owned().await.ok();
        Self { slots, permit }
    }

    /// Gives the slot back for `wait`, then queues for one again.
    pub(super) async fn pause(&mut self, wait: Duration) {
        self.permit = None;
        tokio::time::sleep(wait).await;
        self.permit = self.slots.clone().acquire_owned().await.ok();
    }
}

impl Runner {
    /// The job's turn for its image and pointer, behind every job taken
    /// before it for either: the pointer always ends up naming the last image
    /// published. Never waits; call it in arrival order.
    pub fn take_turn(&self, job: &FirmwareJob) -> Turn {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut paths = vec![job.disk_path.full(), job.config_path.full()];
        paths.sort();
        paths.dedup();
        let (tx, rx) = oneshot::channel();
        let done = rx.shared();
        let mut lines = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let before = paths
            .iter()
            .filter_map(|path| {
                let me = Place {
                    job: id,
                    done: done.clone(),
                };
                lines.insert(path.clone(), me).map(|earlier| earlier.done)
            })
            .collect();
        Turn {
            job: id,
            paths,
            before,
            _done: tx,
            lines: self.locks.clone(),
        }
    }

    /// Every file a queued or running job will write: retention leaves them.
    pub(super) fn busy_files(&self) -> Vec<PathBuf> {
        let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.keys().cloned().collect()
    }
}
