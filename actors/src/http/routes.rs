//! The request handler: pointers and installed images, by exact name.
//!
//! Every request goes to [`respond`] (there is no route table that could
//! fall through to a folder). A path is compared with the fleet's views,
//! the published pointer URLs and, percent-decoded, with the names in the
//! index; whatever matches none is `404`, logged at debug.

use std::sync::Arc;

use tracing::debug;

use super::catalog::{Catalog, Miss, Opened};
use super::device_log::{DeviceLog, DeviceRecord};
use super::range::{self, Wanted};
use super::reply::{Body, FileBody, Reply};
use super::request::{Method, Request};
use super::status;
use super::verified::Served;
use crate::fleet::GetReport;
use crate::fleet::device::Mac;
use crate::fleet::rollout::{Decision, Gate};
use crate::paths::check_file_name;
use actix::Recipient;

/// What every request handler shares.
pub(crate) struct State {
    pub catalog: Catalog,
    pub log: DeviceLog,
    /// The device registry, for the fleet's endpoints ([`super::status`]).
    pub fleet: Option<Recipient<GetReport>>,
    /// The staged rollouts; `None` while they are off.
    pub rollout: Option<Arc<Gate>>,
}

pub(crate) async fn respond(req: Request, state: &State) -> Reply {
    let head = req.method == Method::Head;
    if !head && req.method != Method::Get {
        return Reply::new(405).header("Allow", "GET, HEAD").closing();
    }
    let Some(path) = req.path() else {
        return not_found(&req, Miss::Unknown);
    };
    if !head
        && let Some(fleet) = &state.fleet
        && let Some(view) = status::view(path)
    {
        return status::show(fleet, view, state).await;
    }
    if state.catalog.is_pointer_url(path) {
        return match state.catalog.pointer(path).await {
            Ok(body) => Reply::new(200)
                .header("Cache-Control", "no-cache")
                .text("text/plain", body),
            Err(miss) => {
                debug!(path, reason = miss.describe(), "pointer withheld");
                Reply::new(404)
            }
        };
    }
    let Some(name) = requested_name(path) else {
        return not_found(&req, Miss::Unknown);
    };
    match state.catalog.image(&name).await {
        Ok(opened) => match held(&req, &opened, state.rollout.as_deref()) {
            Some(reason) => not_in_wave(&req, &opened, &state.log, &reason),
            None => image(&req, opened, &state.log, head),
        },
        Err(miss) => not_found(&req, miss),
    }
}

/// Why a staged rollout holds this device back from the image, if it does.
fn held(req: &Request, opened: &Opened, gate: Option<&Gate>) -> Option<String> {
    let mac = req.header("x-esp32-sta-mac").and_then(Mac::parse);
    match gate?.decide(mac.as_ref(), &opened.image.file_name) {
        Decision::Serve => None,
        Decision::Hold(reason) => Some(reason),
    }
}

/// `304` for a device outside the rollout's current wave: HTTPUpdate takes
/// it as "no update" and the device stays on its version.
fn not_in_wave(req: &Request, opened: &Opened, log: &DeviceLog, reason: &str) -> Reply {
    let image = &opened.image;
    debug!(image = %image.file_name, mac = ?req.header("x-esp32-sta-mac"), reason, "held back by the staged rollout");
    let mut record = new_record(req, &image.file_name, &opened.served.sha256);
    record.status = 304;
    record.completed = true;
    log.record(record);
    Reply::new(304)
}

fn not_found(req: &Request, miss: Miss) -> Reply {
    debug!(path = %req.target, method = %req.method, peer = ?req.peer,
        reason = miss.describe(), "not served");
    Reply::new(404)
}

/// The image name in a request path: one plain file name, percent-decoded.
fn requested_name(path: &str) -> Option<String> {
    let name = percent_decode(path.strip_prefix('/')?)?;
    check_file_name(&name).ok()?;
    Some(name)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn image(req: &Request, opened: Opened, log: &DeviceLog, head: bool) -> Reply {
    let Opened {
        file,
        image,
        served: Served { sha256, md5 },
    } = opened;
    let etag = format!("\"{sha256}\"");
    let mut record = new_record(req, &image.file_name, &sha256);
    let already = req
        .header("x-esp32-sketch-md5")
        .is_some_and(|m| m.eq_ignore_ascii_case(&md5));
    if already || none_match(req, &etag) {
        record.status = 304;
        record.completed = true;
        log.record(record);
        return Reply::new(304).header("ETag", etag);
    }
    let len = image.bytes;
    let wanted = match req.header("if-range") {
        Some(tag) if tag.trim() != etag => Wanted::Whole,
        _ => range::parse(req.header("range"), len),
    };
    let (res, start, count) = match wanted {
        Wanted::Whole => (Reply::new(200), 0, len),
        Wanted::Part { start, end } => {
            record.status = 206;
            let res = Reply::new(206).header("Content-Range", format!("bytes {start}-{end}/{len}"));
            (res, start, end - start + 1)
        }
        Wanted::Unsatisfiable => {
            record.status = 416;
            log.record(record);
            return Reply::new(416).header("Content-Range", format!("bytes */{len}"));
        }
    };
    let res = image_headers(res, &etag, &md5, &sha256);
    if head {
        record.completed = true;
        log.record(record);
        return res.with_body(Body::Head(count));
    }
    record.bytes_expected = count;
    let tracker = Tracker {
        log: log.clone(),
        record: Some(record),
    };
    res.with_body(Body::File(Box::new(FileBody {
        file,
        offset: start,
        len: count,
        tracker,
    })))
}

fn image_headers(res: Reply, etag: &str, md5: &str, sha256: &str) -> Reply {
    res.header("Content-Type", "application/octet-stream")
        .header("Accept-Ranges", "bytes")
        .header("ETag", etag)
        .header("x-MD5", md5)
        .header("x-SHA256", sha256)
}

/// `If-None-Match` naming this image (`*`, or its ETag, weak or strong).
fn none_match(req: &Request, etag: &str) -> bool {
    req.header("if-none-match").is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
    })
}

fn new_record(req: &Request, image: &str, sha256: &str) -> DeviceRecord {
    let mac = req.header("x-esp32-sta-mac").map(str::to_string);
    let ip = req.peer.map(|a| a.ip().to_string());
    DeviceRecord {
        time: now(),
        device: mac.clone().or_else(|| ip.clone()).unwrap_or_default(),
        mac,
        ip,
        user_agent: req.header("user-agent").map(str::to_string),
        image: image.to_string(),
        sha256: sha256.to_string(),
        method: req.method.to_string(),
        range: req.header("range").map(str::to_string),
        status: 200,
        bytes_sent: 0,
        bytes_expected: 0,
        completed: false,
    }
}

/// Writes the download's record when the body is done with, whether every
/// byte went out or the device went away.
pub(crate) struct Tracker {
    log: DeviceLog,
    record: Option<DeviceRecord>,
}

impl Tracker {
    pub(crate) fn sent(&mut self, bytes: u64) {
        if let Some(r) = self.record.as_mut() {
            r.bytes_sent += bytes;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.completed = r.bytes_sent == r.bytes_expected;
            r.time = now();
            self.log.record(r);
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
