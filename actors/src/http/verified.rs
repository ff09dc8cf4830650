//! Which installed files the server has checked against the index.
//!
//! The index vouches for an image by its SHA-256, taken as it was
//! downloaded. Before the server sends a file for the first time it hashes
//! it once more, so a file edited in place on the disk after its install is
//! never what a device gets: it is `404` until a new install replaces it.
//! A check holds while the file is the same one unchanged (device, inode,
//! change time); any write to it changes its change time, and the next
//! request checks it again.
//!
//! The same read gives the image's MD5 for `x-MD5` when the download did not
//! compute one (it does only when MD5 was its check): once per image, not
//! on the download's path to its `confirm_receipt`.

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

struct Checked {
    image: InstalledImage,
    id: FileId,
    md5: String,
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
    /// The MD5 of `image` (lowercase hex), when `file` (opened at `path`,
    /// identified by `id`) hashes to the index's SHA-256; `None` when not.
    pub(crate) async fn md5(
        &self,
        path: &Path,
        image: &InstalledImage,
        file: &File,
        id: FileId,
    ) -> Option<String> {
        let mut entries = self.entries.lock().await;
        entries.clock += 1;
        let now = entries.clock;
        if let Some(c) = entries.by_path.get_mut(path)
            && c.id == id
            && c.image == *image
        {
            c.used = now;
            return Some(c.md5.clone());
        }
        let copy = file.try_clone().ok()?;
        let wanted = image.clone();
        let md5 = tokio::task::spawn_blocking(move || check(copy, &wanted))
            .await
            .ok()??;
        let checked = Checked {
            image: image.clone(),
            id,
            md5: md5.clone(),
            used: now,
        };
        entries.by_path.insert(path.to_path_buf(), checked);
        entries.evict_past(ENTRIES_MAX);
        Some(md5)
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

/// The image's MD5 (the index's, or computed), if the file's first
/// `image.bytes` bytes hash to the index's SHA-256. Blocking. It moves the
/// position that `file` shares with the request's handle; the body is sent
/// by offset, so nothing reads from that position.
fn check(mut file: File, image: &InstalledImage) -> Option<String> {
    let checks = Checks {
        md5: image.md5.is_none(),
        crc: None,
    };
    let digests = hash_file(&mut file, image.bytes, checks).ok()?.finish();
    if digests.sha256 != image.sha256 {
        return None;
    }
    digests.md5.or_else(|| image.md5.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashes::hex;
    use md5::{Digest, Md5};
    use sha2::Sha256;

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

    async fn md5_of(v: &Verified, path: &Path, image: &InstalledImage) -> Option<String> {
        let file = File::open(path).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        v.md5(path, image, &file, id).await
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
        let mut second = image(b"second image", 2);
        second.md5 = Some("00ff".into());
        assert_eq!(
            md5_of(&verified, &path, &second).await.as_deref(),
            Some("00ff")
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
                md5: String::new(),
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
