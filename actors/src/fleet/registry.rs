//! The device registry: one entry per Data Gator MAC, what it last said and
//! what it was served, and the rollout state each entry is in for an image.
//!
//! Pure data, with times passed in (milliseconds since the epoch), so the
//! actor, the offline `gator-ota status` and the tests all compute the same
//! answers from the same file.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::device::{Mac, Report, Version, clip};
use crate::http::device_log::DeviceRecord;

/// Images remembered per device (the newest ones).
pub const SERVED_PER_DEVICE: usize = 8;

/// The file's format; a file of another version is set aside, not misread.
pub const FORMAT: u32 = 1;

/// The last OTA step a device reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaState {
    /// It compared its version with the server's (`STATUS_MSG: version`).
    Checked,
    Started,
    Finished,
    Error,
}

/// One image a device fetched from the firmware server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub image: String,
    /// When the last request for it ended.
    pub at: i64,
    pub requests: u32,
    /// The last request's HTTP status.
    pub status: u16,
    pub bytes_sent: u64,
    /// Some request handed over the whole image.
    pub completed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub mac: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The version it last reported (telemetry or `DEVICE_FW_VERSION`).
    pub version: Option<String>,
    /// The server version it last compared with.
    pub server_version: Option<String>,
    pub ota_state: Option<OtaState>,
    pub ota_at: Option<i64>,
    pub served: Vec<Served>,
    pub errors: u64,
    /// Errors since it last changed version.
    pub errors_in_a_row: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// The version it finished updating to and did not come back on.
    pub failed_boot: Option<String>,
    pub ip: Option<String>,
}

impl Device {
    fn new(mac: &str, now: i64) -> Self {
        Self {
            mac: mac.to_string(),
            first_seen: now,
            last_seen: now,
            version: None,
            server_version: None,
            ota_state: None,
            ota_at: None,
            served: Vec::new(),
            errors: 0,
            errors_in_a_row: 0,
            last_error: None,
            last_error_at: None,
            failed_boot: None,
            ip: None,
        }
    }

    /// A version it reports: a change is an update that took (or a
    /// downgrade), and starts its error count afresh.
    fn reports_version(&mut self, v: &Version) {
        if self.version.as_deref() != Some(v.as_str()) {
            self.errors_in_a_row = 0;
            if self.failed_boot.as_deref() == Some(v.as_str()) {
                self.failed_boot = None;
            }
        }
        self.version = Some(v.as_str().to_string());
    }

    /// An update it finished and did not come back from on the new version
    /// within `grace`: remembered, so a retry does not hide it.
    fn note_failed_boot(&mut self, now: i64, grace_ms: i64) {
        if self.ota_state != Some(OtaState::Finished) {
            return;
        }
        let (Some(at), Some(target)) = (self.ota_at, self.server_version.as_ref()) else {
            return;
        };
        if now - at > grace_ms && self.version.as_ref() != Some(target) {
            self.failed_boot = Some(target.clone());
        }
    }
}

/// Where a device stands in the rollout of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Not on the image's version, and no update seen yet.
    Pending,
    Downloading,
    /// Reported `finished`; within the grace period to come back on it.
    Finished,
    /// Reports the image's version.
    Confirmed,
    Failed,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        Self::Pending,
        Self::Downloading,
        Self::Finished,
        Self::Confirmed,
        Self::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Finished => "finished",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
        }
    }
}

/// What counts as failure, from `[fleet]`.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    pub boot_grace_ms: i64,
    pub max_errors: u32,
}

impl Device {
    /// Where this device stands for an image of version `target`, and why
    /// when it failed.
    pub fn rollout(
        &self,
        target: &Version,
        now: i64,
        j: Judgement,
    ) -> (RolloutState, Option<&'static str>) {
        let t = target.as_str();
        if self.version.as_deref() == Some(t) {
            return (RolloutState::Confirmed, None);
        }
        if self.errors_in_a_row >= j.max_errors {
            return (RolloutState::Failed, Some("repeated OTA errors"));
        }
        let finished_for_target = self.ota_state == Some(OtaState::Finished)
            && self.server_version.as_deref().is_none_or(|s| s == t);
        if finished_for_target {
            let late = self.ota_at.is_some_and(|at| now - at > j.boot_grace_ms);
            return if late {
                (
                    RolloutState::Failed,
                    Some("finished but still runs the old version"),
                )
            } else {
                (RolloutState::Finished, None)
            };
        }
        if self.failed_boot.as_deref() == Some(t) {
            return (
                RolloutState::Failed,
                Some("finished but still runs the old version"),
            );
        }
        let fetching = self.ota_state == Some(OtaState::Started)
            || (self.ota_state == Some(OtaState::Checked)
                && self.server_version.as_deref() == Some(t));
        if fetching && !self.held_back() {
            return (RolloutState::Downloading, None);
        }
        (RolloutState::Pending, None)
    }

    /// The server's last answer came after the device's last OTA report and
    /// was `304`: it said "started" and was told there is no update for it
    /// (a staged rollout's wave not reached yet), so it is not downloading.
    fn held_back(&self) -> bool {
        self.served
            .last()
            .is_some_and(|s| s.status == 304 && self.ota_at.is_none_or(|at| s.at >= at))
    }
}

/// Every device, by MAC, bounded by `max_devices`. Each entry is shared
/// with the [`Snapshot`] a save is writing, so taking one costs a pointer
/// per device, and a device that reports meanwhile is copied alone.
#[derive(Debug, Clone)]
pub struct Registry {
    pub format: u32,
    pub devices: BTreeMap<String, Arc<Device>>,
    max_devices: usize,
}

/// The registry's file as it is read.
#[derive(Deserialize)]
struct RegistryFile {
    format: u32,
    devices: BTreeMap<String, Device>,
}

/// The registry as it was when a save was asked for; serialised on the
/// writer's thread, not the actor's.
pub struct Snapshot(Vec<Arc<Device>>);

impl Snapshot {
    /// The file: `{"format":1,"devices":{MAC: device, ...}}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Devices<'a>(&'a [Arc<Device>]);
        impl Serialize for Devices<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for d in self.0 {
                    map.serialize_entry(&d.mac, &**d)?;
                }
                map.end()
            }
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("format", &FORMAT)?;
        map.serialize_entry("devices", &Devices(&self.0))?;
        map.end()
    }
}

impl Registry {
    pub fn new(max_devices: usize) -> Self {
        Self {
            format: FORMAT,
            devices: BTreeMap::new(),
            max_devices: max_devices.max(1),
        }
    }

    /// A registry read back from its file, held to `max_devices`.
    pub fn from_json(bytes: &[u8], max_devices: usize) -> Result<Self, String> {
        let file: RegistryFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", file.format));
        }
        let mut r = Self::new(max_devices);
        for (mac, mut d) in file.devices {
            d.mac.clone_from(&mac);
            r.devices.insert(mac, Arc::new(d));
        }
        r.evict();
        Ok(r)
    }

    /// The devices as they are now, for a save; O(devices) pointer copies.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.devices.values().cloned().collect())
    }

    pub fn to_json(&self) -> Vec<u8> {
        self.snapshot().to_json()
    }

    /// Applies what a device said at `now`.
    pub fn report(&mut self, mac: &Mac, report: Report, now: i64, grace_ms: i64) {
        let d = self.entry(mac.as_str(), now);
        match report {
            Report::Telemetry { version } => {
                if let Some(v) = version {
                    d.note_failed_boot(now, grace_ms);
                    d.reports_version(&v);
                }
            }
            Report::Checked { server, device } => {
                d.note_failed_boot(now, grace_ms);
                if let Some(v) = device {
                    d.reports_version(&v);
                }
                d.server_version = server.map(|s| s.as_str().to_string());
                d.set_ota(OtaState::Checked, now);
            }
            Report::Started => {
                d.note_failed_boot(now, grace_ms);
                d.set_ota(OtaState::Started, now);
            }
            Report::Finished => d.set_ota(OtaState::Finished, now),
            Report::Error { detail } => {
                d.errors += 1;
                d.errors_in_a_row = d.errors_in_a_row.saturating_add(1);
                d.last_error = Some(detail);
                d.last_error_at = Some(now);
                d.set_ota(OtaState::Error, now);
            }
        }
        self.evict();
    }

    /// Applies the firmware server's record of one image request by a
    /// device that sent its MAC.
    pub fn served(&mut self, mac: &Mac, rec: &DeviceRecord, now: i64) {
        let d = self.entry(mac.as_str(), now);
        d.ip = rec.ip.as_deref().map(clip);
        let whole = rec.completed && rec.status == 200 && rec.method == "GET";
        match d.served.iter_mut().find(|s| s.image == rec.image) {
            Some(s) => {
                s.at = now;
                s.requests = s.requests.saturating_add(1);
                s.status = rec.status;
                s.bytes_sent = rec.bytes_sent;
                s.completed |= whole;
            }
            None => {
                if d.served.len() == SERVED_PER_DEVICE {
                    d.served.remove(0);
                }
                d.served.push(Served {
                    image: clip(&rec.image),
                    at: now,
                    requests: 1,
                    status: rec.status,
                    bytes_sent: rec.bytes_sent,
                    completed: whole,
                });
            }
        }
        d.served.sort_by_key(|s| s.at);
        self.evict();
    }

    /// The device's entry, made if new; copied first only if a save still
    /// holds it, so a report costs a lookup, not a copy of the registry.
    fn entry(&mut self, mac: &str, now: i64) -> &mut Device {
        let d = self
            .devices
            .entry(mac.to_string())
            .or_insert_with(|| Arc::new(Device::new(mac, now)));
        let d = Arc::make_mut(d);
        d.last_seen = d.last_seen.max(now);
        d
    }

    /// Drops the devices seen longest ago until the bound holds: a scan,
    /// only when a new device comes past the bound.
    fn evict(&mut self) {
        while self.devices.len() > self.max_devices {
            let oldest = self
                .devices
                .values()
                .min_by(|a, b| (a.last_seen, &a.mac).cmp(&(b.last_seen, &b.mac)))
                .map(|d| d.mac.clone());
            match oldest {
                Some(mac) => {
                    self.devices.remove(&mac);
                }
                None => break,
            }
        }
    }
}

impl Device {
    fn set_ota(&mut self, state: OtaState, now: i64) {
        self.ota_state = Some(state);
        self.ota_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const J: Judgement = Judgement {
        boot_grace_ms: 1000,
        max_errors: 3,
    };

    fn mac(n: u8) -> Mac {
        Mac::parse(&format!("24:6F:28:00:00:{n:02X}")).unwrap()
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn tlm(s: &str) -> Report {
        Report::Telemetry {
            version: Some(v(s)),
        }
    }

    fn checked(server: &str, device: &str) -> Report {
        Report::Checked {
            server: Some(v(server)),
            device: Some(v(device)),
        }
    }

    fn state(r: &Registry, n: u8, target: &str, now: i64) -> RolloutState {
        r.devices[mac(n).as_str()].rollout(&v(target), now, J).0
    }

    #[test]
    fn an_update_goes_pending_downloading_finished_confirmed() {
        let mut r = Registry::new(10);
        r.report(&mac(1), tlm("V1.0.0"), 0, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 0), RolloutState::Pending);
        r.report(&mac(1), checked("v1.0.1", "v1.0.0"), 10, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 10), RolloutState::Downloading);
        r.report(&mac(1), Report::Started, 20, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 20), RolloutState::Downloading);
        r.report(&mac(1), Report::Finished, 30, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 40), RolloutState::Finished);
        r.report(&mac(1), tlm("V1.0.1"), 50, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 5000), RolloutState::Confirmed);
    }

    #[test]
    fn a_device_told_304_after_it_started_is_pending_not_downloading() {
        let mut r = Registry::new(10);
        r.report(&mac(1), checked("v1.0.1", "v1.0.0"), 10, J.boot_grace_ms);
        r.report(&mac(1), Report::Started, 20, J.boot_grace_ms);
        let held = DeviceRecord {
            time: String::new(),
            device: mac(1).as_str().into(),
            mac: Some(mac(1).as_str().into()),
            ip: None,
            user_agent: None,
            image: "datagator_v1.0.1.bin".into(),
            sha256: String::new(),
            method: "GET".into(),
            range: None,
            status: 304,
            bytes_sent: 0,
            bytes_expected: 0,
            completed: true,
        };
        r.served(&mac(1), &held, 25);
        assert_eq!(state(&r, 1, "v1.0.1", 30), RolloutState::Pending);
        // Its next try, once its wave comes, is a download again.
        r.report(&mac(1), Report::Started, 40, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 40), RolloutState::Downloading);
    }

    #[test]
    fn finished_and_still_old_past_the_grace_is_a_failed_boot_even_after_a_retry() {
        let mut r = Registry::new(10);
        r.report(&mac(1), checked("v1.0.1", "v1.0.0"), 0, J.boot_grace_ms);
        r.report(&mac(1), Report::Started, 10, J.boot_grace_ms);
        r.report(&mac(1), Report::Finished, 20, J.boot_grace_ms);
        r.report(&mac(1), tlm("v1.0.0"), 30, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 500), RolloutState::Finished);
        assert_eq!(state(&r, 1, "v1.0.1", 1100), RolloutState::Failed);
        // The device tries again: still a failure of this rollout.
        r.report(&mac(1), checked("v1.0.1", "v1.0.0"), 5000, J.boot_grace_ms);
        r.report(&mac(1), Report::Started, 5010, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 5020), RolloutState::Failed);
        // A newer image is another rollout.
        assert_eq!(state(&r, 1, "v1.0.2", 5020), RolloutState::Downloading);
        // Coming back on the version clears it.
        r.report(&mac(1), tlm("v1.0.1"), 6000, J.boot_grace_ms);
        assert_eq!(state(&r, 1, "v1.0.1", 6000), RolloutState::Confirmed);
        assert_eq!(r.devices[mac(1).as_str()].failed_boot, None);
    }

    #[test]
    fn repeated_errors_fail_until_the_version_changes() {
        let mut r = Registry::new(10);
        r.report(&mac(1), tlm("v1.0.0"), 0, J.boot_grace_ms);
        for t in 1..=3 {
            r.report(
                &mac(1),
                Report::Error {
                    detail: format!("e{t}"),
                },
                t,
                J.boot_grace_ms,
            );
        }
        let d = &r.devices[mac(1).as_str()];
        assert_eq!((d.errors, d.last_error.as_deref()), (3, Some("e3")));
        assert_eq!(state(&r, 1, "v1.0.1", 10), RolloutState::Failed);
        r.report(&mac(1), tlm("v1.0.1"), 20, J.boot_grace_ms);
        assert_eq!(r.devices[mac(1).as_str()].errors_in_a_row, 0);
        assert_eq!(state(&r, 1, "v1.0.2", 20), RolloutState::Pending);
    }

    #[test]
    fn the_device_seen_longest_ago_goes_first() {
        let mut r = Registry::new(3);
        for n in 0..3 {
            r.report(&mac(n), tlm("v1.0.0"), n as i64, J.boot_grace_ms);
        }
        r.report(&mac(0), tlm("v1.0.0"), 10, J.boot_grace_ms);
        r.report(&mac(9), tlm("v1.0.0"), 11, J.boot_grace_ms);
        let kept: Vec<&str> = r.devices.keys().map(String::as_str).collect();
        assert_eq!(kept.len(), 3);
        assert!(!kept.contains(&mac(1).as_str()), "{kept:?}");
        let back = Registry::from_json(&r.to_json(), 2).unwrap();
        assert_eq!(back.devices.len(), 2);
        assert!(back.devices.contains_key(mac(9).as_str()));
        assert!(Registry::from_json(b"{\"format\":7,\"devices\":{}}", 2).is_err());
        assert!(Registry::from_json(b"not json", 2).is_err());
    }

    #[test]
    fn a_snapshot_keeps_the_registry_as_it_was_and_reads_back() {
        let mut r = Registry::new(10);
        r.report(&mac(1), tlm("v1.0.0"), 0, J.boot_grace_ms);
        let snap = r.snapshot();
        r.report(&mac(1), tlm("v1.0.1"), 5, J.boot_grace_ms);
        r.report(&mac(2), tlm("v1.0.0"), 6, J.boot_grace_ms);
        let back = Registry::from_json(&snap.to_json(), 10).unwrap();
        assert_eq!(back.devices.len(), 1);
        let old = &back.devices[mac(1).as_str()];
        assert_eq!((old.version.as_deref(), old.last_seen), (Some("v1.0.0"), 0));
        assert_eq!(
            r.devices[mac(1).as_str()].version.as_deref(),
            Some("v1.0.1")
        );
        let file: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(file["format"], FORMAT);
        assert_eq!(file["devices"][mac(2).as_str()]["mac"], mac(2).as_str());
    }

    #[test]
    fn served_images_are_kept_per_device_and_bounded() {
        let mut r = Registry::new(3);
        let mut rec = DeviceRecord {
            time: String::new(),
            device: mac(1).as_str().into(),
            mac: Some(mac(1).as_str().into()),
            ip: Some("10.0.0.7".into()),
            user_agent: None,
            image: "datagator_v1.0.1.bin".into(),
            sha256: String::new(),
            method: "GET".into(),
            range: None,
            status: 200,
            bytes_sent: 10,
            bytes_expected: 100,
            completed: false,
        };
        r.served(&mac(1), &rec, 1);
        assert!(!r.devices[mac(1).as_str()].served[0].completed);
        rec.bytes_sent = 100;
        rec.completed = true;
        r.served(&mac(1), &rec, 2);
        let s = &r.devices[mac(1).as_str()].served;
        assert_eq!((s.len(), s[0].requests, s[0].completed), (1, 2, true));
        for n in 0..20 {
            rec.image = format!("datagator_v1.0.{n}.bin");
            r.served(&mac(1), &rec, 10 + n);
        }
        assert_eq!(r.devices[mac(1).as_str()].served.len(), SERVED_PER_DEVICE);
    }
}
