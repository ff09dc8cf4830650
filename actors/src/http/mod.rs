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
//! `/metrics` and the status page `/` ([`status`]). The server
//! runs one actix-web worker on its own thread, so a download never shares
//! an arbiter with the pipeline's actors; connections are capped and every
//! connection phase has a timeout.

mod catalog;
pub mod device_log;
mod memory;
mod range;
mod routes;
mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::{App, HttpServer, web};
use gator_ota_settings::Http;
use tracing::info;

use crate::fleet::GetReport;
use crate::fleet::rollout::Gate;
use crate::journal::Journal;
use crate::paths::{Confinement, PathError};
use actix::Recipient;
use catalog::Catalog;
use device_log::{DeviceLog, Tap};
use routes::State;

/// Threads the worker may run file opens and page-cache misses on. The
/// default (512) let 200 downloads at once start ~100-200 threads, each with
/// its stack and malloc arena; a gateway's SD card serves no more reads at
/// once than a few, so the rest may queue.
const BLOCKING_THREADS: usize = 8;

/// Seconds a stopping server gives the downloads in flight.
const GRACE_SECS: u64 = 3;

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
    handle: ServerHandle,
}

impl FirmwareServer {
    /// Binds every listen address and starts serving; `None` when
    /// `http.enabled` is off. Must run inside an actix system.
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
        let state = web::Data::new(State {
            catalog: Catalog::new(journal, pointers),
            log,
            fleet: fleet.reports,
            rollout: fleet.rollout,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(status::routes)
                .default_service(web::to(routes::serve))
        })
        .workers(1)
        .worker_max_blocking_threads(BLOCKING_THREADS)
        .max_connections(settings.max_connections)
        .client_request_timeout(settings.request_timeout)
        .client_disconnect_timeout(settings.disconnect_timeout)
        .keep_alive(keep_alive(settings))
        .shutdown_timeout(GRACE_SECS)
        .disable_signals();
        for addr in settings.addresses() {
            server = server
                .bind(addr)
                .map_err(|source| HttpError::Bind { addr, source })?;
        }
        let addrs = server.addrs();
        let running = server.run();
        let handle = running.handle();
        actix_rt::spawn(running);
        for addr in &addrs {
            info!(%addr, "firmware server listening");
        }
        Ok(Some(Self { handle }))
    }

    /// Stops accepting, lets downloads in flight finish for a few seconds,
    /// then closes what is left.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

fn keep_alive(settings: &Http) -> KeepAlive {
    if settings.keep_alive.is_zero() {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(settings.keep_alive)
    }
}
