//! The job journal and the index of installed images, both on disk.
//!
//! An accepted `firmware_image` is written to `<state>/jobs/` before any
//! work starts and removed only when the job has ended (installed and
//! confirmed, or failed), so a process killed at any moment finds its
//! unfinished jobs on the next start. `<state>/installed.json` remembers
//! what was installed where, and which pointer names which image: it makes a
//! repeated message cheap (no second download), bounds retention to images
//! gator-ota itself put there and never lets it take one a pointer names,
//! and keeps a path either an image or a pointer, never both.
//! Every write is atomic (temporary file, fsync, rename, folder fsync).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{error, warn};

use crate::durable::{sync_dir, write_atomic};
use crate::hashes::{Checks, Crc, Digests};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, not started.
    Queued,
    /// Bytes are being staged; `etag` says which version of the object.
    Downloading,
    /// Image and pointer are in place; the confirm_receipt may be owed.
    Installed,
}

/// One unfinished job, as it is kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub seq: u64,
    pub msg_id: String,
    /// The message content as received; re-checked on resume.
    pub content: Value,
    pub state: JobState,
    #[serde(default)]
    pub etag: Option<String>,
    /// The inbox entry the job came from (see [`crate::spool`]).
    #[serde(default)]
    pub receipt: Option<u64>,
    /// The MQTT carrier whose inbox that is, when not the main one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_carrier: Option<String>,
}

/// An image gator-ota installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    pub file_name: String,
    pub cloud_path: String,
    pub bytes: u64,
    /// The digests the download checked the image by, lowercase hex; at
    /// least one of the three. The firmware server, and the re-check before
    /// a repeated confirm, compare the file with every one recorded.
    /// (Records before the CRC came always have a SHA-256.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// The object's own CRC, when it was the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<(Crc, u64)>,
    pub etag: Option<String>,
    /// Order of installation, for retention.
    pub seq: u64,
}

impl InstalledImage {
    /// What to compute of a file to compare it with this record.
    pub fn checks(&self) -> Checks {
        Checks {
            sha256: self.sha256.is_some(),
            md5: self.md5.is_some(),
            crc: self.crc.map(|(crc, _)| crc),
        }
    }

    /// True when `digests` (taken with at least [`Self::checks`]) agree
    /// with every digest recorded. A record with none vouches for nothing.
    pub fn matches(&self, digests: &Digests) -> bool {
        let agrees = |recorded: &Option<String>, computed: &Option<String>| {
            recorded.is_none() || recorded == computed
        };
        let any = self.sha256.is_some() || self.md5.is_some() || self.crc.is_some();
        any && agrees(&self.sha256, &digests.sha256)
            && agrees(&self.md5, &digests.md5)
            && (self.crc.is_none() || self.crc == digests.crc)
    }
}

/// A pointer gator-ota wrote: what it says and the image that is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointerRecord {
    pub file_name: String,
    pub disk_path: PathBuf,
}

/// `installed.json`. The first format was the bare `images` map, without
/// pointers; it still loads (as [`IndexFile::Images`]).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// disk_path → image.
    images: BTreeMap<PathBuf, InstalledImage>,
    /// config_path → what it names.
    #[serde(default)]
    pointers: BTreeMap<PathBuf, PointerRecord>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IndexFile {
    /// `images` is required, so an old file (whose keys are absolute paths)
    /// never reads as an empty new one.
    Current(Index),
    Images(BTreeMap<PathBuf, InstalledImage>),
}

pub struct Journal {
    jobs_dir: PathBuf,
    index_path: PathBuf,
    next_seq: AtomicU64,
    /// A tokio mutex: it is held across the file write so two jobs cannot
    /// interleave their updates.
    index: tokio::sync::Mutex<Index>,
}

impl Journal {
    /// Opens (or creates) the journal and returns the unfinished jobs, oldest
    /// first. Blocking; called once at start-up.
    pub fn open(state_dir: &Path) -> io::Result<(Self, Vec<JobRecord>)> {
        let jobs_dir = state_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir)?;
        let mut pending = Vec::new();
        for entry in std::fs::read_dir(&jobs_dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(rec) => pending.push(rec),
                Err(e) => {
                    error!(path = %path.display(), error = %e, "unreadable job record; set aside as .corrupt");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        pending.sort_by_key(|r| r.seq);
        let index_path = state_dir.join("installed.json");
        let index = match std::fs::read(&index_path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(IndexFile::Current(index)) => index,
                Ok(IndexFile::Images(images)) => Index {
                    images,
                    pointers: BTreeMap::new(),
                },
                Err(e) => {
                    warn!(path = %index_path.display(), error = %e, "unreadable index of installed images; starting a new one");
                    Index::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e),
        };
        let last = pending
            .iter()
            .map(|r| r.seq)
            .chain(index.images.values().map(|i| i.seq))
            .max()
            .unwrap_or(0);
        Ok((
            Self {
                jobs_dir,
                index_path,
                next_seq: AtomicU64::new(last + 1),
                index: tokio::sync::Mutex::new(index),
            },
            pending,
        ))
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    fn job_path(&self, seq: u64) -> PathBuf {
        self.jobs_dir.join(format!("{seq:020}.json"))
    }

    /// Writes (or rewrites) a job record durably.
    pub async fn save(&self, rec: &JobRecord) -> io::Result<()> {
        let path = self.job_path(rec.seq);
        let bytes = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
        blocking(move || write_atomic(&path, &bytes)).await
    }

    /// Forgets a job that has ended.
    pub async fn finish(&self, seq: u64) -> io::Result<()> {
        let path = self.job_path(seq);
        let dir = self.jobs_dir.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            sync_dir(&dir)
        })
        .await
    }

    pub async fn installed(&self, disk_path: &Path) -> Option<InstalledImage> {
        self.index.lock().await.images.get(disk_path).cloned()
    }

    /// Images installed in `dir`, newest first.
    pub async fn installed_in(&self, dir: &Path) -> Vec<(PathBuf, InstalledImage)> {
        let index = self.index.lock().await;
        let mut found: Vec<_> = index
            .images
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        found.sort_by_key(|(_, i)| std::cmp::Reverse(i.seq));
        found
    }

    pub async fn record_installed(
        &self,
        disk_path: PathBuf,
        image: InstalledImage,
    ) -> io::Result<()> {
        let mut index = self.index.lock().await;
        index.images.insert(disk_path, image);
        self.write_index(&index).await
    }

    /// Forgets the images at `paths`; the index is rewritten only when one
    /// of them was in it (a new image's path usually is not).
    pub async fn forget_installed(&self, paths: &[PathBuf]) -> io::Result<()> {
        let mut index = self.index.lock().await;
        let mut changed = false;
        for p in paths {
            changed |= index.images.remove(p).is_some();
        }
        if !changed {
            return Ok(());
        }
        self.write_index(&index).await
    }

    /// Remembers that the pointer at `config_path` now names `pointer`.
    pub async fn record_pointer(
        &self,
        config_path: PathBuf,
        pointer: PointerRecord,
    ) -> io::Result<()> {
        let mut index = self.index.lock().await;
        if index.pointers.get(&config_path) == Some(&pointer) {
            return Ok(());
        }
        index.pointers.insert(config_path, pointer);
        self.write_index(&index).await
    }

    /// What the pointer at `config_path` names, if gator-ota wrote it.
    pub async fn pointer_at(&self, config_path: &Path) -> Option<PointerRecord> {
        self.index.lock().await.pointers.get(config_path).cloned()
    }

    /// The installed image a device asks for by `name`: its `file_name`, or
    /// the name of its file on disk. When several match, one a pointer
    /// names is taken first, then the newest.
    pub async fn image_named(&self, name: &str) -> Option<(PathBuf, InstalledImage)> {
        let index = self.index.lock().await;
        let named: HashSet<&PathBuf> = index.pointers.values().map(|p| &p.disk_path).collect();
        index
            .images
            .iter()
            .filter(|(p, i)| {
                i.file_name == name
                    || p.file_name()
                        .is_some_and(|f| f == std::ffi::OsStr::new(name))
            })
            .max_by_key(|(p, i)| (named.contains(p), i.seq))
            .map(|(p, i)| (p.clone(), i.clone()))
    }

    /// Paths retention must leave alone: every pointer gator-ota wrote, and
    /// every image one of them names.
    pub async fn named_by_pointers(&self) -> HashSet<PathBuf> {
        let index = self.index.lock().await;
        index
            .pointers
            .iter()
            .flat_map(|(pointer, named)| [pointer.clone(), named.disk_path.clone()])
            .collect()
    }

    /// Why a job may not write an image at `disk_path` and a pointer at
    /// `config_path`, if it may not: a path is an image or a pointer, never
    /// both, so neither may be one gator-ota wrote in the other role.
    pub async fn role_conflict(&self, disk_path: &Path, config_path: &Path) -> Option<String> {
        let index = self.index.lock().await;
        if let Some(pointer) = index.pointers.get(disk_path) {
            return Some(format!(
                "disk_path {} is a pointer file gator-ota wrote (naming {:?}); a path is an image or a pointer, never both",
                disk_path.display(),
                pointer.file_name
            ));
        }
        if let Some(image) = index.images.get(config_path) {
            return Some(format!(
                "config_path {} is an installed image ({:?}); a path is an image or a pointer, never both",
                config_path.display(),
                image.file_name
            ));
        }
        None
    }

    async fn write_index(&self, index: &Index) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(io::Error::other)?;
        let path = self.index_path.clone();
        blocking(move || write_atomic(&path, &bytes)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn unfinished_jobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (j, pending) = Journal::open(dir.path()).unwrap();
        assert!(pending.is_empty());
        for _ in 0..3 {
            let rec = JobRecord {
                seq: j.next_seq(),
                msg_id: "m".into(),
                content: serde_json::json!({"file_name": "a"}),
                state: JobState::Queued,
                etag: None,
                receipt: None,
                receipt_carrier: None,
            };
            j.save(&rec).await.unwrap();
        }
        j.finish(2).await.unwrap();
        let image = InstalledImage {
            file_name: "a".into(),
            cloud_path: "fw/a".into(),
            bytes: 1,
            sha256: Some("x".into()),
            md5: Some("y".into()),
            crc: None,
            etag: None,
            seq: 9,
        };
        j.record_installed(dir.path().join("a.bin"), image.clone())
            .await
            .unwrap();
        std::fs::write(dir.path().join("jobs/garbage.json"), "{").unwrap();
        drop(j);

        let (j, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(j.next_seq(), 10);
        assert_eq!(j.installed(&dir.path().join("a.bin")).await, Some(image));
        assert!(dir.path().join("jobs/garbage.corrupt").exists());
    }

    fn image(name: &str, seq: u64) -> InstalledImage {
        InstalledImage {
            file_name: name.into(),
            cloud_path: format!("fw/{name}"),
            bytes: 1,
            sha256: Some("x".into()),
            md5: Some("y".into()),
            crc: None,
            etag: None,
            seq,
        }
    }

    #[actix_rt::test]
    async fn pointers_are_remembered_and_keep_their_images() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let (a, p) = (dir.path().join("img/a.bin"), dir.path().join("p.json"));
        j.record_installed(a.clone(), image("a", 1)).await.unwrap();
        let named = PointerRecord {
            file_name: "a".into(),
            disk_path: a.clone(),
        };
        j.record_pointer(p.clone(), named.clone()).await.unwrap();
        drop(j);

        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.named_by_pointers().await,
            HashSet::from([a.clone(), p.clone()])
        );
        let conflict = j.role_conflict(&p, &dir.path().join("q.json")).await;
        assert!(conflict.unwrap().starts_with("disk_path"));
        let conflict = j.role_conflict(&dir.path().join("b.bin"), &a).await;
        assert!(conflict.unwrap().starts_with("config_path"));
        assert_eq!(
            j.role_conflict(&dir.path().join("b.bin"), &dir.path().join("q.json"))
                .await,
            None
        );
    }

    /// The index was once the bare map of images; such a file still loads.
    #[actix_rt::test]
    async fn an_index_in_the_first_format_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("img/a.bin");
        let old = BTreeMap::from([(a.clone(), image("a", 7))]);
        std::fs::write(
            dir.path().join("installed.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.installed(&a).await, Some(image("a", 7)));
        assert_eq!(j.next_seq(), 8);
        assert!(j.named_by_pointers().await.is_empty());
        // Rewritten in the current format, which loads too.
        j.forget_installed(&[]).await.unwrap();
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.installed(&a).await, Some(image("a", 7)));
    }
}
