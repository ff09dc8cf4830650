//! Carriers: `MQTT_Client.__init__` and `S3_Bucket.__init__`, key by key.
//!
//! A carrier's table is the embedded defaults' table for its kind with what
//! the folder says written over it. The keys written are the fields of a
//! struct below, whose names the tests check against the settings types.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::addresses::MqttChoice;
use super::{
    DEFAULT_SYSTEM_ID, E, Folder, Kind, Mapper, Object, Templates, carriers_table, kind_of, py_str,
    to_tree,
};
use crate::TopicRoute;
use crate::scarecro::folder::truthy;

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

/// What a SCARECRO MQTT carrier sets of [`crate::MqttCarrier`].
#[derive(Serialize)]
struct MqttKeys {
    source: &'static str,
    url: String,
    client_id: String,
    username: String,
    password: String,
    qos: i64,
    version: u32,
    scarecro_topics: Vec<TopicRoute>,
}

/// What a SCARECRO s3 carrier sets of [`crate::S3Carrier`].
#[derive(Serialize)]
struct S3Keys {
    source: &'static str,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
    prefix: String,
}

/// `template` with `keys` written over it.
fn over(template: &Object, keys: &impl Serialize) -> Value {
    let mut table = template.clone();
    if let Value::Object(keys) = to_tree(keys) {
        table.extend(keys);
    }
    Value::Object(table)
}

impl Mapper<'_> {
    /// `MQTT_Client.__init__`, key by key.
    pub(super) fn mqtt_carrier(
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
        let (username, password) = self.credentials(&choice.file, &content);
        let url = broker_url(&content, !username.is_empty(), &key_err)?;
        let qos = match content.get("qos") {
            None => 1,
            Some(Value::Number(n)) if n.as_i64().is_some_and(|q| (0..=2).contains(&q)) => {
                n.as_i64().unwrap_or(1)
            }
            Some(v) => return Err(key_err("qos", format!("{v} is not a QoS"), "use 0, 1 or 2")),
        };
        // paho: MQTT 5 when `version` is 5 (the default), else 3.1.1.
        let version = match content.get("version") {
            None => 5,
            Some(Value::Number(n)) if n.as_f64() == Some(5.0) => 5,
            Some(_) => 4,
        };
        let client_id = self.client_id(&choice.file, &content);
        let keys = MqttKeys {
            source: "mqtt",
            url: url.clone(),
            client_id: client_id.clone(),
            username,
            password,
            qos,
            version,
            scarecro_topics: choice
                .topics
                .iter()
                .map(|(address, topic)| TopicRoute {
                    address: address.clone(),
                    topic: topic.clone(),
                })
                .collect(),
        };
        carriers_table(tree).insert(choice.name.clone(), over(&templates.mqtt, &keys));
        self.ignored_keys(&choice.file, &content, MQTT_KEYS);
        let what = format!("MQTT connection to {url} as {client_id}");
        self.used(
            choice.file.clone(),
            format!("carriers.{}", choice.name),
            what,
            &content,
        );
        Ok(())
    }

    /// TLS and credentials only when both are set: `if self.mqtt_username
    /// and self.mqtt_password`. Empty strings when not.
    fn credentials(&mut self, file: &str, content: &Object) -> (String, String) {
        let user = content.get("mqtt_username");
        let password = content.get("mqtt_password");
        if truthy(user) != truthy(password) {
            self.report.notes.push(format!(
                "{file}: only one of mqtt_username and mqtt_password is set; like SCARECRO, gator-ota connects without credentials or TLS"
            ));
        }
        match (user, password) {
            (Some(u), Some(p)) if truthy(user) && truthy(password) => (py_str(u), py_str(p)),
            _ => (String::new(), String::new()),
        }
    }

    /// `self.client_id = f"{self.client_id}_{self.system_id}"`.
    fn client_id(&mut self, file: &str, content: &Object) -> String {
        let default = Value::String("default".into());
        if !content.contains_key("system_id") {
            self.report.notes.push(format!(
                "{file}: no system_id, so the client id ends in _default, as in SCARECRO"
            ));
        }
        format!(
            "{}_{}",
            py_str(content.get("client_id").unwrap_or(&default)),
            py_str(content.get("system_id").unwrap_or(&default))
        )
    }

    /// `S3_Bucket.__init__` for every carrier a used task runs on. Returns
    /// the id confirm_receipt messages carry: the s3 carrier's `system_id`.
    pub(super) fn s3_carriers(
        &mut self,
        names: &BTreeSet<String>,
        templates: &Templates,
        tree: &mut Object,
    ) -> Result<Option<String>, E> {
        let mut confirm_ids: Vec<(String, String)> = Vec::new();
        for name in names {
            let (keys, confirm_id) = self.s3_carrier(name)?;
            carriers_table(tree).insert(name.clone(), over(&templates.s3, &keys));
            confirm_ids.push((name.clone(), confirm_id));
        }
        let distinct: BTreeSet<&String> = confirm_ids.iter().map(|(_, id)| id).collect();
        if distinct.len() > 1 {
            let each: Vec<String> = confirm_ids
                .iter()
                .map(|(c, id)| format!("{c}: {id:?}"))
                .collect();
            self.report.notes.push(format!(
                "the s3 carriers carry different system_id values ({}); gator-ota confirms every image with the first, {:?}",
                each.join(", "),
                confirm_ids[0].1
            ));
        }
        Ok(confirm_ids.into_iter().next().map(|(_, id)| id))
    }

    /// One s3 carrier's keys and the id its confirm_receipt messages carry.
    fn s3_carrier(&mut self, name: &str) -> Result<(S3Keys, String), E> {
        let content = self.carriers[name].content.clone();
        let file = Folder::label(Kind::Carriers, name);
        let full = self.folder.path(Kind::Carriers, name);
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
        let keys = S3Keys {
            source: "s3",
            bucket: format!("s3://{bucket}"),
            access_key_id: string("access_key_id")?,
            secret_access_key: string("secret_access_key")?,
            prefix,
        };
        let confirm_id = self.confirm_id(&file, &content);
        if !keys.prefix.is_empty() {
            self.report.notes.push(format!(
                "{file}: path {:?} becomes the prefix: only cloud_path keys under {}/ are fetched \
                 (SCARECRO's s3.py uses path only for uploads)",
                keys.prefix, keys.prefix
            ));
        }
        self.ignored_keys(&file, &content, S3_KEYS);
        let what = format!("firmware bucket s3://{bucket}, confirm_receipt id {confirm_id:?}");
        self.used(file, format!("carriers.{name}"), what, &content);
        Ok((keys, confirm_id))
    }

    /// `send_confirm_receipt_message` sends `"id": self.system_id`, which is
    /// `config.get("system_id", "default")`.
    fn confirm_id(&mut self, file: &str, content: &Object) -> String {
        match content.get("system_id") {
            Some(v) => py_str(v),
            None => {
                self.report.notes.push(format!(
                    "{file}: no system_id, so confirm_receipt messages carry id \"default\", as SCARECRO's s3.py sends them; \
                     add \"system_id\": \"$system_id\" to send the gateway's id"
                ));
                DEFAULT_SYSTEM_ID.to_string()
            }
        }
    }

    /// Carriers the folder configures that no used address or task needs.
    pub(super) fn unused_carriers(&mut self, mqtt: &BTreeSet<String>, s3: &BTreeSet<String>) {
        let unused: Vec<(String, String)> = self
            .carriers
            .iter()
            .filter(|(name, _)| !mqtt.contains(*name) && !s3.contains(*name))
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

/// `paho.connect(mqtt_url, mqtt_port)`, TLS (`ssl://`) when credentials
/// are used.
fn broker_url(
    content: &Object,
    tls: bool,
    key_err: &impl Fn(&str, String, &str) -> E,
) -> Result<String, E> {
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
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let scheme = if tls { "ssl" } else { "tcp" };
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::fields;
    use crate::{MqttCarrier, S3Carrier};

    fn keys_of(v: &impl Serialize) -> Vec<String> {
        match to_tree(v) {
            Value::Object(o) => o.keys().cloned().collect(),
            _ => unreachable!("the key structs serialise to objects"),
        }
    }

    /// A renamed settings field must not leave the folder writing a key
    /// that `run` would refuse as unknown.
    #[test]
    fn the_keys_written_are_fields_of_the_settings_types() {
        let mqtt = MqttKeys {
            source: "mqtt",
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            qos: 1,
            version: 5,
            scarecro_topics: vec![],
        };
        for key in keys_of(&mqtt) {
            assert!(fields::<MqttCarrier>().contains(&key.as_str()), "{key}");
        }
        let s3 = S3Keys {
            source: "s3",
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            prefix: String::new(),
        };
        for key in keys_of(&s3) {
            assert!(fields::<S3Carrier>().contains(&key.as_str()), "{key}");
        }
    }
}
