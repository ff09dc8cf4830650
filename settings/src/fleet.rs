//! `[fleet]`: the device registry and the rollout view of the Data Gators
//! behind the gateway.
//!
//! The Data Gators' own messages reach the registry through receive
//! addresses (their message types are [`DATAGATOR_OTA_STATUS`],
//! [`DATAGATOR_OTA`] and [`DATAGATOR_TLM`]); `fleet_status` goes out on any
//! send address that carries [`FLEET_STATUS`]. This section only says how
//! much to keep and when a device counts as failed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SettingsError as E;

/// `datagator/ota_status/<MAC>`: `STATUS_MSG` `version`, `started`, `finished`.
pub const DATAGATOR_OTA_STATUS: &str = "datagator_ota_status";
/// `datagator/ota/<MAC>`: `STATUS_MSG` `error`.
pub const DATAGATOR_OTA: &str = "datagator_ota";
/// `datagator/tlm/<MAC>`: telemetry with `FIRMWARE_VERSION`.
pub const DATAGATOR_TLM: &str = "datagator_tlm";
/// The gateway's summary of its fleet, for the cloud.
pub const FLEET_STATUS: &str = "fleet_status";

/// The firmware server's paths for the fleet view; no pointer may take one.
pub const FLEET_PATHS: [&str; 4] = ["/", "/status.json", "/healthz", "/metrics"];

/// The message types the registry is fed with.
pub const DEVICE_MESSAGE_TYPES: [&str; 3] = [DATAGATOR_OTA_STATUS, DATAGATOR_OTA, DATAGATOR_TLM];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Off: no registry, no status endpoints but the firmware server's own.
    pub enabled: bool,
    /// Devices kept; past it the one seen longest ago is dropped, so a
    /// stream of made-up MACs cannot grow the registry without bound.
    pub max_devices: usize,
    /// How long a device that reported `finished` has to come back on the
    /// new version before it counts as a failed boot.
    #[serde(with = "humantime_serde")]
    pub boot_grace: Duration,
    /// OTA errors in a row (since the device last changed version) that make
    /// it a failure of the rollout.
    pub max_errors: u32,
    /// The least time between two `fleet_status` messages sent on a change.
    #[serde(with = "humantime_serde")]
    pub status_min_interval: Duration,
    /// A `fleet_status` goes out at least this often, changed or not.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// A firmware job running longer than this makes `/healthz` answer 503.
    #[serde(with = "humantime_serde")]
    pub stuck_job: Duration,
}

impl Fleet {
    pub(crate) fn validate(&self, http: &crate::Http) -> Result<(), E> {
        if self.enabled
            && let Some((i, p)) = http
                .pointers
                .iter()
                .enumerate()
                .find(|(_, p)| FLEET_PATHS.contains(&p.url.as_str()))
        {
            return Err(E::invalid(
                format!("http.pointers[{i}].url"),
                format!("{:?} is where the fleet view answers", p.url),
                "publish the pointer at another path, e.g. \"/current_version.txt\"",
            ));
        }
        if self.max_devices == 0 || self.max_devices > 100_000 {
            return Err(E::invalid(
                "fleet.max_devices",
                format!("{} is not between 1 and 100000", self.max_devices),
                "give the number of devices to keep, e.g. max_devices = 500",
            ));
        }
        if self.max_errors == 0 {
            return Err(E::invalid(
                "fleet.max_errors",
                "is 0",
                "use a positive number, e.g. max_errors = 3",
            ));
        }
        for (key, zero) in [
            ("fleet.boot_grace", self.boot_grace.is_zero()),
            ("fleet.status_interval", self.status_interval.is_zero()),
            ("fleet.stuck_job", self.stuck_job.is_zero()),
        ] {
            if zero {
                return Err(E::invalid(key, "is 0", "use a positive duration"));
            }
        }
        if self.status_min_interval > self.status_interval {
            return Err(E::invalid(
                "fleet.status_min_interval",
                format!(
                    "{:?} is longer than fleet.status_interval ({:?})",
                    self.status_min_interval, self.status_interval
                ),
                "make it shorter, e.g. status_min_interval = \"30s\"",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Env, SettingsError, load_with_env};

    fn refused_key(vars: &[(&str, &str)]) -> String {
        crate::tests::refused(None, vars).0
    }

    #[test]
    fn defaults_receive_the_data_gators_messages() {
        let s = load_with_env(None, &Env::new()).unwrap();
        assert!(s.fleet.enabled);
        for t in super::DEVICE_MESSAGE_TYPES {
            assert!(s.messages.contains_key(t), "{t}");
            let received = s.addresses.values().any(|a| {
                a.send_or_receive == crate::Direction::Receive
                    && a.message_type.iter().any(|m| m == t)
            });
            assert!(received, "no receive address carries {t}");
        }
        assert!(s.messages.contains_key(super::FLEET_STATUS));
    }

    #[test]
    fn no_pointer_takes_a_fleet_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        let toml = "[http]\npointers = [{ url = \"/metrics\", file = \"p\" }]\n";
        std::fs::write(&file, toml).unwrap();
        match load_with_env(Some(&file), &Env::new()) {
            Err(SettingsError::Invalid { key, .. }) => assert_eq!(key, "http.pointers[0].url"),
            other => panic!("accepted or another error: {other:?}"),
        }
        let off = "[fleet]\nenabled = false\n".to_string() + toml;
        std::fs::write(&file, off).unwrap();
        assert!(load_with_env(Some(&file), &Env::new()).is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (var, value, key) in [
            ("GATOR_OTA__FLEET__MAX_DEVICES", "0", "fleet.max_devices"),
            ("GATOR_OTA__FLEET__MAX_ERRORS", "0", "fleet.max_errors"),
            ("GATOR_OTA__FLEET__BOOT_GRACE", "0s", "fleet.boot_grace"),
            (
                "GATOR_OTA__FLEET__STATUS_INTERVAL",
                "0s",
                "fleet.status_interval",
            ),
            (
                "GATOR_OTA__FLEET__STATUS_MIN_INTERVAL",
                "2h",
                "fleet.status_min_interval",
            ),
            ("GATOR_OTA__FLEET__MAX_DEVICE", "5", "fleet.max_device"),
        ] {
            assert_eq!(refused_key(&[(var, value)]), key, "{var}={value}");
        }
    }
}
