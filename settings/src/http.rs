//! `[http]`: the firmware server the Data Gators fetch their images from.
//!
//! The server hands out only what gator-ota installed and verified, so its
//! settings name addresses, limits and which pointer is published at which
//! URL path, never a folder to serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SettingsError as E;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Off: no socket is opened at all.
    pub enabled: bool,
    /// `host:port` addresses; port 0 takes any free port (tests).
    pub listen: Vec<String>,
    /// URL path → pointer file, e.g. `/current_version.txt` for Data Gators.
    pub pointers: Vec<PointerUrl>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a whole request head (slowloris bound).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Idle time an HTTP/1.1 connection is kept open between requests.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Time a closing connection has to go away once its response is sent.
    #[serde(with = "humantime_serde")]
    pub disconnect_timeout: Duration,
    /// Time a client may take none of a response before it is cut.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Size of the per-device log (`<data_dir>/.gator-ota/devices.jsonl`)
    /// before it is rotated to `devices.jsonl.1`; at most twice this on disk.
    pub device_log_bytes: u64,
}

/// One published pointer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PointerUrl {
    /// The request path, starting with `/`.
    pub url: String,
    /// The pointer file, as a message's `config_path` names it: relative
    /// paths are taken from the first allowed root.
    pub file: PathBuf,
}

impl Http {
    /// The listen addresses, parsed.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listen.iter().filter_map(|a| a.parse().ok()).collect()
    }

    pub(crate) fn validate(&self) -> Result<(), E> {
        if self.enabled && self.listen.is_empty() {
            return Err(E::invalid(
                "http.listen",
                "is empty while http.enabled is true",
                "give an address, e.g. listen = [\"0.0.0.0:80\"], or set enabled = false",
            ));
        }
        for (i, a) in self.listen.iter().enumerate() {
            if a.parse::<SocketAddr>().is_err() {
                return Err(E::invalid(
                    format!("http.listen[{i}]"),
                    format!("{a:?} is not an IP address and port"),
                    "write it as host:port with a numeric host, e.g. \"0.0.0.0:80\" or \"[::]:80\"",
                ));
            }
        }
        self.validate_pointers()?;
        for (key, zero) in [
            ("http.max_connections", self.max_connections == 0),
            ("http.request_timeout", self.request_timeout.is_zero()),
            ("http.disconnect_timeout", self.disconnect_timeout.is_zero()),
            ("http.send_timeout", self.send_timeout.is_zero()),
        ] {
            if zero {
                return Err(E::invalid(key, "is 0", "use a positive value"));
            }
        }
        if self.device_log_bytes < 4096 {
            return Err(E::invalid(
                "http.device_log_bytes",
                format!("{} is below 4096", self.device_log_bytes),
                "give room for some lines, e.g. device_log_bytes = 1048576",
            ));
        }
        Ok(())
    }

    fn validate_pointers(&self) -> Result<(), E> {
        for (i, p) in self.pointers.iter().enumerate() {
            let key = format!("http.pointers[{i}].url");
            let plain = p
                .url
                .bytes()
                .skip(1)
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
            if !p.url.starts_with('/')
                || !plain
                || p.url[1..]
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(E::invalid(
                    key,
                    format!("{:?} is not a plain URL path", p.url),
                    "start with '/' and use letters, digits, '.', '_', '-' and '/' between names, e.g. \"/current_version.txt\"",
                ));
            }
            if self.pointers[..i].iter().any(|q| q.url == p.url) {
                return Err(E::invalid(
                    key,
                    format!("{:?} is given twice", p.url),
                    "publish each URL path once",
                ));
            }
            if p.file.as_os_str().is_empty() {
                return Err(E::invalid(
                    format!("http.pointers[{i}].file"),
                    "is empty",
                    "name the pointer file, e.g. file = \"latest_firmware.json\"",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Env, SettingsError, load_with_env};

    fn load(toml: &str, vars: &[(&str, &str)]) -> Result<crate::Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gator-ota.toml");
        std::fs::write(&path, toml).unwrap();
        let env: Env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(Some(&path), &env)
    }

    fn refused_key(toml: &str, vars: &[(&str, &str)]) -> String {
        match load(toml, vars) {
            Err(SettingsError::Invalid { key, .. }) => key,
            Err(other) => panic!("expected a key error, got {other}"),
            Ok(_) => panic!("{toml:?} {vars:?} was accepted"),
        }
    }

    #[test]
    fn defaults_publish_the_data_gator_pointer_on_loopback() {
        let s = load("", &[]).unwrap();
        assert!(s.http.enabled);
        assert!(s.http.addresses()[0].ip().is_loopback());
        assert_eq!(s.http.pointers[0].url, "/current_version.txt");
        assert_eq!(s.http.pointers[0].file, s.firmware.pointer_file);
    }

    #[test]
    fn listen_addresses_come_from_a_file_or_a_variable() {
        let s = load("", &[("GATOR_OTA__HTTP__LISTEN", "0.0.0.0:80,[::]:80")]).unwrap();
        assert_eq!(s.http.addresses().len(), 2);
        let s = load("[http]\nlisten = [\"0.0.0.0:80\"]\n", &[]).unwrap();
        assert_eq!(s.http.addresses()[0].port(), 80);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[http]\nlisten = [\"gateway:80\"]\n", "http.listen[0]"),
            ("[http]\nlisten = []\n", "http.listen"),
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[http]\nrequest_timeout = \"0s\"\n", "http.request_timeout"),
            ("[http]\nsend_timeout = \"0s\"\n", "http.send_timeout"),
            ("[http]\ndevice_log_bytes = 10\n", "http.device_log_bytes"),
            ("[http]\nlisten_on = 1\n", "http.listen_on"),
            (
                "[http]\npointers = [{ url = \"current_version.txt\", file = \"p\" }]\n",
                "http.pointers[0].url",
            ),
            (
                "[http]\npointers = [{ url = \"/a/../b\", file = \"p\" }]\n",
                "http.pointers[0].url",
            ),
            (
                "[http]\npointers = [{ url = \"/a\", file = \"p\" }, { url = \"/a\", file = \"q\" }]\n",
                "http.pointers[1].url",
            ),
            (
                "[http]\npointers = [{ url = \"/a\", file = \"\" }]\n",
                "http.pointers[0].file",
            ),
        ] {
            assert_eq!(refused_key(toml, &[]), key, "{toml}");
        }
        let s = load("[http]\nenabled = false\nlisten = []\n", &[]).unwrap();
        assert!(!s.http.enabled);
    }
}
