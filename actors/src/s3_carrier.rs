//! The S3 carrier and its one task function, `handle_new_firmware_message`.
//!
//! A `firmware_image` is checked and confined when it arrives, then queued;
//! a worker takes jobs one at a time: fetch the object as a stream, hand it to
//! the writer, and only when image and pointer are in place ask egress for a
//! `confirm_receipt`. Any failure is logged with the message id and cause and
//! leaves no trace on disk; the worker goes on with the next job.

use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, AsyncContext, Context, Handler, Recipient, ResponseFuture, Supervised, WrapFuture,
};
use gator_ota_settings::{Bucket, S3Carrier};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::sync::mpsc;
use tracing::{Instrument, error, info, info_span, warn};

use crate::firmware::{Defaults, FirmwareJob, InvalidMessage};
use crate::messages::{Install, Publish, RunTask};
use crate::paths::Confinement;
use crate::time;
use crate::writer::InstallError;

#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    #[error("invalid firmware_image: {0}")]
    Invalid(#[from] InvalidMessage),
    #[error("object {0:?} does not exist in the bucket")]
    NotFound(String),
    #[error("the bucket refused the credentials: {0}")]
    Auth(#[source] object_store::Error),
    #[error("cannot fetch the object: {0}")]
    Fetch(#[source] object_store::Error),
    #[error("object {0:?} is not a valid object key: {1}")]
    BadKey(String, #[source] object_store::path::Error),
    #[error("the object has {size} bytes, more than the {max} allowed (firmware.max_image_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    Install(#[from] InstallError),
    #[error("the filesystem writer is not running: {0}")]
    WriterGone(#[source] actix::MailboxError),
}

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

/// Opens the carrier's bucket: S3 (or compatible), or a local folder.
pub fn open_store(
    name: &str,
    carrier: &S3Carrier,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn ObjectStore>, StoreSetupError> {
    let store_err = |source| StoreSetupError::Store {
        carrier: name.to_string(),
        source,
    };
    match carrier.location(data_dir) {
        Bucket::Folder(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| StoreSetupError::Folder {
                carrier: name.to_string(),
                dir: dir.display().to_string(),
                source,
            })?;
            Ok(Arc::new(
                LocalFileSystem::new_with_prefix(&dir).map_err(store_err)?,
            ))
        }
        Bucket::S3(bucket) => {
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_allow_http(carrier.allow_http)
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(carrier.connect_timeout)
                        .with_timeout(carrier.timeout)
                        .with_allow_http(carrier.allow_http),
                )
                .with_retry(RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(60),
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
            Ok(Arc::new(b.build().map_err(store_err)?))
        }
    }
}

/// What a job needs, shared by the actor and its worker.
struct Deps {
    store: Arc<dyn ObjectStore>,
    writer: Recipient<Install>,
    egress: Recipient<Publish>,
    system_id: String,
    max_image_bytes: u64,
}

pub struct S3CarrierActor {
    name: String,
    deps: Arc<Deps>,
    confinement: Arc<Confinement>,
    defaults: Defaults,
    queue_capacity: usize,
    /// Set in `started`, so a restarted actor gets a fresh queue and worker.
    queue: Option<mpsc::Sender<FirmwareJob>>,
}

impl S3CarrierActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        store: Arc<dyn ObjectStore>,
        confinement: Arc<Confinement>,
        defaults: Defaults,
        writer: Recipient<Install>,
        egress: Recipient<Publish>,
        system_id: String,
        max_image_bytes: u64,
        queue_capacity: usize,
    ) -> Self {
        Self {
            name,
            deps: Arc::new(Deps {
                store,
                writer,
                egress,
                system_id,
                max_image_bytes,
            }),
            confinement,
            defaults,
            queue_capacity,
            queue: None,
        }
    }
}

impl Actor for S3CarrierActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (tx, mut rx) = mpsc::channel::<FirmwareJob>(self.queue_capacity);
        self.queue = Some(tx);
        let deps = self.deps.clone();
        // Spawned on the actor's context: it stops with the actor.
        ctx.spawn(
            async move {
                while let Some(job) = rx.recv().await {
                    run_job(&deps, job).await;
                }
            }
            .into_actor(self),
        );
        info!(carrier = %self.name, "S3 carrier ready");
    }
}

impl Supervised for S3CarrierActor {}

impl Handler<RunTask> for S3CarrierActor {
    /// Resolves once the job is queued (or rejected).
    type Result = ResponseFuture<()>;

    fn handle(&mut self, run: RunTask, _: &mut Context<Self>) -> Self::Result {
        let env = run.envelope;
        let queue = self.queue.clone();
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
                    error!(msg_id = %env.msg_id, task = %run.task, error = %CarrierError::from(e), "rejected; nothing was written");
                    return;
                }
            };
            info!(msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path, "queued");
            if let Some(queue) = queue
                && queue.send(job).await.is_err()
            {
                error!(msg_id = %env.msg_id, "the carrier's worker has stopped; job not queued");
            }
        })
    }
}

async fn run_job(deps: &Deps, job: FirmwareJob) {
    let span = info_span!("job", msg_id = %job.msg_id, file_name = %job.file_name, cloud_path = %job.cloud_path);
    async {
        match download_and_install(deps, &job).await {
            Ok(installed) => info!(
                bytes = installed.bytes,
                sha256 = %installed.sha256,
                disk_path = %job.disk_path.full().display(),
                config_path = %job.config_path.full().display(),
                "installed"
            ),
            Err(e) => {
                error!(error = %e, "firmware job failed; no image or pointer was changed and no confirm_receipt is sent");
                return;
            }
        }
        if !job.confirm_receipt {
            info!("confirm_receipt not requested");
            return;
        }
        let confirm = Publish {
            message_type: "confirm_receipt".into(),
            content: serde_json::json!({
                "id": deps.system_id,
                "file_name": job.file_name,
                "confirm_receipt": true,
                "time": time::now(),
            }),
        };
        match deps.egress.send(confirm).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "confirm_receipt not sent"),
            Err(e) => error!(error = %e, "confirm_receipt not sent: egress is not running"),
        }
    }
    .instrument(span)
    .await
}

async fn download_and_install(
    deps: &Deps,
    job: &FirmwareJob,
) -> Result<crate::writer::Installed, CarrierError> {
    let key = ObjectPath::parse(&job.cloud_path)
        .map_err(|e| CarrierError::BadKey(job.cloud_path.clone(), e))?;
    let got = deps
        .store
        .get(&key)
        .await
        .map_err(|e| classify(&job.cloud_path, e))?;
    let size = got.meta.size;
    if size > deps.max_image_bytes {
        return Err(CarrierError::TooLarge {
            size,
            max: deps.max_image_bytes,
        });
    }
    info!(bytes = size, "downloading");
    let install = Install {
        msg_id: job.msg_id.clone(),
        image: job.disk_path.clone(),
        pointer: job.config_path.clone(),
        pointer_contents: job.file_name.clone(),
        body: got.into_stream(),
        expected_size: size,
    };
    let installed = deps
        .writer
        .send(install)
        .await
        .map_err(CarrierError::WriterGone)??;
    Ok(installed)
}

fn classify(cloud_path: &str, e: object_store::Error) -> CarrierError {
    match e {
        object_store::Error::NotFound { .. } => CarrierError::NotFound(cloud_path.to_string()),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => CarrierError::Auth(e),
        other => {
            warn!(error = %other, "bucket request failed");
            CarrierError::Fetch(other)
        }
    }
}
