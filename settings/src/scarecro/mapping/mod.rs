//! From a resolved SCARECRO folder to gator-ota settings.
//!
//! gator-ota implements one SCARECRO job: the s3 carrier's
//! `handle_new_firmware_message`, run `on_message` by a carrier task, fed by
//! an MQTT receive address and answering on an MQTT send address. Each
//! config the system config reaches is either mapped onto that job or
//! reported as skipped with the reason, so a gateway's full folder (433 MHz
//! radio, BLE, databases, other tasks) can be used as it is.
//!
//! The key-by-key rules follow SCARECRO's carriers: `src/carriers/mqtt.py`
//! (`MQTT_Client.__init__`, `get_subscriptions`, `check_topic_map`) and
//! `src/carriers/s3.py` (`S3_Bucket.__init__`, `send_confirm_receipt_message`).
//! One file per kind of config: [`tasks`], [`addresses`], [`carriers`],
//! [`messages`]. What each writes is a settings type ([`crate::Task`],
//! [`crate::Address`], [`crate::MessageSpec`]) or, for carriers, a typed set
//! of keys over the defaults' table, never a hand-spelled key.

mod addresses;
mod carriers;
mod messages;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Value, json};

use super::ScarecroError as E;
use super::folder::{DEFAULT_SYSTEM_ID, Folder, Kind, Object, kind_of, py_str};
use super::report::{Report, Skipped, Used, redact};

/// The message gator-ota sends back, as `S3_Bucket.send_confirm_receipt_message` does.
const CONFIRM_RECEIPT: &str = "confirm_receipt";

/// Settings tables of the gator-ota carrier kinds, from the embedded
/// defaults, so keys SCARECRO has no word for keep gator-ota's defaults.
pub(super) struct Templates {
    pub mqtt: Object,
    pub s3: Object,
}

/// The settings a folder amounts to (as a JSON tree shaped like the TOML
/// settings) and the report of what was used and skipped.
pub(super) struct Mapped {
    pub tree: Object,
    pub report: Report,
}

/// A carrier config, resolved, with the `source` SCARECRO would load.
struct CarrierConfig {
    content: Object,
    source: String,
}

struct Mapper<'a> {
    folder: &'a Folder,
    carriers: BTreeMap<String, CarrierConfig>,
    report: Report,
}

/// Tasks are mapped first: the message types they run on decide which
/// addresses gator-ota needs, and those decide the MQTT carrier.
pub(super) fn map(folder: &mut Folder, templates: &Templates) -> Result<Mapped, E> {
    let system = folder.system()?;
    let folder: &Folder = folder;
    let system_id = py_str(
        system
            .get("id")
            .unwrap_or(&Value::String(DEFAULT_SYSTEM_ID.into())),
    );
    let address_names = name_list(folder, &system, "addresses")?;
    let task_names = name_list(folder, &system, "tasks")?;

    let mut m = Mapper::new(folder, &system, &system_id);
    let mut tree = Object::new();
    let tasks = m.tasks(&task_names, &mut tree)?;
    let consumed: BTreeSet<String> = tasks.iter().map(|t| t.message_type.clone()).collect();
    let s3: BTreeSet<String> = tasks.iter().map(|t| t.carrier.clone()).collect();
    let addresses = folder.addresses(&address_names)?;
    let mqtt = m.addresses(addresses, &consumed, &mut tree)?;
    for choice in &mqtt {
        m.mqtt_carrier(choice, templates, &mut tree)?;
    }
    let confirm_id = m.s3_carriers(&s3, templates, &mut tree)?;
    m.messages(&consumed, &mut tree)?;
    let mqtt: BTreeSet<String> = mqtt.into_iter().map(|c| c.name).collect();
    m.unused_carriers(&mqtt, &s3);

    tree.insert(
        "system".into(),
        json!({
            "id": confirm_id.unwrap_or(system_id),
            "scarecro_configs": m.folder.dir().display().to_string(),
        }),
    );
    Ok(Mapped {
        tree,
        report: m.report,
    })
}

/// `system.json`'s list of config names under `key`.
fn name_list(folder: &Folder, system: &Object, key: &str) -> Result<Vec<String>, E> {
    let err = |problem: String| E::Key {
        file: folder.path(Kind::System, "system"),
        key: key.into(),
        problem,
        fix: format!("list {key} by name, e.g. [\"name\"]"),
    };
    match system.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(err(format!("lists {}, not a config name", kind_of(other)))),
            })
            .collect(),
        Some(other) => Err(err(format!("is {}, not a list of names", kind_of(other)))),
    }
}

/// A settings value as the layer's JSON tree holds it.
fn to_tree<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("settings types serialise to JSON")
}

/// The carrier table `name` in `tree`, for writing into.
fn carriers_table(tree: &mut Object) -> &mut Object {
    tree.entry("carriers")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("carriers is an object")
}

impl<'a> Mapper<'a> {
    fn new(folder: &'a Folder, system: &Object, system_id: &str) -> Self {
        let label = Folder::label(Kind::System, "system");
        let mut m = Mapper {
            folder,
            carriers: BTreeMap::new(),
            report: Report {
                dir: folder.dir().to_path_buf(),
                system_id: system_id.to_string(),
                ..Report::default()
            },
        };
        m.report.used.push(Used {
            file: label.clone(),
            setting: "system".into(),
            what: format!("$system_id stands for {system_id:?}"),
        });
        m.ignored_keys(&label, system, &["inheritance", "id", "addresses", "tasks"]);
        m.report
            .resolved
            .push((label, redact(&Value::Object(system.clone()))));
        m
    }

    /// The carrier `name`, which `referrer`'s `key` names. A carrier with no
    /// config file is an error: SCARECRO would log it and run the carrier
    /// with an empty config, which is never what the folder meant.
    fn carrier(
        &mut self,
        name: &str,
        referrer: (Kind, &str),
        key: &str,
    ) -> Result<&CarrierConfig, E> {
        if !self.carriers.contains_key(name) {
            let content = self.folder.import(Kind::Carriers, name, referrer, key)?;
            // `System.init_carrier`: `carrier_config.get("source", carrier_name)`.
            let source = content
                .get("source")
                .map(py_str)
                .unwrap_or_else(|| name.to_string());
            self.carriers
                .insert(name.to_string(), CarrierConfig { content, source });
        }
        Ok(&self.carriers[name])
    }

    fn skip(&mut self, file: String, name: &str, reason: impl Into<String>) {
        self.report.skipped.push(Skipped {
            file,
            name: name.to_string(),
            reason: reason.into(),
        });
    }

    /// Reports a config as used: what it became and its resolved content.
    fn used(&mut self, file: String, setting: String, what: String, content: &Object) {
        self.report.used.push(Used {
            file: file.clone(),
            setting,
            what,
        });
        self.report
            .resolved
            .push((file, redact(&Value::Object(content.clone()))));
    }

    fn ignored_keys(&mut self, file: &str, content: &Object, known: &[&str]) {
        let ignored: Vec<&str> = content
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if !ignored.is_empty() {
            self.report
                .notes
                .push(format!("{file}: gator-ota ignores {}", ignored.join(", ")));
        }
    }
}
