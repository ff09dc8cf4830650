//! Retention: `jobs.keep_images` images per folder, never one still in use.

use std::path::PathBuf;

use tracing::{Span, warn};

use super::Runner;
use crate::firmware::FirmwareJob;
use crate::writer::{Removal, Remove};

impl Runner {
    /// Keeps the newest `keep_images` images we installed in this folder;
    /// the one just installed (which the pointer names) always stays, and so
    /// does any image a pointer gator-ota wrote names (pointers of other
    /// jobs may share the folder) and any image a queued or running job
    /// holds.
    pub(super) async fn prune(&self, job: &FirmwareJob) {
        let disk_path = job.disk_path.full();
        let Some(dir) = disk_path.parent() else {
            return;
        };
        let installed = self.journal.installed_in(dir).await;
        let named = self.journal.named_by_pointers().await;
        // An image another job is about to use or re-point to is not old.
        let busy = self.busy_files();
        let old: Vec<PathBuf> = installed
            .into_iter()
            .filter(|(p, i)| {
                *p != disk_path
                    && i.file_name != job.file_name
                    && !busy.contains(p)
                    && !named.contains(p)
            })
            .skip(self.policy.keep_images.saturating_sub(1))
            .map(|(p, _)| p)
            .collect();
        if old.is_empty() {
            return;
        }
        let _ = self
            .remove
            .send(Remove(Removal::Images(old.clone()), Span::current()))
            .await;
        if let Err(e) = self.journal.forget_installed(&old).await {
            warn!(error = %e, "cannot update the index of installed images");
        }
    }
}
