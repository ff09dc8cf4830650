//! An S3 server that serves objects from memory, for benchmarks.
//!
//! s3s-fs reads an object 4 KiB at a time, so a client downloading from it
//! measures the server: curl and gator-ota are both capped at its rate. This
//! backend keeps every object as one `Bytes` and answers a GET with
//! zero-copy slices of [`BODY_CHUNK`], so the server costs a fraction of what
//! the client does and a benchmark sees the client. SigV4 stays on (the same
//! [`SimpleAuth`] as the tests' server), and the operations a download uses
//! behave as S3's do: GET and HEAD with the MD5 ETag and, when the request
//! asks (`x-amz-checksum-mode: ENABLED`), the full-object CRC-64/NVME that S3
//! gives every object uploaded without a checksum of its own; Range (a
//! `206` with its `Content-Range`, a `416` past the end), PUT, and bucket
//! creation.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use md5::{Digest as _, Md5};
use s3s::auth::SimpleAuth;
use s3s::dto::{
    ChecksumMode, ChecksumType, CreateBucketInput, CreateBucketOutput, ETag, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp,
};
use s3s::service::S3ServiceBuilder;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Request, S3Response, S3Result, StdError, s3_error};
use tokio::task::JoinSet;

use crate::s3::to_hex;

/// The size of the body chunks a GET is answered in: large enough that
/// per-chunk costs (a poll, a frame, a write call) vanish next to the
/// client's work on the bytes.
pub const BODY_CHUNK: usize = 4 * 1024 * 1024;

/// One stored object: its bytes and what S3 says about them.
#[derive(Clone, Debug)]
struct Object {
    data: Bytes,
    /// The bare hex MD5, served as a quoted strong ETag (as S3 does for a
    /// single-part upload).
    md5_hex: String,
    /// Base64 of the big-endian CRC-64/NVME, as S3 writes it.
    crc64nvme: String,
    last_modified: SystemTime,
}

impl Object {
    fn new(data: Bytes) -> Object {
        use base64::Engine as _;
        let md5_hex = to_hex(&Md5::digest(&data));
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data);
        Object {
            data,
            md5_hex,
            crc64nvme: base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()),
            last_modified: SystemTime::now(),
        }
    }

    /// The object's checksum and its type, when the request asked for
    /// checksums and reads the whole object (S3 sends no full-object
    /// checksum with a range).
    fn checksum(
        &self,
        mode: Option<&ChecksumMode>,
        whole: bool,
    ) -> (Option<String>, Option<ChecksumType>) {
        let asked = mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        if asked && whole {
            let kind = ChecksumType::from_static(ChecksumType::FULL_OBJECT);
            (Some(self.crc64nvme.clone()), Some(kind))
        } else {
            (None, None)
        }
    }
}

/// Buckets, each a map of key to object. Cloning shares the store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    buckets: Arc<RwLock<HashMap<String, HashMap<String, Object>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Creates `bucket` if it is missing.
    pub fn create_bucket(&self, bucket: &str) {
        self.write().entry(bucket.to_owned()).or_default();
    }

    /// Stores `data` as `bucket/key` (creating the bucket), replacing any
    /// previous object.
    pub fn put(&self, bucket: &str, key: &str, data: Bytes) {
        let object = Object::new(data);
        self.write()
            .entry(bucket.to_owned())
            .or_default()
            .insert(key.to_owned(), object);
    }

    /// Loads every file under `root/<bucket>/` as an object of that bucket
    /// (the layout s3s-fs serves), skipping dot files at the root, which are
    /// s3s-fs's sidecars. Returns how many objects were loaded.
    pub fn load_dir(&self, root: &Path) -> io::Result<usize> {
        let mut loaded = 0;
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type()?.is_dir() {
                continue;
            }
            self.create_bucket(&name);
            loaded += self.load_bucket(&name, &entry.path(), "")?;
        }
        Ok(loaded)
    }

    fn load_bucket(&self, bucket: &str, dir: &Path, prefix: &str) -> io::Result<usize> {
        let mut loaded = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let key = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                loaded += self.load_bucket(bucket, &entry.path(), &format!("{key}/"))?;
            } else {
                self.put(bucket, &key, Bytes::from(fs::read(entry.path())?));
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    fn get(&self, bucket: &str, key: &str) -> S3Result<Object> {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        let objects = buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        objects
            .get(key)
            .cloned()
            .ok_or_else(|| s3_error!(NoSuchKey))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<String, Object>>> {
        self.buckets.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The s3s backend over a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemoryS3 {
    store: MemoryStore,
}

impl MemoryS3 {
    /// A backend serving `store`.
    pub fn new(store: MemoryStore) -> MemoryS3 {
        MemoryS3 { store }
    }
}

fn last_modified(object: &Object) -> Timestamp {
    Timestamp::from(object.last_modified)
}

fn length(n: usize) -> S3Result<i64> {
    i64::try_from(n).map_err(|_| s3_error!(InternalError, "object too large"))
}

#[async_trait::async_trait]
impl S3 for MemoryS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.store.create_bucket(&req.input.bucket);
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let buckets = self.store.buckets.read().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let object = self.store.get(&req.input.bucket, &req.input.key)?;
        let (checksum_crc64nvme, checksum_type) =
            object.checksum(req.input.checksum_mode.as_ref(), true);
        Ok(S3Response::new(HeadObjectOutput {
            checksum_crc64nvme,
            checksum_type,
            content_length: Some(length(object.data.len())?),
            e_tag: Some(ETag::Strong(object.md5_hex.clone())),
            last_modified: Some(last_modified(&object)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let object = self.store.get(&input.bucket, &input.key)?;
        let full = object.data.len() as u64;
        let (checksum_crc64nvme, checksum_type) =
            object.checksum(input.checksum_mode.as_ref(), input.range.is_none());
        let (body, content_range) = match input.range {
            None => (object.data.clone(), None),
            Some(range) => {
                let r = range.check(full)?;
                let range = format!("bytes {}-{}/{full}", r.start, r.end - 1);
                // In range of a usize: `check` bounds both ends by the length.
                (
                    object.data.slice(r.start as usize..r.end as usize),
                    Some(range),
                )
            }
        };
        Ok(S3Response::new(GetObjectOutput {
            checksum_crc64nvme,
            checksum_type,
            content_length: Some(length(body.len())?),
            content_range,
            e_tag: Some(ETag::Strong(object.md5_hex.clone())),
            last_modified: Some(last_modified(&object)),
            body: Some(StreamingBlob::new(Chunks(body))),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let mut body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let mut data = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
            data.extend_from_slice(&chunk);
        }
        let object = Object::new(data.freeze());
        let e_tag = ETag::Strong(object.md5_hex.clone());
        self.store
            .write()
            .get_mut(&input.bucket)
            .ok_or_else(|| s3_error!(NoSuchBucket))?
            .insert(input.key, object);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(e_tag),
            ..Default::default()
        }))
    }
}

/// An object's body as zero-copy slices of [`BODY_CHUNK`], its exact length
/// known up front (so the response carries a `Content-Length`).
struct Chunks(Bytes);

impl Stream for Chunks {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.0.len().min(BODY_CHUNK);
        Poll::Ready(Some(Ok(self.0.split_to(n))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.len().div_ceil(BODY_CHUNK);
        (n, Some(n))
    }
}

impl ByteStream for Chunks {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.0.len())
    }
}

/// Serves `store` on `listener` with SigV4 for one key pair until
/// `shutdown` resolves; open connections are dropped then, as with
/// [`serve_s3`](crate::serve_s3).
pub async fn serve_memory_s3(
    listener: tokio::net::TcpListener,
    store: MemoryStore,
    access_key: &str,
    secret_key: &str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = S3ServiceBuilder::new(MemoryS3::new(store));
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => {
                    // Loopback benchmarks send large bodies; Nagle only delays
                    // the last segment of each.
                    let _ = socket.set_nodelay(true);
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    connections.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    eprintln!("memory s3 server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}
