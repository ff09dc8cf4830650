//! What the service derives from its settings before it touches the disk or
//! the network.
//!
//! `run` and `check-config` both build a [`Plan`], so `check-config` refuses
//! everything `run` would refuse, with the same message. Settings validation
//! (`gator_ota_settings`) checks each value on its own; the plan adds what
//! needs the actors' own types: the one MQTT connection and its connect
//! options, the signing keys, the S3 clients, the task table and the
//! addresses each message type goes to. [`crate::Service::start`] then only
//! makes folders and actors from it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gator_ota_settings::{Carrier, Direction, MqttCarrier, S3Carrier, Settings};
use paho_mqtt as paho;

use crate::firmware::Defaults;
use crate::ingress::Subscription;
use crate::job::Policy;
use crate::mqtt;
use crate::paths::Confinement;
use crate::s3_carrier::StorePlan;
use crate::scarecro_topics::TopicMap;
use crate::signature::{KeyError, Keyring};

/// A setting the plan cannot use, in the words settings validation uses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("settings key `{key}`: {problem}. Fix: {fix}")]
pub struct PlanError {
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl PlanError {
    fn new(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The service, decided: every value the actors are built from.
pub struct Plan {
    pub(crate) settings: Settings,
    /// One connection per MQTT carrier an address names, by name.
    pub(crate) mqtt: Vec<MqttPlan>,
    pub(crate) tasks: Vec<TaskPlan>,
    pub(crate) s3: Vec<S3Plan>,
    warnings: Vec<String>,
}

pub(crate) struct MqttPlan {
    pub name: String,
    pub carrier: MqttCarrier,
    pub connect: paho::ConnectOptions,
    pub topic_map: Option<TopicMap>,
    /// The carrier's receive addresses.
    pub subscriptions: Vec<Subscription>,
    /// Message type → the topics of the carrier's send addresses for it.
    pub send_routes: HashMap<String, Vec<String>>,
    /// The main carrier: its inbox and outbox are the state folder's
    /// `inbox/` and `outbox/`, where a gateway with one MQTT carrier has
    /// always kept them, and journal records name its inbox entries by
    /// number alone. The plan proposes the carrier that brings the messages
    /// tasks run on; the service keeps the one the state folder names
    /// ([`crate::service`]), so adding a carrier never hands a queue to it.
    pub main: bool,
}

impl MqttPlan {
    /// The carrier's inbox and outbox folders under the state folder.
    pub(crate) fn spool_dirs(&self, state: &Path) -> (PathBuf, PathBuf) {
        let base = if self.main {
            state.to_path_buf()
        } else {
            state.join("carriers").join(&self.name)
        };
        (base.join("inbox"), base.join("outbox"))
    }
}

/// One `on_message` task: SCARECRO's table row, by carrier name.
#[derive(Debug, Clone)]
pub(crate) struct TaskPlan {
    pub name: String,
    pub message_type: String,
    pub function: String,
    pub carrier: String,
}

/// One S3 carrier some task runs on.
pub(crate) struct S3Plan {
    pub name: String,
    pub store: StorePlan,
    pub policy: Policy,
    pub defaults: Defaults,
}

impl Plan {
    /// Every check `run` makes before it starts anything.
    pub fn new(settings: &Settings) -> Result<Self, PlanError> {
        let tasks = task_plans(settings);
        check_pointers(settings)?;
        let mqtt = mqtt_plans(settings, &tasks)?;
        let keyring = Arc::new(keyring(settings)?);
        let mut s3 = Vec::new();
        for name in carriers_of(&tasks) {
            if let Some(Carrier::S3(carrier)) = settings.carriers.get(&name) {
                let store = StorePlan::new(&name, carrier, &settings.system.data_dir).map_err(
                    |e| {
                        PlanError::new(
                            format!("carriers.{name}"),
                            e.to_string(),
                            "check bucket (s3://name, or file://folder for a local one), region and endpoint",
                        )
                    },
                )?;
                s3.push(S3Plan {
                    policy: policy(settings, carrier, &keyring),
                    defaults: defaults(settings, carrier),
                    name,
                    store,
                });
            }
        }
        let warnings = unreceived_tasks(&mqtt, &tasks);
        Ok(Self {
            settings: settings.clone(),
            mqtt,
            tasks,
            s3,
            warnings,
        })
    }

    /// What is allowed but probably not meant, for `run` to log and
    /// `check-config` to print.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The folders the service creates before its actors start.
    pub(crate) fn folders(&self) -> Vec<PathBuf> {
        let mut folders = vec![self.settings.system.data_dir.clone()];
        folders.extend(self.settings.allowed_roots());
        folders
    }
}

/// The pointers the firmware server publishes must be files gator-ota may
/// write, as a message's `config_path` must.
fn check_pointers(settings: &Settings) -> Result<(), PlanError> {
    if !settings.http.enabled {
        return Ok(());
    }
    let Some(confinement) = Confinement::lexical(&settings.allowed_roots()) else {
        return Ok(());
    };
    for (index, pointer) in settings.http.pointers.iter().enumerate() {
        if let Err(e) = confinement.resolve("file", &pointer.file.to_string_lossy()) {
            return Err(PlanError::new(
                format!("http.pointers[{index}].file"),
                e.to_string(),
                "name the pointer file as messages name it in config_path: relative to system.data_dir, or inside system.allowed_roots",
            ));
        }
    }
    Ok(())
}

/// One connection per MQTT carrier an address names, each with its own
/// settings, TLS and session: SCARECRO gateways talk to a local broker (the
/// Data Gators) and the cloud's (firmware_image, confirms).
fn mqtt_plans(settings: &Settings, tasks: &[TaskPlan]) -> Result<Vec<MqttPlan>, PlanError> {
    let names: BTreeSet<&String> = settings.addresses.values().map(|a| &a.carrier).collect();
    if names.is_empty() {
        return Err(PlanError::new(
            "addresses",
            "no address uses an MQTT carrier",
            "add [addresses.<name>] with carrier = \"<an mqtt carrier>\"",
        ));
    }
    let mut plans = Vec::new();
    for name in names {
        plans.push(mqtt_plan(settings, name)?);
    }
    let consumed = |p: &MqttPlan| {
        p.subscriptions.iter().any(|s| {
            tasks
                .iter()
                .any(|t| s.message_types.contains(&t.message_type))
        })
    };
    let main = plans.iter().position(consumed).unwrap_or(0);
    plans[main].main = true;
    Ok(plans)
}

fn mqtt_plan(settings: &Settings, name: &str) -> Result<MqttPlan, PlanError> {
    let key = format!("carriers.{name}");
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !plain {
        return Err(PlanError::new(
            key,
            "an MQTT carrier's name names its folder in the state folder, so it must be plain",
            "name it with letters, digits, '_' and '-' only",
        ));
    }
    let carrier = settings.mqtt(name).ok_or_else(|| {
        PlanError::new(
            "addresses",
            format!("{name:?} is not a configured mqtt carrier"),
            "name an mqtt carrier",
        )
    })?;
    let connect = mqtt::connect_options(name, carrier).map_err(|e| {
        PlanError::new(
            key,
            e.to_string(),
            "check the carrier's TLS files and credentials",
        )
    })?;
    Ok(MqttPlan {
        name: name.to_string(),
        carrier: carrier.clone(),
        connect,
        topic_map: TopicMap::from_routes(&carrier.scarecro_topics),
        subscriptions: subscriptions(settings, name),
        send_routes: send_routes(settings, name),
        main: false,
    })
}

/// The signing keys, with a bad one named by its place in the list.
fn keyring(settings: &Settings) -> Result<Keyring, PlanError> {
    let f = &settings.firmware;
    Keyring::load(&f.public_keys, &f.public_key_files).map_err(|e| match &e {
        KeyError::BadBase64(text) => PlanError::new(
            format!("firmware.public_keys[{}]", position(&f.public_keys, text)),
            e.to_string(),
            "use the base64 line `gator-ota keygen` prints, or a PEM file in firmware.public_key_files",
        ),
        KeyError::File { path, .. } => PlanError::new(
            format!(
                "firmware.public_key_files[{}]",
                position(&f.public_key_files, path)
            ),
            e.to_string(),
            "name a readable PEM public key (`openssl pkey -pubout`)",
        ),
    })
}

fn position<T: PartialEq>(list: &[T], item: &T) -> usize {
    list.iter().position(|x| x == item).unwrap_or(0)
}

fn policy(settings: &Settings, s3: &S3Carrier, keyring: &Arc<Keyring>) -> Policy {
    Policy {
        attempts: settings.jobs.attempts,
        backoff_min: settings.jobs.backoff_min,
        backoff_max: settings.jobs.backoff_max,
        idle_timeout: settings.jobs.idle_timeout,
        header_timeout: s3.header_timeout,
        reserve_bytes: settings.jobs.reserve_bytes,
        keep_images: settings.jobs.keep_images,
        progress_step: settings.jobs.progress_step,
        max_image_bytes: settings.firmware.max_image_bytes,
        max_bytes_per_second: s3.max_bytes_per_second,
        require_signature: settings.firmware.require_signature,
        keyring: keyring.clone(),
        write_chunks: settings.pipeline.write_chunks,
    }
}

/// Where a message without `disk_path` or `config_path` writes.
fn defaults(settings: &Settings, s3: &S3Carrier) -> Defaults {
    Defaults {
        images_dir: settings.firmware.images_dir.display().to_string(),
        pointer_file: settings.firmware.pointer_file.display().to_string(),
        prefix: s3.prefix.clone(),
    }
}

fn task_plans(settings: &Settings) -> Vec<TaskPlan> {
    settings
        .tasks
        .iter()
        .map(|(name, t)| TaskPlan {
            name: name.clone(),
            message_type: t.message_type.clone(),
            function: t.function.clone(),
            carrier: t.config_name.clone(),
        })
        .collect()
}

/// The carriers the tasks name, each once, in task order.
fn carriers_of(tasks: &[TaskPlan]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in tasks {
        if !names.contains(&t.carrier) {
            names.push(t.carrier.clone());
        }
    }
    names
}

/// Every message type a send address of `carrier` carries, and the topics
/// it goes to.
fn send_routes(settings: &Settings, carrier: &str) -> HashMap<String, Vec<String>> {
    let mut routes: HashMap<String, Vec<String>> = HashMap::new();
    for address in settings
        .addresses
        .values()
        .filter(|a| a.send_or_receive == Direction::Send && a.carrier == carrier)
    {
        for t in &address.message_type {
            routes
                .entry(t.clone())
                .or_default()
                .push(address.topic.clone());
        }
    }
    routes
}

/// The receive addresses of `carrier`.
fn subscriptions(settings: &Settings, carrier: &str) -> Vec<Subscription> {
    settings
        .addresses
        .iter()
        .filter(|(_, a)| a.send_or_receive == Direction::Receive && a.carrier == carrier)
        .map(|(name, a)| Subscription {
            address: name.clone(),
            topic: a.topic.clone(),
            message_types: a.message_type.clone(),
        })
        .collect()
}

/// A message type a task runs on that no receive address carries is worth
/// a warning, not a refusal.
fn unreceived_tasks(mqtt: &[MqttPlan], tasks: &[TaskPlan]) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| {
            !mqtt
                .iter()
                .flat_map(|p| &p.subscriptions)
                .any(|s| s.message_types.contains(&t.message_type))
        })
        .map(|t| {
            format!(
                "task `{}` runs on message type `{}`, but no receive address carries it",
                t.name, t.message_type
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let env = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        gator_ota_settings::load_with_env(None, &env).expect("valid settings")
    }

    #[test]
    fn the_defaults_make_a_plan() {
        let plan = Plan::new(&settings(&[])).expect("plan");
        assert_eq!(plan.s3.len(), 1);
        assert_eq!(plan.tasks.len(), 1);
        assert!(plan.warnings().is_empty(), "{:?}", plan.warnings());
    }

    #[test]
    fn a_bad_public_key_names_its_place() {
        let mut s = settings(&[]);
        s.firmware.public_keys = vec!["bm90IGEga2V5".into()];
        let e = Plan::new(&s).err().expect("refused");
        assert_eq!(e.key, "firmware.public_keys[0]");
    }

    #[test]
    fn a_pem_file_that_is_no_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(
            &pem,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let s = settings(&[(
            "GATOR_OTA__FIRMWARE__PUBLIC_KEY_FILES",
            pem.to_str().unwrap(),
        )]);
        let e = Plan::new(&s).err().expect("refused");
        assert_eq!(e.key, "firmware.public_key_files[0]");
        assert!(e.to_string().contains("Fix:"), "{e}");
    }
}
