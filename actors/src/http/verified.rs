//! Which installed files the server has checked against the index.
//!
//! The index vouches for an image by the digests its download checked it
//! by (S3's CRC-64/NVME for most; a SHA-256 or MD5 when one was given).
//! Before the server sends a file for the first time it reads it once and
//! compares it with every one of them, so a file edited in place on the
//! disk after its install is never what a device gets: it is `404` until a
//! new install replaces it. A check holds while the file is the same one
//! unchanged (device, inode, change time); any write to it changes its
//! change time, and the next request checks it again.
//!
//! The same read gives the SHA-256 (the ETag, `x-SHA256`) and the MD5
//! (`x-MD5`) the server sends: once per image, not on the download's path
//! to its `confirm_receipt`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::hashes::{Checks, hash_file};
use crate::journal::InstalledImage;

/// Files whose checks are kept; past it the one served longest ago goes
/// (and is checked again if it is asked for).
const ENTRIES_MAX: usize = 64;

/// Which file, in which state, a check was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The digests sent with a checked image, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub sha256: String,
    pub md5: String,
}

struct Checked {
    image: InstalledImage,
    id: FileId,
    served: Served,
    used: u64,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<PathBuf, Checked>,
    clock: u64,
}

#[derive(Default)]
pub(crate) struct Verified {
    /// One lock for lookups and checks: while one request hashes an image,
    /// the others for it wait and then take its result, instead of each
    /// reading the file again (200 devices at once would read it 200 times).
    entries: Mutex<Entries>,
}

impl Verified {
    /// The digests to send with `image`, when `file` (opened at `path`,
    /// identified by `id`) matches every digest the index has of it;
    /// `None` when not.
    pub(crate) async fn digests(
        &self,
        path: &Path,
        image: &InstalledImage,
        file: &File,
        id: FileId,
    ) -> Option<Served> {
        let mut entries = self.entries.lock().await;
        entries.clock += 1;
        let now = entries.clock;
        if let Some(c) = entries.by_path.get_mut(path)
            && c.id == id
            && c.image == *image
        {
            c.used = now;
            return Some(c.served.clone());
        }
        let copy = file.try_clone().ok()?;
        let wanted = image.clone();
        let served = tokio::task::spawn_blocking(move || check(copy, &wanted))
            .await
            .ok()??;
        let checked = Checked {
            image: image.clone(),
            id,
            served: served.clone(),
            used: now,
        };
        entries.by_path.insert(path.to_path_buf(), checked);
        entries.evict_past(ENTRIES_MAX);
        Some(served)
    }
}

impl Entries {
    fn evict_past(&mut self, max: usize) {
        while self.by_path.len() > max {
            let Some(oldest) = self
                .by_path
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(p, _)| p.clone())
            else {
                return;
            };
            self.by_path.remove(&oldest);
        }
    }
}

/// The SHA-256 and MD5 of the file's first `image.bytes` bytes, if they
/// match every digest the index has of the image. Blocking. It moves the
/// position that `file` shares with the request's handle; the body is sent
/// by offset, so nothing reads from that position.
fn check(mut file: File, image: &InstalledImage) -> Option<Served> {
    let checks = Checks {
        crc: image.crc.map(|(crc, _)| crc),
        ..Checks::SHA256_MD5
    };
    let digests = hash_file(&mut file, image.bytes, checks).ok()?.finish();
    if !image.matches(&digests) {
        return None;
    }
    Some(Served {
        sha256: digests.sha256?,
        md5: digests.md5?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashes::{Crc, Hashes, hex};
    use md5::{Digest, Md5};
    use sha2::Sha256;

    fn image(bytes: &[u8], seq: u64) -> InstalledImage {
        InstalledImage {
            file_name: "a_v1.0.0.bin".into(),
            cloud_path: "fw/a".into(),
            bytes: bytes.len() as u64,
            sha256: Some(hex(&Sha256::digest(bytes))),
            md5: None,
            crc: None,
            etag: None,
            seq,
        }
    }

    /// Recorded as most downloads record it: by the object's CRC alone.
    fn by_crc(bytes: &[u8], seq: u64) -> InstalledImage {
        let mut hashes = Hashes::new(Checks {
            sha256: false,
            md5: false,
            crc: Some(Crc::Crc64Nvme),
        });
        hashes.update(bytes);
        InstalledImage {
            sha256: None,
            crc: hashes.finish().crc,
            ..image(bytes, seq)
        }
    }

    async fn md5_of(v: &Verified, path: &Path, image: &InstalledImage) -> Option<String> {
        let file = File::open(path).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        v.digests(path, image, &file, id).await.map(|s| s.md5)
    }

    #[actix_rt::test]
    async fn a_file_is_served_only_while_it_hashes_to_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"first image").unwrap();
        let verified = Verified::default();
        let first = image(b"first image", 1);
        let md5 = md5_of(&verified, &path, &first).await;
        assert_eq!(md5, Some(hex(&Md5::digest(b"first image"))));

        // Edited in place after the install, same length: checked again
        // (its change time moved), and refused.
        // File times tick with the kernel's coarse clock: rewrite until
        // the change shows.
        let before = FileId::of(&std::fs::metadata(&path).unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while FileId::of(&std::fs::metadata(&path).unwrap()) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the change time never moved"
            );
            std::fs::write(&path, b"first IMAGE").unwrap();
        }
        assert_eq!(md5_of(&verified, &path, &first).await, None);

        // A new file at the path (a new install renames over it): checked
        // anew, against what the index says now.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, b"second image").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(md5_of(&verified, &path, &first).await, None);
        let second = by_crc(b"second image", 2);
        let file = File::open(&path).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        let served = verified.digests(&path, &second, &file, id).await;
        assert_eq!(
            served,
            Some(Served {
                sha256: hex(&Sha256::digest(b"second image")),
                md5: hex(&Md5::digest(b"second image")),
            })
        );
    }

    #[actix_rt::test]
    async fn every_recorded_digest_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"an image").unwrap();
        let verified = Verified::default();
        // A wrong MD5 beside a right SHA-256, a wrong CRC alone, and a
        // record with no digest at all: none is served.
        let wrong_md5 = InstalledImage {
            md5: Some("00".repeat(16)),
            ..image(b"an image", 1)
        };
        assert_eq!(md5_of(&verified, &path, &wrong_md5).await, None);
        let wrong_crc = by_crc(b"an IMAGE", 2);
        assert_eq!(md5_of(&verified, &path, &wrong_crc).await, None);
        let bare = InstalledImage {
            sha256: None,
            ..image(b"an image", 3)
        };
        assert_eq!(md5_of(&verified, &path, &bare).await, None);
        let right = by_crc(b"an image", 4);
        assert_eq!(
            md5_of(&verified, &path, &right).await,
            Some(hex(&Md5::digest(b"an image")))
        );
    }

    #[test]
    fn the_check_served_longest_ago_leaves_first() {
        let mut entries = Entries::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let checked = Checked {
                image: image(b"x", 1),
                id: FileId {
                    dev: 1,
                    ino: i as u64,
                    ctime: (0, 0),
                },
                served: Served {
                    sha256: String::new(),
                    md5: String::new(),
                },
                used: [3, 1, 2][i],
            };
            entries.by_path.insert(PathBuf::from(name), checked);
        }
        entries.evict_past(2);
        let mut left: Vec<_> = entries.by_path.keys().cloned().collect();
        left.sort();
        assert_eq!(left, [PathBuf::from("a"), PathBuf::from("c")]);
    }
}
