//! The fleet view: which Data Gator runs what, and how each image's rollout
//! goes.
//!
//! The [`FleetActor`] keeps the [`registry::Registry`], fed from two sides:
//! the Data Gators' own MQTT messages (routed here by message type, see
//! [`crate::router`]; parsed in [`device`]) and the firmware server's record
//! of each image request ([`Served`], from [`crate::http::device_log`]). It
//! saves the registry to `<state>/fleet.json` atomically on a blocking
//! thread, at most once a second, and answers [`GetReport`] with the
//! [`report::StatusReport`] that `/status.json`, `/metrics`, `/healthz`, the
//! status page ([`page`]) and the `fleet_status` message are made from.
//! With `rollout.enabled` it also advances the staged rollouts
//! ([`rollout`]) once a tick, keeps them in `<state>/rollout.json`, applies
//! the cloud's `rollout` messages and hands each change to the
//! [`rollout::Gate`] the firmware server decides with.

pub mod device;
pub mod page;
pub mod prometheus;
pub mod registry;
pub mod report;
pub mod rollout;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, Recipient,
};
use gator_ota_settings::{FLEET_STATUS, Fleet};
use paho_mqtt as paho;
use tracing::{debug, error, info, warn};

use crate::durable::{free_space, write_atomic};
use std::io::Read;

use crate::http::device_log::{DEVICE_LOG, DeviceRecord};
use crate::journal::Journal;
use crate::messages::{Envelope, Publish};
use crate::metrics::Metrics;
use device::Mac;
use registry::{Judgement, Registry};
use report::{CarrierState, Health, StatusReport, Target};
use rollout::{Gate, ROLLOUT_FILE, Rollouts};

/// The registry's file in the state folder.
pub const FLEET_FILE: &str = "fleet.json";

/// Envelopes and records waiting for the actor; the router waits when it is
/// full, the firmware server drops a record (with a warning).
const MAILBOX: usize = 1024;

/// How often the registry is saved (when it changed), pointers are looked
/// up again and a `fleet_status` is considered.
const TICK: Duration = Duration::from_secs(1);

/// The firmware server's record of one image request.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Served(pub DeviceRecord);

/// Writes what changed since the last save, and answers once it is on
/// disk: the service's stop waits for it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Asks for the fleet summary as it is now.
#[derive(Debug, Message)]
#[rtype(result = "StatusReport")]
pub struct GetReport;

/// Everything the actor is built from.
pub struct FleetConfig {
    pub settings: Fleet,
    pub system_id: String,
    pub state_dir: PathBuf,
    /// The folder whose free space `/healthz` checks, and the reserve.
    pub data_dir: PathBuf,
    pub reserve_bytes: u64,
    /// URL → the pointer file's full path, as the index keys it.
    pub pointers: Vec<(String, PathBuf)>,
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
    /// Each MQTT carrier's client, asked whether it is connected.
    pub carriers: Vec<(String, paho::AsyncClient)>,
    /// Where `fleet_status` goes; `None` when no send address carries it.
    pub egress: Option<Recipient<Publish>>,
    /// The staged rollouts the firmware server asks; `None`: rollouts off.
    pub rollout: Option<Arc<Gate>>,
}

/// The staged rollouts, while `rollout.enabled`: the state this actor
/// advances, and the gate it hands each change to.
struct Staged {
    gate: Arc<Gate>,
    state: Rollouts,
    dirty: bool,
    saving: bool,
    writer: RegistryWriter,
}

pub struct FleetActor {
    cfg: FleetConfig,
    registry: Registry,
    judgement: Judgement,
    targets: Vec<Target>,
    free_bytes: Option<u64>,
    /// Changed since the last save.
    dirty: bool,
    saving: bool,
    writer: RegistryWriter,
    last_sent: Option<Instant>,
    last_fingerprint: String,
    staged: Option<Staged>,
}

impl FleetActor {
    /// Reads the registry a previous run saved. Blocking; called at
    /// start-up. A file that does not read is set aside, not lost.
    pub fn load(cfg: FleetConfig) -> Self {
        let registry = load_registry(&cfg.state_dir, cfg.settings.max_devices);
        let judgement = judgement(&cfg.settings);
        let writer = RegistryWriter::new(&cfg.state_dir);
        let staged = cfg.rollout.clone().map(|gate| Staged {
            state: gate.snapshot(),
            gate,
            dirty: false,
            saving: false,
            writer: RegistryWriter::at(cfg.state_dir.join(ROLLOUT_FILE)),
        });
        Self {
            cfg,
            registry,
            judgement,
            targets: Vec::new(),
            free_bytes: None,
            dirty: false,
            saving: false,
            writer,
            last_sent: None,
            last_fingerprint: String::new(),
            staged,
        }
    }

    fn report(&self) -> StatusReport {
        report::build(report::Input {
            system_id: &self.cfg.system_id,
            source: "service",
            registry: &self.registry,
            targets: &self.targets,
            now_ms: report::now_ms(),
            judgement: self.judgement,
            carriers: self.carrier_states(),
            health: Some(self.health()),
            jobs: self.cfg.metrics.recent(),
            staged: self
                .staged
                .as_ref()
                .map(|s| (&s.state, s.gate.policy.waves.as_slice())),
        })
    }

    fn carrier_states(&self) -> Vec<CarrierState> {
        self.cfg
            .carriers
            .iter()
            .map(|(name, c)| CarrierState {
                name: name.clone(),
                connected: c.is_connected(),
            })
            .collect()
    }

    /// Healthy: every broker connected, free space over the reserve, no job
    /// running longer than `fleet.stuck_job`.
    fn health(&self) -> Health {
        let mut problems = Vec::new();
        for c in self.carrier_states().iter().filter(|c| !c.connected) {
            problems.push(format!("MQTT carrier {} is not connected", c.name));
        }
        let reserve = self.cfg.reserve_bytes;
        match self.free_bytes {
            Some(free) if free <= reserve => problems.push(format!(
                "{free} bytes free in {}, not over jobs.reserve_bytes ({reserve})",
                self.cfg.data_dir.display()
            )),
            Some(_) => {}
            None => problems.push("free space not known yet".into()),
        }
        let (running, oldest) = self.cfg.metrics.running();
        if running > 0 && oldest > self.cfg.settings.stuck_job {
            problems.push(format!(
                "a firmware job has run for {}s, longer than fleet.stuck_job",
                oldest.as_secs()
            ));
        }
        Health {
            ok: problems.is_empty(),
            problems,
            free_bytes: self.free_bytes,
            reserve_bytes: reserve,
            running_jobs: running,
            oldest_job_seconds: oldest.as_secs(),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.advance_rollouts();
        self.save_rollouts(ctx);
        self.save(ctx);
        self.refresh(ctx);
        self.maybe_publish();
    }

    /// Writes the registry when it changed; one write at a time, the next
    /// tick takes what came meanwhile. Only the snapshot (a pointer per
    /// device) is taken on the arbiter thread: serialising and writing
    /// happen on a blocking one.
    fn save(&mut self, ctx: &mut Context<Self>) {
        if !self.dirty || self.saving {
            return;
        }
        self.dirty = false;
        self.saving = true;
        let snapshot = self.registry.snapshot();
        let write = self.writer.write(move || snapshot.to_json());
        ctx.spawn(wrap_future::<_, Self>(write).map(move |res, act, _| {
            act.saving = false;
            match res {
                Ok(Some(s)) => act
                    .cfg
                    .metrics
                    .registry_saved(s.bytes, s.serialise, s.write),
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, file = FLEET_FILE, "cannot save the device registry; it is tried again");
                    act.dirty = true;
                }
            }
        }));
    }

    /// Moves each staged rollout on from the devices' states; a change goes
    /// to the firmware server at once.
    fn advance_rollouts(&mut self) {
        let Some(s) = self.staged.as_mut() else {
            return;
        };
        let now = report::now_ms();
        let policy = &s.gate.policy;
        let before = s.state.clone();
        if s.state
            .advance(policy, &self.targets, &self.registry, now, self.judgement)
        {
            log_changes(&before, &s.state);
            s.gate.publish(&s.state);
            s.dirty = true;
        }
    }

    /// Writes `rollout.json` when it changed, as [`Self::save`] does the
    /// registry.
    fn save_rollouts(&mut self, ctx: &mut Context<Self>) {
        let Some(s) = self.staged.as_mut() else {
            return;
        };
        if !s.dirty || s.saving {
            return;
        }
        s.dirty = false;
        s.saving = true;
        let bytes = s.state.to_json();
        let write = s.writer.write(move || bytes);
        ctx.spawn(wrap_future::<_, Self>(write).map(|res, act, _| {
            let Some(s) = act.staged.as_mut() else { return };
            s.saving = false;
            if let Err(e) = res {
                error!(error = %e, file = ROLLOUT_FILE, "cannot save the rollout state; it is tried again");
                s.dirty = true;
            }
        }));
    }

    /// A `rollout` message from the cloud; a bad one is logged with the
    /// field at fault and changes nothing.
    fn control(&mut self, env: &Envelope) {
        let applied = match self.staged.as_mut() {
            None => Err(rollout::ControlError::Off),
            Some(s) => rollout::parse_control(&env.msg_content)
                .and_then(|c| s.state.control(c, &self.targets)),
        };
        match applied {
            Ok(done) => {
                info!(msg_id = %env.msg_id, "{done}");
                if let Some(s) = self.staged.as_mut() {
                    s.gate.publish(&s.state);
                    s.dirty = true;
                }
            }
            Err(e) => {
                warn!(msg_id = %env.msg_id, field = %e.field().unwrap_or("-"), error = %e, "rollout message refused")
            }
        }
    }

    /// Looks up what each pointer names and the free space, off the arbiter.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let journal = self.cfg.journal.clone();
        let pointers = self.cfg.pointers.clone();
        let dir = self.cfg.data_dir.clone();
        let lookup = async move {
            let mut targets = Vec::new();
            for (url, file) in pointers {
                let image = journal.pointer_at(&file).await.map(|p| p.file_name);
                targets.push(Target { url, image });
            }
            let free = tokio::task::spawn_blocking(move || free_space(&dir))
                .await
                .ok()
                .and_then(Result::ok);
            (targets, free)
        };
        ctx.spawn(
            wrap_future::<_, Self>(lookup).map(|(targets, free), act, _| {
                act.targets = targets;
                act.free_bytes = free;
            }),
        );
    }

    /// A `fleet_status` when something changed (at most once per
    /// `status_min_interval`) or when `status_interval` has passed.
    fn maybe_publish(&mut self) {
        let Some(egress) = &self.cfg.egress else {
            return;
        };
        let s = &self.cfg.settings;
        let since = self.last_sent.map(|t| t.elapsed());
        if !may_send(since, s) {
            return;
        }
        let report = self.report();
        let fingerprint = report.fingerprint();
        if !must_send(since, fingerprint != self.last_fingerprint, s) {
            return;
        }
        let publish = Publish {
            msg_id: FLEET_STATUS.into(),
            message_type: FLEET_STATUS.into(),
            content: report.fleet_status(),
            durable: false,
        };
        match egress.try_send(publish) {
            Ok(()) => {
                self.last_sent = Some(Instant::now());
                self.last_fingerprint = fingerprint;
            }
            Err(e) => debug!(error = %e, "fleet_status not sent now; tried again at the next tick"),
        }
    }
}

/// A log line for each rollout that moved to another wave or status.
fn log_changes(before: &Rollouts, after: &Rollouts) {
    for (url, r) in &after.pointers {
        let old = before.pointers.get(url).filter(|o| o.image == r.image);
        match old {
            None => {
                info!(pointer = %url, image = %r.image, previous = ?r.previous, "staged rollout started")
            }
            Some(o) if o.wave != r.wave => {
                info!(pointer = %url, image = %r.image, wave = r.wave, admitted = r.admitted, confirmed = r.confirmed, "staged rollout: next wave")
            }
            Some(o) if o.status != r.status => {
                warn!(pointer = %url, image = %r.image, status = r.status.label(), reason = ?r.reason, "staged rollout stopped")
            }
            Some(_) => {}
        }
    }
}

/// The rollout state a previous run saved, or none; a file that does not
/// read is set aside as `rollout.json.bad`. Blocking; at start-up.
pub fn load_rollouts(state_dir: &Path) -> Rollouts {
    let path = state_dir.join(ROLLOUT_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Rollouts::new();
    };
    match Rollouts::from_json(&bytes) {
        Ok(r) => {
            info!(
                pointers = r.pointers.len(),
                pins = r.pins.len(),
                "rollout state loaded"
            );
            r
        }
        Err(e) => {
            let aside = path.with_extension("json.bad");
            let _ = std::fs::rename(&path, &aside);
            warn!(path = %path.display(), error = %e, aside = %aside.display(), "the rollout state does not read; set aside, starting afresh");
            Rollouts::new()
        }
    }
}

/// Not within `status_min_interval` of the last `fleet_status`.
fn may_send(since_last: Option<Duration>, s: &Fleet) -> bool {
    since_last.is_none_or(|e| e >= s.status_min_interval)
}

/// The first one, one for a change, or one because `status_interval` passed.
fn must_send(since_last: Option<Duration>, changed: bool, s: &Fleet) -> bool {
    changed || since_last.is_none_or(|e| e >= s.status_interval)
}

fn judgement(s: &Fleet) -> Judgement {
    Judgement {
        boot_grace_ms: i64::try_from(s.boot_grace.as_millis()).unwrap_or(i64::MAX),
        max_errors: s.max_errors,
    }
}

/// The saved registry, or an empty one; a file that does not read is kept
/// beside as `fleet.json.bad` for a look.
fn load_registry(state_dir: &Path, max_devices: usize) -> Registry {
    let path = state_dir.join(FLEET_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return seeded_from_device_log(state_dir, max_devices);
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the device registry; starting empty");
            return Registry::new(max_devices);
        }
    };
    match Registry::from_json(&bytes, max_devices) {
        Ok(r) => {
            info!(devices = r.devices.len(), "device registry loaded");
            r
        }
        Err(e) => {
            let aside = path.with_extension("json.bad");
            let _ = std::fs::rename(&path, &aside);
            warn!(path = %path.display(), error = %e, aside = %aside.display(), "the device registry does not read; set aside, starting empty");
            Registry::new(max_devices)
        }
    }
}

impl Actor for FleetActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.refresh(ctx);
        ctx.run_interval(TICK, Self::tick);
    }
}

impl Handler<Envelope> for FleetActor {
    type Result = ();

    /// A Data Gator's message; a malformed one is logged with what is wrong
    /// and changes nothing.
    fn handle(&mut self, env: Envelope, _: &mut Context<Self>) {
        if env.msg_type == gator_ota_settings::ROLLOUT {
            return self.control(&env);
        }
        self.cfg.metrics.device_message();
        match device::parse(&env.msg_type, &env.topic, &env.msg_content) {
            Ok((mac, report)) => {
                debug!(mac = mac.as_str(), msg_type = %env.msg_type, ?report, "device report");
                let grace = self.judgement.boot_grace_ms;
                self.registry.report(&mac, report, report::now_ms(), grace);
                self.dirty = true;
            }
            Err(e) => {
                warn!(topic = %device::clip(&env.topic), msg_type = %env.msg_type, error = %e, "device message ignored")
            }
        }
    }
}

impl Handler<Served> for FleetActor {
    type Result = ();

    /// An image request; one without a MAC (not a Data Gator, or an old
    /// HTTPUpdate) has no device to go to.
    fn handle(&mut self, Served(rec): Served, _: &mut Context<Self>) {
        let Some(mac) = rec.mac.as_deref().and_then(Mac::parse) else {
            debug!(device = %rec.device, "an image request without a usable x-ESP32-STA-MAC; not in the registry");
            return;
        };
        self.registry.served(&mac, &rec, report::now_ms());
        self.dirty = true;
    }
}

impl Handler<Flush> for FleetActor {
    type Result = actix::ResponseFuture<()>;

    /// Writes the registry as it is now; a save still in flight, older,
    /// cannot land after it ([`RegistryWriter`]).
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        self.dirty = false;
        let snapshot = self.registry.snapshot();
        let write = self.writer.write(move || snapshot.to_json());
        let staged = self.staged.as_mut().map(|s| {
            s.dirty = false;
            let bytes = s.state.to_json();
            s.writer.write(move || bytes)
        });
        Box::pin(async move {
            if let Err(e) = write.await {
                error!(error = %e, "cannot save the device registry at stop");
            }
            if let Some(w) = staged
                && let Err(e) = w.await
            {
                error!(error = %e, "cannot save the rollout state at stop");
            }
        })
    }
}

/// What one save of `fleet.json` cost.
struct Saved {
    bytes: usize,
    serialise: Duration,
    write: Duration,
}

/// Writes `fleet.json` on blocking threads, newest last: each write is
/// numbered when it is asked for, and one that finds a newer one already
/// written is skipped, so two writes in flight never leave the older.
#[derive(Clone)]
struct RegistryWriter {
    path: PathBuf,
    asked: Arc<std::sync::atomic::AtomicU64>,
    written: Arc<std::sync::Mutex<u64>>,
}

impl RegistryWriter {
    fn new(state_dir: &Path) -> Self {
        Self::at(state_dir.join(FLEET_FILE))
    }

    fn at(path: PathBuf) -> Self {
        Self {
            path,
            asked: Default::default(),
            written: Default::default(),
        }
    }

    /// Serialises (`make`) and writes on a blocking thread; `None` when a
    /// newer write was there first.
    fn write<F: FnOnce() -> Vec<u8> + Send + 'static>(
        &self,
        make: F,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Saved>>> + use<F> {
        let n = self
            .asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let me = self.clone();
        async move {
            let done = tokio::task::spawn_blocking(move || {
                let mut written = me.written.lock().unwrap_or_else(|p| p.into_inner());
                if *written > n {
                    return Ok(None);
                }
                let t = Instant::now();
                let bytes = make();
                let serialise = t.elapsed();
                write_atomic(&me.path, &bytes)?;
                *written = n;
                Ok(Some(Saved {
                    bytes: bytes.len(),
                    serialise,
                    write: t.elapsed() - serialise,
                }))
            });
            done.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
    }
}

impl Handler<GetReport> for FleetActor {
    type Result = MessageResult<GetReport>;

    fn handle(&mut self, _: GetReport, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.report())
    }
}

/// The same report from the files alone, for `gator-ota status` while the
/// service is down: the saved registry and the pointer files as written.
/// Blocking.
pub fn report_from_disk(settings: &gator_ota_settings::Settings) -> StatusReport {
    let state = settings.system.data_dir.join(crate::paths::STATE_DIR);
    let registry = load_registry_quietly(&state, settings.fleet.max_devices);
    let staged = std::fs::read(state.join(ROLLOUT_FILE))
        .ok()
        .and_then(|b| Rollouts::from_json(&b).ok())
        .unwrap_or_default();
    let root = settings
        .allowed_roots()
        .into_iter()
        .next()
        .unwrap_or_default();
    let targets: Vec<Target> = settings
        .http
        .pointers
        .iter()
        .map(|p| Target {
            url: p.url.clone(),
            image: std::fs::read_to_string(root.join(&p.file))
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 255),
        })
        .collect();
    report::build(report::Input {
        system_id: &settings.system.id,
        source: "disk",
        registry: &registry,
        targets: &targets,
        now_ms: report::now_ms(),
        judgement: judgement(&settings.fleet),
        carriers: Vec::new(),
        health: None,
        jobs: Vec::new(),
        staged: settings
            .rollout
            .enabled
            .then_some((&staged, settings.rollout.waves.as_slice())),
    })
}

/// A first registry from the firmware server's record (`devices.jsonl.1`,
/// then `devices.jsonl`): a gateway that served devices before it kept a
/// registry starts with what they fetched. Lines that do not read are
/// skipped; at most [`SEED_BYTES`] of each file are read.
fn seeded_from_device_log(state_dir: &Path, max_devices: usize) -> Registry {
    use std::io::{BufRead, BufReader};
    let mut registry = Registry::new(max_devices);
    let (mut taken, mut skipped) = (0usize, 0usize);
    for name in [format!("{DEVICE_LOG}.1"), DEVICE_LOG.to_string()] {
        let Ok(file) = std::fs::File::open(state_dir.join(name)) else {
            continue;
        };
        for line in BufReader::new(file.take(SEED_BYTES)).lines() {
            let Ok(line) = line else { break };
            match seed_line(&line) {
                Some((mac, rec, at)) => {
                    registry.served(&mac, &rec, at);
                    taken += 1;
                }
                None => skipped += 1,
            }
        }
    }
    if taken + skipped > 0 {
        info!(
            records = taken,
            skipped,
            devices = registry.devices.len(),
            "device registry started from the firmware server's record"
        );
    }
    registry
}

/// Bytes of each device log file read when seeding the registry.
const SEED_BYTES: u64 = 64 * 1024 * 1024;

fn seed_line(line: &str) -> Option<(Mac, DeviceRecord, i64)> {
    let rec: DeviceRecord = serde_json::from_str(line).ok()?;
    let mac = Mac::parse(rec.mac.as_deref()?)?;
    let at = chrono::DateTime::parse_from_rfc3339(&rec.time)
        .ok()?
        .timestamp_millis();
    Some((mac, rec, at))
}

/// [`load_registry`] without setting a bad file aside: a reader must not
/// move the service's files.
fn load_registry_quietly(state_dir: &Path, max_devices: usize) -> Registry {
    std::fs::read(state_dir.join(FLEET_FILE))
        .ok()
        .and_then(|b| Registry::from_json(&b, max_devices).ok())
        .unwrap_or_else(|| Registry::new(max_devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(min: u64, every: u64) -> Fleet {
        let mut s = gator_ota_settings::load_with_env(None, &Default::default())
            .unwrap()
            .fleet;
        s.status_min_interval = Duration::from_secs(min);
        s.status_interval = Duration::from_secs(every);
        s
    }

    #[test]
    fn fleet_status_is_rate_limited_and_periodic() {
        let s = fleet(30, 900);
        let secs = |n| Some(Duration::from_secs(n));
        assert!(
            may_send(None, &s) && must_send(None, false, &s),
            "the first one"
        );
        assert!(!may_send(secs(29), &s), "a change within the minimum waits");
        assert!(may_send(secs(30), &s) && must_send(secs(30), true, &s));
        assert!(!must_send(secs(899), false, &s), "nothing changed");
        assert!(must_send(secs(900), false, &s), "periodic");
    }

    #[test]
    fn a_first_registry_comes_from_the_firmware_server_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let line = |mac: &str, status: u16| {
            format!(
                "{{\"time\":\"2026-12-01T10:00:00.000Z\",\"device\":\"{mac}\",\"mac\":\"{mac}\",\"ip\":\"10.0.0.9\",\"user_agent\":\"ESP32-http-Update\",\"image\":\"datagator_v1.0.1.bin\",\"sha256\":\"00\",\"method\":\"GET\",\"range\":null,\"status\":{status},\"bytes_sent\":9,\"bytes_expected\":9,\"completed\":true}}\n"
            )
        };
        let log = line("24:6F:28:00:00:01", 200)
            + "not json\n"
            + &line("10.0.0.7", 200)
            + &line("24:6f:28:00:00:02", 304);
        std::fs::write(dir.path().join(DEVICE_LOG), log).unwrap();
        let r = load_registry(dir.path(), 10);
        let macs: Vec<&String> = r.devices.keys().collect();
        assert_eq!(macs, ["24:6F:28:00:00:01", "24:6F:28:00:00:02"]);
        let d = &r.devices["24:6F:28:00:00:01"];
        assert!(d.served[0].completed);
        assert_eq!(d.last_seen, 1_796_119_200_000);
        assert!(
            !r.devices["24:6F:28:00:00:02"].served[0].completed,
            "a 304 is no transfer"
        );
    }

    #[actix_rt::test]
    async fn an_older_write_never_lands_after_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let w = RegistryWriter::new(dir.path());
        let (old, new) = (w.write(|| b"old".to_vec()), w.write(|| b"new".to_vec()));
        new.await.unwrap();
        old.await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(FLEET_FILE)).unwrap(), b"new");
    }

    #[test]
    fn a_rollout_state_that_does_not_read_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_rollouts(dir.path()), Rollouts::new(), "no file yet");
        std::fs::write(dir.path().join(ROLLOUT_FILE), b"{\"format\":9}").unwrap();
        assert_eq!(load_rollouts(dir.path()), Rollouts::new());
        assert!(dir.path().join("rollout.json.bad").exists());
        assert!(!dir.path().join(ROLLOUT_FILE).exists());
    }

    #[test]
    fn a_registry_that_does_not_read_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLEET_FILE), b"{broken").unwrap();
        let r = load_registry(dir.path(), 10);
        assert!(r.devices.is_empty());
        assert!(dir.path().join("fleet.json.bad").exists());
        assert!(!dir.path().join(FLEET_FILE).exists());
    }
}
