//! One firmware job, start to end: `handle_new_firmware_message` in steps.
//!
//! 1. If the same verified image is already installed at `disk_path`, only
//!    the pointer is (re)written: a repeated message downloads nothing.
//! 2. Otherwise the object is staged beside `disk_path`, resuming with a
//!    ranged GET after a cut, with backoff between attempts, and starting
//!    over if the object changed meanwhile. Every HEAD and GET is an attempt:
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Recipient;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::Shared;
use futures::stream::{self, BoxStream};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{Instrument, error, info, info_span, warn};

use crate::firmware::{Expected, FirmwareJob};
use crate::journal::{InstalledImage, JobRecord, JobState, Journal, PointerRecord};
use crate::messages::{ByteStream, Publish, TransferError};
use crate::s3_response::{ObjectFacts, RangeAnswer, crc_base64, crc_header, range_answer};
use crate::signature::{Keyring, parse_signature};
use crate::status::{Reason, State, StatusSink};
use crate::time;
use crate::writer::{
    Append, Appended, Commit, Crc, Digests, Hashes, Remove, WriteError, free_space, hash_installed,
    open_staged, staging_path,
};

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
    pub store: Arc<dyn ObjectStore>,
    pub append: Recipient<Append>,
    pub commit: Recipient<Commit>,
    pub remove: Recipient<Remove>,
    pub egress: Recipient<Publish>,
    pub status: StatusSink,
    pub journal: Arc<Journal>,
    pub policy: Policy,
    pub system_id: String,
    /// The last job in line for each destination file (a key is a file some
    /// queued or running job will write).
    pub locks: Arc<Mutex<HashMap<PathBuf, Place>>>,
}

/// The last job in line for a file, and what resolves when it has ended.
#[derive(Clone)]
pub struct Place {
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
    lines: Arc<Mutex<HashMap<PathBuf, Place>>>,
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
    async fn pause(&mut self, wait: Duration) {
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

    /// Runs the job in its turn, holding `slot`; the turn ends with it.
    pub async fn run(&self, mut rec: JobRecord, job: FirmwareJob, turn: Turn, mut slot: Slot) {
        let span = info_span!("job", msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path);
        async {
            if rec.state != JobState::Installed {
                match self.install(&mut rec, &job, &mut slot).await {
                    Ok(()) => {
                        rec.state = JobState::Installed;
                        if let Err(e) = self.journal.save(&rec).await {
                            error!(error = %e, "cannot update the job journal");
                        }
                    }
                    Err(f) => {
                        error!(reason = %f.reason, error = %f.detail, "firmware job failed; the previous image and pointer are unchanged and no confirm_receipt is sent");
                        self.status
                            .failed(&job.msg_id, &job.file_name, f.reason, &f.detail)
                            .await;
                        self.discard(&job).await;
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

    async fn install(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        slot: &mut Slot,
    ) -> Result<(), Failure> {
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
        if self.already_installed(job, &key).await? {
            info!("this image is already installed; not downloading it again");
            self.commit(job, false).await?;
            return Ok(());
        }
        let (staged, Object { meta, facts }) = self.download(rec, job, &key, slot).await?;
        self.status
            .send(&job.msg_id, &job.file_name, State::Downloaded, None, None);
        let digests = staged.hashes.finish();
        if let Err(f) = verify(&job.expect, &meta, &facts, &digests) {
            self.discard(job).await;
            return Err(f);
        }
        if let Err(f) = self.check_signature(job, &key).await {
            self.discard(job).await;
            return Err(f);
        }
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
        let Digests { sha256, md5, .. } = digests;
        info!(bytes = staged.written, %sha256, disk_path = %disk_path.display(), config_path = %job.config_path.full().display(), "installed");
        let image = InstalledImage {
            file_name: job.file_name.clone(),
            cloud_path: job.cloud_path.clone(),
            bytes: staged.written,
            sha256,
            md5,
            etag: meta.e_tag.clone(),
            seq: rec.seq,
        };
        if let Err(e) = self.journal.record_installed(disk_path, image).await {
            warn!(error = %e, "cannot update the index of installed images");
        }
        self.prune(job).await;
        Ok(())
    }

    async fn commit(&self, job: &FirmwareJob, with_image: bool) -> Result<(), Failure> {
        let commit = Commit {
            image: with_image.then(|| job.disk_path.clone()),
            pointer: job.config_path.clone(),
            pointer_contents: job.file_name.clone(),
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
            && job.expect.sha256.as_ref().is_none_or(|h| *h == done.sha256)
            && job.expect.md5.as_ref().is_none_or(|h| *h == done.md5);
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
    /// with or without a checksum in the message (then against the index):
    /// one sequential read, cheap beside a download, and a confirm_receipt
    /// must mean the right bytes are there. A mismatch forgets the image, so
    /// it is downloaded again.
    async fn still_intact(
        &self,
        job: &FirmwareJob,
        done: &InstalledImage,
    ) -> Result<bool, Failure> {
        let image = job.disk_path.clone();
        let on_disk = tokio::task::spawn_blocking(move || hash_installed(&image))
            .await
            .map_err(|e| Failure::new(Reason::Internal, e.to_string()))?;
        let (bytes, sha256, md5) = match on_disk {
            Ok(found) => found,
            Err(e) => {
                info!(error = %e, "the installed image cannot be read; downloading it again");
                return Ok(false);
            }
        };
        let want_sha256 = job.expect.sha256.as_ref().unwrap_or(&done.sha256);
        let intact = bytes == done.bytes
            && sha256 == *want_sha256
            && job.expect.md5.as_ref().is_none_or(|h| *h == md5);
        if !intact {
            warn!(bytes, %sha256, expected_bytes = done.bytes, expected_sha256 = %want_sha256,
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

    /// Stages the whole object, retrying and resuming as the policy allows.
    /// Every try (a HEAD when needed, a GET and its body) counts against
    /// `jobs.attempts`; between tries the job waits out its backoff without
    /// its slot.
    async fn download(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        key: &ObjectPath,
        slot: &mut Slot,
    ) -> Result<(Appended, Object), Failure> {
        let p = &self.policy;
        let mut progress = Progress::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let step = match self.attempt(rec, job, key, &mut progress, attempt).await {
                Ok(done) => return Ok(done),
                Err(step) => step,
            };
            let (cause, error) = match step {
                Step::Fail(f) => return Err(f),
                Step::Again(_) if attempt < p.attempts => continue,
                Step::Again(why) => (Cause::Unreachable, why),
                Step::Retry(cause, error) => (cause, error),
            };
            if attempt >= p.attempts {
                return Err(Failure::new(
                    cause.reason(),
                    format!("gave up after {attempt} attempts; last: {error}"),
                ));
            }
            let wait = backoff(p.backoff_min, p.backoff_max, attempt);
            warn!(attempt, of = p.attempts, retry_in = ?wait, error = %error, "download attempt failed");
            slot.pause(wait).await;
        }
    }

    /// One try: a HEAD when the object's version is not known yet, then a GET
    /// from the staged bytes on, streamed to the writer.
    async fn attempt(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        key: &ObjectPath,
        pr: &mut Progress,
        attempt: u32,
    ) -> Result<(Appended, Object), Step> {
        let mut object = match pr.object.clone() {
            Some(object) => object,
            None => {
                let object = self.head(key).await.map_err(|m| m.step(&job.cloud_path))?;
                self.adopt(rec, job, pr, &object)
                    .await
                    .map_err(Step::Fail)?;
                pr.object = Some(object.clone());
                object
            }
        };
        let size = object.meta.size;
        let from = start_of(job, pr, size).await;
        if from > 0 {
            info!(offset = from, attempt, "resuming with a ranged GET");
        }
        if from == size {
            // Every byte is staged already (cut before the commit): only the
            // digests are missing.
            let crc = crc_to_compute(&job.expect, &object.facts);
            let done = self.append(job, pr, from, size, crc, stream::empty().boxed());
            return match done.await {
                Ok(done) => Ok((done, object)),
                Err(Step::Retry(..)) if from > 0 => {
                    // The staged bytes did not add up: start over (a
                    // zero-length object never comes back here).
                    pr.offset = Some(0);
                    pr.hashes = None;
                    pr.short = false;
                    Err(Step::Again("the staged bytes did not add up".into()))
                }
                Err(Step::Retry(..)) => Err(Step::Fail(Failure::new(
                    Reason::Io,
                    "the staged image does not match its size",
                ))),
                Err(other) => Err(other),
            };
        }
        let got = self.get_from(job, key, pr, &object.meta, from).await?;
        let facts = ObjectFacts::of(&got);
        object.facts.merge(facts.clone());
        if let Some(known) = &mut pr.object {
            known.facts.merge(facts);
        }
        // Decided before the body streams: a GET may add a checksum its HEAD
        // did not show.
        let crc = crc_to_compute(&job.expect, &object.facts);
        if from == 0 {
            self.status.send(
                &job.msg_id,
                &job.file_name,
                State::Downloading,
                Some(0),
                None,
            );
            info!(bytes = size, "downloading");
        }
        let body = meter(got.into_stream(), self.meter(job, from, size));
        let done = self.append(job, pr, from, size, crc, body).await?;
        Ok((done, object))
    }

    /// Takes `object` as the version to stage: checks its size against the
    /// limits and the disk, and whether the staged bytes belong to it.
    async fn adopt(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        pr: &mut Progress,
        object: &Object,
    ) -> Result<(), Failure> {
        let p = &self.policy;
        let meta = &object.meta;
        if meta.size > p.max_image_bytes {
            return Err(Failure::new(
                Reason::TooLarge,
                format!(
                    "the object has {} bytes, more than firmware.max_image_bytes = {}",
                    meta.size, p.max_image_bytes
                ),
            ));
        }
        if let Some(expected) = job.expect.size
            && expected != meta.size
        {
            return Err(Failure::new(
                Reason::SizeMismatch,
                format!(
                    "the message says {expected} bytes, the object has {}",
                    meta.size
                ),
            ));
        }
        // A resumed job continues only if the object is the one it started.
        let same =
            rec.state == JobState::Downloading && rec.etag.is_some() && rec.etag == meta.e_tag;
        if !same {
            if rec.state == JobState::Downloading {
                info!("the object changed since the download started; starting over");
            }
            pr.offset = Some(0);
            pr.hashes = None;
            pr.short = false;
        }
        let dir = job
            .disk_path
            .full()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        if let Ok(free) = free_space_of(&dir).await {
            let needed = meta.size.saturating_add(p.reserve_bytes);
            if free < needed {
                return Err(Failure::new(
                    Reason::NoSpace,
                    format!(
                        "{free} bytes free in {}, {needed} needed (image + jobs.reserve_bytes)",
                        dir.display()
                    ),
                ));
            }
        }
        rec.state = JobState::Downloading;
        rec.etag = meta.e_tag.clone();
        self.journal
            .save(rec)
            .await
            .map_err(|e| Failure::new(Reason::Io, format!("cannot write the job journal: {e}")))
    }

    /// HEAD, within `header_timeout`.
    async fn head(&self, key: &ObjectPath) -> Result<Object, Miss> {
        let wait = self.policy.header_timeout;
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match tokio::time::timeout(wait, self.store.get_opts(key, opts)).await {
            Err(_) => Err(Miss::NoAnswer("HEAD", wait)),
            Ok(Err(e)) => Err(Miss::Store(e)),
            Ok(Ok(got)) => Ok(Object {
                facts: ObjectFacts::of(&got),
                meta: got.meta,
            }),
        }
    }

    /// A GET of this version from `from` on, within `header_timeout`.
    async fn get_from(
        &self,
        job: &FirmwareJob,
        key: &ObjectPath,
        pr: &mut Progress,
        meta: &ObjectMeta,
        from: u64,
    ) -> Result<GetResult, Step> {
        let wait = self.policy.header_timeout;
        let opts = GetOptions {
            range: (from > 0).then_some(GetRange::Offset(from)),
            if_match: meta.e_tag.clone(),
            ..GetOptions::default()
        };
        let e = match tokio::time::timeout(wait, self.store.get_opts(key, opts)).await {
            Err(_) => return Err(Miss::NoAnswer("GET", wait).step(&job.cloud_path)),
            Ok(Ok(got)) if got.meta.e_tag != meta.e_tag => return Err(changed(pr)),
            Ok(Ok(got)) if got.meta.size != meta.size => {
                // Same version, another size: HEAD again, and count it as
                // the object not adding up.
                pr.object = None;
                pr.short = true;
                return Err(Step::Retry(
                    Cause::Size,
                    format!(
                        "the GET says the object has {} bytes, its HEAD {}",
                        got.meta.size, meta.size
                    ),
                ));
            }
            Ok(Ok(got)) => return Ok(got),
            Ok(Err(e)) => e,
        };
        match (&e, range_answer(&e)) {
            (object_store::Error::Precondition { .. }, _) => Err(changed(pr)),
            (_, Some(RangeAnswer::Ignored)) => {
                warn!("the store ignored the Range header; fetching the object from byte 0");
                pr.no_ranges = true;
                pr.offset = Some(0);
                pr.hashes = None;
                Err(Step::Again(e.to_string()))
            }
            (_, Some(RangeAnswer::NotSatisfiable)) => {
                // A replaced, shorter object, or one shorter than its HEAD
                // says: ask the bucket which.
                if let Ok(now) = self.head(key).await
                    && now.meta.e_tag != meta.e_tag
                {
                    return Err(changed(pr));
                }
                pr.short = true;
                Err(Step::Retry(
                    Cause::Size,
                    format!(
                        "the object ends before byte {from}, though its HEAD says {} bytes (416)",
                        meta.size
                    ),
                ))
            }
            _ => Err(Miss::Store(e).step(&job.cloud_path)),
        }
    }

    /// Streams `body` into the staging file after its first `from` bytes,
    /// computing `crc` besides the SHA-256 and MD5.
    async fn append(
        &self,
        job: &FirmwareJob,
        pr: &mut Progress,
        from: u64,
        size: u64,
        crc: Option<Crc>,
        body: ByteStream,
    ) -> Result<Appended, Step> {
        let append = Append {
            image: job.disk_path.clone(),
            offset: from,
            hashes: pr.hashes.take(),
            crc,
            body,
            total: size,
        };
        match self.append.send(append).await {
            Ok(Ok(done)) if done.written == size => Ok(done),
            Ok(Ok(short)) => {
                // The body ended cleanly before the object's size.
                let got = short.written;
                pr.offset = Some(got);
                pr.hashes = Some(short.hashes);
                pr.short = true;
                Err(Step::Retry(
                    Cause::Size,
                    format!("the transfer ended after {got} of {size} bytes"),
                ))
            }
            Ok(Err(WriteError::Transfer { progress, source })) => {
                pr.offset = Some(progress.written);
                pr.hashes = Some(progress.hashes);
                Err(match source {
                    TransferError::Idle(d) => {
                        Step::Retry(Cause::Timeout, format!("timeout: no data for {d:?}"))
                    }
                    other => {
                        // object_store's own retry of a cut body asks for a
                        // range, and may get one of these answers.
                        if let TransferError::Store(e) = &other {
                            match range_answer(e) {
                                Some(RangeAnswer::Ignored) => pr.no_ranges = true,
                                Some(RangeAnswer::NotSatisfiable) => pr.short = true,
                                None => {}
                            }
                        }
                        // A cut where the object is known to end early is
                        // that again, not the network.
                        let cause = if pr.short {
                            Cause::Size
                        } else {
                            Cause::Unreachable
                        };
                        Step::Retry(cause, other.to_string())
                    }
                })
            }
            Ok(Err(e)) => {
                self.discard(job).await;
                Err(Step::Fail(write_failure(e)))
            }
            Err(e) => Err(Step::Fail(writer_gone(e))),
        }
    }

    fn meter(&self, job: &FirmwareJob, from: u64, size: u64) -> Meter {
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

    /// With `require_signature`, the staged image must carry a signature
    /// that verifies; without it, a signature that comes along is still
    /// checked when keys are configured.
    async fn check_signature(&self, job: &FirmwareJob, key: &ObjectPath) -> Result<(), Failure> {
        let p = &self.policy;
        let invalid = |detail: String| Failure::new(Reason::SignatureInvalid, detail);
        let raw: Option<Vec<u8>> = match &job.signature {
            Some(s) => Some(s.as_bytes().to_vec()),
            None if p.require_signature => self.fetch_sig_object(key).await?,
            None => None,
        };
        let Some(raw) = raw else {
            return if p.require_signature {
                Err(invalid(format!(
                    "no signature: the message has no `signature` field and there is no {}.sig object",
                    job.cloud_path
                )))
            } else {
                Ok(())
            };
        };
        if p.keyring.is_empty() {
            return Ok(());
        }
        let signature = parse_signature(&raw).map_err(|e| invalid(e.to_string()))?;
        let keyring = p.keyring.clone();
        let image = job.disk_path.clone();
        tokio::task::spawn_blocking(move || {
            // Through the folder handle, never following a link: the bytes
            // checked are the staged ones.
            let staged = open_staged(&image).map_err(|e| {
                Failure::new(
                    Reason::Io,
                    format!("cannot read the staged image to check its signature: {e}"),
                )
            })?;
            keyring
                .verify_open(&staged, &signature)
                .map_err(|e| invalid(e.to_string()))
        })
        .await
        .map_err(|e| Failure::new(Reason::Internal, e.to_string()))??;
        info!("signature verified");
        Ok(())
    }

    async fn fetch_sig_object(&self, key: &ObjectPath) -> Result<Option<Vec<u8>>, Failure> {
        let sig_key = ObjectPath::from(format!("{key}.sig"));
        let (wait, idle) = (self.policy.header_timeout, self.policy.idle_timeout);
        let got = match tokio::time::timeout(wait, self.store.get(&sig_key)).await {
            Err(_) => return Err(Miss::NoAnswer("GET", wait).failure(sig_key.as_ref())),
            Ok(Ok(got)) => got,
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => return Err(fetch_failure(sig_key.as_ref(), e)),
        };
        if got.meta.size > 4096 {
            return Err(Failure::new(
                Reason::SignatureInvalid,
                format!("{sig_key} is {} bytes; a signature is 64", got.meta.size),
            ));
        }
        let bytes = match tokio::time::timeout(idle, got.bytes()).await {
            Err(_) => {
                let detail = format!("timeout: no data for {idle:?} reading {sig_key}");
                return Err(Failure::new(Reason::Timeout, detail));
            }
            Ok(read) => read.map_err(|e| fetch_failure(sig_key.as_ref(), e))?,
        };
        Ok(Some(bytes.to_vec()))
    }

    async fn discard(&self, job: &FirmwareJob) {
        let _ = self
            .remove
            .send(Remove::Staging(job.disk_path.clone()))
            .await;
    }

    /// Keeps the newest `keep_images` images we installed in this folder;
    /// the one just installed (which the pointer names) always stays, and so
    /// does any image a pointer gator-ota wrote names (pointers of other
    /// jobs may share the folder) and any image a queued or running job
    /// holds.
    async fn prune(&self, job: &FirmwareJob) {
        let disk_path = job.disk_path.full();
        let Some(dir) = disk_path.parent() else {
            return;
        };
        let installed = self.journal.installed_in(dir).await;
        let named = self.journal.named_by_pointers().await;
        // An image another job is about to use or re-point to is not old.
        let busy: Vec<PathBuf> = {
            let locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.keys().cloned().collect()
        };
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
        let _ = self.remove.send(Remove::Images(old.clone())).await;
        if let Err(e) = self.journal.forget_installed(&old).await {
            warn!(error = %e, "cannot update the index of installed images");
        }
    }
}

/// The object as the bucket described it: its metadata, and what the
/// response headers add.
#[derive(Clone)]
struct Object {
    meta: ObjectMeta,
    facts: ObjectFacts,
}

/// What a download keeps from one try to the next.
#[derive(Default)]
struct Progress {
    /// The version being staged, from its HEAD; `None`: HEAD next.
    object: Option<Object>,
    /// Where the next GET starts; `None`: after the staged bytes.
    offset: Option<u64>,
    /// Digests of the bytes before `offset`, when still at hand.
    hashes: Option<Hashes>,
    /// This version has sent fewer bytes than its size at least once.
    short: bool,
    /// The store ignored a Range header: later tries start at byte 0.
    no_ranges: bool,
}

/// How a try ended, short of the whole image.
enum Step {
    /// The store failed: try again after the backoff.
    Retry(Cause, String),
    /// Nothing failed, but the try must be made again at once: the object
    /// changed, or it must be fetched from its start.
    Again(String),
    /// No retry can help.
    Fail(Failure),
}

/// What a failed try says about the store, for the reason when none is left.
#[derive(Clone, Copy)]
enum Cause {
    Timeout,
    /// The object's bytes do not add up to its size.
    Size,
    Unreachable,
}

impl Cause {
    fn reason(self) -> Reason {
        match self {
            Cause::Timeout => Reason::Timeout,
            Cause::Size => Reason::SizeMismatch,
            Cause::Unreachable => Reason::Unreachable,
        }
    }
}

/// A HEAD or GET that got no usable answer.
enum Miss {
    Store(object_store::Error),
    /// No response headers within `header_timeout`.
    NoAnswer(&'static str, Duration),
}

impl Miss {
    /// No retry can fix these: the object is missing or the credentials are
    /// refused. Everything else (5xx, throttling, resets, timeouts) can pass.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Miss::Store(
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            )
        )
    }

    fn failure(self, cloud_path: &str) -> Failure {
        match self {
            Miss::Store(e) => fetch_failure(cloud_path, e),
            Miss::NoAnswer(what, wait) => Failure::new(
                Reason::Timeout,
                format!("timeout: the {what} got no answer within {wait:?}"),
            ),
        }
    }

    fn step(self, cloud_path: &str) -> Step {
        let cause = match self {
            _ if self.is_final() => return Step::Fail(self.failure(cloud_path)),
            Miss::NoAnswer(..) => Cause::Timeout,
            Miss::Store(_) => Cause::Unreachable,
        };
        Step::Retry(cause, self.failure(cloud_path).detail)
    }
}

/// The object is not the version being staged: HEAD again, at once.
fn changed(pr: &mut Progress) -> Step {
    warn!("the object changed during the download; starting over");
    pr.object = None;
    Step::Again("the object kept changing".into())
}

/// Where the next GET starts: after the staged bytes, or at byte 0.
async fn start_of(job: &FirmwareJob, pr: &mut Progress, size: u64) -> u64 {
    let staged = match pr.offset {
        Some(o) => o,
        None => tokio::fs::metadata(staging_path(&job.disk_path))
            .await
            .map(|m| m.len().min(size))
            .unwrap_or(0),
    };
    let from = if pr.no_ranges && staged < size {
        0
    } else {
        staged
    };
    if from == 0 {
        pr.hashes = None;
    }
    pr.offset = Some(from);
    from
}

/// Whether the message or the object has a SHA-256 or MD5 the staged bytes
/// are checked against: then nothing less trusted is consulted.
fn digest_vouches(expect: &Expected, facts: &ObjectFacts) -> bool {
    expect.sha256.is_some() || expect.md5.is_some() || facts.sha256.is_some()
}

/// The object's own CRC a download computes while it stages the bytes:
/// only when no SHA-256 or MD5 vouches for them, so an ordinary download
/// pays nothing for it. [`verify`] checks the same one.
fn crc_to_compute(expect: &Expected, facts: &ObjectFacts) -> Option<Crc> {
    if digest_vouches(expect, facts) {
        return None;
    }
    facts.crc().map(|(crc, _)| crc)
}

/// Size is checked by the writer; here the content, by the most trusted
/// checksum at hand: the message's sha256/md5 and the object's own SHA-256;
/// without either the object's CRC-64/NVME or CRC-32C; and without those
/// the ETag when it can be an MD5 (see [`ObjectFacts::etag_may_be_md5`]).
fn verify(
    expect: &Expected,
    meta: &ObjectMeta,
    facts: &ObjectFacts,
    digests: &Digests,
) -> Result<(), Failure> {
    let (sha256, md5) = (digests.sha256.as_str(), digests.md5.as_str());
    if let Some(want) = &expect.sha256
        && want != sha256
    {
        return Err(mismatch("sha256", want, sha256));
    }
    if let Some(want) = &expect.md5
        && want != md5
    {
        return Err(mismatch("md5", want, md5));
    }
    if let Some(want) = &facts.sha256
        && want != sha256
    {
        let want = format!("{want} (the object's x-amz-checksum-sha256)");
        return Err(mismatch("sha256", &want, sha256));
    }
    if digest_vouches(expect, facts) {
        return Ok(());
    }
    if let Some((crc, want)) = facts.crc() {
        return check_crc(crc, want, digests.crc);
    }
    match plain_md5_etag(meta.e_tag.as_deref()) {
        Some(etag) if facts.etag_may_be_md5() => {
            if etag != md5 {
                return Err(mismatch("md5", &format!("{etag} (the object's ETag)"), md5));
            }
        }
        etag => info!(
            etag_is_md5 = false,
            encryption = facts.encryption.as_deref().unwrap_or("none"),
            unverifiable = ?facts.unverifiable,
            multipart = etag.is_none(),
            "no checksum to check the image against: the message has none, and the object's ETag is not an MD5; only the size was checked"
        ),
    }
    Ok(())
}

fn mismatch(what: &str, want: &str, got: &str) -> Failure {
    Failure::new(
        Reason::ChecksumMismatch,
        format!("{what} is {got}, expected {want}"),
    )
}

/// The staged bytes' `crc` against the object's own, both shown as S3 shows
/// them (base64).
fn check_crc(crc: Crc, want: u64, got: Option<(Crc, u64)>) -> Result<(), Failure> {
    let header = crc_header(crc);
    let Some((_, got)) = got.filter(|(computed, _)| *computed == crc) else {
        // The download computes the CRC `verify` asks for (`crc_to_compute`):
        // this is a bug, and never passes as verified.
        return Err(Failure::new(
            Reason::Internal,
            format!("the object has {header}, but the download did not compute its {crc}"),
        ));
    };
    if got != want {
        let want = format!("{} (the object's {header})", crc_base64(crc, want));
        return Err(mismatch(&crc.to_string(), &want, &crc_base64(crc, got)));
    }
    info!(
        checksum = header,
        "the image matches the object's own checksum"
    );
    Ok(())
}

/// An ETag that is an MD5 of the content: 32 hex digits, not a multipart
/// `<md5>-<parts>` and not a weak tag.
fn plain_md5_etag(etag: Option<&str>) -> Option<String> {
    let tag = etag?.trim_matches('"');
    (tag.len() == 32 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tag.to_ascii_lowercase())
}

fn fetch_failure(cloud_path: &str, e: object_store::Error) -> Failure {
    match e {
        object_store::Error::NotFound { .. } => Failure::new(
            Reason::NotFound,
            format!("object {cloud_path:?} does not exist in the bucket"),
        ),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Failure::new(
            Reason::Auth,
            format!("the bucket refused the credentials: {e}"),
        ),
        other => Failure::new(
            Reason::Unreachable,
            format!("cannot fetch the object: {other}"),
        ),
    }
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

async fn free_space_of(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut probe = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // The folder may not exist yet: ask for its nearest existing ancestor.
        while !probe.exists() && probe.pop() {}
        free_space(&probe)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Exponential backoff with jitter in [50 %, 100 %] of the step, so many
/// gateways cut off together do not come back together.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let step = min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    step.mul_f64(0.5 + fastrand::f64() * 0.5)
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
struct Meter {
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
fn meter(body: BoxStream<'static, object_store::Result<bytes::Bytes>>, m: Meter) -> ByteStream {
    stream::unfold(Some((body, m)), |state| async move {
        let (mut body, mut m) = state?;
        match tokio::time::timeout(m.idle, body.next()).await {
            Err(_) => Some((Err(TransferError::Idle(m.idle)), None)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(TransferError::Store(e)), None)),
            Ok(Some(Ok(bytes))) => {
                m.sent += bytes.len() as u64;
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
    fn etags_that_are_md5s() {
        assert_eq!(
            plain_md5_etag(Some("\"5EB63BBBE01EEED093CB22BB8F5ACDC3\"")).as_deref(),
            Some("5eb63bbbe01eeed093cb22bb8f5acdc3")
        );
        assert_eq!(
            plain_md5_etag(Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-4\"")),
            None
        );
        assert_eq!(plain_md5_etag(Some("W/\"abc\"")), None);
        assert_eq!(plain_md5_etag(None), None);
    }

    const CRC64: u64 = 0xAE8B_1486_0A79_9888;

    fn meta(e_tag: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            location: ObjectPath::from("fw/a.bin"),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size: 9,
            e_tag: e_tag.map(str::to_string),
            version: None,
        }
    }

    fn digests(crc: Option<(Crc, u64)>) -> Digests {
        Digests {
            sha256: "5a".repeat(32),
            md5: "5eb63bbbe01eeed093cb22bb8f5acdc3".into(),
            crc,
        }
    }

    fn crc64(value: u64) -> ObjectFacts {
        ObjectFacts {
            crc64nvme: Some(value),
            crc32c: Some(1),
            ..ObjectFacts::default()
        }
    }

    #[test]
    fn a_crc_is_computed_only_when_no_digest_vouches_for_the_bytes() {
        let none = Expected::default();
        assert_eq!(crc_to_compute(&none, &crc64(CRC64)), Some(Crc::Crc64Nvme));
        let only_crc32c = ObjectFacts {
            crc32c: Some(1),
            ..ObjectFacts::default()
        };
        assert_eq!(crc_to_compute(&none, &only_crc32c), Some(Crc::Crc32c));
        assert_eq!(crc_to_compute(&none, &ObjectFacts::default()), None);
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        assert_eq!(crc_to_compute(&sha, &crc64(CRC64)), None);
        let md5 = Expected {
            md5: Some("5eb63bbbe01eeed093cb22bb8f5acdc3".into()),
            ..Expected::default()
        };
        assert_eq!(crc_to_compute(&md5, &crc64(CRC64)), None);
        let s3_sha = ObjectFacts {
            sha256: Some("5a".repeat(32)),
            ..crc64(CRC64)
        };
        assert_eq!(crc_to_compute(&none, &s3_sha), None);
    }

    #[test]
    fn the_objects_crc_is_checked_and_a_mismatch_names_the_header() {
        let none = Expected::default();
        let right = digests(Some((Crc::Crc64Nvme, CRC64)));
        // The CRC decides: a plain-MD5 ETag that does not match is not consulted.
        let etag = meta(Some("\"00000000000000000000000000000000\""));
        assert!(verify(&none, &etag, &crc64(CRC64), &right).is_ok());
        let wrong = verify(&none, &etag, &crc64(CRC64 ^ 1), &right).unwrap_err();
        assert_eq!(wrong.reason, Reason::ChecksumMismatch);
        assert_eq!(
            wrong.detail,
            "crc64nvme is rosUhgp5mIg=, expected rosUhgp5mIk= (the object's x-amz-checksum-crc64nvme)"
        );
        let crc32c = ObjectFacts {
            crc32c: Some(0xE306_9283),
            ..ObjectFacts::default()
        };
        let got = digests(Some((Crc::Crc32c, 0)));
        let wrong = verify(&none, &meta(None), &crc32c, &got).unwrap_err();
        assert_eq!(
            wrong.detail,
            "crc32c is AAAAAA==, expected 4waSgw== (the object's x-amz-checksum-crc32c)"
        );
    }

    #[test]
    fn a_crc_not_computed_never_passes() {
        let f = verify(
            &Expected::default(),
            &meta(None),
            &crc64(CRC64),
            &digests(Some((Crc::Crc32c, 1))),
        )
        .unwrap_err();
        assert_eq!(f.reason, Reason::Internal, "{}", f.detail);
    }

    #[test]
    fn a_sha256_outranks_the_crc() {
        let sha = Expected {
            sha256: Some("5a".repeat(32)),
            ..Expected::default()
        };
        // No CRC computed, and the object's (wrong) one is not consulted.
        assert!(verify(&sha, &meta(None), &crc64(1), &digests(None)).is_ok());
        let s3_sha = ObjectFacts {
            sha256: Some("5a".repeat(32)),
            ..crc64(1)
        };
        let none = Expected::default();
        assert!(verify(&none, &meta(None), &s3_sha, &digests(None)).is_ok());
        let bad_sha = ObjectFacts {
            sha256: Some("00".repeat(32)),
            ..crc64(CRC64)
        };
        let right_crc = digests(Some((Crc::Crc64Nvme, CRC64)));
        let f = verify(&none, &meta(None), &bad_sha, &right_crc).unwrap_err();
        assert!(f.detail.contains("x-amz-checksum-sha256"), "{}", f.detail);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        for attempt in 1..20 {
            let d = backoff(min, max, attempt);
            let step = min.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn progress_steps() {
        assert_eq!(next_step(0, 100, 10), 10);
        assert_eq!(next_step(15, 100, 10), 20);
        assert_eq!(next_step(99, 100, 10), 100);
    }
}
