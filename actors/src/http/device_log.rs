//! The per-device record: one JSON line per image request, in
//! `<data_dir>/.gator-ota/devices.jsonl`, for a fleet view to read.
//!
//! Lines are written by a thread of their own, so no request waits on the
//! disk; the file is rotated to `devices.jsonl.1` when the next line would
//! take it past its bound, so the record never holds more than twice that.
//! When the thread falls behind by more than [`BACKLOG`] lines, new lines
//! are dropped with a warning rather than held in memory.
//!
//! Each record is also counted ([`Metrics`]) and handed to the device
//! registry ([`crate::fleet`]) as it is made, never waiting for either.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use actix::Recipient;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::fleet::Served;
use crate::metrics::{Metrics, ServedOutcome};

/// Lines waiting for the writer thread.
const BACKLOG: usize = 1024;

/// The file's name inside the state folder.
pub const DEVICE_LOG: &str = "devices.jsonl";

/// One image request, as the fleet view reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// When the request ended (UTC, RFC 3339).
    pub time: String,
    /// `x-ESP32-STA-MAC` when the device sent it, else its IP address.
    pub device: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The image's `file_name` and SHA-256, from the index.
    pub image: String,
    pub sha256: String,
    pub method: String,
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes handed to the connection.
    pub bytes_sent: u64,
    /// Body bytes the response promised (`Content-Length`).
    pub bytes_expected: u64,
    /// Every promised byte was handed over.
    pub completed: bool,
}

impl DeviceRecord {
    fn outcome(&self) -> ServedOutcome {
        if self.status == 304 {
            ServedOutcome::NotModified
        } else if self.completed && self.status == 200 && self.method == "GET" {
            ServedOutcome::Completed
        } else {
            ServedOutcome::Partial
        }
    }
}

/// Who else hears of each record besides the file.
#[derive(Clone, Default)]
pub struct Tap {
    pub metrics: Arc<Metrics>,
    /// The device registry, when the fleet view is on.
    pub fleet: Option<Recipient<Served>>,
}

/// Where records go; cheap to clone, never blocks.
#[derive(Clone)]
pub struct DeviceLog {
    tx: SyncSender<DeviceRecord>,
    tap: Tap,
}

impl DeviceLog {
    /// Opens the record in `state_dir` and starts its writer thread, which
    /// ends once every `DeviceLog` is dropped. Blocking; called at start-up.
    pub fn open(state_dir: &Path, max_bytes: u64, tap: Tap) -> io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join(DEVICE_LOG);
        let file = append(&path)?;
        let size = file.metadata()?.len();
        let (tx, rx) = sync_channel(BACKLOG);
        let writer = Writer {
            path,
            file,
            size,
            max_bytes,
        };
        std::thread::Builder::new()
            .name("device-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self { tx, tap })
    }

    /// The counters each record goes to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.tap.metrics
    }

    pub fn record(&self, record: DeviceRecord) {
        self.tap
            .metrics
            .image_served(&record.image, record.outcome(), record.bytes_sent);
        if let Some(fleet) = &self.tap.fleet
            && let Err(e) = fleet.try_send(Served(record.clone()))
        {
            warn!(device = %record.device, image = %record.image, error = %e, "the device registry is behind; an image request is not in it");
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => {
                warn!(device = %r.device, image = %r.image, "the device log is behind; a record is dropped")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl Writer {
    fn run(mut self, rx: Receiver<DeviceRecord>) {
        for record in rx {
            let Ok(mut line) = serde_json::to_vec(&record) else {
                continue;
            };
            line.push(b'\n');
            if let Err(e) = self.write(&line) {
                warn!(path = %self.path.display(), error = %e, "cannot write the device log");
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            let old = self.path.with_extension("jsonl.1");
            std::fs::rename(&self.path, &old)?;
            self.file = append(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> DeviceRecord {
        DeviceRecord {
            time: "t".into(),
            device: format!("AA:BB:CC:00:00:{n:02}"),
            mac: None,
            ip: None,
            user_agent: None,
            image: "datagator_v1.0.1.bin".into(),
            sha256: "0".repeat(64),
            method: "GET".into(),
            range: None,
            status: 200,
            bytes_sent: n,
            bytes_expected: n,
            completed: true,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_kept_within_twice_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = DeviceLog::open(dir.path(), 4096, Tap::default()).unwrap();
        for n in 0..100 {
            log.record(record(n));
        }
        drop(log);
        let path = dir.path().join(DEVICE_LOG);
        let old = dir.path().join("devices.jsonl.1");
        // The thread ends when the last sender is gone; wait for the last line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines(&path).last().map(|l| l["bytes_sent"].clone()) != Some(99.into()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the last record never came"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for p in [&path, &old] {
            assert!(std::fs::metadata(p).unwrap().len() <= 4096);
        }
        let (older, newer) = (lines(&old), lines(&path));
        assert!(!older.is_empty());
        let last_old = older.last().unwrap()["bytes_sent"].as_u64().unwrap();
        assert_eq!(newer[0]["bytes_sent"].as_u64().unwrap(), last_old + 1);
    }
}
