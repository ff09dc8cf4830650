//! Installed images held in memory, verified, for the downloads of a fleet.
//!
//! Forty Data Gators fetching one 1.5 MiB image read the same bytes forty
//! times. Reading them from the page cache costs a copy and a system call
//! per chunk, on the server's one worker thread; a chunk sliced out of one
//! buffer costs neither (the connection copies it into its write buffer
//! once, as it does any chunk). nginx gets the same effect from `sendfile`.
//!
//! Only bytes that hash to the index's SHA-256 are kept, so a file edited in
//! place on the disk after its install is never what a device gets; an
//! entry lives while the same file (device and inode) is the one the index
//! vouches for, and images larger than [`IMAGE_MAX`] stream from the disk.
//!
//! The same read gives the image's MD5 for `x-MD5` when the download did not
//! compute one (it does only when MD5 was its check): once per image, not
//! on the download's path to its `confirm_receipt`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::hashes::hex;
use crate::journal::InstalledImage;

/// Images up to this size are served from memory. A Data Gator image is
/// about 1.5 MiB; an ESP32's largest app partition is 8 MiB.
pub(crate) const IMAGE_MAX: u64 = 8 * 1024 * 1024;

/// Bytes held in all; past it the least recently served image leaves.
const TOTAL_MAX: u64 = 16 * 1024 * 1024;

/// Which file a held image was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(file: &File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

struct Held {
    image: InstalledImage,
    id: FileId,
    prepared: Prepared,
    used: u64,
}

/// What the server needs of an image besides the index.
#[derive(Clone)]
pub(crate) struct Prepared {
    /// Its bytes, when small enough to hold.
    pub bytes: Option<Bytes>,
    /// Lowercase hex.
    pub md5: String,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<PathBuf, Held>,
    clock: u64,
}

/// The held images, keyed by path on disk.
#[derive(Default)]
pub(crate) struct Memory {
    /// One lock for lookups and loads: while one request reads an image in,
    /// the others for it wait and then share it, instead of each reading
    /// its own copy (200 devices at once would hold 200 copies).
    entries: Mutex<Entries>,
}

impl Memory {
    /// The verified bytes of `image` (when it is small enough to hold) and
    /// its MD5, read from `file` (opened at `path`) the first time. `None`
    /// when the file does not hash to the index's SHA-256.
    pub(crate) async fn prepare(
        &self,
        path: &Path,
        image: &InstalledImage,
        file: &File,
    ) -> Option<Prepared> {
        let hold = image.bytes <= IMAGE_MAX;
        if !hold && let Some(md5) = &image.md5 {
            return Some(Prepared {
                bytes: None,
                md5: md5.clone(),
            });
        }
        let id = FileId::of(file).ok()?;
        let mut entries = self.entries.lock().await;
        entries.clock += 1;
        let now = entries.clock;
        if let Some(held) = entries.by_path.get_mut(path)
            && held.id == id
            && held.image == *image
        {
            held.used = now;
            return Some(held.prepared.clone());
        }
        let copy = file.try_clone().ok()?;
        let wanted = image.clone();
        let prepared = tokio::task::spawn_blocking(move || read_verified(copy, &wanted, hold))
            .await
            .ok()??;
        let held = Held {
            image: image.clone(),
            id,
            prepared: prepared.clone(),
            used: now,
        };
        entries.by_path.insert(path.to_path_buf(), held);
        entries.evict_past(TOTAL_MAX);
        Some(prepared)
    }
}

impl Entries {
    fn evict_past(&mut self, max: u64) {
        while self.total() > max {
            let Some(oldest) = self
                .by_path
                .iter()
                .filter(|(_, h)| h.prepared.bytes.is_some())
                .min_by_key(|(_, h)| h.used)
                .map(|(p, _)| p.clone())
            else {
                return;
            };
            self.by_path.remove(&oldest);
        }
    }

    fn total(&self) -> u64 {
        let held = |h: &Held| h.prepared.bytes.as_ref().map_or(0, |b| b.len() as u64);
        self.by_path.values().map(held).sum()
    }
}

/// The file's bytes (kept when `hold`) and MD5, if its first
/// `image.bytes` bytes hash to the index's SHA-256. Blocking. Read by
/// offset: a cloned handle shares the file position with the original.
fn read_verified(file: File, image: &InstalledImage, hold: bool) -> Option<Prepared> {
    let (mut sha256, mut md5) = (Sha256::new(), Md5::new());
    let mut kept = Vec::with_capacity(if hold { image.bytes as usize } else { 0 });
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    while at < image.bytes {
        let n = (image.bytes - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).ok()?;
        sha256.update(&buf[..n]);
        md5.update(&buf[..n]);
        if hold {
            kept.extend_from_slice(&buf[..n]);
        }
        at += n as u64;
    }
    if hex(&sha256.finalize()) != image.sha256 {
        return None;
    }
    Some(Prepared {
        bytes: hold.then(|| Bytes::from(kept)),
        md5: hex(&md5.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: &[u8], seq: u64) -> InstalledImage {
        InstalledImage {
            file_name: "a_v1.0.0.bin".into(),
            cloud_path: "fw/a".into(),
            bytes: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
            md5: None,
            etag: None,
            seq,
        }
    }

    #[actix_rt::test]
    async fn holds_verified_bytes_and_rereads_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"first image").unwrap();
        let memory = Memory::default();
        let first = image(b"first image", 1);
        let file = File::open(&path).unwrap();
        let held = memory.prepare(&path, &first, &file).await.unwrap();
        assert_eq!(&held.bytes.unwrap()[..], b"first image");
        assert_eq!(held.md5, hex(&Md5::digest(b"first image")));

        // Edited in place after the install: the held, verified bytes are
        // what a device gets, never the edit.
        std::fs::write(&path, b"first IMAGE").unwrap();
        let file = File::open(&path).unwrap();
        let again = memory.prepare(&path, &first, &file).await.unwrap();
        assert_eq!(&again.bytes.unwrap()[..], b"first image");

        // A new file at the path (a new install renames over it): read anew,
        // and only if it hashes to what the index says.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, b"second image").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let file = File::open(&path).unwrap();
        assert!(memory.prepare(&path, &first, &file).await.is_none());
        let second = image(b"second image", 2);
        let new = memory.prepare(&path, &second, &file).await.unwrap();
        assert_eq!(&new.bytes.unwrap()[..], b"second image");
    }

    #[test]
    fn the_least_recently_served_leaves_first() {
        let mut entries = Entries::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let held = Held {
                image: image(b"x", 1),
                id: FileId {
                    dev: 1,
                    ino: i as u64,
                },
                prepared: Prepared {
                    bytes: Some(Bytes::from(vec![0u8; 10])),
                    md5: String::new(),
                },
                used: [3, 1, 2][i],
            };
            entries.by_path.insert(PathBuf::from(name), held);
        }
        entries.evict_past(20);
        let mut left: Vec<_> = entries.by_path.keys().cloned().collect();
        left.sort();
        assert_eq!(left, [PathBuf::from("a"), PathBuf::from("c")]);
    }
}
