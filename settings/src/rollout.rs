//! `[rollout]`: staged rollouts of the image a pointer names to the Data
//! Gators behind the gateway.
//!
//! Off by default: every device that polls a pointer gets the image it
//! names. On, a canary list first, then waves by share of the fleet; the
//! firmware server answers `304` (HTTPUpdate: no update) to a device outside
//! the current wave. The cloud steers it with the [`ROLLOUT`] message on a
//! receive address.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SettingsError as E;

/// The cloud's control message: pause, resume, abort, pin a device.
pub const ROLLOUT: &str = "rollout";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Off: no waves, every device is served as the pointer says.
    pub enabled: bool,
    /// MACs that take a new image first, before any wave.
    pub canary: Vec<String>,
    /// Cumulative shares of the fleet, in percent, one per wave; the last is
    /// 100 so that a rollout that goes well reaches every device.
    pub waves: Vec<u8>,
    /// Time between a wave passing and the next one starting.
    #[serde(with = "humantime_serde")]
    pub wave_wait: Duration,
    /// Share (percent) of the devices admitted so far that must be
    /// confirmed on the new version before the next wave.
    pub success_percent: u8,
    /// Share (percent) of the devices admitted so far that may fail; more
    /// pauses the rollout.
    pub failure_percent: u8,
}

impl Rollout {
    /// Each canary MAC in the registry's form (`AA:BB:CC:DD:EE:FF`).
    pub fn canary_macs(&self) -> Vec<String> {
        self.canary.iter().filter_map(|m| normal_mac(m)).collect()
    }

    pub(crate) fn validate(&self, fleet_enabled: bool) -> Result<(), E> {
        if self.enabled && !fleet_enabled {
            return Err(E::invalid(
                "rollout.enabled",
                "a staged rollout is judged by the device registry, which fleet.enabled turns off",
                "set fleet.enabled = true, or rollout.enabled = false",
            ));
        }
        for (i, m) in self.canary.iter().enumerate() {
            if normal_mac(m).is_none() {
                return Err(E::invalid(
                    format!("rollout.canary[{i}]"),
                    format!("{m:?} is not a MAC"),
                    "give 12 hex digits, bare or with `:` or `-`, e.g. \"24:6F:28:00:00:01\"",
                ));
            }
        }
        self.validate_waves()?;
        for (key, v, min) in [
            ("rollout.success_percent", self.success_percent, 1),
            ("rollout.failure_percent", self.failure_percent, 0),
        ] {
            if v < min || v > 100 {
                return Err(E::invalid(
                    key,
                    format!("{v} is not between {min} and 100"),
                    "give a percentage, e.g. success_percent = 90, failure_percent = 20",
                ));
            }
        }
        Ok(())
    }

    fn validate_waves(&self) -> Result<(), E> {
        let fix = "give rising percentages that end at 100, e.g. waves = [10, 50, 100]";
        let rising = self.waves.windows(2).all(|w| w[0] < w[1]);
        let problem = if self.waves.is_empty() {
            Some("is empty".to_string())
        } else if self.waves.iter().any(|w| *w == 0 || *w > 100) {
            Some(format!("{:?} has a share outside 1 to 100", self.waves))
        } else if !rising {
            Some(format!("{:?} does not rise", self.waves))
        } else if self.waves.last() != Some(&100) {
            Some(format!(
                "{:?} does not end at 100, so some devices would never take an image",
                self.waves
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(E::invalid("rollout.waves", p, fix)),
            None => Ok(()),
        }
    }
}

/// `24:6f:28:00:00:01`, `246F28000001` or `24-6F-...` as `24:6F:28:00:00:01`.
pub fn normal_mac(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests {
    use crate::{Env, SettingsError, load_with_env};

    fn refused_key(vars: &[(&str, &str)]) -> String {
        crate::tests::refused(None, vars).0
    }

    #[test]
    fn off_by_default_with_a_control_address() {
        let s = load_with_env(None, &Env::new()).unwrap();
        assert!(!s.rollout.enabled);
        assert_eq!(s.rollout.waves, [10, 50, 100]);
        assert!(s.messages.contains_key(super::ROLLOUT));
        let received = s.addresses.values().any(|a| {
            a.send_or_receive == crate::Direction::Receive
                && a.message_type.iter().any(|m| m == super::ROLLOUT)
        });
        assert!(received, "no receive address carries rollout");
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        for (toml, key) in [
            ("[rollout]\ncanary = [\"24:6F:28\"]\n", "rollout.canary[0]"),
            ("[rollout]\nwaves = []\n", "rollout.waves"),
            ("[rollout]\nwaves = [50, 10, 100]\n", "rollout.waves"),
            ("[rollout]\nwaves = [10, 50]\n", "rollout.waves"),
            ("[rollout]\nwaves = [0, 100]\n", "rollout.waves"),
            (
                "[rollout]\nsuccess_percent = 0\n",
                "rollout.success_percent",
            ),
            (
                "[rollout]\nfailure_percent = 101\n",
                "rollout.failure_percent",
            ),
            ("[rollout]\nwave = \"1m\"\n", "rollout.wave"),
            (
                "[rollout]\nenabled = true\n[fleet]\nenabled = false\n",
                "rollout.enabled",
            ),
        ] {
            std::fs::write(&file, toml).unwrap();
            match load_with_env(Some(&file), &Env::new()) {
                Err(SettingsError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: accepted or another error: {other:?}"),
            }
        }
        assert_eq!(
            refused_key(&[("GATOR_OTA__ROLLOUT__WAVE_WAIT", "soon")]),
            "rollout.wave_wait"
        );
    }

    #[test]
    fn canary_macs_take_the_registry_s_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        let toml = "[rollout]\nenabled = true\ncanary = [\"246f28000001\", \"24-6F-28-00-00-02\"]\nwave_wait = \"0s\"\n";
        std::fs::write(&file, toml).unwrap();
        let s = load_with_env(Some(&file), &Env::new()).unwrap();
        assert_eq!(
            s.rollout.canary_macs(),
            ["24:6F:28:00:00:01", "24:6F:28:00:00:02"]
        );
        assert_eq!(super::normal_mac("nothex00zz11"), None);
    }
}
