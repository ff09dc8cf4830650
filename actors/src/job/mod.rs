//! One firmware job, start to end: `handle_new_firmware_message` in steps.
//!
//! 1. If the same verified image is already installed at `disk_path`, only
//!    the pointer is (re)written: a repeated message downloads nothing.
//! 2. Otherwise the object is staged beside `disk_path`: one GET, whose
//!    headers give the version, then, after a cut, a ranged GET (a HEAD
//!    first when the version must be asked again), with backoff between
//!    attempts, starting over if the object changed meanwhile. Every HEAD
//!    and GET is an attempt:
//!    each waits at most `header_timeout` for its answer, and what fails
//!    (a timeout, a 5xx, a cut) is retried up to `jobs.attempts` times.
//! 3. The staged bytes are verified: size, then the message's sha256/md5 and
//!    the object's own S3 SHA-256; without any of those the object's own
//!    CRC-64/NVME or CRC-32C, or else its ETag when it is an MD5.
//! 4. Image, then pointer, are committed; old images are pruned.
//! 5. The journal moves to `installed`, the confirm_receipt goes out, and the
//!    job is forgotten.
//!
//! Jobs that touch the same image or pointer take turns in arrival order
//! ([`Turn`]), so they never write the same files at once; others do not wait
//! for each other. A running job holds one of `jobs.concurrency` [`Slot`]s,
//! and gives it back while it waits out a backoff, so jobs that keep failing
//! do not hold up the rest.
//!
//! Here are the steps in order; step 2 is `download.rs`, step 3
//! `verify.rs`, the DOWNLOADING progress `progress.rs`, the pruning
//! `retention.rs`, turns and slots `locks.rs`. A step that fails returns a
//! [`Failure`]; only [`Runner::run`] reports it and discards the staged
//! bytes.

mod download;
mod locks;
mod progress;
mod retention;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tracing::{Instrument, error, info, info_span, warn};

use crate::firmware::FirmwareJob;
use crate::hashes::Digests;
use crate::journal::{InstalledImage, JobRecord, JobState, Journal, PointerRecord};
use crate::messages::Publish;
use crate::signature::Keyring;
use crate::staging::hash_installed;
use crate::status::{Reason, State, StatusSink};
use crate::time;
use crate::writer::{Append, Commit, Removal, Remove, WriteError};

use download::Object;
pub use locks::{Slot, Turn};

/// How jobs run; from `[jobs]` and the carrier's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub idle_timeout: Duration,
    /// How long a HEAD or GET waits for its response headers.
    pub header_timeout: Duration,
    pub reserve_bytes: u64,
    pub keep_images: usize,
    pub progress_step: u8,
    pub max_image_bytes: u64,
    pub max_bytes_per_second: u64,
    pub require_signature: bool,
    pub keyring: Arc<Keyring>,
    /// Chunks in flight between the download and the disk.
    pub write_chunks: usize,
}

/// Why a job failed: a reason code for the status message and the detail.
#[derive(Debug)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What a worker needs; shared by all workers of a carrier.
pub struct Runner {
    store: Arc<dyn ObjectStore>,
    append: Recipient<Append>,
    commit: Recipient<Commit>,
    remove: Recipient<Remove>,
    egress: Recipient<Publish>,
    status: StatusSink,
    journal: Arc<Journal>,
    policy: Policy,
    system_id: String,
    /// The last job in line for each destination file (a key is a file some
    /// queued or running job will write).
    locks: locks::Lines,
}

/// What a [`Runner`] is built from: the carrier's store, the stages it hands
/// bytes and messages to, and its policy.
pub struct RunnerParts {
    pub store: Arc<dyn ObjectStore>,
    pub append: Recipient<Append>,
    pub commit: Recipient<Commit>,
    pub remove: Recipient<Remove>,
    pub egress: Recipient<Publish>,
    pub status: StatusSink,
    pub journal: Arc<Journal>,
    pub policy: Policy,
    pub system_id: String,
}

impl Runner {
    pub fn new(parts: RunnerParts) -> Self {
        let RunnerParts {
            store,
            append,
            commit,
            remove,
            egress,
            status,
            journal,
            policy,
            system_id,
        } = parts;
        Self {
            store,
            append,
            commit,
            remove,
            egress,
            status,
            journal,
            policy,
            system_id,
            locks: Default::default(),
        }
    }

    /// The journal the carrier records new jobs in.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Where the carrier reports a message before its job runs: queued, or
    /// rejected.
    pub fn status(&self) -> &StatusSink {
        &self.status
    }

    /// Runs the job in its turn, holding `slot`; the turn ends with it.
    pub async fn run(&self, mut rec: JobRecord, job: FirmwareJob, turn: Turn, mut slot: Slot) {
        let span = info_span!("job", msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path);
        async {
            if rec.state != JobState::Installed {
                // Counted until its INSTALLED or FAILED status: a job
                // resumed only to confirm has nothing left to run.
                self.status.metrics.job_started(&job.msg_id);
                match self.install(&mut rec, &job, &mut slot).await {
                    Ok(()) => {}
                    Err(f) => {
                        error!(reason = %f.reason, error = %f.detail, "firmware job failed; the previous image and pointer are unchanged and no confirm_receipt is sent");
                        // The only place a job drops its staged bytes: every
                        // failure ends here, and is reported once they are gone.
                        self.discard(&job).await;
                        self.status
                            .failed(&job.msg_id, &job.file_name, f.reason, &f.detail)
                            .await;
                        self.end(&rec).await;
                        return;
                    }
                }
            }
            if self.confirm(&job).await {
                self.end(&rec).await;
            } else {
                error!("the confirm_receipt is not in the outbox; the job stays in the journal and confirms at the next start");
            }
        }
        .instrument(span)
        .await;
        drop(turn);
    }

    async fn end(&self, rec: &JobRecord) {
        if let Err(e) = self.journal.finish(rec.seq).await {
            error!(error = %e, "cannot remove the finished job from the journal");
        }
    }

    /// True once the confirm_receipt is in the outbox (or none was asked
    /// for): from there egress delivers it whatever happens to the broker.
    async fn confirm(&self, job: &FirmwareJob) -> bool {
        if !job.confirm_receipt {
            info!("confirm_receipt not requested");
            return true;
        }
        let confirm = Publish {
            msg_id: job.msg_id.as_str().into(),
            message_type: "confirm_receipt".into(),
            content: serde_json::json!({
                "id": self.system_id,
                "file_name": job.file_name,
                "confirm_receipt": true,
                "time": time::now(),
            }),
            durable: true,
        };
        match self.egress.send(confirm).await {
            Ok(Ok(())) => {
                info!("confirm_receipt sent");
                true
            }
            Ok(Err(e)) => {
                error!(error = %e, "confirm_receipt not sent");
                false
            }
            Err(e) => {
                error!(error = %e, "confirm_receipt not sent: egress is not running");
                false
            }
        }
    }

    /// Steps 1 to 4 of the module doc; a failure leaves the staged bytes
    /// for [`Runner::run`] to discard.
    async fn install(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        slot: &mut Slot,
    ) -> Result<(), Failure> {
        let key = self.object_key(job).await?;
        if self.already_installed(job, &key).await? {
            info!("this image is already installed; not downloading it again");
            self.commit(job, false).await?;
            self.installed(rec).await;
            return Ok(());
        }
        let (staged, Object { meta, facts }) = self.download(rec, job, &key, slot).await?;
        self.status
            .send(&job.msg_id, &job.file_name, State::Downloaded, None, None);
        let digests = staged.hashes.finish();
        verify::verify(&job.expect, &meta, &facts, &digests)?;
        self.check_signature(job, &key).await?;
        self.status
            .send(&job.msg_id, &job.file_name, State::Verified, None, None);
        let disk_path = job.disk_path.full();
        // The index must not vouch for the old image while the new one is
        // being renamed over it.
        if let Err(e) = self
            .journal
            .forget_installed(std::slice::from_ref(&disk_path))
            .await
        {
            warn!(error = %e, "cannot update the index of installed images");
        }
        self.commit(job, true).await?;
        let Digests { sha256, md5, crc } = digests;
        info!(bytes = staged.written, sha256 = sha256.as_deref(), md5 = md5.as_deref(),
            crc = ?crc, disk_path = %disk_path.display(),
            config_path = %job.config_path.full().display(), "installed");
        let image = InstalledImage {
            file_name: job.file_name.clone(),
            cloud_path: job.cloud_path.clone(),
            bytes: staged.written,
            sha256,
            md5,
            crc,
            etag: meta.e_tag.clone(),
            seq: rec.seq,
        };
        // Two files, so the two writes and their fsyncs overlap.
        let (indexed, ()) = tokio::join!(
            self.journal.record_installed(disk_path, image),
            self.installed(rec)
        );
        if let Err(e) = indexed {
            warn!(error = %e, "cannot update the index of installed images");
        }
        self.prune(job).await;
        Ok(())
    }

    /// Journals the job as installed: from here a restart only confirms it.
    async fn installed(&self, rec: &mut JobRecord) {
        rec.state = JobState::Installed;
        if let Err(e) = self.journal.save(rec).await {
            error!(error = %e, "cannot update the job journal");
        }
    }

    /// The object's key, once no other job gives the image or pointer path
    /// the other role.
    async fn object_key(&self, job: &FirmwareJob) -> Result<ObjectPath, Failure> {
        let key = ObjectPath::parse(&job.cloud_path).map_err(|e| {
            Failure::new(
                Reason::InvalidMessage,
                format!("cloud_path is not a valid object key: {e}"),
            )
        })?;
        // Under the job's locks: every job that could give either path the
        // other role holds one of them, so the answer stands until commit.
        if let Some(conflict) = self
            .journal
            .role_conflict(&job.disk_path.full(), &job.config_path.full())
            .await
        {
            return Err(Failure::new(Reason::InvalidMessage, conflict));
        }
        Ok(key)
    }

    async fn commit(&self, job: &FirmwareJob, with_image: bool) -> Result<(), Failure> {
        let commit = Commit {
            image: with_image.then(|| job.disk_path.clone()),
            pointer: job.config_path.clone(),
            pointer_contents: job.file_name.clone(),
            span: tracing::Span::current(),
        };
        match self.commit.send(commit).await {
            Ok(Ok(())) => {
                let named = PointerRecord {
                    file_name: job.file_name.clone(),
                    disk_path: job.disk_path.full(),
                };
                if let Err(e) = self
                    .journal
                    .record_pointer(job.config_path.full(), named)
                    .await
                {
                    warn!(error = %e, "cannot update the index of installed images");
                }
                self.status
                    .terminal(&job.msg_id, &job.file_name, State::Installed, None)
                    .await;
                Ok(())
            }
            Ok(Err(e)) => Err(write_failure(e)),
            Err(e) => Err(writer_gone(e)),
        }
    }

    /// True when `disk_path` holds this very image, installed by us, still
    /// the same object in the bucket, and still the same bytes on disk.
    async fn already_installed(
        &self,
        job: &FirmwareJob,
        key: &ObjectPath,
    ) -> Result<bool, Failure> {
        let disk_path = job.disk_path.full();
        let Some(done) = self.journal.installed(&disk_path).await else {
            return Ok(false);
        };
        let claims_match = done.cloud_path == job.cloud_path
            && done.file_name == job.file_name
            && job.expect.size.is_none_or(|s| s == done.bytes)
            && agrees(job.expect.sha256.as_ref(), done.sha256.as_ref())
            && agrees(job.expect.md5.as_ref(), done.md5.as_ref());
        if !claims_match {
            return Ok(false);
        }
        if job.expect.sha256.is_none() && job.expect.md5.is_none() {
            // Without a checksum in the message, the bucket's ETag tells
            // whether the object changed since.
            let meta = match self.head(key).await {
                Ok(object) => object.meta,
                Err(miss) if miss.is_final() => return Err(miss.failure(&job.cloud_path)),
                // Cannot tell now: the download asks again, with retries.
                Err(_) => return Ok(false),
            };
            if meta.e_tag.is_none() || meta.e_tag != done.etag {
                return Ok(false);
            }
        }
        self.still_intact(job, &done).await
    }

    /// Hashes the installed image again before it is confirmed again: SD
    /// cards rot, and a same-size corruption passes any size check. Always,
    /// with or without a checksum in the message, against every digest the
    /// index recorded and the message's: one sequential read, cheap beside a
    /// download, and a confirm_receipt must mean the right bytes are there.
    /// A mismatch forgets the image, so it is downloaded again.
    async fn still_intact(
        &self,
        job: &FirmwareJob,
        done: &InstalledImage,
    ) -> Result<bool, Failure> {
        let image = job.disk_path.clone();
        let mut checks = done.checks();
        checks.sha256 |= job.expect.sha256.is_some();
        checks.md5 |= job.expect.md5.is_some();
        let on_disk = tokio::task::spawn_blocking(move || hash_installed(&image, checks))
            .await
            .map_err(|e| Failure::new(Reason::Internal, e.to_string()))?;
        let (bytes, digests) = match on_disk {
            Ok(found) => found,
            Err(e) => {
                info!(error = %e, "the installed image cannot be read; downloading it again");
                return Ok(false);
            }
        };
        let intact = bytes == done.bytes
            && done.matches(&digests)
            && agrees(job.expect.sha256.as_ref(), digests.sha256.as_ref())
            && agrees(job.expect.md5.as_ref(), digests.md5.as_ref());
        if !intact {
            warn!(bytes, sha256 = digests.sha256.as_deref(), md5 = digests.md5.as_deref(),
                crc = ?digests.crc, expected_bytes = done.bytes,
                expected_sha256 = job.expect.sha256.as_deref().or(done.sha256.as_deref()),
                expected_md5 = job.expect.md5.as_deref().or(done.md5.as_deref()),
                expected_crc = ?done.crc,
                "the installed image no longer matches its checksum (corrupted on disk?); downloading it again");
            let disk_path = job.disk_path.full();
            if let Err(e) = self
                .journal
                .forget_installed(std::slice::from_ref(&disk_path))
                .await
            {
                warn!(error = %e, "cannot update the index of installed images");
            }
        }
        Ok(intact)
    }

    async fn discard(&self, job: &FirmwareJob) {
        let _ = self
            .remove
            .send(Remove(
                Removal::Staging(job.disk_path.clone()),
                tracing::Span::current(),
            ))
            .await;
    }
}

/// A digest the message asks for against one known: true when either is
/// missing (nothing to disagree about) or they are equal.
fn agrees(wanted: Option<&String>, known: Option<&String>) -> bool {
    wanted.zip(known).is_none_or(|(w, k)| w == k)
}

fn writer_gone(e: actix::MailboxError) -> Failure {
    Failure::new(
        Reason::Internal,
        format!("the filesystem writer is not running: {e}"),
    )
}

fn write_failure(e: WriteError) -> Failure {
    match e {
        WriteError::NoSpace { .. } => Failure::new(Reason::NoSpace, e.to_string()),
        WriteError::TooLong { .. } => Failure::new(Reason::SizeMismatch, e.to_string()),
        other => Failure::new(Reason::Io, other.to_string()),
    }
}
