//! Durable FIFOs of MQTT messages: the inbox and the outbox.
//!
//! The broker forgets a QoS 1 message once it is acknowledged, and paho
//! acknowledges an incoming one when its callback returns; it keeps outgoing
//! ones only in memory and drops the oldest past a limit. So gator-ota holds
//! both ends itself, on disk: a `firmware_image` is in the inbox before paho
//! may acknowledge it, and a `confirm_receipt` (or terminal status) stays in
//! the outbox until the broker has acknowledged it. Neither is bounded by
//! memory: only sequence numbers are kept in RAM.
//!
//! One file per message, `<seq>.msg`, written to a temporary name, synced
//! and renamed, and the folder synced: a crash leaves a whole message or
//! none. Files are `[topic length: u32 LE][topic][payload]`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

/// A message as it is kept on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct Spool {
    dir: PathBuf,
    next: AtomicU64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and returns what it holds,
    /// oldest first. Leftover temporaries (a crash mid-write, so never
    /// acknowledged to anyone) are removed. Blocking; called at start-up.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<u64>)> {
        fs::create_dir_all(dir)?;
        let mut held = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(seq) = name.strip_suffix(".msg").and_then(|s| s.parse().ok()) {
                held.push(seq);
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        held.sort_unstable();
        let next = held.last().map_or(1, |s| s + 1);
        Ok((
            Self {
                dir: dir.to_path_buf(),
                next: AtomicU64::new(next),
            },
            held,
        ))
    }

    /// Numbers every later message above `seq`. A journal record names the
    /// inbox entry its job came from; an entry emptied and reopened would
    /// otherwise number new messages from 1 again, and a new message could
    /// take the number of a job still in the journal and be thrown away as
    /// already taken.
    pub fn number_after(&self, seq: u64) {
        self.next.fetch_max(seq + 1, Ordering::Relaxed);
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.msg"))
    }

    /// Adds a message durably and returns its sequence number. Blocking (two
    /// fsyncs): call it where waiting for the disk is the point.
    pub fn put(&self, topic: &str, payload: &[u8]) -> io::Result<u64> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            let len = u32::try_from(topic.len()).map_err(io::Error::other)?;
            f.write_all(&len.to_le_bytes())?;
            f.write_all(topic.as_bytes())?;
            f.write_all(payload)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)?;
            crate::durable::sync_dir(&self.dir)
        };
        write().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        Ok(seq)
    }

    /// Reads a held message. Blocking.
    pub fn read(&self, seq: u64) -> io::Result<Spooled> {
        let bytes = fs::read(self.path(seq))?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated spool file");
        let len: [u8; 4] = bytes
            .get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let len = u32::from_le_bytes(len) as usize;
        let topic = bytes.get(4..4 + len).ok_or_else(bad)?;
        let topic = String::from_utf8(topic.to_vec()).map_err(|_| bad())?;
        Ok(Spooled {
            topic,
            payload: bytes[4 + len..].to_vec(),
        })
    }

    /// Forgets a message once it is somewhere safer (the job journal) or
    /// delivered. Blocking. The folder is not synced: a removal lost in a
    /// crash only means the message is handled once more, which both ends
    /// tolerate (a repeated job re-confirms; a repeated confirm is harmless).
    pub fn remove(&self, seq: u64) {
        match fs::remove_file(self.path(seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(seq, dir = %self.dir.display(), error = %e, "cannot remove a spooled message")
            }
        }
    }
}

/// Runs blocking spool work off the actor thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, held) = Spool::open(dir.path()).unwrap();
        assert!(held.is_empty());
        let a = spool.put("t/a", b"{\"a\":1}").unwrap();
        let b = spool.put("t/\nb", b"").unwrap();
        let c = spool.put("t/c", &[0, 1, 2]).unwrap();
        spool.remove(b);
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"half").unwrap();
        drop(spool);

        let (spool, held) = Spool::open(dir.path()).unwrap();
        assert_eq!(held, vec![a, c]);
        assert_eq!(
            spool.read(a).unwrap(),
            Spooled {
                topic: "t/a".into(),
                payload: b"{\"a\":1}".to_vec()
            }
        );
        assert_eq!(spool.read(c).unwrap().payload, vec![0, 1, 2]);
        assert!(spool.put("t/d", b"d").unwrap() > c);
        assert!(!dir.path().join("00000000000000000099.tmp").exists());
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let seq = spool.put("topic", b"x").unwrap();
        std::fs::write(spool.path(seq), [200, 0]).unwrap();
        assert!(spool.read(seq).is_err());
        std::fs::write(spool.path(seq), [200, 0, 0, 0, b'a']).unwrap();
        assert!(spool.read(seq).is_err());
    }
}
