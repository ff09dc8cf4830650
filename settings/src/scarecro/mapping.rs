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

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ScarecroError as E;
use super::folder::{
    DEFAULT_SYSTEM_ID, Folder, Kind, Object, ResolvedAddress, kind_of, py_str, truthy,
};
use super::report::{Report, Skipped, Used, redact};
use crate::HANDLE_NEW_FIRMWARE_MESSAGE;

/// The message gator-ota sends back, as `S3_Bucket.send_confirm_receipt_message` does.
const CONFIRM_RECEIPT: &str = "confirm_receipt";

/// Carrier keys gator-ota maps; any other key of a used carrier is reported.
const MQTT_KEYS: &[&str] = &[
    "source",
    "inheritance",
    "mqtt_url",
    "mqtt_port",
    "mqtt_username",
    "mqtt_password",
    "qos",
    "client_id",
    "system_id",
    "version",
];
const S3_KEYS: &[&str] = &[
    "source",
    "inheritance",
    "bucket_name",
    "access_key_id",
    "secret_access_key",
    "path",
    "system_id",
];
const ADDRESS_KEYS: &[&str] = &[
    "inheritance",
    "message_type",
    "send_or_receive",
    "carrier",
    "duration",
    "additional_info",
];
const TASK_KEYS: &[&str] = &[
    "inheritance",
    "source_type",
    "config_name",
    "function",
    "arguments",
    "duration",
    "message_type",
];

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Send,
    Receive,
}

/// An address after classification.
struct AddressInfo {
    resolved: ResolvedAddress,
    carrier: Option<String>,
    direction: Option<Direction>,
    /// `additional_info.topic`, when it is a string.
    topic: Option<String>,
    message_type: Option<String>,
    verdict: Verdict,
}

enum Verdict {
    Candidate,
    Skip(String),
}

/// A task gator-ota runs.
struct UsedTask {
    carrier: String,
    message_type: String,
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
    let system_file = folder.path(Kind::System, "system");
    let system_id = py_str(
        system
            .get("id")
            .unwrap_or(&Value::String(DEFAULT_SYSTEM_ID.into())),
    );
    let list = |key: &str| -> Result<Vec<String>, E> {
        match system.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(E::Key {
                        file: system_file.clone(),
                        key: key.into(),
                        problem: format!("lists {}, not a config name", kind_of(other)),
                        fix: format!("list {key} by name, e.g. [\"name\"]"),
                    }),
                })
                .collect(),
            Some(other) => Err(E::Key {
                file: system_file.clone(),
                key: key.into(),
                problem: format!("is {}, not a list of names", kind_of(other)),
                fix: format!("list {key} by name, e.g. [\"name\"]"),
            }),
        }
    };
    let address_names = list("addresses")?;
    let task_names = list("tasks")?;

    let mut m = Mapper {
        folder,
        carriers: BTreeMap::new(),
        report: Report {
            dir: folder.dir().to_path_buf(),
            system_id: system_id.clone(),
            ..Report::default()
        },
    };
    m.report.used.push(Used {
        file: Folder::label(Kind::System, "system"),
        setting: "system".into(),
        what: format!("$system_id stands for {system_id:?}"),
    });
    m.ignored_keys(
        &Folder::label(Kind::System, "system"),
        &system,
        &["inheritance", "id", "addresses", "tasks"],
    );
    m.report.resolved.push((
        Folder::label(Kind::System, "system"),
        redact(&Value::Object(system.clone())),
    ));

    let mut tree = Object::new();
    let tasks = m.tasks(&task_names, &mut tree)?;
    let consumed: BTreeSet<String> = tasks.iter().map(|t| t.message_type.clone()).collect();
    let s3: BTreeSet<String> = tasks.iter().map(|t| t.carrier.clone()).collect();
    let addresses = folder.addresses(&address_names)?;
    let mqtt = m.addresses(addresses, &consumed, &mut tree)?;
    m.mqtt_carrier(&mqtt, templates, &mut tree)?;
    let confirm_id = m.s3_carriers(&s3, templates, &mut tree)?;
    m.messages(&consumed, &mut tree)?;
    m.unused_carriers(&mqtt.name, &s3);

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

/// The chosen MQTT carrier and SCARECRO's topic table for it.
struct MqttChoice {
    name: String,
    file: String,
    topics: Vec<(String, String)>,
}

impl Mapper<'_> {
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

    /// The tasks gator-ota runs; the others are reported as skipped.
    fn tasks(&mut self, names: &[String], tree: &mut Object) -> Result<Vec<UsedTask>, E> {
        let mut used = Vec::new();
        let mut tasks = Object::new();
        for name in names {
            let file = Folder::label(Kind::Tasks, name);
            let full = self.folder.path(Kind::Tasks, name);
            let t = self
                .folder
                .import(Kind::Tasks, name, (Kind::System, "system"), "tasks")?;
            // `System.init_task`: a `source` key means a Python task module.
            if let Some(source) = t.get("source") {
                let reason = format!(
                    "runs SCARECRO's Python task src/tasks/{}.py",
                    py_str(source)
                );
                self.skip(file, name, reason);
                continue;
            }
            let source_type = t.get("source_type").map(py_str).unwrap_or_default();
            if source_type != "carrier" {
                let reason =
                    format!("source_type {source_type:?}: gator-ota runs only carrier tasks");
                self.skip(file, name, reason);
                continue;
            }
            let carrier_name = match t.get("config_name") {
                Some(Value::String(s)) => s.clone(),
                other => {
                    return Err(E::Key {
                        file: full,
                        key: "config_name".into(),
                        problem: match other {
                            None => "is missing, so the task names no carrier".into(),
                            Some(v) => format!("is {}, not a carrier name", kind_of(v)),
                        },
                        fix: "name the carrier the task runs on, e.g. \"s3_firmware_ota\"".into(),
                    });
                }
            };
            let function = t.get("function").map(py_str).unwrap_or_default();
            let source = self
                .carrier(&carrier_name, (Kind::Tasks, name), "config_name")?
                .source
                .clone();
            let duration = t.get("duration").cloned().unwrap_or(Value::Null);
            let reason = if source != "s3" {
                Some(format!(
                    "runs {function} on carrier {carrier_name} (source {source:?})"
                ))
            } else if function != HANDLE_NEW_FIRMWARE_MESSAGE {
                Some(format!(
                    "runs {function} on s3 carrier {carrier_name}; gator-ota implements only {HANDLE_NEW_FIRMWARE_MESSAGE}"
                ))
            } else if duration != "on_message" {
                Some(format!(
                    "duration {duration}: gator-ota runs {HANDLE_NEW_FIRMWARE_MESSAGE} only \"on_message\""
                ))
            } else if !matches!(t.get("message_type"), Some(Value::String(_))) {
                Some("has no message_type to run on".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                self.skip(file, name, reason);
                continue;
            }
            let message_type = py_str(&t["message_type"]);
            let arguments = match t.get("arguments") {
                Some(Value::Object(o)) => Value::Object(o.clone()),
                _ => json!({}),
            };
            tasks.insert(
                name.clone(),
                json!({
                    "source_type": "carrier",
                    "config_name": carrier_name,
                    "function": function,
                    "arguments": arguments,
                    "duration": "on_message",
                    "message_type": message_type,
                }),
            );
            self.report.used.push(Used {
                file: file.clone(),
                setting: format!("tasks.{name}"),
                what: format!("{function} on {carrier_name} for every {message_type}"),
            });
            self.ignored_keys(&file, &t, TASK_KEYS);
            self.report.resolved.push((file, redact(&Value::Object(t))));
            used.push(UsedTask {
                carrier: carrier_name,
                message_type,
            });
        }
        if used.is_empty() {
            let skipped: Vec<String> = self
                .report
                .skipped
                .iter()
                .filter(|s| s.file.starts_with("tasks/"))
                .map(|s| format!("{}: {}", s.file, s.reason))
                .collect();
            return Err(E::Key {
                file: self.folder.path(Kind::System, "system"),
                key: "tasks".into(),
                problem: format!(
                    "no listed task runs {HANDLE_NEW_FIRMWARE_MESSAGE} on an s3 carrier, so gator-ota has nothing to do{}",
                    if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join("; ")) }
                ),
                fix: "list SCARECRO's download_new_firmware_image task: {\"source_type\": \"carrier\", \
                      \"config_name\": \"s3_firmware_ota\", \"function\": \"handle_new_firmware_message\", \
                      \"arguments\": {}, \"duration\": \"on_message\", \"message_type\": \"firmware_image\"}"
                    .into(),
            });
        }
        tree.insert("tasks".into(), Value::Object(tasks));
        Ok(used)
    }

    /// Classifies every address, picks the MQTT carrier and writes the used
    /// addresses into `tree`.
    fn addresses(
        &mut self,
        addresses: Vec<ResolvedAddress>,
        consumed: &BTreeSet<String>,
        tree: &mut Object,
    ) -> Result<MqttChoice, E> {
        let mut infos = Vec::new();
        for resolved in addresses {
            let info = self.classify(resolved, consumed)?;
            infos.push(info);
        }
        let first = |d: Direction| {
            infos
                .iter()
                .find(|i| matches!(i.verdict, Verdict::Candidate) && i.direction == Some(d))
                .and_then(|i| i.carrier.clone())
        };
        let Some(chosen) = first(Direction::Receive).or_else(|| first(Direction::Send)) else {
            return Err(self.no_address_error(&infos, consumed, Direction::Receive));
        };
        let mut out = Object::new();
        let (mut receives, mut sends) = (0, 0);
        for info in &mut infos {
            if matches!(info.verdict, Verdict::Candidate)
                && info.carrier.as_deref() != Some(&chosen)
            {
                info.verdict = Verdict::Skip(format!(
                    "uses MQTT carrier {}; gator-ota keeps one MQTT connection, to carrier {chosen}",
                    info.carrier.as_deref().unwrap_or_default()
                ));
            }
        }
        for info in &infos {
            let a = &info.resolved;
            let file = Folder::label(Kind::Addresses, &a.stem);
            match &info.verdict {
                Verdict::Skip(reason) => self.skip(file, &a.name, reason.clone()),
                Verdict::Candidate => {
                    let direction = info.direction.expect("candidates have a direction");
                    let topic = info.topic.clone().expect("candidates have a topic");
                    let message_type = info.message_type.clone().expect("candidates have a type");
                    // `MQTT_Client.get_subscriptions`: a receive address
                    // subscribes to `<topic>/#`.
                    let (word, topic) = match direction {
                        Direction::Receive => {
                            receives += 1;
                            ("receive", format!("{topic}/#"))
                        }
                        Direction::Send => {
                            sends += 1;
                            ("send", topic)
                        }
                    };
                    let duration = match a.content.get("duration") {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => py_str(v),
                        None => "as_needed".into(),
                    };
                    out.insert(
                        a.name.clone(),
                        json!({
                            "carrier": chosen,
                            "send_or_receive": word,
                            "message_type": [message_type],
                            "duration": duration,
                            "topic": topic,
                        }),
                    );
                    self.report.used.push(Used {
                        file: file.clone(),
                        setting: format!("addresses.{}", a.name),
                        what: format!("{word}s {message_type} on {topic}"),
                    });
                    let label = if a.name == a.stem {
                        file.clone()
                    } else {
                        format!("{file} as {}", a.name)
                    };
                    self.ignored_keys(&label, &a.content, ADDRESS_KEYS);
                    if let Some(Value::Object(info)) = a.content.get("additional_info") {
                        let extra: Vec<&str> = info
                            .keys()
                            .map(String::as_str)
                            .filter(|k| *k != "topic")
                            .collect();
                        if !extra.is_empty() {
                            self.report.notes.push(format!(
                                "{label}: gator-ota ignores additional_info {}",
                                extra.join(", ")
                            ));
                        }
                    }
                    self.report
                        .resolved
                        .push((label, redact(&Value::Object(a.content.clone()))));
                }
            }
        }
        if receives == 0 {
            return Err(self.no_address_error(&infos, consumed, Direction::Receive));
        }
        if sends == 0 {
            let produced = BTreeSet::from([CONFIRM_RECEIPT.to_string()]);
            return Err(self.no_address_error(&infos, &produced, Direction::Send));
        }
        tree.insert("addresses".into(), Value::Object(out));

        // `util.forward_backward_map_additional_info([send, receive])`: the
        // carrier's send addresses, then its receive addresses, each in the
        // system's order, used or not.
        let mut topics = Vec::new();
        for d in [Direction::Send, Direction::Receive] {
            topics.extend(
                infos
                    .iter()
                    .filter(|i| {
                        i.carrier.as_deref() == Some(chosen.as_str()) && i.direction == Some(d)
                    })
                    .filter_map(|i| {
                        i.topic
                            .as_ref()
                            .map(|t| (i.resolved.name.clone(), t.clone()))
                    }),
            );
        }
        Ok(MqttChoice {
            file: Folder::label(Kind::Carriers, &chosen),
            name: chosen,
            topics,
        })
    }

    fn classify(
        &mut self,
        resolved: ResolvedAddress,
        consumed: &BTreeSet<String>,
    ) -> Result<AddressInfo, E> {
        let c = &resolved.content;
        let carrier = match c.get("carrier") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let direction = match c.get("send_or_receive") {
            Some(Value::String(s)) if s == "send" => Some(Direction::Send),
            Some(Value::String(s)) if s == "receive" => Some(Direction::Receive),
            _ => None,
        };
        let topic = match c.get("additional_info").and_then(|i| i.get("topic")) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let message_type = match c.get("message_type") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let duration = c.get("duration").cloned().unwrap_or(Value::Null);
        let numeric = match &duration {
            Value::Number(n) => n.as_u64().is_some(),
            // `str(duration).isnumeric()` in `System.schedule_jobs`.
            Value::String(s) => !s.is_empty() && s.chars().all(|ch| ch.is_ascii_digit()),
            _ => false,
        };
        let source = match &carrier {
            Some(name) => Some(
                self.carrier(name, (Kind::Addresses, &resolved.stem), "carrier")?
                    .source
                    .clone(),
            ),
            None => None,
        };
        let wanted = |d: Direction, t: &str| match d {
            Direction::Receive => consumed.contains(t),
            Direction::Send => t == CONFIRM_RECEIPT,
        };
        let reason = match (&carrier, &source, direction, &message_type) {
            (None, _, _, _) => Some("names no carrier".to_string()),
            (Some(name), Some(src), _, _) if src != "mqtt" => {
                Some(format!("carrier {name} is a {src:?} carrier"))
            }
            (_, _, None, _) => Some(format!(
                "send_or_receive is {}, neither \"send\" nor \"receive\"",
                c.get("send_or_receive")
                    .map_or("missing".into(), |v| v.to_string())
            )),
            (_, _, _, None) => Some(format!(
                "message_type is {}, not one type (SCARECRO expands only a list written in the address's own file)",
                c.get("message_type")
                    .map_or("missing".into(), |v| v.to_string())
            )),
            (_, _, Some(Direction::Receive), Some(t)) if !wanted(Direction::Receive, t) => {
                Some(format!("no gator-ota task runs on {t}"))
            }
            (_, _, Some(Direction::Send), Some(t)) if !wanted(Direction::Send, t) => {
                Some(format!("gator-ota sends no {t} messages"))
            }
            _ if topic.is_none() => Some("has no additional_info.topic".to_string()),
            (_, _, Some(Direction::Receive), _) if duration != "always" && !numeric => {
                Some(format!(
                    "duration {duration}: SCARECRO starts receiving only for \"always\" or a number of seconds"
                ))
            }
            (_, _, Some(Direction::Send), _) if duration != "on_message" && !numeric => {
                Some(format!(
                    "duration {duration}: SCARECRO sends only \"on_message\" or every N seconds"
                ))
            }
            _ => None,
        };
        Ok(AddressInfo {
            resolved,
            carrier,
            direction,
            topic,
            message_type,
            verdict: match reason {
                Some(r) => Verdict::Skip(r),
                None => Verdict::Candidate,
            },
        })
    }

    fn no_address_error(&self, infos: &[AddressInfo], types: &BTreeSet<String>, d: Direction) -> E {
        let near: Vec<String> = infos
            .iter()
            .filter(|i| {
                i.direction == Some(d) && i.message_type.as_ref().is_some_and(|t| types.contains(t))
            })
            .filter_map(|i| match &i.verdict {
                Verdict::Skip(r) => Some(format!(
                    "{} ({}): {r}",
                    Folder::label(Kind::Addresses, &i.resolved.stem),
                    i.resolved.name
                )),
                Verdict::Candidate => None,
            })
            .collect();
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let (verb, example_duration) = match d {
            Direction::Receive => ("receives", "always"),
            Direction::Send => ("sends", "on_message"),
        };
        E::Key {
            file: self.folder.path(Kind::System, "system"),
            key: "addresses".into(),
            problem: format!(
                "no listed address {verb} {} over MQTT{}",
                types.join(" or "),
                if near.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", near.join("; "))
                }
            ),
            fix: format!(
                "list an address with \"send_or_receive\": \"{}\", \"message_type\": \"{}\", \"duration\": \"{example_duration}\", \
                 an mqtt carrier and \"additional_info\": {{\"topic\": ...}}",
                if d == Direction::Receive {
                    "receive"
                } else {
                    "send"
                },
                types.first().copied().unwrap_or_default()
            ),
        }
    }

    /// `MQTT_Client.__init__`, key by key.
    fn mqtt_carrier(
        &mut self,
        choice: &MqttChoice,
        templates: &Templates,
        tree: &mut Object,
    ) -> Result<(), E> {
        let content = self.carriers[&choice.name].content.clone();
        let full = self.folder.path(Kind::Carriers, &choice.name);
        let key_err = |key: &str, problem: String, fix: &str| E::Key {
            file: full.clone(),
            key: key.into(),
            problem,
            fix: fix.into(),
        };
        let host = match content.get("mqtt_url") {
            None => "127.0.0.1".to_string(),
            Some(Value::String(s)) if !s.is_empty() && !s.contains("://") => s.clone(),
            Some(v) => {
                return Err(key_err(
                    "mqtt_url",
                    format!("{v} is not a broker host name"),
                    "write the host only, e.g. \"mqtt.example.com\" (SCARECRO passes it to paho's connect)",
                ));
            }
        };
        let port = match content.get("mqtt_port") {
            None => Some(1883),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            Some(_) => None,
        }
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| {
            key_err(
                "mqtt_port",
                format!("{} is not a TCP port", content["mqtt_port"]),
                "use a port number such as 1883, or 8883 for TLS",
            )
        })?;
        let qos = match content.get("qos") {
            None => 1,
            Some(Value::Number(n)) if n.as_i64().is_some_and(|q| (0..=2).contains(&q)) => {
                n.as_i64().unwrap_or(1)
            }
            Some(v) => {
                return Err(key_err("qos", format!("{v} is not a QoS"), "use 0, 1 or 2"));
            }
        };
        // paho: MQTT 5 when `version` is 5 (the default), else 3.1.1.
        let version = match content.get("version") {
            None => 5,
            Some(Value::Number(n)) if n.as_f64() == Some(5.0) => 5,
            Some(_) => 4,
        };
        // TLS and credentials only when both are set: `if self.mqtt_username and self.mqtt_password`.
        let user = content.get("mqtt_username");
        let password = content.get("mqtt_password");
        let credentials = truthy(user) && truthy(password);
        if truthy(user) != truthy(password) {
            self.report.notes.push(format!(
                "{}: only one of mqtt_username and mqtt_password is set; like SCARECRO, gator-ota connects without credentials or TLS",
                choice.file
            ));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!(
            "{}://{host}:{port}",
            if credentials { "ssl" } else { "tcp" }
        );
        // `self.client_id = f"{self.client_id}_{self.system_id}"`.
        let default = Value::String("default".into());
        let client_id = format!(
            "{}_{}",
            py_str(content.get("client_id").unwrap_or(&default)),
            py_str(content.get("system_id").unwrap_or(&default))
        );
        if !content.contains_key("system_id") {
            self.report.notes.push(format!(
                "{}: no system_id, so the client id ends in _default, as in SCARECRO",
                choice.file
            ));
        }
        let mut carrier = templates.mqtt.clone();
        for (k, v) in [
            ("source", json!("mqtt")),
            ("url", json!(url)),
            ("client_id", json!(client_id)),
            (
                "username",
                json!(if credentials {
                    py_str(user.unwrap_or(&Value::Null))
                } else {
                    String::new()
                }),
            ),
            (
                "password",
                json!(if credentials {
                    py_str(password.unwrap_or(&Value::Null))
                } else {
                    String::new()
                }),
            ),
            ("qos", json!(qos)),
            ("version", json!(version)),
            (
                "scarecro_topics",
                Value::Array(
                    choice
                        .topics
                        .iter()
                        .map(|(address, topic)| json!({"address": address, "topic": topic}))
                        .collect(),
                ),
            ),
        ] {
            carrier.insert(k.into(), v);
        }
        tree.entry("carriers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("carriers is an object")
            .insert(choice.name.clone(), Value::Object(carrier));
        self.report.used.push(Used {
            file: choice.file.clone(),
            setting: format!("carriers.{}", choice.name),
            what: format!("MQTT connection to {url} as {client_id}"),
        });
        self.ignored_keys(&choice.file, &content, MQTT_KEYS);
        self.report
            .resolved
            .push((choice.file.clone(), redact(&Value::Object(content))));
        Ok(())
    }

    /// `S3_Bucket.__init__` for every carrier a used task runs on. Returns
    /// the id confirm_receipt messages carry: the s3 carrier's `system_id`.
    fn s3_carriers(
        &mut self,
        names: &BTreeSet<String>,
        templates: &Templates,
        tree: &mut Object,
    ) -> Result<Option<String>, E> {
        let mut confirm_ids: Vec<(String, String)> = Vec::new();
        for name in names.iter().cloned() {
            let content = self.carriers[&name].content.clone();
            let file = Folder::label(Kind::Carriers, &name);
            let full = self.folder.path(Kind::Carriers, &name);
            let string = |key: &str| -> Result<String, E> {
                match content.get(key) {
                    None | Some(Value::Null) => Ok(String::new()),
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(v) => Err(E::Key {
                        file: full.clone(),
                        key: key.into(),
                        problem: format!("is {}, not a string", kind_of(v)),
                        fix: "write it as a string".into(),
                    }),
                }
            };
            let bucket = string("bucket_name")?;
            if bucket.is_empty() {
                return Err(E::Key {
                    file: full.clone(),
                    key: "bucket_name".into(),
                    problem: "is missing, so the carrier names no bucket".into(),
                    fix: "set \"bucket_name\" to the firmware bucket's name".into(),
                });
            }
            let prefix = string("path")?;
            let mut carrier = templates.s3.clone();
            for (k, v) in [
                ("source", json!("s3")),
                ("bucket", json!(format!("s3://{bucket}"))),
                ("access_key_id", json!(string("access_key_id")?)),
                ("secret_access_key", json!(string("secret_access_key")?)),
                ("prefix", json!(prefix)),
            ] {
                carrier.insert(k.into(), v);
            }
            tree.entry("carriers")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("carriers is an object")
                .insert(name.clone(), Value::Object(carrier));
            // `send_confirm_receipt_message` sends `"id": self.system_id`,
            // which is `config.get("system_id", "default")`.
            let confirm_id = match content.get("system_id") {
                Some(v) => py_str(v),
                None => {
                    self.report.notes.push(format!(
                        "{file}: no system_id, so confirm_receipt messages carry id \"default\", as SCARECRO's s3.py sends them; \
                         add \"system_id\": \"$system_id\" to send the gateway's id"
                    ));
                    DEFAULT_SYSTEM_ID.to_string()
                }
            };
            if !prefix.is_empty() {
                self.report.notes.push(format!(
                    "{file}: path {prefix:?} becomes the prefix: only cloud_path keys under {prefix}/ are fetched \
                     (SCARECRO's s3.py uses path only for uploads)"
                ));
            }
            self.report.used.push(Used {
                file: file.clone(),
                setting: format!("carriers.{name}"),
                what: format!("firmware bucket s3://{bucket}, confirm_receipt id {confirm_id:?}"),
            });
            self.ignored_keys(&file, &content, S3_KEYS);
            self.report
                .resolved
                .push((file, redact(&Value::Object(content))));
            confirm_ids.push((name, confirm_id));
        }
        let distinct: BTreeSet<&String> = confirm_ids.iter().map(|(_, id)| id).collect();
        if distinct.len() > 1 {
            self.report.notes.push(format!(
                "the s3 carriers carry different system_id values ({}); gator-ota confirms every image with the first, {:?}",
                confirm_ids
                    .iter()
                    .map(|(c, id)| format!("{c}: {id:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                confirm_ids[0].1
            ));
        }
        Ok(confirm_ids.into_iter().next().map(|(_, id)| id))
    }

    /// The message configs of every type gator-ota receives or sends.
    /// SCARECRO's envelope falls back to `id` and `time` when a message
    /// config has no id_field or time_field, or does not exist.
    fn messages(&mut self, consumed: &BTreeSet<String>, tree: &mut Object) -> Result<(), E> {
        let mut messages = Object::new();
        let mut types = consumed.clone();
        types.insert(CONFIRM_RECEIPT.into());
        for t in types {
            let file = Folder::label(Kind::Messages, &t);
            let content = if self.folder.exists(Kind::Messages, &t) {
                self.folder
                    .import(Kind::Messages, &t, (Kind::Messages, &t), "message_type")?
            } else {
                self.report.notes.push(format!(
                    "{file} does not exist; SCARECRO's defaults apply: id_field \"id\", time_field \"time\""
                ));
                Object::new()
            };
            let field = |key: &str, default: &str| {
                content
                    .get(key)
                    .filter(|v| !v.is_null())
                    .map(py_str)
                    .unwrap_or_else(|| default.to_string())
            };
            let (id_field, time_field) = (field("id_field", "id"), field("time_field", "time"));
            messages.insert(
                t.clone(),
                json!({"id_field": id_field, "time_field": time_field}),
            );
            if !content.is_empty() {
                self.report.used.push(Used {
                    file: file.clone(),
                    setting: format!("messages.{t}"),
                    what: format!("id_field {id_field:?}, time_field {time_field:?}"),
                });
                self.report
                    .resolved
                    .push((file, redact(&Value::Object(content))));
            }
        }
        tree.insert("messages".into(), Value::Object(messages));
        Ok(())
    }

    /// Carriers the folder configures that no used address or task needs.
    fn unused_carriers(&mut self, mqtt: &str, s3: &BTreeSet<String>) {
        let unused: Vec<(String, String)> = self
            .carriers
            .iter()
            .filter(|(name, _)| name.as_str() != mqtt && !s3.contains(*name))
            .map(|(name, c)| {
                let reason = match c.source.as_str() {
                    "mqtt" => "an MQTT carrier no gator-ota address uses".to_string(),
                    "s3" => "an s3 carrier no gator-ota task uses".to_string(),
                    other => format!("source {other:?}, which gator-ota does not implement"),
                };
                (name.clone(), reason)
            })
            .collect();
        for (name, reason) in unused {
            self.skip(Folder::label(Kind::Carriers, &name), &name, reason);
        }
    }
}
