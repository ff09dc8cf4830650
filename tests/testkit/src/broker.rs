//! A real mosquitto broker per test.
//!
//! gator-ota's MQTT behaviour (reconnects, QoS 1 redelivery, retained
//! triggers) is exactly the part an in-memory fake would get subtly wrong, so
//! tests talk to the same broker the gateways run. Each [`Broker`] owns its
//! own process, port and config, so tests can run in parallel and can kill
//! "their" broker without disturbing anyone else's.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::tls::TestPki;
use crate::wait::{free_port, wait_until};

/// How long a (re)started mosquitto gets to open its listener. Startup is
/// normally a few milliseconds; the slack is for overloaded CI machines.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// How often to re-pick a port when another process steals the one
/// [`free_port`] handed us before mosquitto could bind it.
const START_ATTEMPTS: usize = 3;

/// Environment variable that overrides which mosquitto binary is run, for
/// machines where it is not on `PATH` or a specific build must be tested.
pub const MOSQUITTO_ENV: &str = "MOSQUITTO";

/// Where distributions put mosquitto. `/usr/sbin` is often missing from a
/// non-root `PATH`, which would otherwise make every broker test fail with a
/// confusing "not found".
const FALLBACK_BINARIES: &[&str] = &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];

/// A mosquitto process listening on a loopback port, killed on drop.
///
/// The broker keeps no persistent state (`persistence false`), so
/// [`restart`](Broker::restart) behaves like a crashed-and-rebooted broker:
/// sessions, subscriptions and retained messages are all gone, exactly what
/// the downloader must survive in the field.
#[derive(Debug)]
pub struct Broker {
    // `None` while stopped. `Drop` kills it before the tempdir holding its
    // config and log goes away.
    child: Option<Child>,
    port: u16,
    conf_path: PathBuf,
    log_path: PathBuf,
    /// Restarts go through SIGTERM so the broker saves its state.
    persistent: bool,
    // Holds the config and log; only kept alive, never read.
    _dir: TempDir,
}

impl Broker {
    /// Starts an anonymous, non-persistent broker on a fresh loopback port
    /// and returns once it accepts TCP connections.
    #[track_caller]
    pub fn start() -> Broker {
        Broker::start_with_config("")
    }

    /// Like [`start`](Broker::start), but appends `extra` to the generated
    /// config.
    ///
    /// `extra` is written directly after the default `listener PORT
    /// 127.0.0.1` line, so listener-scoped options (`certfile`, `keyfile`,
    /// `cafile`, `require_certificate`, …) apply to the listener behind
    /// [`port`](Broker::port) — which is how a TLS test turns it into a TLS
    /// listener (and then connects to `ssl://127.0.0.1:PORT` rather than
    /// [`url`](Broker::url)). `extra` may also open further `listener`
    /// blocks; their ports are the caller's business (use
    /// [`free_port`](crate::free_port)), and readiness is only checked on the
    /// default one.
    #[track_caller]
    pub fn start_with_config(extra: &str) -> Broker {
        Broker::start_inner(extra, false)
    }

    /// A broker that keeps sessions, subscriptions and queued QoS 1 messages
    /// across [`restart`](Broker::restart)s, as a production broker with
    /// `persistence true` does: restarts (SIGTERM, then start) save and
    /// reload its state, so a test can flap it without losing what it had
    /// acknowledged. Its state is also saved every second.
    #[track_caller]
    pub fn start_persistent() -> Broker {
        Broker::start_inner("", true)
    }

    #[track_caller]
    fn start_inner(extra: &str, persistent: bool) -> Broker {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("gator-mosquitto-")
                .tempdir()
                .expect("create mosquitto tempdir");
            let port = free_port();
            let conf_path = dir.path().join("mosquitto.conf");
            let log_path = dir.path().join("mosquitto.log");
            let conf = render_config(dir.path(), port, &log_path, extra, persistent);
            fs::write(&conf_path, conf).expect("write mosquitto.conf");

            let mut broker = Broker {
                child: None,
                port,
                conf_path,
                log_path,
                persistent,
                _dir: dir,
            };
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                // Most likely lost the race for the port; try another one.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("mosquitto failed to start {START_ATTEMPTS} times; last attempt: {last_failure}");
    }

    /// Starts a broker whose listener speaks only TLS, with `pki`'s server
    /// certificate. With `require_client_cert`, clients must present a
    /// certificate signed by `pki`'s CA, and its common name becomes their
    /// user name (`use_identity_as_username`). Connect to
    /// [`tls_url`](Broker::tls_url).
    #[track_caller]
    pub fn start_tls(pki: &TestPki, require_client_cert: bool) -> Broker {
        let mut extra = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display(),
        );
        if require_client_cert {
            extra.push_str("use_identity_as_username true\n");
        }
        Broker::start_with_config(&extra)
    }

    /// The paho server URI of the default listener when it speaks TLS
    /// ([`start_tls`](Broker::start_tls)).
    pub fn tls_url(&self) -> String {
        format!("ssl://127.0.0.1:{}", self.port)
    }

    /// The loopback port of the default listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The paho server URI of the default (plaintext) listener.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The generated config file, for tests that want to inspect or reuse it.
    pub fn config_path(&self) -> &Path {
        &self.conf_path
    }

    /// Everything mosquitto has logged so far, across restarts.
    ///
    /// Meant for assertion messages: when a client test fails, the broker's
    /// view (connects, disconnects, protocol errors) is usually the fastest
    /// way to see why.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where mosquitto's stderr goes: startup errors such as a bad config
    /// line or an unreadable certificate end up here rather than in
    /// [`log`](Broker::log).
    fn stderr_path(&self) -> PathBuf {
        self.log_path.with_file_name("mosquitto.stderr")
    }

    /// Whether the broker process is currently alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the broker with SIGTERM, so it saves its persistent state
    /// (with `persistence true`) before it exits, and reaps it.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Kills the broker (SIGKILL) and reaps it.
    ///
    /// SIGKILL rather than a graceful stop, because an abrupt loss of the
    /// broker is the failure mode the client code has to handle; connected
    /// clients see their TCP connection drop without an MQTT DISCONNECT.
    /// Calling `stop` on a stopped broker is a no-op.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill fails only if the process already exited; wait reaps it
            // either way so no zombie is left behind.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker if needed, then starts it again on the same port with
    /// the same config, returning once it accepts connections.
    ///
    /// Same port, because the code under test was configured with the old
    /// URL and must find the broker again by reconnecting.
    #[track_caller]
    pub fn restart(&mut self) {
        if self.persistent {
            self.terminate();
        } else {
            self.stop();
        }
        if let Err(failure) = self.spawn_and_wait() {
            panic!(
                "mosquitto failed to restart on port {}: {failure}",
                self.port
            );
        }
    }

    /// Starts a stopped broker again (same port, same config and, when
    /// persistent, the state it saved when it stopped).
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        if let Err(failure) = self.spawn_and_wait() {
            panic!(
                "mosquitto failed to start again on port {}: {failure}",
                self.port
            );
        }
    }

    /// Spawns mosquitto and waits for the default listener. On an early exit
    /// returns a description including the log, so the caller can decide
    /// whether to retry.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // The log is kept across restarts: count this start's line only.
        let runs_before = self.log().matches(" running").count();
        // Owned by `self` from the start, so that if the wait below panics the
        // process is killed by `Drop` instead of outliving the test.
        let child = self
            .child
            .insert(spawn_mosquitto(&self.conf_path, &self.stderr_path()));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let log_path = self.log_path.clone();
        let mut exited: Option<ExitStatus> = None;
        wait_until(
            STARTUP_DEADLINE,
            &format!("mosquitto to listen on {addr}"),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                // The port alone could be another process's (ports are
                // reused between tests); mosquitto logs "running" only once
                // its own configuration is read and its listener is open.
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && fs::read_to_string(&log_path)
                        .is_ok_and(|l| l.matches(" running").count() > runs_before)
            },
        );
        // A connect can succeed just as mosquitto dies (e.g. someone else
        // owns the port), so check once more after the listener answered.
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            exited = Some(status);
        }
        match exited {
            None => Ok(()),
            Some(status) => {
                // Already reaped by `try_wait`; nothing left to kill.
                self.child = None;
                let stderr = fs::read_to_string(self.stderr_path()).unwrap_or_default();
                Err(format!(
                    "mosquitto exited with {status} before listening on {addr}; \
                     stderr:\n{stderr}\nlog:\n{}",
                    self.log()
                ))
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Must happen before `dir` is removed, and must never leak a broker
        // process past the test that started it.
        self.stop();
    }
}

fn stderr_file(path: &Path) -> io::Result<Stdio> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Stdio::from(file))
}

fn render_config(dir: &Path, port: u16, log_path: &Path, extra: &str, persistent: bool) -> String {
    // mosquitto started as root drops privileges to the `mosquitto` user,
    // which then cannot write its log into our 0700 tempdir and exits. The
    // tempdir was created by us, so its owner tells us our effective uid
    // without needing libc.
    let running_as_root = fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false);
    let user_line = if running_as_root { "user root\n" } else { "" };
    let persistence = if persistent {
        format!(
            "persistence true\npersistence_location {}/\nautosave_interval 1\n",
            dir.display()
        )
    } else {
        "persistence false\n".to_string()
    };
    format!(
        "# Generated by gator-ota-testkit for a single test.\n\
         {user_line}\
         allow_anonymous true\n\
         {persistence}\
         log_dest file {log}\n\
         log_timestamp true\n\
         log_timestamp_format %Y-%m-%dT%H:%M:%S\n\
         listener {port} 127.0.0.1\n\
         {extra}\n",
        log = log_path.display(),
    )
}

fn spawn_mosquitto(conf: &Path, stderr: &Path) -> Child {
    let spawn = |program: &str| -> io::Result<Child> {
        Command::new(program)
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Config errors are reported on stderr before the log file is
            // open; keep them out of the test output but available for the
            // failure message.
            .stderr(stderr_file(stderr)?)
            .spawn()
    };

    if let Some(program) = std::env::var_os(MOSQUITTO_ENV) {
        let program = program.to_string_lossy().into_owned();
        return spawn(&program).unwrap_or_else(|e| panic!("spawn ${MOSQUITTO_ENV}={program}: {e}"));
    }
    match spawn("mosquitto") {
        Ok(child) => return child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("spawn mosquitto: {e}"),
    }
    for program in FALLBACK_BINARIES {
        match spawn(program) {
            Ok(child) => return child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("spawn {program}: {e}"),
        }
    }
    panic!(
        "mosquitto not found on PATH or in {FALLBACK_BINARIES:?}; install it \
         (apt-get install mosquitto) or set ${MOSQUITTO_ENV}"
    );
}
