//! Settings for gator-ota, in SCARECRO's vocabulary.
//!
//! Layers, lowest first: the defaults embedded from `settings/default.toml`,
//! the operator's TOML file, then `GATOR_OTA__SECTION__KEY` environment
//! variables; the standard `AWS_*` variables for the S3 carrier sit between
//! the file and those (`aws_env`). After
//! loading, [`Settings::validate`] turns every bad value into an error naming
//! the key and the fix, so nothing starts on a half-valid configuration.
//!
//! Unknown sections and keys are refused, not ignored, and every error names
//! the full key, where it was set (file or environment variable) and the fix.
//!
//! Modules: [`secret`] keeps credentials out of logs and prints, `load`
//! stacks the layers, `keys` refuses unknown sections and keys, `merged`
//! types the stacked tree with errors that name the full key, `validate`
//! checks the values, [`Http`] is the firmware server's `[http]`, [`Fleet`]
//! the device registry's `[fleet]`, [`Rollout`] the staged rollouts'
//! `[rollout]`,
//! [`scarecro`] reads a SCARECRO gateway's configuration folder into a layer
//! of its own.

mod aws_env;
mod fleet;
mod http;
mod keys;
mod load;
mod merged;
mod rollout;
pub mod scarecro;
pub mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use fleet::{
    DATAGATOR_OTA, DATAGATOR_OTA_STATUS, DATAGATOR_TLM, DEVICE_MESSAGE_TYPES, FLEET_STATUS, Fleet,
};
pub use http::{Http, PointerUrl};
pub use load::{ENV_PREFIX, ENV_SETTINGS_FILE, Env, load, load_with_env};
pub use rollout::{ROLLOUT, Rollout, normal_mac};
pub use scarecro::{Loaded, ScarecroError, TopicRoute, load_all, load_all_with_env};
pub use secret::Secret;

/// The embedded default layer, also handy for tests that need a valid start.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("settings key `{key}`: {problem}. Fix: {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
    #[error(transparent)]
    Scarecro(#[from] ScarecroError),
}

impl SettingsError {
    pub(crate) fn invalid(
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The whole, validated configuration of one gateway.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub system: System,
    pub firmware: Firmware,
    pub pipeline: Pipeline,
    pub jobs: Jobs,
    pub http: Http,
    pub fleet: Fleet,
    pub rollout: Rollout,
    pub messages: BTreeMap<String, MessageSpec>,
    pub carriers: BTreeMap<String, Carrier>,
    pub addresses: BTreeMap<String, Address>,
    pub tasks: BTreeMap<String, Task>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// SCARECRO system id; the cloud tells gateways apart by it.
    pub id: String,
    pub data_dir: PathBuf,
    /// A SCARECRO `configs/` folder to run from; empty for none.
    #[serde(default)]
    pub scarecro_configs: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// Folders a message may write into; empty means `system.data_dir`.
    pub allowed_roots: Vec<PathBuf>,
    pub images_dir: PathBuf,
    pub pointer_file: PathBuf,
    pub max_image_bytes: u64,
    pub require_signature: bool,
    pub public_keys: Vec<String>,
    pub public_key_files: Vec<PathBuf>,
}

impl Settings {
    /// The folders writes are confined to, with the default applied.
    pub fn allowed_roots(&self) -> Vec<PathBuf> {
        if self.firmware.allowed_roots.is_empty() {
            vec![self.system.data_dir.clone()]
        } else {
            self.firmware.allowed_roots.clone()
        }
    }

    /// The MQTT carrier named `name`, if that is what it is.
    pub fn mqtt(&self, name: &str) -> Option<&MqttCarrier> {
        match self.carriers.get(name) {
            Some(Carrier::Mqtt(m)) => Some(m),
            _ => None,
        }
    }

    /// The send addresses that carry `message_type`.
    pub fn send_addresses<'a>(
        &'a self,
        message_type: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Address)> + 'a {
        self.addresses.iter().filter(move |(_, a)| {
            a.send_or_receive == Direction::Send && a.message_type.iter().any(|t| t == message_type)
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub queue: usize,
    /// Outbox messages (confirms, final statuses) in flight to the broker
    /// at once; also MQTT egress's mailbox.
    pub outbox_window: usize,
    /// Inbox backlog (messages held on disk, not yet taken by ingress) past
    /// which a warning is logged. Nothing is dropped.
    pub inbox_warning: usize,
    /// Data Gator messages (status, telemetry) waiting in memory for
    /// ingress at most; past it they are dropped and counted. They never
    /// go through the inbox on disk.
    pub device_queue: usize,
    pub max_payload_bytes: usize,
    pub write_chunks: usize,
}

/// How firmware jobs run: concurrency, retries, space and retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    pub concurrency: usize,
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub reserve_bytes: u64,
    pub keep_images: usize,
    pub progress_step: u8,
}

/// How SCARECRO finds the id and time of a message inside its content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub id_field: String,
    pub time_field: String,
}

/// A SCARECRO carrier: the thing that moves messages or files.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Carrier {
    Mqtt(MqttCarrier),
    S3(S3Carrier),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttCarrier {
    pub source: String,
    pub url: String,
    pub client_id: String,
    pub username: String,
    pub password: Secret,
    /// Read the password from this file instead (systemd credentials, k8s secrets).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    pub qos: i32,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    pub version: u32,
    pub ca_file: String,
    /// Client certificate (PEM) for brokers that require one; with `key_file`.
    #[serde(default)]
    pub cert_file: String,
    /// The client certificate's private key (PEM); with `cert_file`.
    #[serde(default)]
    pub key_file: String,
    /// Passphrase of an encrypted `key_file`.
    #[serde(default)]
    pub key_password: Secret,
    /// Read `key_password` from this file instead.
    #[serde(default)]
    pub key_password_file: Option<PathBuf>,
    pub clean_session: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// SCARECRO's topic → address table; when set, received topics map to
    /// addresses the way SCARECRO's MQTT carrier maps them.
    #[serde(default)]
    pub scarecro_topics: Vec<TopicRoute>,
}

impl MqttCarrier {
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("ssl://") || self.url.starts_with("mqtts://")
    }

    /// The TLS file settings that are set, as (key, path), for checks and logs.
    pub fn tls_files(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("ca_file", self.ca_file.as_str()),
            ("cert_file", self.cert_file.as_str()),
            ("key_file", self.key_file.as_str()),
        ]
        .into_iter()
        .filter(|(_, path)| !path.is_empty())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Carrier {
    pub source: String,
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// With temporary credentials (STS, SSO): the token that goes with them.
    #[serde(default)]
    pub session_token: Secret,
    pub prefix: String,
    pub allow_http: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a HEAD or GET may wait for its response headers. `timeout`
    /// bounds a whole transfer (30 min); a store that accepts the request and
    /// never answers must not hold a job, and a worker, that long.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    pub max_bytes_per_second: u64,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(20)
}

/// Where the S3 carrier's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    S3(String),
    /// A local folder standing in for a bucket.
    Folder(PathBuf),
}

impl S3Carrier {
    /// Parses `bucket`; a relative folder is taken from `data_dir`.
    pub fn location(&self, data_dir: &std::path::Path) -> Bucket {
        if let Some(dir) = self.bucket.strip_prefix("file://") {
            let dir = PathBuf::from(dir);
            Bucket::Folder(if dir.is_absolute() {
                dir
            } else {
                data_dir.join(dir)
            })
        } else {
            Bucket::S3(
                self.bucket
                    .strip_prefix("s3://")
                    .unwrap_or(&self.bucket)
                    .trim_end_matches('/')
                    .to_string(),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Send,
    Receive,
}

/// By hand, so that a wrong value says what the right ones are.
impl<'de> Deserialize<'de> for Direction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "send" => Ok(Self::Send),
            "receive" => Ok(Self::Receive),
            other => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(other),
                &"\"send\" or \"receive\"",
            )),
        }
    }
}

/// A SCARECRO address: a carrier, a direction and the message types on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub carrier: String,
    pub send_or_receive: Direction,
    /// One type or a list; SCARECRO writes both, and an environment
    /// variable can only give one.
    #[serde(deserialize_with = "one_or_many")]
    pub message_type: Vec<String>,
    pub duration: String,
    /// The MQTT topic (SCARECRO's `additional_info.topic`).
    pub topic: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a message type or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut types = Vec::new();
            while let Some(t) = seq.next_element::<String>()? {
                types.push(t);
            }
            Ok(types)
        }
    }
    d.deserialize_any(OneOrMany)
}

/// A SCARECRO task: which carrier function runs for which message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub source_type: String,
    pub config_name: String,
    pub function: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
    pub duration: String,
    pub message_type: String,
}

/// The one carrier function gator-ota implements, named as in SCARECRO's s3.py.
pub const HANDLE_NEW_FIRMWARE_MESSAGE: &str = "handle_new_firmware_message";

impl Settings {
    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print settings: {e}\n"))
    }
}
