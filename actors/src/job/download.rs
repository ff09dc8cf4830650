//! Staging the object: a [`Download`] keeps what one attempt leaves for the
//! next, [`Download::attempt`] makes one, and [`Runner::download`] retries.
//!
//! A job's first attempt, with nothing staged, is one GET whose headers
//! give the version. Any later attempt is a HEAD when the version is not
//! known (any more), then a GET from the staged bytes on, streamed to the
//! writer. It ends
//! [`Attempt::Complete`], [`Attempt::Cut`] (try again after the backoff),
//! [`Attempt::Changed`] (try again at once) or [`Attempt::Fatal`].

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta};
use tracing::{info, warn};

use super::locks::Slot;
use super::progress::meter;
use super::verify::checks_to_compute;
use super::{Failure, Runner, write_failure, writer_gone};
use crate::durable::free_space_of;
use crate::firmware::FirmwareJob;
use crate::hashes::{Checks, Hashes};
use crate::journal::{JobRecord, JobState};
use crate::messages::{ByteStream, TransferError};
use crate::s3_response::{ObjectFacts, RangeAnswer, range_answer};
use crate::staging::staging_path;
use crate::status::{Reason, State};
use crate::writer::{self, Append, Appended, ChunkSender, WriteError};

/// The object as the bucket described it: its metadata, and what the
/// response headers add.
#[derive(Clone)]
pub(super) struct Object {
    pub(super) meta: ObjectMeta,
    pub(super) facts: ObjectFacts,
}

/// How one attempt ended.
pub(super) enum Attempt {
    /// Every byte is staged, with its digests (boxed: the hashers are large,
    /// the other endings small).
    Complete(Box<(Appended, Object)>),
    /// The store failed, timed out or sent too few bytes: try again after
    /// the backoff.
    Cut(Cause, String),
    /// Nothing failed, but the attempt must be made again at once: the
    /// object changed, or it must be fetched from its start.
    Changed(String),
    /// No retry can help.
    Fatal(Failure),
}

/// What a cut says about the store, for the reason when no attempt is left.
#[derive(Clone, Copy)]
pub(super) enum Cause {
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
pub(super) enum Miss {
    Store(object_store::Error),
    /// No response headers within `header_timeout`.
    NoAnswer(&'static str, Duration),
}

impl Miss {
    /// No retry can fix these: the object is missing or the credentials are
    /// refused. Everything else (5xx, throttling, resets, timeouts) can pass.
    pub(super) fn is_final(&self) -> bool {
        matches!(
            self,
            Miss::Store(
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            )
        )
    }

    pub(super) fn failure(self, cloud_path: &str) -> Failure {
        match self {
            Miss::Store(e) => fetch_failure(cloud_path, e),
            Miss::NoAnswer(what, wait) => Failure::new(
                Reason::Timeout,
                format!("timeout: the {what} got no answer within {wait:?}"),
            ),
        }
    }

    fn attempt(self, cloud_path: &str) -> Attempt {
        let cause = match self {
            _ if self.is_final() => return Attempt::Fatal(self.failure(cloud_path)),
            Miss::NoAnswer(..) => Cause::Timeout,
            Miss::Store(_) => Cause::Unreachable,
        };
        Attempt::Cut(cause, self.failure(cloud_path).detail)
    }
}

pub(super) fn fetch_failure(cloud_path: &str, e: object_store::Error) -> Failure {
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

impl Runner {
    /// Stages the whole object, retrying and resuming as the policy allows.
    /// Every attempt (a HEAD when needed, a GET and its body) counts against
    /// `jobs.attempts`; between attempts the job waits out its backoff
    /// without its slot.
    pub(super) async fn download(
        &self,
        rec: &mut JobRecord,
        job: &FirmwareJob,
        key: &ObjectPath,
        slot: &mut Slot,
    ) -> Result<(Appended, Object), Failure> {
        let p = &self.policy;
        let mut download = Download::new(self, rec, job, key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (cause, error) = match download.attempt(attempt).await {
                Attempt::Complete(done) => return Ok(*done),
                Attempt::Fatal(f) => return Err(f),
                Attempt::Changed(_) if attempt < p.attempts => continue,
                Attempt::Changed(why) => (Cause::Unreachable, why),
                Attempt::Cut(cause, error) => (cause, error),
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

    /// HEAD, within `header_timeout`.
    pub(super) async fn head(&self, key: &ObjectPath) -> Result<Object, Miss> {
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
}

/// One job's download: what an attempt leaves for the next.
pub(super) struct Download<'a> {
    runner: &'a Runner,
    rec: &'a mut JobRecord,
    job: &'a FirmwareJob,
    key: &'a ObjectPath,
    /// The version being staged, from its HEAD; `None`: HEAD next.
    object: Option<Object>,
    /// Where the next GET starts; `None`: after the staged bytes.
    offset: Option<u64>,
    /// Digests of the bytes before `offset`, when still at hand.
    hashes: Option<Hashes>,
    /// This version has sent fewer bytes than its size at least once.
    short: bool,
    /// The store ignored a Range header: later attempts start at byte 0.
    no_ranges: bool,
}

/// What a step of an attempt gives, or how the attempt ended early (never
/// [`Attempt::Complete`]).
type Tried<T> = Result<T, Attempt>;

impl<'a> Download<'a> {
    fn new(
        runner: &'a Runner,
        rec: &'a mut JobRecord,
        job: &'a FirmwareJob,
        key: &'a ObjectPath,
    ) -> Self {
        Self {
            runner,
            rec,
            job,
            key,
            object: None,
            offset: None,
            hashes: None,
            short: false,
            no_ranges: false,
        }
    }

    /// One attempt, the `attempt`th.
    pub(super) async fn attempt(&mut self, attempt: u32) -> Attempt {
        match self.stage(attempt).await {
            Ok(done) => Attempt::Complete(Box::new(done)),
            Err(ended) => ended,
        }
    }

    async fn stage(&mut self, attempt: u32) -> Tried<(Appended, Object)> {
        if self.object.is_none() && self.rec.state != JobState::Downloading {
            return self.stage_fresh().await;
        }
        let mut object = self.version().await?;
        let size = object.meta.size;
        let from = self.start_of(size).await;
        if from > 0 {
            info!(offset = from, attempt, "resuming with a ranged GET");
        }
        if from == size {
            return self.finish_staged(object).await;
        }
        let got = self.get_from(&object.meta, from).await?;
        let facts = ObjectFacts::of(&got);
        object.facts.merge(facts.clone());
        if let Some(known) = &mut self.object {
            known.facts.merge(facts);
        }
        self.stream(object, got, from).await
    }

    /// A job with nothing staged asks the store once: the GET's own headers
    /// carry the size, ETag and checksums a HEAD would, and the version is
    /// adopted from them before a byte of the body is read. Once a version
    /// is adopted (and for a job resumed after a restart), attempts go
    /// through [`Download::version`] and resume with ranges.
    async fn stage_fresh(&mut self) -> Tried<(Appended, Object)> {
        let got = self.get_whole().await?;
        let object = Object {
            facts: ObjectFacts::of(&got),
            meta: got.meta.clone(),
        };
        self.admit(&object).await.map_err(Attempt::Fatal)?;
        self.object = Some(object.clone());
        self.restart();
        // The journal records the version while the body streams, and the
        // attempt ends only once it has: its fsyncs overlap the transfer. A
        // stop before then finds the job as it was queued, and starts over.
        let journal = self.runner.journal.clone();
        let rec = self.rec.clone();
        let saving = async move { journal.save(&rec).await };
        let (saved, staged) = tokio::join!(saving, self.stream(object, got, 0));
        saved.map_err(|e| Attempt::Fatal(journal_failure(e)))?;
        staged
    }

    /// A plain GET of the whole object, within `header_timeout`.
    async fn get_whole(&mut self) -> Tried<GetResult> {
        let (runner, key) = (self.runner, self.key);
        let wait = runner.policy.header_timeout;
        let answer = tokio::time::timeout(wait, runner.store.get_opts(key, GetOptions::default()));
        match answer.await {
            Err(_) => Err(Miss::NoAnswer("GET", wait).attempt(&self.job.cloud_path)),
            Ok(Ok(got)) => Ok(got),
            Ok(Err(e)) => Err(Miss::Store(e).attempt(&self.job.cloud_path)),
        }
    }

    /// Streams the body of `got`, the object's bytes from `from` on, into
    /// the staging file.
    async fn stream(
        &mut self,
        object: Object,
        got: GetResult,
        from: u64,
    ) -> Tried<(Appended, Object)> {
        let size = object.meta.size;
        // Decided before the body streams: a GET may add a checksum its HEAD
        // did not show.
        let checks = checks_to_compute(&self.job.expect, &object.meta, &object.facts);
        if from == 0 {
            let job = self.job;
            let status = &self.runner.status;
            status.send(
                &job.msg_id,
                &job.file_name,
                State::Downloading,
                Some(0),
                None,
            );
            info!(bytes = size, "downloading");
        }
        let body = meter(got.into_stream(), self.runner.meter(self.job, from, size));
        let done = self.append(from, size, checks, body).await?;
        Ok((done, object))
    }

    /// The version to stage: the one known, or the one a HEAD describes.
    async fn version(&mut self) -> Tried<Object> {
        if let Some(object) = &self.object {
            return Ok(object.clone());
        }
        let object = self
            .runner
            .head(self.key)
            .await
            .map_err(|m| m.attempt(&self.job.cloud_path))?;
        self.adopt(&object).await.map_err(Attempt::Fatal)?;
        self.object = Some(object.clone());
        Ok(object)
    }

    /// Every byte is staged already (cut before the commit): only the
    /// digests are missing.
    async fn finish_staged(&mut self, object: Object) -> Tried<(Appended, Object)> {
        let size = object.meta.size;
        let checks = checks_to_compute(&self.job.expect, &object.meta, &object.facts);
        let done = self.append(size, size, checks, stream::empty().boxed());
        match done.await {
            Ok(done) => Ok((done, object)),
            Err(Attempt::Cut(..)) if size > 0 => {
                // The staged bytes did not add up: start over (a zero-length
                // object never comes back here).
                self.restart();
                Err(Attempt::Changed("the staged bytes did not add up".into()))
            }
            Err(Attempt::Cut(..)) => Err(Attempt::Fatal(Failure::new(
                Reason::Io,
                "the staged image does not match its size",
            ))),
            Err(other) => Err(other),
        }
    }

    /// The next GET starts at byte 0, with nothing known against this
    /// version.
    fn restart(&mut self) {
        self.offset = Some(0);
        self.hashes = None;
        self.short = false;
    }

    /// The object is not the version being staged: HEAD again, at once.
    fn changed(&mut self) -> Attempt {
        warn!("the object changed during the download; starting over");
        self.object = None;
        Attempt::Changed("the object kept changing".into())
    }

    /// Takes `object` as the version to stage ([`Download::admit`]) and
    /// journals it.
    async fn adopt(&mut self, object: &Object) -> Result<(), Failure> {
        self.admit(object).await?;
        self.runner
            .journal
            .save(self.rec)
            .await
            .map_err(journal_failure)
    }

    /// Checks `object`'s size against the limits and the disk, and whether
    /// the staged bytes belong to it; then marks the job as downloading it
    /// (journaled by the caller).
    async fn admit(&mut self, object: &Object) -> Result<(), Failure> {
        let (runner, job) = (self.runner, self.job);
        let p = &runner.policy;
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
        let rec = &*self.rec;
        let same =
            rec.state == JobState::Downloading && rec.etag.is_some() && rec.etag == meta.e_tag;
        if !same {
            if rec.state == JobState::Downloading {
                info!("the object changed since the download started; starting over");
            }
            self.restart();
        }
        self.check_space(meta.size).await?;
        self.rec.state = JobState::Downloading;
        self.rec.etag = meta.e_tag.clone();
        Ok(())
    }

    /// Room for `size` bytes and `jobs.reserve_bytes` beside `disk_path`.
    async fn check_space(&self, size: u64) -> Result<(), Failure> {
        let dir = self
            .job
            .disk_path
            .full()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        if let Ok(free) = free_space_of(&dir).await {
            let needed = size.saturating_add(self.runner.policy.reserve_bytes);
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
        Ok(())
    }

    /// Where the next GET starts: after the staged bytes, or at byte 0.
    async fn start_of(&mut self, size: u64) -> u64 {
        let staged = match self.offset {
            Some(o) => o,
            None => tokio::fs::metadata(staging_path(&self.job.disk_path))
                .await
                .map(|m| m.len().min(size))
                .unwrap_or(0),
        };
        let from = if self.no_ranges && staged < size {
            0
        } else {
            staged
        };
        if from == 0 {
            self.hashes = None;
        }
        self.offset = Some(from);
        from
    }

    /// A GET of this version from `from` on, within `header_timeout`.
    async fn get_from(&mut self, meta: &ObjectMeta, from: u64) -> Tried<GetResult> {
        let (runner, key) = (self.runner, self.key);
        let wait = runner.policy.header_timeout;
        let opts = GetOptions {
            range: (from > 0).then_some(GetRange::Offset(from)),
            if_match: meta.e_tag.clone(),
            ..GetOptions::default()
        };
        let answer = tokio::time::timeout(wait, runner.store.get_opts(key, opts)).await;
        let e = match answer {
            Err(_) => return Err(Miss::NoAnswer("GET", wait).attempt(&self.job.cloud_path)),
            Ok(Ok(got)) if got.meta.e_tag != meta.e_tag => return Err(self.changed()),
            Ok(Ok(got)) if got.meta.size != meta.size => {
                // Same version, another size: HEAD again, and count it as
                // the object not adding up.
                self.object = None;
                self.short = true;
                return Err(Attempt::Cut(
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
        Err(self.refused(e, meta, from).await)
    }

    /// How an attempt ends when its GET got an error.
    async fn refused(&mut self, e: object_store::Error, meta: &ObjectMeta, from: u64) -> Attempt {
        match (&e, range_answer(&e)) {
            (object_store::Error::Precondition { .. }, _) => self.changed(),
            (_, Some(RangeAnswer::Ignored)) => {
                warn!("the store ignored the Range header; fetching the object from byte 0");
                self.no_ranges = true;
                self.offset = Some(0);
                self.hashes = None;
                Attempt::Changed(e.to_string())
            }
            (_, Some(RangeAnswer::NotSatisfiable)) => {
                // A replaced, shorter object, or one shorter than its HEAD
                // says: ask the bucket which.
                let (runner, key) = (self.runner, self.key);
                if let Ok(now) = runner.head(key).await
                    && now.meta.e_tag != meta.e_tag
                {
                    return self.changed();
                }
                self.short = true;
                Attempt::Cut(
                    Cause::Size,
                    format!(
                        "the object ends before byte {from}, though its HEAD says {} bytes (416)",
                        meta.size
                    ),
                )
            }
            _ => Miss::Store(e).attempt(&self.job.cloud_path),
        }
    }

    /// Streams `body` into the staging file after its first `from` bytes,
    /// computing `checks` besides the SHA-256.
    async fn append(
        &mut self,
        from: u64,
        size: u64,
        checks: Checks,
        body: ByteStream,
    ) -> Tried<Appended> {
        let (tx, chunks) = writer::chunks(self.runner.policy.write_chunks);
        let append = Append {
            image: self.job.disk_path.clone(),
            offset: from,
            hashes: self.hashes.take(),
            checks,
            chunks,
            total: size,
            span: tracing::Span::current(),
        };
        let (sent, broke) = tokio::join!(self.runner.append.send(append), feed(body, tx));
        // The body's own error says why the transfer stopped, not the
        // writer's "the chunks ended early".
        let sent = match (sent, broke) {
            (Ok(Err(WriteError::Transfer { progress, .. })), Some(source)) => {
                Ok(Err(WriteError::Transfer { progress, source }))
            }
            (sent, _) => sent,
        };
        match sent {
            Ok(Ok(done)) if done.written == size => Ok(done),
            Ok(Ok(short)) => {
                // The body ended cleanly before the object's size.
                let got = short.written;
                self.offset = Some(got);
                self.hashes = Some(short.hashes);
                self.short = true;
                Err(Attempt::Cut(
                    Cause::Size,
                    format!("the transfer ended after {got} of {size} bytes"),
                ))
            }
            Ok(Err(WriteError::Transfer { progress, source })) => {
                self.offset = Some(progress.written);
                self.hashes = Some(progress.hashes);
                Err(self.cut(source))
            }
            // The staging file is removed where the job ends.
            Ok(Err(e)) => Err(Attempt::Fatal(write_failure(e))),
            Err(e) => Err(Attempt::Fatal(writer_gone(e))),
        }
    }

    /// How an attempt ends when the body broke off.
    fn cut(&mut self, source: TransferError) -> Attempt {
        if let TransferError::Idle(d) = &source {
            return Attempt::Cut(Cause::Timeout, format!("timeout: no data for {d:?}"));
        }
        // object_store's own retry of a cut body asks for a range, and may
        // get one of these answers.
        if let TransferError::Store(e) = &source {
            match range_answer(e) {
                Some(RangeAnswer::Ignored) => self.no_ranges = true,
                Some(RangeAnswer::NotSatisfiable) => self.short = true,
                None => {}
            }
        }
        // A cut where the object is known to end early is that again, not
        // the network.
        let cause = if self.short {
            Cause::Size
        } else {
            Cause::Unreachable
        };
        Attempt::Cut(cause, source.to_string())
    }
}

/// Hands `body` to the writer chunk by chunk, as fast as the disk takes
/// them; the error that broke the body off, if one did.
async fn feed(mut body: ByteStream, tx: ChunkSender) -> Option<TransferError> {
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                if !tx.send(bytes).await {
                    // The writer stopped; its error is the one to report.
                    return None;
                }
            }
            Err(e) => return Some(e),
        }
    }
    tx.end().await;
    None
}

fn journal_failure(e: std::io::Error) -> Failure {
    Failure::new(Reason::Io, format!("cannot write the job journal: {e}"))
}

/// Exponential backoff with jitter in [50 %, 100 %] of the step, so many
/// gateways cut off together do not come back together.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let step = min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    step.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        for attempt in 1..20 {
            let d = backoff(min, max, attempt);
            let step = min.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
    }
}
