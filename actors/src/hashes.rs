//! Every digest gator-ota takes of an image, and only the ones that are
//! its check ([`Checks`]): S3's CRC-64/NVME or CRC-32C when the object has
//! one and nothing stronger is asked for, SHA-256 when the message or the
//! object gives one (or nothing else would vouch), MD5 when the message
//! gives one or the object's ETag is the only checksum at hand.
//!
//! Staging hashes each chunk as it is written. SHA-256 (with SHA-NI) was
//! over half of the service's CPU on a 256 MiB download, and MD5 has no
//! hardware help and costs more still; a CRC-64 with carry-less multiply
//! costs a thirtieth of SHA-256. S3 gives every new object a CRC-64/NVME,
//! so most downloads compute the CRC alone. The firmware server takes the
//! SHA-256 and MD5 it sends devices from its own read of the image, once
//! per image, checked against what the download recorded
//! (`http::verified`). When MD5 is computed, a [`Pipeline`] runs it on a
//! thread of its own beside the writer: on two cores the costs overlap
//! instead of adding up.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};

/// A CRC an S3 object may carry as its own checksum, computed while the
/// image is staged only when the job asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crc {
    /// CRC-64/NVME: S3's default for new uploads.
    Crc64Nvme,
    /// CRC-32C (CRC-32/ISCSI).
    Crc32c,
}

impl Crc {
    fn digest(self) -> crc_fast::Digest {
        crc_fast::Digest::new(match self {
            Crc::Crc64Nvme => crc_fast::CrcAlgorithm::Crc64Nvme,
            Crc::Crc32c => crc_fast::CrcAlgorithm::Crc32Iscsi,
        })
    }
}

impl std::fmt::Display for Crc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crc::Crc64Nvme => "crc64nvme",
            Crc::Crc32c => "crc32c",
        })
    }
}

/// The digests a download computes: the ones the job checks the bytes
/// against, and so the ones the index records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    pub sha256: bool,
    pub md5: bool,
    pub crc: Option<Crc>,
}

impl Checks {
    pub const SHA256: Checks = Checks {
        sha256: true,
        md5: false,
        crc: None,
    };
    /// What the firmware server sends devices (`x-SHA256`, `x-MD5`).
    pub const SHA256_MD5: Checks = Checks {
        sha256: true,
        md5: true,
        crc: None,
    };
}

/// Running digests over the bytes staged so far: the [`Checks`] asked for.
#[derive(Clone)]
pub struct Hashes {
    sha256: Option<Sha256>,
    md5: Option<Md5>,
    crc: Option<(Crc, crc_fast::Digest)>,
}

impl std::fmt::Debug for Hashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hashes")
    }
}

/// What [`Hashes`] add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Lowercase hex, if asked for.
    pub sha256: Option<String>,
    /// Lowercase hex, if asked for.
    pub md5: Option<String>,
    /// The CRC asked for, if one was.
    pub crc: Option<(Crc, u64)>,
}

impl Hashes {
    /// Digests of no bytes yet, `checks` to compute.
    pub fn new(checks: Checks) -> Self {
        Self {
            sha256: checks.sha256.then(Sha256::default),
            md5: checks.md5.then(Md5::default),
            crc: checks.crc.map(|c| (c, c.digest())),
        }
    }

    /// True when these digests include `checks`.
    pub(crate) fn computes(&self, checks: Checks) -> bool {
        let crc = checks
            .crc
            .is_none_or(|want| self.crc.is_some_and(|(have, _)| have == want));
        crc && (!checks.md5 || self.md5.is_some()) && (!checks.sha256 || self.sha256.is_some())
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
        self.update_but_md5(bytes);
    }

    fn update_but_md5(&mut self, bytes: &[u8]) {
        if let Some(sha256) = &mut self.sha256 {
            sha256.update(bytes);
        }
        if let Some((_, digest)) = &mut self.crc {
            digest.update(bytes);
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: self.sha256.map(|s| hex(&s.finalize())),
            md5: self.md5.map(|m| hex(&m.finalize())),
            crc: self.crc.map(|(c, digest)| (c, digest.finalize())),
        }
    }

    /// Continues these digests with MD5 (when they have one) on a thread of
    /// its own, at most `depth` chunks behind the caller. Without a thread
    /// (none could be started) everything is hashed on the caller's.
    pub(crate) fn pipeline(self, depth: usize) -> Pipeline {
        // A copy: if no thread starts, `self` still has its MD5.
        let Some(md5) = self.md5.clone() else {
            return Pipeline {
                hashes: self,
                md5: None,
            };
        };
        let (tx, rx) = sync_channel::<Bytes>(depth.max(1));
        let spawned = std::thread::Builder::new()
            .name("gator-ota-md5".into())
            // MD5's state and a loop: far below the 2 MiB default.
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut md5 = md5;
                for chunk in rx {
                    md5.update(&chunk);
                }
                md5
            });
        Pipeline {
            hashes: self,
            md5: spawned.ok().map(|thread| (tx, thread)),
        }
    }
}

/// [`Hashes`] being fed chunk by chunk, MD5 on its own thread.
pub(crate) struct Pipeline {
    /// SHA-256 and the CRC; MD5 too when `md5` is `None`.
    hashes: Hashes,
    md5: Option<(SyncSender<Bytes>, JoinHandle<Md5>)>,
}

impl Pipeline {
    /// Hashes `chunk`: SHA-256 and the CRC here, MD5 on its thread (the
    /// chunk is shared, not copied).
    pub(crate) fn update(&mut self, chunk: &Bytes) {
        match &self.md5 {
            Some((tx, _)) if tx.send(chunk.clone()).is_ok() => self.hashes.update_but_md5(chunk),
            _ => self.hashes.update(chunk),
        }
    }

    /// The digests of everything fed so far, once the MD5 thread caught up.
    pub(crate) fn finish(self) -> Hashes {
        let mut hashes = self.hashes;
        if let Some((tx, thread)) = self.md5 {
            drop(tx);
            if let Ok(md5) = thread.join() {
                hashes.md5 = Some(md5);
            }
        }
        hashes
    }
}

/// Digests of the first `len` bytes of `file`, `checks` included.
/// Blocking; streams the file.
pub(crate) fn hash_file(file: &mut File, len: u64, checks: Checks) -> io::Result<Hashes> {
    let mut hashes = Hashes::new(checks);
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

/// Lowercase hex.
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

    #[test]
    fn a_pipeline_gives_the_digests_of_hashing_inline() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for crc in [None, Some(Crc::Crc64Nvme), Some(Crc::Crc32c)] {
            let checks = Checks {
                sha256: true,
                md5: true,
                crc,
            };
            let mut inline = Hashes::new(checks);
            inline.update(&data);
            // Carried across a resume: the first part hashed inline.
            let mut first = Hashes::new(checks);
            first.update(&data[..1000]);
            let mut piped = first.pipeline(2);
            for chunk in data[1000..].chunks(65_536) {
                piped.update(&Bytes::copy_from_slice(chunk));
            }
            assert_eq!(piped.finish().finish(), inline.finish(), "{crc:?}");
        }
    }

    #[test]
    fn an_empty_pipeline_is_the_digest_of_nothing() {
        let digests = Hashes::new(Checks::SHA256_MD5)
            .pipeline(1)
            .finish()
            .finish();
        assert_eq!(
            digests.md5.as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            digests.sha256.as_deref(),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn each_digest_only_when_asked_for() {
        let mut piped = Hashes::new(Checks::SHA256).pipeline(2);
        piped.update(&Bytes::from_static(b"hello world"));
        let hashes = piped.finish();
        assert!(!hashes.computes(Checks::SHA256_MD5));
        assert!(hashes.computes(Checks::SHA256));
        assert_eq!(hashes.finish().md5, None);

        let crc_only = Checks {
            sha256: false,
            md5: false,
            crc: Some(Crc::Crc64Nvme),
        };
        let mut hashes = Hashes::new(crc_only);
        hashes.update(b"hello world");
        assert!(!hashes.computes(Checks::SHA256));
        let digests = hashes.finish();
        assert_eq!((digests.sha256, digests.md5), (None, None));
        assert!(digests.crc.is_some());
    }
}
