//! The firmware server: the Data Gators' last hop.
//!
//! A Data Gator polls `GET /current_version.txt` on the gateway, takes the
//! body as an image name and fetches `GET /<name>` with Arduino-ESP32's
//! HTTPUpdate (HTTP/1.0). This server answers exactly those two kinds of
//! request, from what gator-ota itself installed and verified:
//!
//! - a **pointer** published at a URL path (`[http] pointers`): its body is
//!   what gator-ota wrote to the pointer file, and only while the image it
//!   names can be served ([`catalog`]);
//! - an **installed image**, by its `file_name` or its name on disk, looked
//!   up in the index of installed images, never on the filesystem by the
//!   request's path ([`routes`]). `Content-Length` always, never chunked
//!   or compressed; `HEAD`; one `Range` ([`range`]); a strong ETag that is
//!   the image's SHA-256; `x-MD5` and `x-SHA256`; `304` for
//!   `If-None-Match` and for a device whose `x-ESP32-sketch-md5` is the
//!   image's; with staged rollouts on, `304` for a device outside the
//!   current wave ([`crate::fleet::rollout`]).
//!
//! Every image request is recorded per device ([`device_log`]). With the
//! fleet view on, the server also answers `/status.json`, `/healthz`,
//! `/metrics` and the status page `/` ([`status`]).
//!
//! The server is its own small HTTP/1.x loop ([`conn`], heads parsed by
//! `httparse`) on a thread of its own, so a download never shares a thread
//! with the pipeline's actors. It sends images with `sendfile` ([`reply`]).
//! Connections are capped, every phase of a connection has a deadline, and
//! a download holds no buffer of its own.

mod catalog;
mod conn;
pub mod device_log;
mod range;
mod reply;
mod request;
mod routes;
mod status;
mod verified;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gator_ota_settings::Http;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tracing::{info, warn};

use crate::fleet::GetReport;
use crate::fleet::rollout::Gate;
use crate::journal::Journal;
use crate::paths::{Confinement, PathError};
use actix::Recipient;
use catalog::Catalog;
use conn::Limits;
use device_log::{DeviceLog, Tap};
use routes::State;

/// Threads the server may run file opens and first checks on. A gateway's
/// SD card serves no more reads at once than a few, so the rest may queue.
const BLOCKING_THREADS: usize = 8;

/// Time a stopping server gives the downloads in flight.
const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("settings key `http.pointers[{index}].file`: {source}")]
    Pointer {
        index: usize,
        #[source]
        source: PathError,
    },
    #[error(
        "settings key `http.listen`: cannot listen on {addr}: {source}. Fix: free the port, pick another, or grant CAP_NET_BIND_SERVICE for a port below 1024"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the device log in {dir}: {source}")]
    DeviceLog {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the firmware server's thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// What the server tells the fleet view and asks it.
#[derive(Default)]
pub struct FleetLinks {
    /// Counters and the device registry, told of every image request.
    pub tap: Tap,
    /// Where the fleet's endpoints get their report; `None`: fleet view off.
    pub reports: Option<Recipient<GetReport>>,
    /// Which devices may take an image now; `None`: staged rollouts off.
    pub rollout: Option<Arc<Gate>>,
}

/// The running server; [`FirmwareServer::stop`] ends it.
#[must_use = "keep the server to stop it"]
pub struct FirmwareServer {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<()>,
}

impl FirmwareServer {
    /// Binds every listen address and starts serving on a thread of its
    /// own; `None` when `http.enabled` is off.
    pub fn start(
        settings: &Http,
        confinement: &Confinement,
        journal: Arc<Journal>,
        state_dir: &Path,
        fleet: FleetLinks,
    ) -> Result<Option<Self>, HttpError> {
        if !settings.enabled {
            return Ok(None);
        }
        let mut pointers = HashMap::new();
        for (index, p) in settings.pointers.iter().enumerate() {
            let file = confinement
                .resolve("file", &p.file.to_string_lossy())
                .map_err(|source| HttpError::Pointer { index, source })?;
            pointers.insert(p.url.clone(), file.full());
        }
        let log =
            DeviceLog::open(state_dir, settings.device_log_bytes, fleet.tap).map_err(|source| {
                HttpError::DeviceLog {
                    dir: state_dir.display().to_string(),
                    source,
                }
            })?;
        let state = State {
            catalog: Catalog::new(journal, pointers),
            log,
            fleet: fleet.reports,
            rollout: fleet.rollout,
        };
        let listeners = bind(settings)?;
        let limits = Limits {
            request_timeout: settings.request_timeout,
            keep_alive: settings.keep_alive,
            disconnect_timeout: settings.disconnect_timeout,
            send_timeout: settings.send_timeout,
        };
        let server = Server {
            state: Arc::new(state),
            limits,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
        };
        let (stop, stopped) = watch::channel(false);
        let (finished, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("firmware-server".into())
            .spawn(move || {
                server.run(listeners, stopped);
                let _ = finished.send(());
            })
            .map_err(|source| HttpError::Thread { source })?;
        Ok(Some(Self { stop, done }))
    }

    /// Stops accepting, lets downloads in flight finish for a few seconds,
    /// then closes what is left.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

/// Every listen address, bound before the service reports itself started,
/// so a taken port stops the start with its address named.
fn bind(settings: &Http) -> Result<Vec<StdListener>, HttpError> {
    let mut listeners = Vec::new();
    for addr in settings.addresses() {
        let l = StdListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| HttpError::Bind { addr, source })?;
        info!(addr = %l.local_addr().unwrap_or(addr), "firmware server listening");
        listeners.push(l);
    }
    Ok(listeners)
}

/// What the server's thread runs.
struct Server {
    state: Arc<State>,
    limits: Limits,
    /// One permit per connection served; the others wait to be accepted.
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl Server {
    fn run(self, listeners: Vec<StdListener>, stopped: watch::Receiver<bool>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(BLOCKING_THREADS)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(error = %e, "the firmware server cannot start its runtime");
                return;
            }
        };
        runtime.block_on(self.serve(listeners, stopped));
        runtime.shutdown_timeout(Duration::from_millis(100));
    }

    async fn serve(self, listeners: Vec<StdListener>, mut stopped: watch::Receiver<bool>) {
        let this = Arc::new(self);
        for std in listeners {
            match TcpListener::from_std(std) {
                Ok(l) => {
                    tokio::spawn(this.clone().accept(l, stopped.clone()));
                }
                Err(e) => warn!(error = %e, "the firmware server cannot use a listener"),
            }
        }
        let _ = stopped.wait_for(|s| *s).await;
        // Downloads in flight finish, or are cut after the grace time.
        let all = u32::try_from(this.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(GRACE, this.slots.acquire_many(all)).await;
        info!("firmware server stopped");
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
        loop {
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.wait_for(|s| *s) => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    let stop = stopped.clone();
                    tokio::spawn(async move {
                        conn::serve(stream, peer, &this.state, this.limits, stop).await;
                        drop(permit);
                    });
                }
                // Out of descriptors and the like: wait a little rather
                // than spin.
                Err(e) => {
                    warn!(error = %e, "the firmware server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
