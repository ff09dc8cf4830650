//! The fleet summary every view shows: `/status.json`, `fleet_status`, the
//! status page, `/metrics` and `gator-ota status` are all made from one
//! [`StatusReport`], so they cannot disagree.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::device::Version;
use super::registry::{Device, Judgement, Registry, RolloutState};
use super::rollout::Rollouts;
use crate::metrics::JobSummary;

/// An image a pointer names, the one the Data Gators polling it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pointer's URL on the firmware server.
    pub url: String,
    /// The image's `file_name`; `None` while the pointer is not written.
    pub image: Option<String>,
}

impl Target {
    pub fn version(&self) -> Option<Version> {
        self.image.as_deref().and_then(Version::of_image)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CarrierState {
    pub name: String,
    pub connected: bool,
}

/// What `/healthz` decides on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    /// Each reason it is not, in words.
    pub problems: Vec<String>,
    pub free_bytes: Option<u64>,
    pub reserve_bytes: u64,
    pub running_jobs: usize,
    pub oldest_job_seconds: u64,
}

/// One pointer's rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRollout {
    pub url: String,
    pub image: Option<String>,
    pub version: Option<String>,
    /// Devices that should take it: every one known.
    pub devices: usize,
    /// Devices per state: pending, downloading, finished, confirmed, failed.
    pub states: BTreeMap<String, usize>,
    /// The staged rollout of the image, while `rollout.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedView>,
}

/// Where a staged rollout stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedView {
    /// `running`, `paused` or `aborted`.
    pub status: String,
    /// 0: the canary; n: wave n of `waves`.
    pub wave: usize,
    pub waves: usize,
    /// Percent of the fleet the current wave reaches (0 for the canary).
    pub share: u8,
    /// Devices admitted so far, and of those confirmed and failed.
    pub admitted: usize,
    pub confirmed: usize,
    pub failed: usize,
    pub reason: Option<String>,
    pub previous: Option<String>,
    pub wave_started: String,
}

impl StagedView {
    /// `canary` or `wave 2 of 3 (50%)`, and the status.
    pub fn describe(&self) -> String {
        let stage = if self.wave == 0 {
            "canary".to_string()
        } else {
            format!("wave {} of {} ({}%)", self.wave, self.waves, self.share)
        };
        let reason = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "{stage}, {}{reason}; {} admitted, {} confirmed, {} failed",
            self.status, self.admitted, self.confirmed, self.failed
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServedView {
    pub image: String,
    pub at: String,
    pub requests: u32,
    pub status: u16,
    pub completed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    pub mac: String,
    pub version: Option<String>,
    pub last_seen: String,
    pub ota_state: Option<String>,
    pub ota_at: Option<String>,
    /// Its state in the first pointer's rollout.
    pub rollout: Option<String>,
    pub failure: Option<String>,
    pub errors: u64,
    pub last_error: Option<String>,
    pub served: Vec<ServedView>,
}

impl DeviceView {
    /// Why it failed and the last error it reported, as one line.
    pub fn problem(&self) -> String {
        match (&self.failure, &self.last_error) {
            (Some(f), Some(e)) => format!("{f}; last error {e}"),
            (Some(f), None) => f.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub system_id: String,
    pub time: String,
    /// `service` (the running gateway) or `disk` (its files, while it is down).
    pub source: String,
    pub health: Option<Health>,
    pub carriers: Vec<CarrierState>,
    pub images: Vec<ImageRollout>,
    /// Devices per reported version (`unknown` when none yet).
    pub versions: BTreeMap<String, usize>,
    /// Seen most recently first.
    pub devices: Vec<DeviceView>,
    /// The last jobs that ended, newest first.
    pub jobs: Vec<JobSummary>,
    /// Devices pinned to one image by a `rollout` message (MAC → image).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

/// What a report is made from.
pub struct Input<'a> {
    pub system_id: &'a str,
    pub source: &'a str,
    pub registry: &'a Registry,
    pub targets: &'a [Target],
    pub now_ms: i64,
    pub judgement: Judgement,
    pub carriers: Vec<CarrierState>,
    pub health: Option<Health>,
    pub jobs: Vec<JobSummary>,
    /// The staged rollouts and `rollout.waves`, while `rollout.enabled`.
    pub staged: Option<(&'a Rollouts, &'a [u8])>,
}

pub fn build(input: Input) -> StatusReport {
    let now = input.now_ms;
    let images = input
        .targets
        .iter()
        .map(|t| {
            let mut r = rollout(t, input.registry, now, input.judgement);
            r.staged = input.staged.and_then(|(s, waves)| staged(t, s, waves));
            r
        })
        .collect();
    let first = input.targets.first().and_then(Target::version);
    let mut devices: Vec<&Device> = input.registry.devices.values().map(|d| &**d).collect();
    devices.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.mac.cmp(&b.mac)));
    let mut versions = BTreeMap::new();
    for d in &devices {
        let v = d.version.clone().unwrap_or_else(|| "unknown".into());
        *versions.entry(v).or_default() += 1;
    }
    StatusReport {
        system_id: input.system_id.to_string(),
        time: rfc3339(now),
        source: input.source.to_string(),
        health: input.health,
        carriers: input.carriers,
        images,
        versions,
        devices: devices
            .into_iter()
            .map(|d| view(d, first.as_ref(), now, input.judgement))
            .collect(),
        jobs: input.jobs,
        pins: input
            .staged
            .map(|(s, _)| s.pins.clone())
            .unwrap_or_default(),
    }
}

fn staged(t: &Target, s: &Rollouts, waves: &[u8]) -> Option<StagedView> {
    let r = s
        .pointers
        .get(&t.url)
        .filter(|r| Some(&r.image) == t.image.as_ref())?;
    Some(StagedView {
        status: r.status.label().to_string(),
        wave: r.wave,
        waves: waves.len(),
        share: r
            .wave
            .checked_sub(1)
            .and_then(|i| waves.get(i))
            .copied()
            .unwrap_or(0),
        admitted: r.admitted,
        confirmed: r.confirmed,
        failed: r.failed,
        reason: r.reason.clone(),
        previous: r.previous.clone(),
        wave_started: rfc3339(r.wave_started_at),
    })
}

fn rollout(t: &Target, registry: &Registry, now: i64, j: Judgement) -> ImageRollout {
    let mut states: BTreeMap<String, usize> = RolloutState::ALL
        .iter()
        .map(|s| (s.label().to_string(), 0))
        .collect();
    let version = t.version();
    if let Some(v) = &version {
        for d in registry.devices.values() {
            *states
                .entry(d.rollout(v, now, j).0.label().into())
                .or_default() += 1;
        }
    }
    ImageRollout {
        url: t.url.clone(),
        image: t.image.clone(),
        version: version.map(|v| v.as_str().to_string()),
        devices: registry.devices.len(),
        states,
        staged: None,
    }
}

fn view(d: &Device, target: Option<&Version>, now: i64, j: Judgement) -> DeviceView {
    let judged = target.map(|t| d.rollout(t, now, j));
    DeviceView {
        mac: d.mac.clone(),
        version: d.version.clone(),
        last_seen: rfc3339(d.last_seen),
        ota_state: d.ota_state.map(|s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        ota_at: d.ota_at.map(rfc3339),
        rollout: judged.map(|(s, _)| s.label().to_string()),
        failure: judged.and_then(|(_, why)| why.map(str::to_string)),
        errors: d.errors,
        last_error: d.last_error.clone(),
        served: d
            .served
            .iter()
            .rev()
            .map(|s| ServedView {
                image: s.image.clone(),
                at: rfc3339(s.at),
                requests: s.requests,
                status: s.status,
                completed: s.completed,
            })
            .collect(),
    }
}

/// Milliseconds since the epoch, as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Now, in the registry's unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl StatusReport {
    /// The `fleet_status` message: the rollout summary and each device's
    /// state, without the per-device history the page shows.
    pub fn fleet_status(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "mac": d.mac,
                    "version": d.version,
                    "state": d.rollout,
                    "ota_state": d.ota_state,
                    "last_seen": d.last_seen,
                    "errors": d.errors,
                })
            })
            .collect();
        serde_json::json!({
            "id": self.system_id,
            "time": crate::time::now(),
            "images": self.images,
            "versions": self.versions,
            "devices": devices,
        })
    }

    /// What changed between two reports worth a `fleet_status`: versions
    /// and rollout states, not the clock or last-seen times.
    pub fn fingerprint(&self) -> String {
        let mut s = serde_json::to_string(&self.images).unwrap_or_default();
        for d in &self.devices {
            s.push_str(&d.mac);
            s.push_str(d.version.as_deref().unwrap_or("-"));
            s.push_str(d.rollout.as_deref().unwrap_or("-"));
            s.push_str(d.ota_state.as_deref().unwrap_or("-"));
        }
        s
    }
}

impl StatusReport {
    /// The summary for a terminal (`gator-ota status`): health, each
    /// pointer's rollout, versions, a line per device, the last jobs.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        self.text_head(&mut t);
        for i in &self.images {
            text_image(&mut t, i);
        }
        for (mac, image) in &self.pins {
            let _ = writeln!(t, "pinned: {mac} to {image}");
        }
        self.text_devices(&mut t);
        for j in &self.jobs {
            let reason = j.reason.as_deref().map(|r| format!(" {r}"));
            let _ = writeln!(
                t,
                "job {} {} {} {}{}",
                j.time,
                j.msg_id,
                j.file_name,
                j.status,
                reason.unwrap_or_default()
            );
        }
        t
    }

    /// Where the report comes from, health and the carriers.
    fn text_head(&self, t: &mut String) {
        let from = match self.source.as_str() {
            "disk" => "from the files on disk; the service is not answering",
            _ => "from the running service",
        };
        let _ = writeln!(t, "gator-ota {} ({from}, {})", self.system_id, self.time);
        if let Some(h) = &self.health {
            if h.ok {
                t.push_str("health: ok\n");
            } else {
                let _ = writeln!(t, "health: NOT OK: {}", h.problems.join("; "));
            }
        }
        if !self.carriers.is_empty() {
            let c: Vec<String> = self
                .carriers
                .iter()
                .map(|c| format!("{} {}", c.name, connected(c.connected)))
                .collect();
            let _ = writeln!(t, "mqtt: {}", c.join(", "));
        }
    }

    fn text_devices(&self, t: &mut String) {
        let v: Vec<String> = self
            .versions
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        let _ = writeln!(t, "devices: {} ({})", self.devices.len(), v.join(", "));
        if !self.devices.is_empty() {
            let _ = writeln!(
                t,
                "{:<17}  {:<8}  {:<11}  {:<8}  {:<20}  {:>6}  LAST ERROR",
                "MAC", "VERSION", "ROLLOUT", "OTA", "LAST SEEN", "ERRORS"
            );
        }
        for d in &self.devices {
            let _ = writeln!(
                t,
                "{:<17}  {:<8}  {:<11}  {:<8}  {:<20}  {:>6}  {}",
                d.mac,
                d.version.as_deref().unwrap_or("?"),
                d.rollout.as_deref().unwrap_or("-"),
                d.ota_state.as_deref().unwrap_or("-"),
                d.last_seen,
                d.errors,
                d.problem()
            );
        }
    }
}

fn text_image(t: &mut String, i: &ImageRollout) {
    let count = |s: &str| i.states.get(s).copied().unwrap_or(0);
    let states: Vec<String> = RolloutState::ALL
        .iter()
        .map(|s| format!("{} {}", s.label(), count(s.label())))
        .collect();
    let _ = writeln!(
        t,
        "image {} ({}) at {}: {} of {} confirmed; {}",
        i.image.as_deref().unwrap_or("none yet"),
        i.version.as_deref().unwrap_or("no version"),
        i.url,
        count("confirmed"),
        i.devices,
        states.join(", ")
    );
    if let Some(s) = &i.staged {
        let _ = writeln!(t, "  staged rollout: {}", s.describe());
    }
}

/// A carrier's link, as the summaries write it.
pub fn connected(up: bool) -> &'static str {
    if up { "connected" } else { "DISCONNECTED" }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::device::{Mac, Report};

    const J: Judgement = Judgement {
        boot_grace_ms: 1000,
        max_errors: 3,
    };

    /// Three devices: one on the image's version, one updating, one whose
    /// last error is `error`.
    pub(crate) fn sample(error: &str) -> StatusReport {
        let mut r = Registry::new(10);
        let v = |s: &str| Version::parse(s);
        let mac = |n: u8| Mac::parse(&format!("24:6F:28:00:00:{n:02X}")).unwrap();
        r.report(
            &mac(1),
            Report::Telemetry {
                version: v("V1.0.1"),
            },
            100,
            1000,
        );
        r.report(&mac(2), Report::Started, 200, 1000);
        r.report(
            &mac(3),
            Report::Error {
                detail: error.into(),
            },
            300,
            1000,
        );
        let targets = [Target {
            url: "/current_version.txt".into(),
            image: Some("datagator_v1.0.1.bin".into()),
        }];
        build(Input {
            system_id: "gw",
            source: "service",
            registry: &r,
            targets: &targets,
            now_ms: 400,
            judgement: J,
            carriers: vec![CarrierState {
                name: "local".into(),
                connected: true,
            }],
            health: None,
            jobs: Vec::new(),
            staged: None,
        })
    }

    #[test]
    fn each_device_counts_once_in_its_state() {
        let r = sample("boom");
        let states = &r.images[0].states;
        assert_eq!(r.images[0].version.as_deref(), Some("v1.0.1"));
        assert_eq!(
            (
                states["confirmed"],
                states["downloading"],
                states["pending"]
            ),
            (1, 1, 1)
        );
        assert_eq!(states.values().sum::<usize>(), 3);
        assert_eq!(r.versions["v1.0.1"], 1);
        assert_eq!(r.versions["unknown"], 2);
        assert_eq!(r.devices[0].mac, "24:6F:28:00:00:03", "newest first");
        assert_eq!(r.devices[0].last_error.as_deref(), Some("boom"));
        let text = r.to_text();
        assert!(text.contains("1 of 3 confirmed"), "{text}");
        assert!(text.contains("24:6F:28:00:00:03"), "{text}");
        let back: StatusReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_pointer_without_a_versioned_image_counts_no_state() {
        let t = Target {
            url: "/p".into(),
            image: Some("firmware.bin".into()),
        };
        let r = rollout(&t, &Registry::new(1), 0, J);
        assert_eq!(r.version, None);
        assert!(r.states.values().all(|n| *n == 0));
    }
}
