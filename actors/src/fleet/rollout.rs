//! Staged rollouts: which Data Gators may take the image a pointer names
//! now, and when the next wave starts.
//!
//! Pure data with times passed in, like [`super::registry`]: the fleet actor
//! advances it once a tick from the registry's rollout states and keeps it
//! in `<state>/rollout.json`; the firmware server asks [`Gate::decide`] on
//! every image request. A device's wave is fixed by a hash of its MAC and
//! the image, so it does not move between restarts or gateways, and a new
//! image draws the waves afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::device::{Mac, Version};
use super::registry::{Judgement, Registry, RolloutState};
use super::report::Target;

/// The rollout state's file in the state folder.
pub const ROLLOUT_FILE: &str = "rollout.json";

/// The file's format; a file of another version is set aside, not misread.
const FORMAT: u32 = 1;

/// What `[rollout]` says, in the form the decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub canary: BTreeSet<String>,
    /// Cumulative percentages, the last 100.
    pub waves: Vec<u8>,
    pub wave_wait_ms: i64,
    pub success_percent: u8,
    pub failure_percent: u8,
}

impl Policy {
    pub fn from_settings(s: &gator_ota_settings::Rollout) -> Self {
        Self {
            canary: s.canary_macs().into_iter().collect(),
            waves: s.waves.clone(),
            wave_wait_ms: i64::try_from(s.wave_wait.as_millis()).unwrap_or(i64::MAX),
            success_percent: s.success_percent,
            failure_percent: s.failure_percent,
        }
    }

    /// The wave a device takes `image` in: 0 for a canary, else the first
    /// wave whose share covers the device's bucket.
    pub fn wave_of(&self, mac: &str, image: &str) -> usize {
        if self.canary.contains(mac) {
            return 0;
        }
        let b = bucket(mac, image);
        1 + self
            .waves
            .iter()
            .position(|w| b < *w)
            .unwrap_or(self.waves.len().saturating_sub(1))
    }

    fn last_wave(&self) -> usize {
        self.waves.len()
    }
}

/// A wave with no device in it passes at once only when that is the share's
/// doing: never while the registry knows no device at all (a fresh gateway:
/// the first devices to appear would otherwise be served whatever their
/// wave), nor at the canary while none of the listed canaries has reported.
fn nobody_to_wait_for(policy: &Policy, r: &Rollout, registry: &Registry) -> bool {
    let canary_unheard = r.wave == 0
        && !policy.canary.is_empty()
        && !policy
            .canary
            .iter()
            .any(|m| registry.devices.contains_key(m));
    !registry.devices.is_empty() && !canary_unheard
}

/// The device's place in 0..100 for this image: the first bytes of
/// SHA-256 over MAC and image name.
pub fn bucket(mac: &str, image: &str) -> u8 {
    let mut h = Sha256::new();
    h.update(mac.as_bytes());
    h.update([0]);
    h.update(image.as_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n % 100) as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waves start as the previous ones pass.
    Running,
    /// No device not yet on the image is served it; `resume` goes on.
    Paused,
    /// As paused, for good: only a new image in the pointer starts again.
    Aborted,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Aborted => "aborted",
        }
    }
}

/// One pointer's rollout of the image it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub image: String,
    /// The image the pointer named before, which devices not yet updated
    /// keep.
    pub previous: Option<String>,
    pub started_at: i64,
    /// 0: the canary; n: up to `waves[n-1]` percent of the fleet.
    pub wave: usize,
    pub wave_started_at: i64,
    /// When the current wave passed the success threshold.
    pub passed_at: Option<i64>,
    pub status: Status,
    /// Why it is paused or aborted, in words.
    pub reason: Option<String>,
    /// Failures already seen when it was last resumed: only more count
    /// against the failure threshold.
    pub tolerated: usize,
    /// Devices admitted so far (in a wave up to the current one, or pinned
    /// to the image), and of those, confirmed and failed, at the last tick.
    pub admitted: usize,
    pub confirmed: usize,
    pub failed: usize,
}

impl Rollout {
    fn new(image: &str, previous: Option<String>, now: i64) -> Self {
        Self {
            image: image.to_string(),
            previous,
            started_at: now,
            wave: 0,
            wave_started_at: now,
            passed_at: None,
            status: Status::Running,
            reason: None,
            tolerated: 0,
            admitted: 0,
            confirmed: 0,
            failed: 0,
        }
    }
}

/// Every pointer's rollout and the pinned devices: what `rollout.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollouts {
    pub format: u32,
    /// By pointer URL.
    pub pointers: BTreeMap<String, Rollout>,
    /// MAC → the only image it is served.
    pub pins: BTreeMap<String, String>,
}

impl Default for Rollouts {
    fn default() -> Self {
        Self::new()
    }
}

/// What the firmware server does with one image request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Serve,
    /// `304`: the device keeps the version it runs; why, for the log.
    Hold(String),
}

impl Rollouts {
    pub fn new() -> Self {
        Self {
            format: FORMAT,
            pointers: BTreeMap::new(),
            pins: BTreeMap::new(),
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let r: Rollouts = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", r.format));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Whether `mac` (from `x-ESP32-STA-MAC`, `None` without one) may take
    /// `image` now. An image no pointer names is not rolled out: served.
    pub fn decide(&self, policy: &Policy, mac: Option<&Mac>, image: &str) -> Decision {
        let mac = mac.map(Mac::as_str);
        if let Some(pinned) = mac.and_then(|m| self.pins.get(m)) {
            return if pinned == image {
                Decision::Serve
            } else {
                Decision::Hold(format!("pinned to {pinned}"))
            };
        }
        let Some(r) = self.pointers.values().find(|r| r.image == image) else {
            return Decision::Serve;
        };
        if r.status != Status::Running {
            return Decision::Hold(format!("the rollout is {}", r.status.label()));
        }
        let wave = match mac {
            Some(m) => policy.wave_of(m, image),
            None if r.wave >= policy.last_wave() => return Decision::Serve,
            None => return Decision::Hold("no x-ESP32-STA-MAC, so in no wave yet".into()),
        };
        if wave <= r.wave {
            Decision::Serve
        } else {
            Decision::Hold(format!("in wave {wave}; the rollout is at {}", r.wave))
        }
    }

    /// One tick: a rollout for each image a pointer newly names, then each
    /// one's counts, the failure threshold and the next wave. Returns
    /// whether anything a file or view shows changed.
    pub fn advance(
        &mut self,
        policy: &Policy,
        targets: &[Target],
        registry: &Registry,
        now: i64,
        j: Judgement,
    ) -> bool {
        let before = self.clone();
        for t in targets {
            let (Some(image), Some(version)) = (&t.image, t.version()) else {
                continue;
            };
            let r = match self.pointers.get(&t.url) {
                Some(r) if &r.image == image => r.clone(),
                old => Rollout::new(image, old.map(|o| o.image.clone()), now),
            };
            let r = self.step(policy, r, &version, registry, now, j);
            self.pointers.insert(t.url.clone(), r);
        }
        *self != before
    }

    fn step(
        &self,
        policy: &Policy,
        mut r: Rollout,
        version: &Version,
        registry: &Registry,
        now: i64,
        j: Judgement,
    ) -> Rollout {
        let (mut admitted, mut confirmed, mut failed) = (0, 0, 0);
        for d in registry.devices.values() {
            let admit = match self.pins.get(&d.mac) {
                Some(pinned) => *pinned == r.image,
                None => policy.wave_of(&d.mac, &r.image) <= r.wave,
            };
            if !admit {
                continue;
            }
            admitted += 1;
            match d.rollout(version, now, j).0 {
                RolloutState::Confirmed => confirmed += 1,
                RolloutState::Failed => failed += 1,
                _ => {}
            }
        }
        (r.admitted, r.confirmed, r.failed) = (admitted, confirmed, failed);
        if r.status != Status::Running {
            return r;
        }
        let counted = failed.saturating_sub(r.tolerated);
        if counted > 0 && counted * 100 > usize::from(policy.failure_percent) * admitted {
            r.status = Status::Paused;
            r.reason = Some(format!(
                "{failed} of {admitted} devices failed, over rollout.failure_percent ({}%)",
                policy.failure_percent
            ));
            return r;
        }
        if r.wave >= policy.last_wave() {
            return r;
        }
        let skip = admitted == 0 && nobody_to_wait_for(policy, &r, registry);
        let passed = skip
            || (admitted > 0 && confirmed * 100 >= usize::from(policy.success_percent) * admitted);
        if !passed {
            r.passed_at = None;
            return r;
        }
        let since = *r.passed_at.get_or_insert(now);
        if skip || now - since >= policy.wave_wait_ms {
            r.wave += 1;
            r.wave_started_at = now;
            r.passed_at = None;
        }
        r
    }

    /// Applies a control message from the cloud; `targets` says which image
    /// each pointer names, for a message that names none.
    pub fn control(&mut self, c: Control, targets: &[Target]) -> Result<String, ControlError> {
        match c {
            Control::Pin { mac, image } => {
                let done = format!("{} pinned to {image}", mac.as_str());
                self.pins.insert(mac.as_str().to_string(), image);
                Ok(done)
            }
            Control::Unpin { mac } => match self.pins.remove(mac.as_str()) {
                Some(image) => Ok(format!("{} no longer pinned to {image}", mac.as_str())),
                None => Err(ControlError::NotPinned(mac.as_str().to_string())),
            },
            Control::Pause { image } => self.set(image, targets, Status::Paused),
            Control::Resume { image } => self.set(image, targets, Status::Running),
            Control::Abort { image } => self.set(image, targets, Status::Aborted),
        }
    }

    fn set(
        &mut self,
        image: Option<String>,
        targets: &[Target],
        to: Status,
    ) -> Result<String, ControlError> {
        let image = match image {
            Some(i) => i,
            None => targets
                .iter()
                .find_map(|t| t.image.clone())
                .ok_or(ControlError::NoRollout("any image".into()))?,
        };
        let r = self
            .pointers
            .values_mut()
            .find(|r| r.image == image)
            .ok_or_else(|| ControlError::NoRollout(image.clone()))?;
        if r.status == Status::Aborted && to != Status::Aborted {
            return Err(ControlError::Aborted(image));
        }
        r.status = to;
        r.reason = match to {
            Status::Running => {
                r.tolerated = r.failed;
                None
            }
            Status::Paused => Some("paused by a rollout message".into()),
            Status::Aborted => Some("aborted by a rollout message".into()),
        };
        Ok(format!("rollout of {image} {}", to.label()))
    }
}

/// A `rollout` message from the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause { image: Option<String> },
    Resume { image: Option<String> },
    Abort { image: Option<String> },
    Pin { mac: Mac, image: String },
    Unpin { mac: Mac },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the message is not a JSON object")]
    NotObject,
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("no rollout of {0}: no pointer names it")]
    NoRollout(String),
    #[error("the rollout of {0} was aborted; a new image in the pointer starts a new one")]
    Aborted(String),
    #[error("{0} is not pinned")]
    NotPinned(String),
    #[error("staged rollouts are off (rollout.enabled)")]
    Off,
}

impl ControlError {
    /// The field at fault, for the log line.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Missing(f) | Self::Field { field: f, .. } => Some(f),
            _ => None,
        }
    }
}

/// Reads `{"action": ..., "image": ..., "mac": ...}`.
pub fn parse_control(content: &Value) -> Result<Control, ControlError> {
    let obj = content.as_object().ok_or(ControlError::NotObject)?;
    let text = |field: &'static str| -> Result<Option<String>, ControlError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(ControlError::Field {
                field,
                problem: "is empty or longer than 255 bytes".into(),
            }),
            Some(other) => Err(ControlError::Field {
                field,
                problem: format!("is {}, not a string", kind(other)),
            }),
        }
    };
    let image = text("image")?;
    if let Some(i) = &image
        && crate::paths::check_file_name(i).is_err()
    {
        return Err(ControlError::Field {
            field: "image",
            problem: format!("{:?} is not a plain file name", super::device::clip(i)),
        });
    }
    let mac = || -> Result<Mac, ControlError> {
        let m = text("mac")?.ok_or(ControlError::Missing("mac"))?;
        Mac::parse(&m).ok_or_else(|| ControlError::Field {
            field: "mac",
            problem: format!("{:?} is not a MAC", super::device::clip(&m)),
        })
    };
    let action = text("action")?.ok_or(ControlError::Missing("action"))?;
    match action.as_str() {
        "pause" => Ok(Control::Pause { image }),
        "resume" => Ok(Control::Resume { image }),
        "abort" => Ok(Control::Abort { image }),
        "pin" => Ok(Control::Pin {
            mac: mac()?,
            image: image.ok_or(ControlError::Missing("image"))?,
        }),
        "unpin" => Ok(Control::Unpin { mac: mac()? }),
        other => Err(ControlError::Field {
            field: "action",
            problem: format!(
                "{:?} is not pause, resume, abort, pin or unpin",
                super::device::clip(other)
            ),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "something else",
    }
}

/// The rollout state the firmware server reads on each image request; the
/// fleet actor replaces it after every change. A lock held only to copy or
/// compare, never across an await.
#[derive(Debug)]
pub struct Gate {
    pub policy: Policy,
    state: RwLock<Rollouts>,
}

impl Gate {
    pub fn new(policy: Policy, state: Rollouts) -> Arc<Self> {
        Arc::new(Self {
            policy,
            state: RwLock::new(state),
        })
    }

    pub fn decide(&self, mac: Option<&Mac>, image: &str) -> Decision {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.decide(&self.policy, mac, image)
    }

    pub fn snapshot(&self) -> Rollouts {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish(&self, state: &Rollouts) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::device::Report;

    const J: Judgement = Judgement {
        boot_grace_ms: 1000,
        max_errors: 3,
    };
    const IMAGE: &str = "datagator_v1.0.1.bin";

    fn mac(n: usize) -> Mac {
        Mac::parse(&format!("24:6F:28:00:{:02X}:{:02X}", n / 256, n % 256)).unwrap()
    }

    fn policy(canary: &[usize]) -> Policy {
        Policy {
            canary: canary
                .iter()
                .map(|n| mac(*n).as_str().to_string())
                .collect(),
            waves: vec![10, 50, 100],
            wave_wait_ms: 100,
            success_percent: 90,
            failure_percent: 20,
        }
    }

    fn targets() -> Vec<Target> {
        vec![Target {
            url: "/current_version.txt".into(),
            image: Some(IMAGE.into()),
        }]
    }

    fn registry(n: usize) -> Registry {
        let mut r = Registry::new(1000);
        for i in 0..n {
            let version = Version::parse("v1.0.0");
            r.report(&mac(i), Report::Telemetry { version }, 0, 1000);
        }
        r
    }

    fn confirm(r: &mut Registry, i: usize) {
        let version = Version::parse("v1.0.1");
        r.report(&mac(i), Report::Telemetry { version }, 1, 1000);
    }

    #[test]
    fn waves_are_fixed_by_mac_and_image_and_cover_their_share() {
        let p = policy(&[7]);
        assert_eq!(p.wave_of(mac(7).as_str(), IMAGE), 0, "a canary");
        let waves: Vec<usize> = (0..1000)
            .map(|i| p.wave_of(mac(i).as_str(), IMAGE))
            .collect();
        let again: Vec<usize> = (0..1000)
            .map(|i| p.wave_of(mac(i).as_str(), IMAGE))
            .collect();
        assert_eq!(waves, again, "deterministic");
        let first = waves.iter().filter(|w| **w == 1).count();
        let up_to_second = waves.iter().filter(|w| (1..=2).contains(*w)).count();
        assert!((50..=150).contains(&first), "about 10 %: {first}");
        assert!(
            (400..=600).contains(&up_to_second),
            "about 50 %: {up_to_second}"
        );
        assert!(waves.iter().all(|w| *w <= 3));
        let other: Vec<usize> = (0..1000)
            .map(|i| p.wave_of(mac(i).as_str(), "datagator_v1.0.2.bin"))
            .collect();
        assert_ne!(waves, other, "a new image draws the waves afresh");
    }

    #[test]
    fn an_empty_wave_is_skipped_only_when_someone_reported() {
        let wave = |s: &Rollouts| s.pointers["/current_version.txt"].wave;
        // A fresh gateway: no device known, so no wave passes.
        let p = policy(&[]);
        let mut s = Rollouts::new();
        for t in 0..5 {
            s.advance(&p, &targets(), &registry(0), t, J);
        }
        assert_eq!(wave(&s), 0);
        // Canaries listed but none heard from: the canary stage waits, even
        // with other devices known.
        let p = policy(&[500, 501]);
        let mut s = Rollouts::new();
        for t in 0..5 {
            s.advance(&p, &targets(), &registry(3), t, J);
        }
        assert_eq!(wave(&s), 0);
        // No canaries and devices known: the empty canary stage is skipped.
        let p = policy(&[]);
        let mut s = Rollouts::new();
        s.advance(&p, &targets(), &registry(3), 0, J);
        assert!(wave(&s) >= 1);
    }

    #[test]
    fn canary_then_each_wave_after_it_passes_and_the_wait() {
        let p = policy(&[0, 1]);
        let mut reg = registry(40);
        let mut s = Rollouts::new();
        assert!(s.advance(&p, &targets(), &reg, 0, J));
        let r = &s.pointers["/current_version.txt"];
        assert_eq!((r.wave, r.admitted, r.status), (0, 2, Status::Running));
        let outside = (2..40)
            .find(|i| p.wave_of(mac(*i).as_str(), IMAGE) == 3)
            .unwrap();
        assert_eq!(s.decide(&p, Some(&mac(0)), IMAGE), Decision::Serve);
        assert!(matches!(
            s.decide(&p, Some(&mac(outside)), IMAGE),
            Decision::Hold(_)
        ));
        assert!(matches!(s.decide(&p, None, IMAGE), Decision::Hold(_)));
        assert_eq!(
            s.decide(&p, Some(&mac(outside)), "datagator_v1.0.0.bin"),
            Decision::Serve,
            "an image no pointer names is not rolled out"
        );
        confirm(&mut reg, 0);
        s.advance(&p, &targets(), &reg, 10, J);
        assert_eq!(
            s.pointers["/current_version.txt"].wave, 0,
            "1 of 2 is not 90 %"
        );
        confirm(&mut reg, 1);
        s.advance(&p, &targets(), &reg, 20, J);
        let r = &s.pointers["/current_version.txt"];
        assert_eq!((r.wave, r.passed_at), (0, Some(20)), "passed; waits");
        s.advance(&p, &targets(), &reg, 120, J);
        assert_eq!(s.pointers["/current_version.txt"].wave, 1);
        // Every device confirmed: the waves pass, one wait each.
        for i in 0..40 {
            confirm(&mut reg, i);
        }
        for (t, wave) in [(130, 1), (230, 2), (240, 2), (340, 3), (1000, 3)] {
            s.advance(&p, &targets(), &reg, t, J);
            assert_eq!(s.pointers["/current_version.txt"].wave, wave, "at {t}");
        }
        assert_eq!(s.decide(&p, None, IMAGE), Decision::Serve, "the last wave");
        assert_eq!(s.decide(&p, Some(&mac(outside)), IMAGE), Decision::Serve);
    }

    #[test]
    fn failures_past_the_threshold_pause_until_resumed() {
        let p = policy(&[0, 1, 2, 3]);
        let mut reg = registry(4);
        let mut s = Rollouts::new();
        s.advance(&p, &targets(), &reg, 0, J);
        for t in 1..=3 {
            let detail = format!("e{t}");
            reg.report(&mac(0), Report::Error { detail }, t, 1000);
        }
        s.advance(&p, &targets(), &reg, 10, J);
        let r = &s.pointers["/current_version.txt"];
        assert_eq!(
            (r.status, r.failed),
            (Status::Paused, 1),
            "1 of 4 is over 20 %"
        );
        assert!(r.reason.as_deref().unwrap().contains("failure_percent"));
        assert_eq!(
            s.decide(&p, Some(&mac(1)), IMAGE),
            Decision::Hold("the rollout is paused".into())
        );
        s.control(Control::Resume { image: None }, &targets())
            .unwrap();
        s.advance(&p, &targets(), &reg, 20, J);
        let r = &s.pointers["/current_version.txt"];
        assert_eq!(r.status, Status::Running, "the failure seen is tolerated");
        reg.report(&mac(1), Report::Error { detail: "x".into() }, 21, 1000);
        for t in 22..24 {
            reg.report(&mac(1), Report::Error { detail: "x".into() }, t, 1000);
        }
        s.advance(&p, &targets(), &reg, 30, J);
        assert_eq!(s.pointers["/current_version.txt"].status, Status::Paused);
    }

    #[test]
    fn abort_is_final_and_pins_override_the_waves() {
        let p = policy(&[]);
        let reg = registry(10);
        let mut s = Rollouts::new();
        s.advance(&p, &targets(), &reg, 0, J);
        let late = (0..200)
            .find(|i| p.wave_of(mac(*i).as_str(), IMAGE) == 3)
            .unwrap();
        assert!(matches!(
            s.decide(&p, Some(&mac(late)), IMAGE),
            Decision::Hold(_)
        ));
        let pin = Control::Pin {
            mac: mac(late),
            image: IMAGE.into(),
        };
        s.control(pin, &targets()).unwrap();
        assert_eq!(s.decide(&p, Some(&mac(late)), IMAGE), Decision::Serve);
        let old = Control::Pin {
            mac: mac(late),
            image: "datagator_v1.0.0.bin".into(),
        };
        s.control(old, &targets()).unwrap();
        assert_eq!(
            s.decide(&p, Some(&mac(late)), IMAGE),
            Decision::Hold("pinned to datagator_v1.0.0.bin".into())
        );
        s.control(Control::Unpin { mac: mac(late) }, &targets())
            .unwrap();
        let abort = Control::Abort {
            image: Some(IMAGE.into()),
        };
        s.control(abort, &targets()).unwrap();
        s.advance(&p, &targets(), &reg, 1000, J);
        let r = &s.pointers["/current_version.txt"];
        assert_eq!(r.status, Status::Aborted);
        assert_eq!(
            s.control(Control::Resume { image: None }, &targets()),
            Err(ControlError::Aborted(IMAGE.into()))
        );
        // A new image in the pointer starts again, from the canary.
        let next = vec![Target {
            url: "/current_version.txt".into(),
            image: Some("datagator_v1.0.2.bin".into()),
        }];
        s.advance(&p, &next, &reg, 2000, J);
        let r = &s.pointers["/current_version.txt"];
        assert_eq!(r.status, Status::Running);
        assert_eq!(r.previous.as_deref(), Some(IMAGE));
        let back = Rollouts::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn bad_control_messages_name_their_field() {
        use serde_json::json;
        for (msg, field) in [
            (json!({}), Some("action")),
            (json!({"action": 3}), Some("action")),
            (json!({"action": "stop"}), Some("action")),
            (json!({"action": "pin", "image": IMAGE}), Some("mac")),
            (
                json!({"action": "pin", "mac": "nope", "image": IMAGE}),
                Some("mac"),
            ),
            (
                json!({"action": "pin", "mac": "246F28000001"}),
                Some("image"),
            ),
            (
                json!({"action": "pause", "image": "../x.bin"}),
                Some("image"),
            ),
            (json!({"action": "pause", "image": ""}), Some("image")),
            (json!([1]), None),
        ] {
            let e = parse_control(&msg).unwrap_err();
            assert_eq!(e.field(), field, "{msg}: {e}");
        }
        assert_eq!(
            parse_control(&json!({"action": "pin", "mac": "246f28000001", "image": IMAGE})),
            Ok(Control::Pin {
                mac: mac(1),
                image: IMAGE.into()
            })
        );
    }
}
