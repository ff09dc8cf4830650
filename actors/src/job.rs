//! One firmware job, start to end: `handle_new_firmware_message` in steps.
//!
//! 1. If the same verified image is already installed at `disk_path`, only
//!    the pointer is (re)written: a repeated message downloads nothing.
//! 2. Otherwise the object is staged beside `disk_path`, resuming with a
//!    ranged GET after a cut, with backoff between attempts, and starting
//!    over if the object changed meanwhile.
//! 3. The staged bytes are verified: size, then the message's sha256/md5, or
//!    the object's ETag when it is a plain MD5.
//! 4. Image, then pointer, are committed; old images are pruned.
//! 5. The journal moves to `installed`, the confirm_receipt goes out, and the
//!    job is forgotten.
//!
//! Jobs for the same `disk_path` hold a lock for their whole run, so they
//! never write the same files at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Recipient;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use tracing::{Instrument, error, info, info_span, warn};

use crate::firmware::FirmwareJob;
use crate::journal::{InstalledImage, JobRecord, JobState, Journal, PointerRecord};
use crate::messages::{ByteStream, Publish, TransferError};
use crate::signature::{Keyring, parse_signature};
use crate::status::{Reason, State, StatusSink};
use crate::time;
use crate::writer::{
    Append, Appended, Commit, Hashes, Remove, WriteError, free_space, hash_installed, open_staged,
    staging_path,
};

/// How jobs run; from `[jobs]` and the carrier's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub idle_timeout: Duration,
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
    /// One lock per destination file, so two jobs never write the same one.
    pub locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Runner {
    /// Locks the job's image and pointer. Workers call this while they still
    /// hold the queue, so jobs touching the same files run in arrival order:
    /// the pointer always ends up naming the last image published.
    pub async fn acquire(&self, job: &FirmwareJob) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut paths = vec![job.disk_path.full(), job.config_path.full()];
        paths.sort();
        paths.dedup();
        let mut guards = Vec::with_capacity(paths.len());
        for path in paths {
            guards.push(self.lock_for(path).lock_owned().await);
        }
        guards
    }

    pub async fn run(
        &self,
        mut rec: JobRecord,
        job: FirmwareJob,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) {
        let span = info_span!("job", msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path);
        async {
            if rec.state != JobState::Installed {
                match self.install(&mut rec, &job).await {
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
        drop(guards);
        self.release_lock(&job.disk_path.full());
        self.release_lock(&job.config_path.full());
    }

    fn lock_for(&self, path: PathBuf) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(path).or_default().clone()
    }

    fn release_lock(&self, path: &PathBuf) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(path).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(path);
        }
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

    async fn install(&self, rec: &mut JobRecord, job: &FirmwareJob) -> Result<(), Failure> {
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
        let (staged, meta) = self.download(rec, job, &key).await?;
        self.status
            .send(&job.msg_id, &job.file_name, State::Downloaded, None, None);
        let (sha256, md5) = staged.hashes.finish();
        if let Err(f) = verify(job, &meta, &sha256, &md5) {
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
            let meta = self
                .store
                .head(key)
                .await
                .map_err(|e| fetch_failure(&job.cloud_path, e))?;
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
    async fn download(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        key: &ObjectPath,
    ) -> Result<(Appended, ObjectMeta), Failure> {
        let p = &self.policy;
        let mut attempt = 0;
        // Each turn fetches the object's current version; a change mid-way
        // starts the next turn.
        'object: loop {
            if attempt >= p.attempts {
                return Err(Failure::new(
                    Reason::Unreachable,
                    format!("gave up after {attempt} attempts: the object kept changing"),
                ));
            }
            let meta = self
                .store
                .head(key)
                .await
                .map_err(|e| fetch_failure(&job.cloud_path, e))?;
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
            // A resumed job continues only if the object is the one it started;
            // `None` means "from whatever the staging file holds".
            let mut offset: Option<u64> = if rec.state == JobState::Downloading
                && rec.etag.is_some()
                && rec.etag == meta.e_tag
            {
                None
            } else {
                if rec.state == JobState::Downloading {
                    info!("the object changed since the download started; starting over");
                }
                Some(0)
            };
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
            if let Err(e) = self.journal.save(rec).await {
                return Err(Failure::new(
                    Reason::Io,
                    format!("cannot write the job journal: {e}"),
                ));
            }

            let mut hashes: Option<Hashes> = None;
            loop {
                attempt += 1;
                let from = match offset {
                    Some(o) => o,
                    None => tokio::fs::metadata(staging_path(&job.disk_path))
                        .await
                        .map(|m| m.len().min(meta.size))
                        .unwrap_or(0),
                };
                if from > 0 {
                    info!(offset = from, attempt, "resuming with a ranged GET");
                }
                if from == meta.size {
                    // Every byte is staged already (cut before the commit): only
                    // the digests are missing.
                    let append = Append {
                        image: job.disk_path.clone(),
                        offset: from,
                        hashes: hashes.take(),
                        body: stream::empty().boxed(),
                        total: meta.size,
                    };
                    match self.append.send(append).await {
                        Ok(Ok(done)) if done.written == meta.size => return Ok((done, meta)),
                        // The staged bytes did not add up: start over (a
                        // zero-length object never comes back here).
                        Ok(Ok(_)) | Ok(Err(WriteError::Transfer { .. })) if from > 0 => {
                            offset = Some(0);
                            continue;
                        }
                        Ok(Ok(_)) | Ok(Err(WriteError::Transfer { .. })) => {
                            return Err(Failure::new(
                                Reason::Io,
                                "the staged image does not match its size",
                            ));
                        }
                        Ok(Err(e)) => {
                            self.discard(job).await;
                            return Err(write_failure(e));
                        }
                        Err(e) => {
                            return Err(writer_gone(e));
                        }
                    }
                }
                let opts = GetOptions {
                    range: (from > 0).then_some(GetRange::Offset(from)),
                    if_match: meta.e_tag.clone(),
                    ..GetOptions::default()
                };
                let error = match self.store.get_opts(key, opts).await {
                    Ok(got) if got.meta.e_tag != meta.e_tag => {
                        warn!("the object changed during the download; starting over");
                        continue 'object;
                    }
                    Ok(got) => {
                        if from == 0 {
                            self.status.send(
                                &job.msg_id,
                                &job.file_name,
                                State::Downloading,
                                Some(0),
                                None,
                            );
                            info!(bytes = meta.size, "downloading");
                        }
                        let body = meter(
                            got.into_stream(),
                            Meter {
                                idle: p.idle_timeout,
                                rate: p.max_bytes_per_second,
                                started: Instant::now(),
                                base: from,
                                sent: 0,
                                total: meta.size,
                                step: p.progress_step.max(1),
                                next_pct: next_step(from, meta.size, p.progress_step.max(1)),
                                status: self.status.clone(),
                                msg_id: job.msg_id.clone(),
                                file_name: job.file_name.clone(),
                            },
                        );
                        let append = Append {
                            image: job.disk_path.clone(),
                            offset: from,
                            hashes: hashes.take(),
                            body,
                            total: meta.size,
                        };
                        match self.append.send(append).await {
                            Ok(Ok(done)) if done.written == meta.size => return Ok((done, meta)),
                            Ok(Ok(short)) => {
                                offset = Some(short.written);
                                let got = short.written;
                                hashes = Some(short.hashes);
                                format!("the transfer ended after {got} of {} bytes", meta.size)
                            }
                            Ok(Err(WriteError::Transfer { progress, source })) => {
                                offset = Some(progress.written);
                                hashes = Some(progress.hashes);
                                if let TransferError::Idle(d) = source {
                                    format!("timeout: no data for {d:?}")
                                } else {
                                    source.to_string()
                                }
                            }
                            Ok(Err(e)) => {
                                self.discard(job).await;
                                return Err(write_failure(e));
                            }
                            Err(e) => {
                                return Err(writer_gone(e));
                            }
                        }
                    }
                    Err(object_store::Error::Precondition { .. }) => {
                        warn!("the object changed during the download; starting over");
                        continue 'object;
                    }
                    Err(e) => {
                        let f = fetch_failure(&job.cloud_path, e);
                        if matches!(f.reason, Reason::NotFound | Reason::Auth) {
                            return Err(f);
                        }
                        // A range past the end of a replaced, shorter object
                        // fails before any ETag is seen: ask the bucket.
                        if from > 0
                            && let Ok(now) = self.store.head(key).await
                            && now.e_tag != meta.e_tag
                        {
                            warn!("the object changed during the download; starting over");
                            continue 'object;
                        }
                        f.detail
                    }
                };
                if attempt >= p.attempts {
                    let reason = if error.starts_with("timeout") {
                        Reason::Timeout
                    } else {
                        Reason::Unreachable
                    };
                    return Err(Failure::new(
                        reason,
                        format!("gave up after {attempt} attempts; last: {error}"),
                    ));
                }
                let wait = backoff(p.backoff_min, p.backoff_max, attempt);
                warn!(attempt, of = p.attempts, retry_in = ?wait, error = %error, "download attempt failed");
                tokio::time::sleep(wait).await;
            }
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
        let got = match self.store.get(&sig_key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(fetch_failure(sig_key.as_ref(), e)),
        };
        if got.meta.size > 4096 {
            return Err(Failure::new(
                Reason::SignatureInvalid,
                format!("{sig_key} is {} bytes; a signature is 64", got.meta.size),
            ));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| fetch_failure(sig_key.as_ref(), e))?;
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

fn verify(job: &FirmwareJob, meta: &ObjectMeta, sha256: &str, md5: &str) -> Result<(), Failure> {
    let mismatch = |what: &str, want: &str, got: &str| {
        Failure::new(
            Reason::ChecksumMismatch,
            format!("{what} is {got}, expected {want}"),
        )
    };
    if let Some(want) = &job.expect.sha256
        && want != sha256
    {
        return Err(mismatch("sha256", want, sha256));
    }
    if let Some(want) = &job.expect.md5
        && want != md5
    {
        return Err(mismatch("md5", want, md5));
    }
    if job.expect.sha256.is_none()
        && job.expect.md5.is_none()
        && let Some(etag) = plain_md5_etag(meta.e_tag.as_deref())
        && etag != md5
    {
        return Err(mismatch("md5", &format!("{etag} (the object's ETag)"), md5));
    }
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
