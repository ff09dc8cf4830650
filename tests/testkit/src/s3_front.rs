//! A fault-injecting front for [`S3Server`]: an HTTP proxy that passes each
//! request through untouched and misbehaves the way a test tells it to —
//! answers that never come, bodies that stall or end early, 503 SlowDown,
//! a Range header ignored, SSE-KMS ETags, S3 checksums.
//!
//! SigV4 signs the Host header and every `x-amz-*` header, so the front
//! changes nothing in a request: it forwards the client's Host as it is (the
//! S3 server does not care which port it was reached on) and edits only
//! responses. Faults that need the object's bytes (a whole object for a
//! ranged GET) read them from the server's root.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::{StreamExt, stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderValue, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::S3Server;
use crate::s3::to_hex;

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What a fault does to the requests it matches.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send the response headers only after this long.
    DelayHeaders(Duration),
    /// Send this many bytes of the body, then nothing, the connection open.
    StallAfter(u64),
    /// `503 SlowDown`, with S3's XML error body.
    SlowDown,
    /// Answer a ranged GET with `200` and the whole object.
    IgnoreRange,
    /// Serve the object as if it had only its first `n` bytes while HEAD
    /// still tells its full size: bodies are cut at byte `n` (the connection
    /// drops), a range from `n` on gets `416 InvalidRange`.
    ShortObject(u64),
    /// Answer as S3 does for an SSE-KMS object: with
    /// `x-amz-server-side-encryption: aws:kms`, and an ETag that looks like an
    /// MD5 but is not the MD5 of the bytes.
    SseKms,
    /// Add `x-amz-checksum-sha256` (this base64 value, type FULL_OBJECT) to
    /// whole-object answers when the request asks with
    /// `x-amz-checksum-mode: ENABLED`, as S3 does.
    ChecksumSha256(String),
    /// The same with `x-amz-checksum-crc32c` (see [`checksum_crc32c`]).
    ChecksumCrc32c(String),
    /// The same with `x-amz-checksum-crc64nvme`, S3's default for new
    /// uploads (see [`checksum_crc64nvme`]).
    ChecksumCrc64Nvme(String),
}

/// One rule: an action for the requests of a method (or any) on a key,
/// every time or the first `n` times.
#[derive(Debug, Clone)]
pub struct Fault {
    method: Option<Method>,
    key: String,
    ranged_only: bool,
    times: Option<usize>,
    action: Action,
}

impl Fault {
    pub fn head(key: &str, action: Action) -> Self {
        Self::new(Some(Method::HEAD), key, action)
    }

    pub fn get(key: &str, action: Action) -> Self {
        Self::new(Some(Method::GET), key, action)
    }

    /// For HEADs and GETs alike.
    pub fn any(key: &str, action: Action) -> Self {
        Self::new(None, key, action)
    }

    fn new(method: Option<Method>, key: &str, action: Action) -> Self {
        Self {
            method,
            key: key.to_string(),
            ranged_only: false,
            times: None,
            action,
        }
    }

    /// Only the first `n` matching requests; the rest pass untouched.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }

    /// Only requests with a `Range` header.
    pub fn ranged(mut self) -> Self {
        self.ranged_only = true;
        self
    }
}

/// Counts the requests a fault acted on.
#[derive(Debug, Clone)]
pub struct FaultHandle(Arc<AtomicUsize>);

impl FaultHandle {
    pub fn hits(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    hits: Arc<AtomicUsize>,
}

/// A request as the front saw it, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub key: String,
    pub range: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    faults: Mutex<Vec<Armed>>,
    seen: Mutex<Vec<Seen>>,
}

impl State {
    /// The actions of every fault matching this request; each use counts.
    fn actions(&self, method: &Method, key: &str, ranged: bool) -> Vec<Action> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut actions = vec![];
        for armed in faults.iter_mut() {
            let f = &armed.fault;
            let matches = f.key == key
                && f.method.as_ref().is_none_or(|m| m == method)
                && (ranged || !f.ranged_only)
                && f.times
                    .is_none_or(|n| armed.hits.load(Ordering::SeqCst) < n);
            if matches {
                armed.hits.fetch_add(1, Ordering::SeqCst);
                actions.push(f.action.clone());
            }
        }
        actions
    }
}

/// The front, on its own loopback port, thread and runtime (see
/// [`S3Server`] for why). Point the client's endpoint at
/// [`endpoint`](Self::endpoint).
#[derive(Debug)]
pub struct S3Front {
    running: Option<Running>,
    port: u16,
    state: Arc<State>,
}

#[derive(Debug)]
struct Running {
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl S3Front {
    /// A front for `server`, passing everything through until faults are added.
    #[track_caller]
    pub fn start(server: &S3Server) -> S3Front {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("bind S3 front: {e}"));
        let port = listener.local_addr().expect("S3 front address").port();
        listener
            .set_nonblocking(true)
            .expect("make S3 front listener non-blocking");
        let upstream = Upstream {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, server.port())),
            root: server.root().to_path_buf(),
        };
        let state = Arc::new(State::default());
        let (shutdown, stop_rx) = oneshot::channel::<()>();
        let shared = state.clone();
        let thread = thread::Builder::new()
            .name(format!("s3-front-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("build S3 front runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register S3 front listener");
                    serve(listener, upstream, shared, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
                // Held answers (delays, stalls) end here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn S3 front thread");
        S3Front {
            running: Some(Running { shutdown, thread }),
            port,
            state,
        }
    }

    /// The URL to give clients as their S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add(&self, fault: Fault) -> FaultHandle {
        let hits = Arc::new(AtomicUsize::new(0));
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Armed {
                fault,
                hits: hits.clone(),
            });
        FaultHandle(hits)
    }

    /// Removes every fault: from now on everything passes untouched.
    pub fn clear(&self) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many `method` requests for `key` arrived so far.
    pub fn count(&self, method: &str, key: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.key == key)
            .count()
    }
}

impl Drop for S3Front {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(());
            if running.thread.join().is_err() && !thread::panicking() {
                panic!("S3 front thread on port {} panicked", self.port);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Upstream {
    addr: SocketAddr,
    root: PathBuf,
}

async fn serve(
    listener: tokio::net::TcpListener,
    upstream: Upstream,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let (upstream, state) = (upstream.clone(), state.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, upstream.clone(), state.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// The request's `bucket/key` split, from a path-style URL.
fn object_of(req: &Request<Incoming>) -> (String, String) {
    let path = req.uri().path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    (bucket.to_string(), key.to_string())
}

/// The first byte of a `bytes=N-` or `bytes=N-M` range.
fn range_start(req: &Request<Incoming>) -> Option<u64> {
    let value = req.headers().get(RANGE)?.to_str().ok()?;
    value
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

async fn handle(
    req: Request<Incoming>,
    upstream: Upstream,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let (bucket, key) = object_of(&req);
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let checksum_mode = req
        .headers()
        .get("x-amz-checksum-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"ENABLED"));
    state
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Seen {
            method: method.to_string(),
            key: key.clone(),
            range: range.clone(),
        });
    let actions = state.actions(&method, &key, range.is_some());
    let start = range_start(&req);

    if let Some(delay) = actions
        .iter()
        .filter_map(|a| match a {
            Action::DelayHeaders(d) => Some(*d),
            _ => None,
        })
        .max()
    {
        tokio::time::sleep(delay).await;
    }
    if actions.iter().any(|a| matches!(a, Action::SlowDown)) {
        return Ok(s3_error(
            &method,
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ));
    }
    let short = actions.iter().find_map(|a| match a {
        Action::ShortObject(n) => Some(*n),
        _ => None,
    });
    if let (Some(n), Some(from)) = (short, start)
        && from >= n
    {
        return Ok(s3_error(
            &method,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        ));
    }

    let mut response = match forward(req, upstream.addr).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(s3_error(
                &method,
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("front: {e}"),
            ));
        }
    };
    let ignore_range = actions.iter().any(|a| matches!(a, Action::IgnoreRange));
    if ignore_range && response.status() == StatusCode::PARTIAL_CONTENT {
        response = whole_object(response, &upstream.root.join(&bucket).join(&key)).await;
    }
    for action in &actions {
        match action {
            Action::SseKms => as_sse_kms(&mut response),
            Action::ChecksumSha256(b64) if checksum_mode => {
                with_checksum(&mut response, "x-amz-checksum-sha256", b64)
            }
            Action::ChecksumCrc32c(b64) if checksum_mode => {
                with_checksum(&mut response, "x-amz-checksum-crc32c", b64)
            }
            Action::ChecksumCrc64Nvme(b64) if checksum_mode => {
                with_checksum(&mut response, "x-amz-checksum-crc64nvme", b64)
            }
            _ => {}
        }
    }
    let served_from = if response.status() == StatusCode::PARTIAL_CONTENT {
        start.unwrap_or(0)
    } else {
        0
    };
    let limit = actions
        .iter()
        .filter_map(|a| match a {
            Action::StallAfter(n) => Some(Cut::Stall(*n)),
            Action::ShortObject(n) => Some(Cut::Drop(n.saturating_sub(served_from))),
            _ => None,
        })
        .next();
    Ok(match limit {
        Some(cut) if method == Method::GET => cut_body(response, cut),
        _ => response,
    })
}

async fn forward(req: Request<Incoming>, upstream: SocketAddr) -> io::Result<Response<Body>> {
    let socket = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The Host header and the signed headers go as the client sent them.
    let response = sender.send_request(req).await.map_err(io::Error::other)?;
    Ok(response.map(|b| b.map_err(io::Error::other).boxed_unsync()))
}

/// S3's XML error; a HEAD answer has no body.
fn s3_error(method: &Method, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = if *method == Method::HEAD {
        Empty::new()
            .map_err(|e: Infallible| match e {})
            .boxed_unsync()
    } else {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        );
        Full::new(Bytes::from(xml))
            .map_err(|e: Infallible| match e {})
            .boxed_unsync()
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/xml")
        .body(body)
        .expect("a valid error response")
}

/// The 206's headers, as a 200 with the whole object from disk.
async fn whole_object(partial: Response<Body>, file: &std::path::Path) -> Response<Body> {
    let (mut parts, _) = partial.into_parts();
    let bytes = tokio::fs::read(file).await.unwrap_or_default();
    parts.status = StatusCode::OK;
    parts.headers.remove(CONTENT_RANGE);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = Full::new(Bytes::from(bytes))
        .map_err(|e: Infallible| match e {})
        .boxed_unsync();
    Response::from_parts(parts, body)
}

fn as_sse_kms(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(
        "x-amz-server-side-encryption",
        HeaderValue::from_static("aws:kms"),
    );
    headers.insert(
        "x-amz-server-side-encryption-aws-kms-key-id",
        HeaderValue::from_static("arn:aws:kms:us-east-1:111122223333:key/test"),
    );
    // Like S3's: 32 hex digits, stable per object version, not the content's MD5.
    if let Some(etag) = headers.get(ETAG) {
        let fake = to_hex(
            &Md5::new()
                .chain_update(etag.as_bytes())
                .chain_update(b"kms")
                .finalize(),
        );
        headers.insert(
            ETAG,
            HeaderValue::from_str(&format!("\"{fake}\"")).expect("hex is a header value"),
        );
    }
}

fn with_checksum(response: &mut Response<Body>, header: &'static str, b64: &str) {
    // S3 leaves checksums out of partial answers.
    if response.status() == StatusCode::PARTIAL_CONTENT || !response.status().is_success() {
        return;
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(b64) {
        headers.insert(header, value);
        headers.insert(
            "x-amz-checksum-type",
            HeaderValue::from_static("FULL_OBJECT"),
        );
    }
}

/// The base64 SHA-256 S3 would send in `x-amz-checksum-sha256`.
pub fn checksum_sha256(digest: &[u8; 32]) -> String {
    STANDARD.encode(digest)
}

/// The base64 CRC-32C of `bytes` S3 would send in `x-amz-checksum-crc32c`.
pub fn checksum_crc32c(bytes: &[u8]) -> String {
    let crc = reflected_crc(bytes, 0x82F6_3B78, 32) as u32;
    STANDARD.encode(crc.to_be_bytes())
}

/// The base64 CRC-64/NVME of `bytes` S3 would send in
/// `x-amz-checksum-crc64nvme`.
pub fn checksum_crc64nvme(bytes: &[u8]) -> String {
    STANDARD.encode(reflected_crc(bytes, 0x9A6C_9329_AC4B_C9B5, 64).to_be_bytes())
}

/// A reflected CRC with all-ones init and final xor (both CRC-32C and
/// CRC-64/NVME are), `poly` given reflected. Bit by bit from the definition,
/// on purpose: slow, but independent of the table and SIMD code gator-ota
/// uses, so a test compares two implementations, not one with itself.
fn reflected_crc(bytes: &[u8], poly: u64, width: u32) -> u64 {
    let mask = u64::MAX >> (64 - width);
    let mut crc = mask;
    for &b in bytes {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    crc ^ mask
}

enum Cut {
    /// After `n` bytes, nothing more; the connection stays open.
    Stall(u64),
    /// After `n` bytes the connection drops.
    Drop(u64),
}

fn cut_body(response: Response<Body>, cut: Cut) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let (mut left, stall) = match cut {
        Cut::Stall(n) => (n, true),
        Cut::Drop(n) => (n, false),
    };
    let frames = BodyStream::new(body).map(move |frame| {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            return Ok(None);
        };
        let keep = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= keep as u64;
        Ok(Some(data.slice(..keep)))
    });
    let head = frames
        .take_while(|f: &io::Result<Option<Bytes>>| {
            futures::future::ready(!matches!(f, Ok(Some(d)) if d.is_empty()))
        })
        .filter_map(|f| async move {
            match f {
                Ok(Some(d)) => Some(Ok(Frame::data(d))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        });
    let tail: stream::BoxStream<'static, io::Result<Frame<Bytes>>> = if stall {
        stream::pending().boxed()
    } else {
        stream::once(async {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "front: the object ends here",
            ))
        })
        .boxed()
    };
    let body = BodyExt::boxed_unsync(StreamBody::new(head.chain(tail)));
    Response::from_parts(parts, body)
}
