//! The filesystem writer: the only actor that touches the firmware folder.
//!
//! An install never leaves a partial file at its destination. The image is
//! streamed into a temporary file beside its destination, synced, and only
//! then renamed over it; the pointer follows the same path and is renamed
//! last, so a Data Gator never reads a pointer to an image that is not
//! complete. The folder is synced after each rename so the new name survives
//! a power cut.
//!
//! Disk work runs on a blocking thread fed through a bounded channel: the
//! actor's thread only forwards chunks, and memory stays at a few chunks
//! whatever the image size.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use actix::{Actor, Context, Handler, ResponseFuture, Supervised};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::messages::Install;
use crate::paths::ConfinedPath;

/// Temporary files start with this, so they are easy to recognise and clean.
pub const TEMP_PREFIX: &str = ".gator-ota-";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("download failed: {0}")]
    Download(#[source] object_store::Error),
    #[error("the image has {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the writer stopped before the image was complete")]
    Interrupted,
}

/// What an install put on disk.
#[derive(Debug, Clone)]
pub struct Installed {
    pub bytes: u64,
    pub sha256: String,
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
    /// Sent only after the last byte arrived, so a dropped sender means "abort".
    End,
}

impl Handler<Install> for FsWriter {
    type Result = ResponseFuture<Result<Installed, InstallError>>;

    fn handle(&mut self, msg: Install, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = mpsc::channel(self.chunks);
        let Install {
            msg_id: _,
            image,
            pointer,
            pointer_contents,
            mut body,
            expected_size,
        } = msg;
        Box::pin(async move {
            let disk = tokio::task::spawn_blocking(move || {
                install_blocking(
                    &image,
                    &pointer,
                    pointer_contents.as_bytes(),
                    expected_size,
                    rx,
                )
            });
            let mut received: u64 = 0;
            let mut failure = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) => {
                        received += bytes.len() as u64;
                        if received > expected_size {
                            failure = Some(InstallError::SizeMismatch {
                                expected: expected_size,
                                actual: received,
                            });
                            break;
                        }
                        if tx.send(Chunk::Data(bytes)).await.is_err() {
                            break; // the disk side failed; its error is the one to report
                        }
                    }
                    Err(e) => {
                        failure = Some(InstallError::Download(e));
                        break;
                    }
                }
            }
            if failure.is_none() {
                let _ = tx.send(Chunk::End).await;
            }
            drop(tx);
            let written = disk.await.unwrap_or(Err(InstallError::Interrupted));
            match failure {
                Some(e) => Err(e),
                None => written,
            }
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn install_blocking(
    image: &ConfinedPath,
    pointer: &ConfinedPath,
    pointer_contents: &[u8],
    expected_size: u64,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<Installed, InstallError> {
    let image_path = image.full();
    let image_dir = image.prepare_parent().map_err(io_err(&image_path))?;
    let staged = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".part")
        .tempfile_in(&image_dir)
        .map_err(io_err(&image_path))?;
    let mut out = BufWriter::with_capacity(256 * 1024, staged);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(b)) => {
                out.write_all(&b).map_err(io_err(&image_path))?;
                hasher.update(&b);
                bytes += b.len() as u64;
            }
            Some(Chunk::End) => break,
            None => return Err(InstallError::Interrupted),
        }
    }
    if bytes != expected_size {
        return Err(InstallError::SizeMismatch {
            expected: expected_size,
            actual: bytes,
        });
    }
    let staged = out
        .into_inner()
        .map_err(|e| io_err(&image_path)(e.into_error()))?;
    staged.as_file().sync_all().map_err(io_err(&image_path))?;

    let pointer_path = pointer.full();
    let pointer_dir = pointer.prepare_parent().map_err(io_err(&pointer_path))?;
    let mut staged_pointer = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".part")
        .tempfile_in(&pointer_dir)
        .map_err(io_err(&pointer_path))?;
    staged_pointer
        .write_all(pointer_contents)
        .map_err(io_err(&pointer_path))?;
    staged_pointer
        .as_file()
        .sync_all()
        .map_err(io_err(&pointer_path))?;

    staged
        .persist(&image_path)
        .map_err(|e| io_err(&image_path)(e.error))?;
    sync_dir(&image_dir).map_err(io_err(&image_dir))?;
    staged_pointer
        .persist(&pointer_path)
        .map_err(|e| io_err(&pointer_path)(e.error))?;
    sync_dir(&pointer_dir).map_err(io_err(&pointer_dir))?;

    Ok(Installed {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Confinement;
    use actix::Actor;
    use futures::stream;

    fn body(parts: Vec<Result<Bytes, object_store::Error>>) -> crate::messages::ByteStream {
        stream::iter(parts).boxed()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        walk(dir)
            .into_iter()
            .filter(|n| n.contains(TEMP_PREFIX))
            .collect()
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    #[actix_rt::test]
    async fn installs_image_then_pointer() {
        let dir = tempfile::tempdir().unwrap();
        let c = Confinement::new(&[dir.path().to_path_buf()]).unwrap();
        let w = FsWriter::new(2).start();
        let out = w
            .send(Install {
                msg_id: "m".into(),
                image: c.resolve("disk_path", "images/a.bin").unwrap(),
                pointer: c.resolve("config_path", "latest.json").unwrap(),
                pointer_contents: "a".into(),
                body: body(vec![
                    Ok(Bytes::from_static(b"hello ")),
                    Ok(Bytes::from_static(b"world")),
                ]),
                expected_size: 11,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.bytes, 11);
        assert_eq!(
            std::fs::read(c.home().join("images/a.bin")).unwrap(),
            b"hello world"
        );
        assert_eq!(
            std::fs::read_to_string(c.home().join("latest.json")).unwrap(),
            "a"
        );
        assert!(leftovers(c.home()).is_empty());
    }

    #[actix_rt::test]
    async fn failures_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let c = Confinement::new(&[dir.path().to_path_buf()]).unwrap();
        std::fs::write(c.home().join("latest.json"), "old").unwrap();
        let w = FsWriter::new(2).start();
        let broken = vec![
            Ok(Bytes::from_static(b"hel")),
            Err(object_store::Error::Generic {
                store: "test",
                source: "connection reset".into(),
            }),
        ];
        for (parts, expected) in [(broken, 11), (vec![Ok(Bytes::from_static(b"short"))], 11)] {
            let err = w
                .send(Install {
                    msg_id: "m".into(),
                    image: c.resolve("disk_path", "images/a.bin").unwrap(),
                    pointer: c.resolve("config_path", "latest.json").unwrap(),
                    pointer_contents: "a".into(),
                    body: body(parts),
                    expected_size: expected,
                })
                .await
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    InstallError::Download(_) | InstallError::SizeMismatch { .. }
                ),
                "{err}"
            );
            assert!(!c.home().join("images/a.bin").exists());
            assert_eq!(
                std::fs::read_to_string(c.home().join("latest.json")).unwrap(),
                "old"
            );
            assert!(leftovers(c.home()).is_empty(), "{:?}", leftovers(c.home()));
        }
    }
}
