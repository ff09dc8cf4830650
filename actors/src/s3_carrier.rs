//! The S3 carrier and its one task function, `handle_new_firmware_message`.
//!
//! A `firmware_image` is checked and confined when it arrives, written to the
//! job journal, and queued; a dispatcher takes jobs from the bounded queue in
//! arrival order and runs up to `jobs.concurrency` of them at once
//! ([`crate::job`]). A full queue holds the router, and so MQTT ingress, back.
//! Jobs left unfinished by a previous run are queued first.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, ResponseFuture, WrapFuture};
use gator_ota_settings::{Bucket, S3Carrier};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, HeaderMap, HeaderValue, ObjectStore, RetryConfig};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::firmware::{Defaults, FirmwareJob};
use crate::job::{Runner, Slot};
use crate::journal::{JobRecord, JobState};
use crate::messages::RunTask;
use crate::paths::Confinement;
use crate::s3_response::{CHECKSUM_MODE, S3Connector};
use crate::status::{Reason, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    #[error("carrier `{carrier}`: {source}")]
    Store {
        carrier: String,
        #[source]
        source: object_store::Error,
    },
    #[error("carrier `{carrier}`: cannot create bucket folder {dir}: {source}")]
    Folder {
        carrier: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The carrier's bucket, decided before anything starts: an S3 client is
/// built (so a bad region or endpoint is refused by `check-config` too); a
/// local folder is only created when the service starts.
#[derive(Clone)]
pub enum StorePlan {
    Folder { carrier: String, dir: PathBuf },
    S3(Arc<dyn ObjectStore>),
}

impl StorePlan {
    pub fn new(
        name: &str,
        carrier: &S3Carrier,
        data_dir: &std::path::Path,
    ) -> Result<Self, StoreSetupError> {
        match carrier.location(data_dir) {
            Bucket::Folder(dir) => Ok(Self::Folder {
                carrier: name.to_string(),
                dir,
            }),
            Bucket::S3(bucket) => s3_client(name, carrier, &bucket).map(Self::S3),
        }
    }

    /// The store, creating a local bucket folder if it is missing.
    pub fn open(self) -> Result<Arc<dyn ObjectStore>, StoreSetupError> {
        match self {
            Self::S3(store) => Ok(store),
            Self::Folder { carrier, dir } => {
                std::fs::create_dir_all(&dir).map_err(|source| StoreSetupError::Folder {
                    carrier: carrier.clone(),
                    dir: dir.display().to_string(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|source| StoreSetupError::Store { carrier, source })?;
                Ok(Arc::new(store))
            }
        }
    }
}

fn s3_client(
    name: &str,
    carrier: &S3Carrier,
    bucket: &str,
) -> Result<Arc<dyn ObjectStore>, StoreSetupError> {
    let (mode, enabled) = CHECKSUM_MODE;
    let mut headers = HeaderMap::new();
    headers.insert(mode, HeaderValue::from_static(enabled));
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_allow_http(carrier.allow_http)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(carrier.connect_timeout)
                .with_timeout(carrier.timeout)
                .with_allow_http(carrier.allow_http)
                .with_default_headers(headers),
        )
        // Keeps the response headers (encryption, checksums) and types
        // the answers to ranged GETs; see `s3_response`.
        .with_http_connector(S3Connector)
        // Retries of whole jobs, with resume, are the job's business
        // (`[jobs]`); the client only smooths over a single hiccup.
        .with_retry(RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        });
    if !carrier.region.is_empty() {
        b = b.with_region(&carrier.region);
    }
    if !carrier.endpoint.is_empty() {
        b = b
            .with_endpoint(&carrier.endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if !carrier.access_key_id.is_empty() {
        b = b
            .with_access_key_id(&carrier.access_key_id)
            .with_secret_access_key(carrier.secret_access_key.expose());
    }
    let store = b.build().map_err(|source| StoreSetupError::Store {
        carrier: name.to_string(),
        source,
    })?;
    Ok(Arc::new(store))
}

type Queued = (JobRecord, FirmwareJob);

pub struct S3CarrierActor {
    name: String,
    runner: Arc<Runner>,
    confinement: Arc<Confinement>,
    defaults: Defaults,
    queue_capacity: usize,
    concurrency: usize,
    /// Jobs found in the journal at start-up, queued before anything new.
    resumed: Vec<Queued>,
    /// Set in `started`, where the workers that read it are spawned.
    queue: Option<mpsc::Sender<Queued>>,
}

impl S3CarrierActor {
    pub fn new(
        name: String,
        runner: Arc<Runner>,
        confinement: Arc<Confinement>,
        defaults: Defaults,
        queue_capacity: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            name,
            runner,
            confinement,
            defaults,
            queue_capacity,
            concurrency,
            resumed: Vec::new(),
            queue: None,
        }
    }

    /// Checks a journal record again (settings may have changed since) and
    /// turns it into a job, or forgets it with the reason.
    pub fn resume(&mut self, records: Vec<JobRecord>) {
        for rec in records {
            match FirmwareJob::from_content(
                &rec.msg_id,
                &rec.content,
                &self.confinement,
                &self.defaults,
            ) {
                Ok(job) => {
                    info!(msg_id = %rec.msg_id, state = ?rec.state, "resuming an unfinished job");
                    self.resumed.push((rec, job));
                }
                Err(e) => {
                    error!(msg_id = %rec.msg_id, error = %e, "an unfinished job is no longer valid; dropped");
                    let path_free = rec.seq;
                    let journal = self.runner.journal().clone();
                    actix::spawn(async move {
                        let _ = journal.finish(path_free).await;
                    });
                }
            }
        }
    }
}

impl Actor for S3CarrierActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (tx, rx) = mpsc::channel::<Queued>(self.queue_capacity);
        // Jobs from the journal go first, before anything new: a new message
        // never overtakes an older one for the same files.
        let resumed: VecDeque<Queued> = std::mem::take(&mut self.resumed).into();
        let dispatch = dispatch(self.runner.clone(), rx, resumed, self.concurrency);
        // On the actor's context: the jobs stop with the actor.
        ctx.spawn(dispatch.into_actor(self));
        self.queue = Some(tx);
        info!(carrier = %self.name, workers = self.concurrency, "S3 carrier ready");
    }
}

/// Takes jobs in arrival order and runs each in its turn for its files
/// ([`Runner::take_turn`]) on one of `concurrency` slots.
///
/// At most `concurrency` jobs taken from the queue wait (for their files or a
/// slot), so a full queue still holds ingress back; a job waiting out a
/// backoff waits without its slot, so jobs that keep failing, or whose store
/// does not answer, never keep jobs for other files from running.
async fn dispatch(
    runner: Arc<Runner>,
    mut queue: mpsc::Receiver<Queued>,
    mut resumed: VecDeque<Queued>,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let waiting = Arc::new(Semaphore::new(concurrency));
    let mut jobs = JoinSet::new();
    loop {
        // Reap the ended ones (the build aborts on panic: nothing to report).
        while jobs.try_join_next().is_some() {}
        let Ok(waits) = waiting.clone().acquire_owned().await else {
            break;
        };
        let next = match resumed.pop_front() {
            Some(item) => Some(item),
            None => queue.recv().await,
        };
        let Some((rec, job)) = next else {
            break;
        };
        let mut turn = runner.take_turn(&job);
        let (runner, slots) = (runner.clone(), slots.clone());
        jobs.spawn_local(async move {
            turn.wait().await;
            let slot = Slot::take(slots).await;
            drop(waits);
            runner.run(rec, job, turn, slot).await;
        });
    }
    while jobs.join_next().await.is_some() {}
}

impl Handler<RunTask> for S3CarrierActor {
    /// Resolves once the job is journalled and queued (or rejected).
    type Result = ResponseFuture<()>;

    fn handle(&mut self, run: RunTask, _: &mut Context<Self>) -> Self::Result {
        let env = run.envelope;
        let queue = self.queue.clone();
        let runner = self.runner.clone();
        let job = FirmwareJob::from_content(
            &env.msg_id,
            &env.msg_content,
            &self.confinement,
            &self.defaults,
        );
        Box::pin(async move {
            let job = match job {
                Ok(job) => job,
                Err(e) => {
                    let file_name = env
                        .msg_content
                        .get("file_name")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    error!(msg_id = %env.msg_id, task = %run.task, function = %run.function, reason = %Reason::InvalidMessage, error = %e,
                        "invalid firmware_image rejected; nothing was written");
                    runner
                        .status()
                        .failed(
                            &env.msg_id,
                            file_name,
                            Reason::InvalidMessage,
                            &e.to_string(),
                        )
                        .await;
                    return;
                }
            };
            let rec = JobRecord {
                seq: runner.journal().next_seq(),
                msg_id: env.msg_id.clone(),
                content: env.msg_content,
                state: JobState::Queued,
                etag: None,
                receipt: env.receipt.as_ref().map(|r| r.seq),
                receipt_carrier: env
                    .receipt
                    .as_ref()
                    .and_then(|r| r.carrier.as_deref().map(str::to_string)),
            };
            if let Err(e) = runner.journal().save(&rec).await {
                error!(msg_id = %env.msg_id, error = %e, "cannot journal the job; it runs, but would not survive a restart");
            }
            info!(msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path, "queued");
            runner
                .status()
                .send(&job.msg_id, &job.file_name, State::Queued, None, None);
            if let Some(queue) = queue
                && queue.send((rec, job)).await.is_err()
            {
                error!(msg_id = %env.msg_id, "the carrier's workers have stopped; the job stays in the journal for the next start");
            }
        })
    }
}
