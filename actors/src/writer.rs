//! The filesystem writer: the only actor that writes in the firmware folders.
//!
//! An image is streamed into a staging file beside its destination
//! ([`Append`]), possibly over several attempts, each resuming where the last
//! stopped. Only once the carrier has verified it does [`Commit`] rename it
//! over the destination and then replace the pointer the same way, so a Data
//! Gator never reads a pointer to an image that is not complete. Every file
//! is synced before its rename and every folder after, so the new names
//! survive a power cut.
//!
//! Disk work runs on blocking threads fed through a bounded channel: the
//! actor's thread only forwards chunks, and memory stays at a few chunks
//! whatever the image size.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use actix::{Actor, Context, Handler, Message, ResponseFuture, Supervised};
use bytes::Bytes;
use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::messages::{ByteStream, TransferError};
use crate::paths::ConfinedPath;

/// Temporary and staging files start with this, so they are easy to spot.
pub const TEMP_PREFIX: &str = ".gator-ota-";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the disk is full writing {path}")]
    NoSpace { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the object sent more than its {expected} bytes")]
    TooLong { expected: u64 },
    #[error("transfer interrupted after {} bytes: {source}", progress.written)]
    Transfer {
        /// What is staged so far, to resume from; boxed, the digests are large.
        progress: Box<Appended>,
        #[source]
        source: TransferError,
    },
    #[error("the writer stopped before the image was complete")]
    Interrupted,
}

impl WriteError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
        move |source| {
            if source.kind() == io::ErrorKind::StorageFull
                || source.kind() == io::ErrorKind::QuotaExceeded
            {
                WriteError::NoSpace {
                    path: path.to_path_buf(),
                }
            } else {
                WriteError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }
}

/// Running digests over the bytes staged so far.
#[derive(Clone, Default)]
pub struct Hashes {
    sha256: Sha256,
    md5: Md5,
}

impl std::fmt::Debug for Hashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hashes")
    }
}

impl Hashes {
    fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.md5.update(bytes);
    }

    /// Lowercase hex of (sha256, md5).
    pub fn finish(self) -> (String, String) {
        (hex(&self.sha256.finalize()), hex(&self.md5.finalize()))
    }
}

/// Progress of a staged image.
#[derive(Debug, Clone)]
pub struct Appended {
    pub written: u64,
    pub hashes: Hashes,
}

/// Stream `body` into the staging file of `image`, after its first `offset`
/// bytes. `hashes` covers those bytes when the caller still has it; otherwise
/// they are read back and hashed (a resume after a restart).
#[derive(Message)]
#[rtype(result = "Result<Appended, WriteError>")]
pub struct Append {
    pub image: ConfinedPath,
    pub offset: u64,
    pub hashes: Option<Hashes>,
    pub body: ByteStream,
    /// The object's full length: more is an error.
    pub total: u64,
}

/// Put the staged image (if any) at its destination, then the pointer.
#[derive(Message)]
#[rtype(result = "Result<(), WriteError>")]
pub struct Commit {
    pub image: Option<ConfinedPath>,
    pub pointer: ConfinedPath,
    pub pointer_contents: String,
}

/// Remove files: a staging file that cannot be resumed, or old images.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remove {
    pub paths: Vec<PathBuf>,
}

pub struct FsWriter {
    /// Chunks in flight between the download and the disk.
    chunks: usize,
}

impl FsWriter {
    pub fn new(chunks: usize) -> Self {
        Self { chunks }
    }
}

impl Actor for FsWriter {
    type Context = Context<Self>;
}

impl Supervised for FsWriter {}

enum Chunk {
    Data(Bytes),
    /// Sent only after the last byte arrived, so a dropped sender means "stop".
    End,
}

impl Handler<Append> for FsWriter {
    type Result = ResponseFuture<Result<Appended, WriteError>>;

    fn handle(&mut self, msg: Append, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = mpsc::channel(self.chunks);
        let Append {
            image,
            offset,
            hashes,
            mut body,
            total,
        } = msg;
        Box::pin(async move {
            let disk = tokio::task::spawn_blocking(move || {
                append_blocking(&image, offset, hashes, total, rx)
            });
            let mut failure = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) => {
                        if tx.send(Chunk::Data(bytes)).await.is_err() {
                            break; // the disk side failed; its error is the one to report
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_none() {
                let _ = tx.send(Chunk::End).await;
            }
            drop(tx);
            let written = disk.await.unwrap_or(Err(WriteError::Interrupted));
            match (failure, written) {
                (Some(source), Ok(progress)) => Err(WriteError::Transfer {
                    progress: Box::new(progress),
                    source,
                }),
                (Some(source), Err(WriteError::Transfer { progress, .. })) => {
                    Err(WriteError::Transfer { progress, source })
                }
                (_, result) => result,
            }
        })
    }
}

impl Handler<Commit> for FsWriter {
    type Result = ResponseFuture<Result<(), WriteError>>;

    fn handle(&mut self, msg: Commit, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || commit_blocking(msg))
                .await
                .unwrap_or(Err(WriteError::Interrupted))
        })
    }
}

impl Handler<Remove> for FsWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Remove, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                for path in msg.paths {
                    match std::fs::remove_file(&path) {
                        Ok(()) => tracing::info!(path = %path.display(), "removed"),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot remove")
                        }
                    }
                }
            })
            .await;
        })
    }
}

/// The staging file of `image`: in the same folder, so the final rename is
/// atomic, and named after the destination, so a restarted job finds it.
pub fn staging_path(image: &ConfinedPath) -> PathBuf {
    let full = image.full();
    let digest = Sha256::digest(full.as_os_str().as_encoded_bytes());
    let name = format!("{TEMP_PREFIX}{}.part", &hex(&digest)[..16]);
    full.with_file_name(name)
}

fn append_blocking(
    image: &ConfinedPath,
    offset: u64,
    hashes: Option<Hashes>,
    total: u64,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<Appended, WriteError> {
    let path = staging_path(image);
    image.prepare_parent().map_err(WriteError::io(&path))?;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc_o_nofollow());
    let mut file = options.open(&path).map_err(WriteError::io(&path))?;
    let on_disk = file.metadata().map_err(WriteError::io(&path))?.len();
    if on_disk < offset {
        // The body starts at `offset`; written here it would land at the
        // wrong place. Empty the staging file and let the caller start over.
        file.set_len(0).map_err(WriteError::io(&path))?;
        return Err(WriteError::Transfer {
            progress: Box::new(Appended {
                written: 0,
                hashes: Hashes::default(),
            }),
            source: TransferError::Stopped,
        });
    }
    let mut hashes = match hashes {
        Some(h) => h,
        None => rehash(&mut file, offset).map_err(WriteError::io(&path))?,
    };
    file.set_len(offset).map_err(WriteError::io(&path))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(WriteError::io(&path))?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut written = offset;
    let complete = loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(b)) => {
                written += b.len() as u64;
                if written > total {
                    return Err(WriteError::TooLong { expected: total });
                }
                out.write_all(&b).map_err(WriteError::io(&path))?;
                hashes.update(&b);
            }
            Some(Chunk::End) => break true,
            None => break false,
        }
    };
    // Synced on every exit, so what a later attempt resumes from is on disk.
    let file = out
        .into_inner()
        .map_err(|e| WriteError::io(&path)(e.into_error()))?;
    file.sync_all().map_err(WriteError::io(&path))?;
    let progress = Appended { written, hashes };
    if complete {
        Ok(progress)
    } else {
        Err(WriteError::Transfer {
            progress: Box::new(progress),
            source: TransferError::Stopped,
        })
    }
}

fn rehash(file: &mut File, len: u64) -> io::Result<Hashes> {
    let mut hashes = Hashes::default();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hashes.update(&buf[..n]);
    }
    Ok(hashes)
}

fn commit_blocking(msg: Commit) -> Result<(), WriteError> {
    let pointer_path = msg.pointer.full();
    let pointer_dir = msg
        .pointer
        .prepare_parent()
        .map_err(WriteError::io(&pointer_path))?;
    let staged_pointer = stage_bytes(&pointer_dir, msg.pointer_contents.as_bytes())
        .map_err(WriteError::io(&pointer_path))?;
    if let Some(image) = &msg.image {
        let image_path = image.full();
        let image_dir = image
            .prepare_parent()
            .map_err(WriteError::io(&image_path))?;
        std::fs::rename(staging_path(image), &image_path).map_err(WriteError::io(&image_path))?;
        sync_dir(&image_dir).map_err(WriteError::io(&image_dir))?;
    }
    staged_pointer
        .persist(&pointer_path)
        .map_err(|e| WriteError::io(&pointer_path)(e.error))?;
    sync_dir(&pointer_dir).map_err(WriteError::io(&pointer_dir))?;
    Ok(())
}

/// A synced temporary file in `dir` holding `bytes`, ready to be renamed.
fn stage_bytes(dir: &Path, bytes: &[u8]) -> io::Result<tempfile::NamedTempFile> {
    let mut staged = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    staged.write_all(bytes)?;
    staged.as_file().sync_all()?;
    Ok(staged)
}

/// Replaces `path` with `bytes` atomically and durably. Blocking; for small
/// state files (the job journal).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    stage_bytes(dir, bytes)?
        .persist(path)
        .map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `O_NOFOLLOW`: a link planted at the staging name is refused, not followed.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Confinement;
    use actix::Actor;
    use futures::stream;

    fn body(parts: Vec<Result<Bytes, TransferError>>) -> ByteStream {
        stream::iter(parts).boxed()
    }

    fn setup() -> (tempfile::TempDir, Confinement, actix::Addr<FsWriter>) {
        let dir = tempfile::tempdir().unwrap();
        let c = Confinement::new(&[dir.path().to_path_buf()]).unwrap();
        (dir, c, FsWriter::new(2).start())
    }

    #[actix_rt::test]
    async fn stages_commits_image_then_pointer() {
        let (_d, c, w) = setup();
        let image = c.resolve("disk_path", "images/a.bin").unwrap();
        let staged = w
            .send(Append {
                image: image.clone(),
                offset: 0,
                hashes: None,
                body: body(vec![
                    Ok(Bytes::from_static(b"hello ")),
                    Ok(Bytes::from_static(b"world")),
                ]),
                total: 11,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(staged.written, 11);
        let (sha, md5) = staged.hashes.finish();
        assert_eq!(sha, hex(&Sha256::digest(b"hello world")));
        assert_eq!(md5, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert!(
            !image.full().exists(),
            "nothing at the destination before commit"
        );
        w.send(Commit {
            image: Some(image.clone()),
            pointer: c.resolve("config_path", "latest.json").unwrap(),
            pointer_contents: "a".into(),
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(std::fs::read(image.full()).unwrap(), b"hello world");
        assert_eq!(
            std::fs::read_to_string(c.home().join("latest.json")).unwrap(),
            "a"
        );
        assert!(!staging_path(&image).exists());
    }

    #[actix_rt::test]
    async fn an_interrupted_transfer_resumes_with_the_same_digest() {
        let (_d, c, w) = setup();
        let image = c.resolve("disk_path", "a.bin").unwrap();
        let err = w
            .send(Append {
                image: image.clone(),
                offset: 0,
                hashes: None,
                body: body(vec![
                    Ok(Bytes::from_static(b"hello ")),
                    Err(TransferError::Idle(std::time::Duration::from_secs(1))),
                ]),
                total: 11,
            })
            .await
            .unwrap()
            .unwrap_err();
        let WriteError::Transfer { progress, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(progress.written, 6);
        // Resume without the in-memory digest, as after a restart.
        let done = w
            .send(Append {
                image: image.clone(),
                offset: 6,
                hashes: None,
                body: body(vec![Ok(Bytes::from_static(b"world"))]),
                total: 11,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.hashes.finish().0, hex(&Sha256::digest(b"hello world")));
        assert!(!image.full().exists());
    }

    #[actix_rt::test]
    async fn a_staging_file_shorter_than_the_resume_point_starts_over() {
        let (_d, c, w) = setup();
        let image = c.resolve("disk_path", "a.bin").unwrap();
        std::fs::write(staging_path(&image), b"hel").unwrap();
        let err = w
            .send(Append {
                image: image.clone(),
                offset: 6,
                hashes: None,
                body: body(vec![Ok(Bytes::from_static(b"world"))]),
                total: 11,
            })
            .await
            .unwrap()
            .unwrap_err();
        let WriteError::Transfer { progress, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(progress.written, 0);
        assert_eq!(std::fs::metadata(staging_path(&image)).unwrap().len(), 0);
    }

    #[actix_rt::test]
    async fn too_many_bytes_are_refused() {
        let (_d, c, w) = setup();
        let image = c.resolve("disk_path", "a.bin").unwrap();
        let err = w
            .send(Append {
                image,
                offset: 0,
                hashes: None,
                body: body(vec![Ok(Bytes::from_static(b"too long"))]),
                total: 3,
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, WriteError::TooLong { expected: 3 }), "{err}");
    }
}
