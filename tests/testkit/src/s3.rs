//! A real S3-protocol server (s3s-fs) for download tests.
//!
//! gator-ota signs its requests with SigV4 and relies on S3 semantics
//! (ranges, ETags, error codes), so tests run against an actual S3
//! implementation with authentication switched on, not a plain HTTP file
//! server. s3s-fs stores objects as ordinary files, which lets tests seed
//! large objects by writing to disk instead of uploading them.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use md5::Md5;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::wait::wait_until;

/// Access key the test server accepts. Fixed, so configs under test can be
/// written as literals.
pub const ACCESS_KEY: &str = "gator-test-access";
/// Secret key matching [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "gator-test-secret-key-0123456789";
/// Region clients must sign for. s3s accepts any region in the signature,
/// but using the real default keeps client configs realistic.
pub const REGION: &str = "us-east-1";

/// Size of the chunks seeded objects are generated and written in: large
/// enough for throughput, small enough that multi-GiB objects never sit in
/// memory.
const CHUNK: usize = 1024 * 1024;

/// Runtime workers per in-process server. Two keeps a slow client from
/// stalling everyone else without spending a core per test.
const WORKER_THREADS: usize = 2;

/// Serves the S3 API for the files under `root` on `listener` until
/// `shutdown` resolves, with SigV4 authentication for one key pair.
///
/// When it returns, the listener is closed and every open connection has
/// been dropped mid-flight — deliberately not a graceful drain, because
/// "the server went away during a download" is the scenario tests need.
///
/// Shared by [`S3Server`] and the `s3-dev-server` binary so benchmarks and
/// demos exercise exactly the server the tests do.
pub async fn serve_s3(
    listener: tokio::net::TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let service = s3_service(root, access_key, secret_key)?;
    let http = ConnBuilder::new(TokioExecutor::new());
    // Owning the connection tasks (rather than `tokio::spawn`ing them loose)
    // is what lets shutdown cut them off instead of leaving them running.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => {
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    connections.spawn(async move {
                        // Client disconnects and protocol errors are routine
                        // in failure-injection tests; nothing to report.
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Typically EMFILE. Back off briefly so the loop doesn't
                    // spin at 100% CPU while the condition persists.
                    eprintln!("s3 server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set doesn't grow forever in a
            // long-running dev server.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    drop(listener);
    connections.shutdown().await;
    Ok(())
}

fn s3_service(root: &Path, access_key: &str, secret_key: &str) -> io::Result<S3Service> {
    // s3s_fs::Error implements neither Display nor std::error::Error.
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| io::Error::other(format!("s3s-fs at {}: {e:?}", root.display())))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    Ok(builder.build())
}

/// An s3s-fs server on a loopback port, running on its own thread and tokio
/// runtime.
///
/// The private runtime is what makes it usable from both sync tests and
/// `#[tokio::test]`s (including current-thread ones): the server never
/// depends on the test's executor making progress, and dropping it never
/// drops a runtime inside an async context.
///
/// Buckets are directories under [`root`](S3Server::root) and objects are
/// files below them, so the `put_*` helpers write straight to disk.
#[derive(Debug)]
pub struct S3Server {
    running: Option<Running>,
    port: u16,
    root: PathBuf,
    // Only set by `start()`; kept last so it outlives the server thread.
    _tempdir: Option<TempDir>,
}

#[derive(Debug)]
struct Running {
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl S3Server {
    /// Starts a server over a fresh temporary root (deleted on drop) on an
    /// OS-assigned loopback port.
    #[track_caller]
    pub fn start() -> S3Server {
        let tempdir = tempfile::Builder::new()
            .prefix("gator-s3-")
            .tempdir()
            .expect("create S3 root tempdir");
        let mut server = S3Server::start_at(tempdir.path().to_path_buf(), None);
        server._tempdir = Some(tempdir);
        server
    }

    /// Starts a server over `root` (created if missing, never deleted) on
    /// `port`, or on an OS-assigned port if `None`.
    ///
    /// The port is bound before this returns, so the server is reachable
    /// immediately — connections queue in the listen backlog until the
    /// server thread accepts them. No readiness wait is needed.
    #[track_caller]
    pub fn start_at(root: PathBuf, port: Option<u16>) -> S3Server {
        fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("create S3 root {}: {e}", root.display()));
        // s3s-fs resolves everything against the canonical root; using the
        // same path here keeps `object_path` and the server in agreement.
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize S3 root {}: {e}", root.display()));
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port.unwrap_or(0)))
            .unwrap_or_else(|e| panic!("bind S3 server to 127.0.0.1:{}: {e}", port.unwrap_or(0)));
        let port = listener.local_addr().expect("S3 listener address").port();
        let running = launch(&root, listener);
        S3Server {
            running: Some(running),
            port,
            root,
            _tempdir: None,
        }
    }

    /// The URL clients should use as their S3 endpoint (path-style).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens (or listened, if stopped) on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the server is currently accepting connections.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops accepting, drops every open connection (in-flight responses are
    /// cut off), and waits for the server thread to finish. No-op if already
    /// stopped. Objects on disk are untouched.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // The receiver is only gone if the server thread already died;
            // the join below reports that.
            let _ = running.shutdown.send(());
            if running.thread.join().is_err() && !thread::panicking() {
                panic!("S3 server thread on port {} panicked", self.port);
            }
        }
    }

    /// Stops the server if needed, then serves the same root on the same
    /// port again — an S3 outage followed by recovery, as the client sees it.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        // The old listener is closed by now (the thread was joined), and std
        // sets SO_REUSEADDR, so this normally succeeds at once; the retry only
        // covers another process briefly holding the port.
        let mut listener = None;
        wait_until(
            Duration::from_secs(5),
            &format!("{addr} to be bindable again"),
            || {
                listener = std::net::TcpListener::bind(addr).ok();
                listener.is_some()
            },
        );
        let listener = listener.expect("listener bound in wait_until");
        self.running = Some(launch(&self.root, listener));
    }

    /// Creates a bucket. Idempotent.
    #[track_caller]
    pub fn create_bucket(&self, name: &str) {
        let path = self.root.join(checked_bucket(name));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create bucket dir {}: {e}", path.display()));
    }

    /// Where s3s-fs keeps the bytes of `bucket/key`.
    ///
    /// For tests that inspect or damage an object directly. If you change
    /// the file's contents, re-seed it with a `put_*` helper instead, or the
    /// server keeps reporting the old ETag (see [`put_object`](Self::put_object)).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .join(checked_bucket(bucket))
            .join(checked_key(key))
    }

    /// Stores `bytes` as `bucket/key`, replacing any previous object.
    ///
    /// Writes the file directly instead of uploading: s3s-fs serves plain
    /// files under `root/bucket/` as objects. The helper also records the
    /// object's MD5 ETag in the sidecar file s3s-fs itself writes on
    /// PutObject (and drops any stale metadata sidecar); without it s3s-fs
    /// would re-hash the whole file on every GET and HEAD. The replacement is
    /// atomic (write to a temp file, then rename), so a concurrent download
    /// sees either the old or the new object, never a mix.
    #[track_caller]
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let mut w = self.object_writer(bucket, key);
        w.write(bytes);
        w.finish();
    }

    /// Stores a copy of the file at `src` as `bucket/key`, streaming it so
    /// firmware-sized files are fine, and returns its SHA-256.
    #[track_caller]
    pub fn put_object_from_file(&self, bucket: &str, key: &str, src: &Path) -> [u8; 32] {
        let mut file = File::open(src).unwrap_or_else(|e| panic!("open {}: {e}", src.display()));
        let mut w = self.object_writer(bucket, key);
        let mut buf = vec![0; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
            if n == 0 {
                break;
            }
            w.write(&buf[..n]);
        }
        w.finish()
    }

    /// Stores `len` bytes of deterministic pseudo-random data as
    /// `bucket/key` and returns their SHA-256.
    ///
    /// Generated chunk by chunk, so benchmark-sized objects cost no memory;
    /// random so that compression or dedup anywhere in the path can't flatter
    /// the numbers; seeded so that [`pseudo_random_bytes`] can reproduce any
    /// prefix for comparison.
    #[track_caller]
    pub fn put_random_object(&self, bucket: &str, key: &str, len: u64, seed: u64) -> [u8; 32] {
        let mut rng = PseudoRandom::new(seed);
        let mut w = self.object_writer(bucket, key);
        let mut buf = vec![0; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            rng.fill(&mut buf[..n]);
            w.write(&buf[..n]);
            left -= n as u64;
        }
        w.finish()
    }

    /// Removes `bucket/key` and its sidecars, for "object vanished" tests.
    /// Missing objects are ignored.
    #[track_caller]
    pub fn delete_object(&self, bucket: &str, key: &str) {
        for path in [
            self.object_path(bucket, key),
            self.sidecar_path(bucket, key, "internal"),
            self.sidecar_path(bucket, key, "metadata"),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {e}", path.display()),
            }
        }
    }

    /// s3s-fs keeps per-object state in `root/.bucket-B.object-K.{kind}.json`
    /// with B and K base64url-encoded (see `s3s_fs::fs`): `internal` holds
    /// the ETag and checksums, `metadata` the content type and user metadata.
    fn sidecar_path(&self, bucket: &str, key: &str, kind: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.{kind}.json",
            URL_SAFE_NO_PAD.encode(bucket),
            URL_SAFE_NO_PAD.encode(key)
        ))
    }

    fn object_writer(&self, bucket: &str, key: &str) -> ObjectWriter {
        static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
        let bucket_dir = self.root.join(checked_bucket(bucket));
        assert!(
            bucket_dir.is_dir(),
            "bucket {bucket:?} does not exist; call create_bucket first"
        );
        let dest = self.object_path(bucket, key);
        // In the root, not the bucket, so a half-written object never shows up
        // in a listing. The name must not match s3s-fs's own `.tmp.N.internal.part`
        // files, which it deletes on startup and numbers from zero.
        let tmp = self.root.join(format!(
            ".testkit-upload-{}-{}.part",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        ObjectWriter {
            file: Some(BufWriter::with_capacity(CHUNK, file)),
            md5: Md5::new(),
            sha256: Sha256::new(),
            tmp,
            dest,
            internal: self.sidecar_path(bucket, key, "internal"),
            metadata: self.sidecar_path(bucket, key, "metadata"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the server thread for an already-bound listener.
fn launch(root: &Path, listener: std::net::TcpListener) -> Running {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    listener
        .set_nonblocking(true)
        .expect("make S3 listener non-blocking for tokio");
    let root = root.to_path_buf();
    let (shutdown, stop_rx) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name(format!("s3-server-{port}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name(format!("s3-server-{port}-worker"))
                .enable_all()
                .build()
                .expect("build S3 server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("register S3 listener with tokio");
                let stopped = async {
                    // An error means the S3Server was dropped: stop as well.
                    let _ = stop_rx.await;
                };
                if let Err(e) = serve_s3(listener, &root, ACCESS_KEY, SECRET_KEY, stopped).await {
                    panic!("S3 server on port {port} failed: {e}");
                }
            });
            // Connections are already gone; this only bounds the wait for
            // in-flight blocking file I/O.
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
        .expect("spawn S3 server thread");
    Running { shutdown, thread }
}

/// Streams one object to disk while hashing it.
struct ObjectWriter {
    // `None` once `finish` has flushed and closed it.
    file: Option<BufWriter<File>>,
    md5: Md5,
    sha256: Sha256,
    tmp: PathBuf,
    dest: PathBuf,
    internal: PathBuf,
    metadata: PathBuf,
}

impl ObjectWriter {
    #[track_caller]
    fn write(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
        self.file
            .as_mut()
            .expect("no writes after finish")
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.tmp.display()));
    }

    #[track_caller]
    fn finish(mut self) -> [u8; 32] {
        let file = self.file.take().expect("finish is called once");
        let file = file
            .into_inner()
            .unwrap_or_else(|e| panic!("flush {}: {}", self.tmp.display(), e.error()));
        drop(file);
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        // Same shape s3s-fs writes after its own PutObject: the bare hex MD5,
        // which it serves as a quoted strong ETag.
        let md5 = std::mem::take(&mut self.md5).finalize();
        let info = serde_json::json!({ "e_tag": to_hex(&md5) });
        fs::write(&self.internal, info.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", self.internal.display()));
        match fs::remove_file(&self.metadata) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove stale {}: {e}", self.metadata.display()),
        }
        fs::rename(&self.tmp, &self.dest).unwrap_or_else(|e| {
            panic!(
                "move {} to {}: {e}",
                self.tmp.display(),
                self.dest.display()
            )
        });
        std::mem::take(&mut self.sha256).finalize().into()
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // After a successful `finish` the temp file has been renamed away and
        // this is a no-op; after a panic mid-write it removes the debris.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Rejects bucket names the server would refuse (`InvalidBucketName`, e.g.
/// anything shorter than 3 characters), so the mistake surfaces at the
/// helper call instead of as a puzzling 400 from the client under test.
/// S3's rules also keep the name from escaping the root.
#[track_caller]
fn checked_bucket(name: &str) -> &str {
    assert!(
        s3s::path::check_bucket_name(name),
        "invalid S3 bucket name {name:?} (3-63 chars of a-z, 0-9, '.', '-')"
    );
    name
}

#[track_caller]
fn checked_key(key: &str) -> &Path {
    let path = Path::new(key);
    assert!(
        !key.is_empty()
            && !key.ends_with('/')
            && path.components().all(|c| matches!(c, Component::Normal(_))),
        "object key {key:?} is not supported by the testkit (must be relative, \
         without `.`/`..` segments, not a directory marker)"
    );
    path
}

/// Renders bytes as lowercase hex, e.g. a digest from
/// [`S3Server::put_random_object`] for comparison with a manifest.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Returns the first `len` bytes of the stream
/// [`S3Server::put_random_object`] writes for `seed`.
///
/// Lets a test compute the expected content of a range, or build a small
/// object in memory with the same generator.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    PseudoRandom::new(seed).fill(&mut out);
    out
}

/// SplitMix64: tiny, fast, and fully specified, so the byte stream for a
/// seed never changes under us the way a `rand` upgrade could.
struct PseudoRandom(u64);

impl PseudoRandom {
    fn new(seed: u64) -> Self {
        PseudoRandom(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next bytes of the stream. Only the final call of
    /// a stream may pass a length that is not a multiple of 8; chunked
    /// callers use [`CHUNK`], which is.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let bytes = self.next_u64().to_le_bytes();
            tail.copy_from_slice(&bytes[..tail.len()]);
        }
    }
}
