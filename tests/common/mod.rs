//! The gateway under test: the real `gator-ota` binary, run against a real
//! broker and a real S3-protocol server from the testkit.
#![allow(dead_code)]

pub mod device;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use gator_ota_testkit::{
    ACCESS_KEY, Broker, REGION, S3Server, SECRET_KEY, Subscriber, publish, wait_until,
};

pub const BUCKET: &str = "firmware";
pub const SYSTEM_ID: &str = "test-gateway";
pub const RECEIVE_TOPIC: &str = "scarecro/firmware_image";
pub const CONFIRM_TOPIC: &str = "scarecro/confirm_receipt";
pub const STATUS_TOPIC: &str = "scarecro/firmware_status";
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A `firmware_image` as the SCARECRO cloud sends it (confirm_receipt left
/// to its default, true).
/// The default MQTT carrier's table under the name `local`, pointed at
/// `broker`, with its own client id and quick reconnects: a gateway's local
/// broker beside the cloud's.
pub fn local_carrier_table(broker: &Broker) -> String {
    let defaults = include_str!("../../settings/default.toml");
    let mqtt = &defaults[defaults.find("[carriers.mqtt]").unwrap()..];
    let mqtt = &mqtt[..mqtt[1..].find("\n[").unwrap() + 1];
    mqtt.replace("[carriers.mqtt]", "[carriers.local]")
        .replace("tcp://127.0.0.1:1883", &broker.url())
        .replace(
            "client_id = \"gator-ota\"",
            "client_id = \"gator-ota-local\"",
        )
        .replace("reconnect_min = \"1s\"", "reconnect_min = \"100ms\"")
        .replace("reconnect_max = \"60s\"", "reconnect_max = \"500ms\"")
}

pub fn firmware_image(id: &str, file_name: &str, cloud_path: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "time": "2026-11-27T10:00:00.000000",
        "file_name": file_name,
        "cloud_path": cloud_path,
    })
}

/// Settings that turn firmware_status messages on.
pub fn status_env() -> Vec<(String, String)> {
    [
        ("GATOR_OTA__ADDRESSES__CLOUD_MQTT_STATUS__CARRIER", "mqtt"),
        (
            "GATOR_OTA__ADDRESSES__CLOUD_MQTT_STATUS__SEND_OR_RECEIVE",
            "send",
        ),
        (
            "GATOR_OTA__ADDRESSES__CLOUD_MQTT_STATUS__MESSAGE_TYPE",
            "firmware_status",
        ),
        (
            "GATOR_OTA__ADDRESSES__CLOUD_MQTT_STATUS__DURATION",
            "on_message",
        ),
        (
            "GATOR_OTA__ADDRESSES__CLOUD_MQTT_STATUS__TOPIC",
            STATUS_TOPIC,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Statuses for `msg_id` until one is terminal (INSTALLED or FAILED).
pub fn statuses_until_done(sub: &Subscriber, msg_id: &str) -> Vec<serde_json::Value> {
    let mut seen = vec![];
    while let Some(s) = sub.recv_json(DEADLINE) {
        if s["msg_id"] != msg_id {
            continue;
        }
        let done = s["status"] == "INSTALLED" || s["status"] == "FAILED";
        seen.push(s);
        if done {
            return seen;
        }
    }
    panic!("no terminal status for {msg_id}; saw {seen:?}");
}

/// A broker, a bucket and a place for the gateway's data, torn down on drop.
pub struct World {
    pub broker: Broker,
    pub s3: S3Server,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> Self {
        Self::with_broker(Broker::start())
    }

    /// A world around `broker`, e.g. one from `Broker::start_tls`.
    pub fn with_broker(broker: Broker) -> Self {
        let s3 = S3Server::start();
        s3.create_bucket(BUCKET);
        Self {
            broker,
            s3,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The settings, as environment, of a gateway using this world.
    pub fn env(&self) -> Vec<(String, String)> {
        let v = |k: &str, v: &str| (k.to_string(), v.to_string());
        vec![
            v("GATOR_OTA__SYSTEM__ID", SYSTEM_ID),
            v(
                "GATOR_OTA__SYSTEM__DATA_DIR",
                self.data_dir().to_str().unwrap(),
            ),
            v("GATOR_OTA__CARRIERS__MQTT__URL", &self.broker.url()),
            v("GATOR_OTA__CARRIERS__MQTT__RECONNECT_MIN", "100ms"),
            v("GATOR_OTA__CARRIERS__MQTT__RECONNECT_MAX", "1s"),
            v(
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET",
                &format!("s3://{BUCKET}"),
            ),
            v(
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
                &self.s3.endpoint(),
            ),
            v("GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ALLOW_HTTP", "true"),
            v("GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__REGION", REGION),
            v(
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ACCESS_KEY_ID",
                ACCESS_KEY,
            ),
            v(
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__SECRET_ACCESS_KEY",
                SECRET_KEY,
            ),
            v(
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__CONNECT_TIMEOUT",
                "2s",
            ),
            v("GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__TIMEOUT", "60s"),
        ]
    }

    pub fn gateway(&self) -> Gateway {
        Gateway::start(self.env())
    }

    pub fn publish_json(&self, content: &serde_json::Value) {
        publish(&self.broker.url(), RECEIVE_TOPIC, &content.to_string());
    }

    pub fn confirms(&self) -> Subscriber {
        Subscriber::new(&self.broker.url(), CONFIRM_TOPIC)
    }

    pub fn image(&self, file_name: &str) -> PathBuf {
        self.data_dir()
            .join("firmware_images")
            .join(format!("{file_name}.bin"))
    }

    pub fn pointer(&self) -> PathBuf {
        self.data_dir().join("latest_firmware.json")
    }
}

/// A running `gator-ota run`, its log collected as it is written.
pub struct Gateway {
    child: Mutex<Child>,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts the gateway and waits until it has subscribed.
    pub fn start(env: Vec<(String, String)>) -> Self {
        let gw = Self::spawn(env);
        gw.wait_log("subscribed");
        gw
    }

    /// Starts the gateway without waiting for anything.
    pub fn spawn(env: Vec<(String, String)>) -> Self {
        let binary = std::env::var("GATOR_OTA_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_gator-ota").to_string());
        let mut cmd = wrapped(&binary);
        cmd.arg("run")
            .env_remove("GATOR_OTA_SETTINGS")
            .env("GATOR_OTA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("GATOR_OTA__") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        // Each gateway's firmware server on a port of its own; a test that
        // fetches from it reads the port from the log (`Gateway::http_addr`).
        cmd.env("GATOR_OTA__HTTP__LISTEN", "127.0.0.1:0");
        cmd.envs(env);
        let mut child = cmd.spawn().expect("start gator-ota");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child: Mutex::new(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The firmware server's address, from its "listening" log line.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.wait_log("firmware server listening");
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("firmware server listening"))
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Whether the process is still running (false after a crash).
    pub fn is_running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// How it ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// A line of /proc/<pid>/status in KiB, e.g. `VmHWM` (peak RSS).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log holds `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_count(needle, 1);
    }

    /// Waits until one log line holds every one of `parts`.
    pub fn wait_line(&self, parts: &[&str]) {
        let what = format!("a log line with {parts:?}");
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < deadline {
            if self
                .log()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}; log:\n{}", self.log());
    }

    /// Waits until the log holds `needle` at least `n` times. The deadline
    /// is for progress: it restarts whenever the count grows, so hundreds
    /// of jobs on a loaded machine are waited for as long as they move.
    pub fn wait_count(&self, needle: &str, n: usize) {
        let what = format!("{n} × {needle:?} in the gateway log");
        let mut last = 0;
        let mut deadline = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < deadline {
            let now = self.count(needle);
            if now >= n {
                return;
            }
            if now > last {
                deadline = std::time::Instant::now() + DEADLINE;
            }
            last = now;
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader drain
                panic!(
                    "gator-ota exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out waiting for {what} (saw {last}, none more for {DEADLINE:?}); log:\n{}",
            self.log()
        );
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> ExitStatus {
        let mut child = self.child.lock().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let mut status = None;
        wait_until(DEADLINE, "gator-ota to exit", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The gateway's command, under `GATOR_OTA_TEST_WRAPPER` when it is set
/// (e.g. `valgrind --error-exitcode=99`), for the soak's memory checks.
/// `GATOR_OTA_TEST_BINARY` runs another build (the soak's `--release`).
fn wrapped(binary: &str) -> Command {
    let wrapper = std::env::var("GATOR_OTA_TEST_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(binary);
            cmd
        }
        None => Command::new(binary),
    }
}

pub fn sha256_file(path: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

/// Every file under `dir`, for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
