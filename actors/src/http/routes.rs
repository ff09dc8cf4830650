//! The request handler: pointers and installed images, by exact name.
//!
//! Every request goes to [`serve`] (there is no route table that could fall
//! through to a folder). A path is compared with the published pointer URLs
//! and, percent-decoded, with the names in the index; whatever matches
//! neither is `404`, logged at debug.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::SizedStream;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use futures::stream::{self, Stream};
use tracing::debug;

use super::catalog::{Catalog, Miss, Opened, Source};
use super::device_log::{DeviceLog, DeviceRecord};
use super::range::{self, Wanted};
use crate::fleet::GetReport;
use crate::fleet::device::Mac;
use crate::fleet::rollout::{Decision, Gate};
use crate::paths::check_file_name;
use actix::Recipient;

/// Bytes read from the image per step. actix-web copies each chunk into the
/// connection's write buffer and asks for the next once that holds less than
/// 32 KiB, so a download holds about 50 KiB at most. In tests/bench-http.sh
/// (200 downloads at once) 64 KiB chunks took ~5 MiB more peak RSS for no
/// more throughput that could be told from the noise.
const CHUNK: u64 = 16 * 1024;

/// Bytes per step of an image held in memory: a slice costs no memory of
/// its own, and larger steps mean fewer turns of the connection's loop.
const HELD_CHUNK: u64 = 32 * 1024;

/// What every request handler shares.
pub(crate) struct State {
    pub catalog: Catalog,
    pub log: DeviceLog,
    /// The device registry, for the fleet's endpoints ([`super::status`]).
    pub fleet: Option<Recipient<GetReport>>,
    /// The staged rollouts; `None` while they are off.
    pub rollout: Option<Arc<Gate>>,
}

pub(crate) async fn serve(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .finish();
    }
    let path = req.uri().path();
    if state.catalog.is_pointer_url(path) {
        return match state.catalog.pointer(path).await {
            Ok(body) => HttpResponse::Ok()
                .content_type("text/plain")
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .body(body),
            Err(miss) => {
                debug!(path, reason = miss.describe(), "pointer withheld");
                HttpResponse::NotFound().finish()
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
fn held(req: &HttpRequest, opened: &Opened, gate: Option<&Gate>) -> Option<String> {
    let mac = header_str(req, "x-esp32-sta-mac").and_then(Mac::parse);
    match gate?.decide(mac.as_ref(), &opened.image.file_name) {
        Decision::Serve => None,
        Decision::Hold(reason) => Some(reason),
    }
}

/// `304` for a device outside the rollout's current wave: HTTPUpdate takes
/// it as "no update" and the device stays on its version.
fn not_in_wave(req: &HttpRequest, opened: &Opened, log: &DeviceLog, reason: &str) -> HttpResponse {
    let image = &opened.image;
    debug!(image = %image.file_name, mac = ?header_str(req, "x-esp32-sta-mac"), reason, "held back by the staged rollout");
    let mut record = new_record(req, &image.file_name, &image.sha256);
    record.status = 304;
    record.completed = true;
    log.record(record);
    HttpResponse::NotModified().finish()
}

fn not_found(req: &HttpRequest, miss: Miss) -> HttpResponse {
    debug!(path = req.uri().path(), method = %req.method(), peer = ?req.peer_addr(),
        reason = miss.describe(), "not served");
    HttpResponse::NotFound().finish()
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

fn image(req: &HttpRequest, opened: Opened, log: &DeviceLog, head: bool) -> HttpResponse {
    let Opened {
        body: source,
        image,
        md5,
    } = opened;
    let etag = format!("\"{}\"", image.sha256);
    let mut record = new_record(req, &image.file_name, &image.sha256);
    let already =
        header_str(req, "x-esp32-sketch-md5").is_some_and(|m| m.eq_ignore_ascii_case(&md5));
    if already || none_match(req, &etag) {
        record.status = 304;
        record.completed = true;
        log.record(record);
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish();
    }
    let len = image.bytes;
    let wanted = match header_str(req, "if-range") {
        Some(tag) if tag.trim() != etag => Wanted::Whole,
        _ => range::parse(header_str(req, "range"), len),
    };
    let (mut res, start, count) = match wanted {
        Wanted::Whole => (HttpResponse::Ok(), 0, len),
        Wanted::Part { start, end } => {
            let mut res = HttpResponse::PartialContent();
            res.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")));
            record.status = 206;
            (res, start, end - start + 1)
        }
        Wanted::Unsatisfiable => {
            record.status = 416;
            log.record(record);
            return HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{len}")))
                .finish();
        }
    };
    image_headers(&mut res, &etag, &md5, &image.sha256);
    record.bytes_expected = count;
    if head {
        record.bytes_expected = 0;
        record.completed = true;
        log.record(record);
        return res.body(SizedStream::new(
            count,
            stream::empty::<Result<Bytes, std::io::Error>>(),
        ));
    }
    let transfer = Transfer {
        source: match source {
            Source::Held(bytes) => Body::Held(bytes),
            Source::File(file) => Body::File(Arc::new(file)),
        },
        offset: start,
        remaining: count,
        tracker: Tracker {
            log: log.clone(),
            record: Some(record),
        },
    };
    res.body(SizedStream::new(count, body(transfer)))
}

fn image_headers(res: &mut HttpResponseBuilder, etag: &str, md5: &str, sha256: &str) {
    res.content_type("application/octet-stream")
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, etag.to_string()))
        .insert_header(("x-MD5", md5.to_string()))
        .insert_header(("x-SHA256", sha256.to_string()));
}

/// `If-None-Match` naming this image (`*`, or its ETag, weak or strong).
fn none_match(req: &HttpRequest, etag: &str) -> bool {
    header_str(req, "if-none-match").is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
    })
}

fn header_str<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers()
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}

fn new_record(req: &HttpRequest, image: &str, sha256: &str) -> DeviceRecord {
    let mac = header_str(req, "x-esp32-sta-mac").map(str::to_string);
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    DeviceRecord {
        time: now(),
        device: mac.clone().or_else(|| ip.clone()).unwrap_or_default(),
        mac,
        ip,
        user_agent: header_str(req, "user-agent").map(str::to_string),
        image: image.to_string(),
        sha256: sha256.to_string(),
        method: req.method().to_string(),
        range: header_str(req, "range").map(str::to_string),
        status: 200,
        bytes_sent: 0,
        bytes_expected: 0,
        completed: false,
    }
}

/// One download in progress: the image, where it is, and its record.
struct Transfer {
    source: Body,
    offset: u64,
    remaining: u64,
    tracker: Tracker,
}

/// Writes the download's record when the body is done with, whether every
/// byte went out or the device went away.
enum Body {
    Held(Bytes),
    File(Arc<File>),
}

impl Body {
    /// The next `n` bytes at `offset`: a slice of held bytes (no copy), or
    /// a read of the file.
    async fn chunk(&self, offset: u64, n: usize) -> std::io::Result<Bytes> {
        match self {
            Self::Held(bytes) => {
                let start = offset as usize;
                match bytes.get(start..start + n) {
                    Some(_) => Ok(bytes.slice(start..start + n)),
                    None => Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
            Self::File(file) => read_chunk(file, offset, n).await,
        }
    }
}

struct Tracker {
    log: DeviceLog,
    record: Option<DeviceRecord>,
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

/// The body: one chunk at a time, each read only when the connection has
/// taken the one before.
fn body(transfer: Transfer) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    stream::unfold(Some(transfer), |t| async move {
        let mut t = t?;
        if t.remaining == 0 {
            return None;
        }
        let step = match t.source {
            Body::Held(_) => HELD_CHUNK,
            Body::File(_) => CHUNK,
        };
        let n = t.remaining.min(step) as usize;
        match t.source.chunk(t.offset, n).await {
            Ok(buf) => {
                let got = buf.len() as u64;
                t.offset += got;
                t.remaining -= got;
                if let Some(r) = t.tracker.record.as_mut() {
                    r.bytes_sent += got;
                }
                Some((Ok(buf), Some(t)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Off when the kernel or filesystem refused `RWF_NOWAIT` once: every read
/// goes to a blocking thread from then on.
static NOWAIT: AtomicBool = AtomicBool::new(true);

/// Up to `n` bytes at `offset` (at least one). Straight from the page cache
/// when they are there: `preadv2(RWF_NOWAIT)` never waits on the disk, so it
/// cannot block the worker, and it spares a hand-off to a blocking thread
/// per chunk (most of a download's CPU time on loopback). Bytes not in the
/// cache are read on a blocking thread.
async fn read_chunk(file: &Arc<File>, offset: u64, n: usize) -> std::io::Result<Bytes> {
    use rustix::io::Errno;
    let mut buf = vec![0u8; n];
    if NOWAIT.load(Ordering::Relaxed) {
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        match rustix::io::preadv2(&**file, &mut [IoSliceMut::new(&mut buf)], offset, flags) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(got) => {
                buf.truncate(got);
                return Ok(Bytes::from(buf));
            }
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e @ (Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL)) => {
                debug!(error = %e, "RWF_NOWAIT refused; reading on blocking threads");
                NOWAIT.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        file.read_exact_at(&mut buf, offset)
            .map(|()| Bytes::from(buf))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a whole file chunk by chunk with `read_chunk`, as a body does.
    async fn read_all(file: &Arc<File>, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let n = (len - out.len() as u64).min(CHUNK) as usize;
            let got = read_chunk(file, out.len() as u64, n).await.unwrap();
            assert!(!got.is_empty() && got.len() <= n);
            out.extend_from_slice(&got);
        }
        out
    }

    #[actix_rt::test]
    async fn chunks_give_the_file_bytes_and_stop_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.bin");
        let bytes: Vec<u8> = (0..CHUNK * 3 + 1000).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        assert_eq!(read_all(&file, bytes.len() as u64).await, bytes);
        // The same through the blocking threads alone (as where the kernel
        // refuses RWF_NOWAIT); other tests only read slower meanwhile.
        NOWAIT.store(false, Ordering::Relaxed);
        let blocking = read_all(&file, bytes.len() as u64).await;
        NOWAIT.store(true, Ordering::Relaxed);
        assert_eq!(blocking, bytes);
        // Past the end (a file shorter than the index says): an error, not
        // an empty chunk a body would loop on.
        let err = read_chunk(&file, bytes.len() as u64, 10).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
