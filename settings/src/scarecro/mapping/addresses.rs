//! Addresses: which receive and send addresses gator-ota needs, and the one
//! MQTT carrier they decide.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{CONFIRM_RECEIPT, E, Folder, Kind, Mapper, Object, py_str, to_tree};
use crate::Address;
use crate::scarecro::folder::ResolvedAddress;
use crate::scarecro::report::redact;

/// Address keys gator-ota maps; any other key of a used address is reported.
const ADDRESS_KEYS: &[&str] = &[
    "inheritance",
    "message_type",
    "send_or_receive",
    "carrier",
    "duration",
    "additional_info",
];

type Direction = crate::Direction;

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

/// The chosen MQTT carrier and SCARECRO's topic table for it.
pub(super) struct MqttChoice {
    pub name: String,
    pub file: String,
    pub topics: Vec<(String, String)>,
}

impl Mapper<'_> {
    /// Classifies every address, writes the used ones into `tree` and
    /// returns the MQTT carriers they use, each its own connection.
    pub(super) fn addresses(
        &mut self,
        addresses: Vec<ResolvedAddress>,
        consumed: &BTreeSet<String>,
        tree: &mut Object,
    ) -> Result<Vec<MqttChoice>, E> {
        let mut infos = Vec::new();
        for resolved in addresses {
            infos.push(self.classify(resolved, consumed)?);
        }
        let candidate = |i: &AddressInfo, d: Direction| {
            matches!(i.verdict, Verdict::Candidate) && i.direction == Some(d)
        };
        if !infos.iter().any(|i| candidate(i, Direction::Receive)) {
            return Err(self.no_address_error(&infos, consumed, Direction::Receive));
        }
        if !infos.iter().any(|i| candidate(i, Direction::Send)) {
            let produced = BTreeSet::from([CONFIRM_RECEIPT.to_string()]);
            return Err(self.no_address_error(&infos, &produced, Direction::Send));
        }
        let mut out = Object::new();
        let mut used = BTreeSet::new();
        for info in &infos {
            let a = &info.resolved;
            match &info.verdict {
                Verdict::Skip(reason) => self.skip(
                    Folder::label(Kind::Addresses, &a.stem),
                    &a.name,
                    reason.clone(),
                ),
                Verdict::Candidate => {
                    let carrier = info.carrier.clone().expect("candidates name a carrier");
                    let address = self.use_address(info, &carrier);
                    out.insert(a.name.clone(), to_tree(&address));
                    used.insert(carrier);
                }
            }
        }
        tree.insert("addresses".into(), Value::Object(out));
        Ok(used
            .into_iter()
            .map(|name| MqttChoice {
                file: Folder::label(Kind::Carriers, &name),
                topics: topic_table(&infos, &name),
                name,
            })
            .collect())
    }

    /// A candidate address as gator-ota settings, reported as used.
    fn use_address(&mut self, info: &AddressInfo, carrier: &str) -> Address {
        let a = &info.resolved;
        let file = Folder::label(Kind::Addresses, &a.stem);
        let direction = info.direction.expect("candidates have a direction");
        let topic = info.topic.clone().expect("candidates have a topic");
        let message_type = info.message_type.clone().expect("candidates have a type");
        // `MQTT_Client.get_subscriptions`: a receive address subscribes to `<topic>/#`.
        let (word, topic) = match direction {
            Direction::Receive => ("receive", format!("{topic}/#")),
            Direction::Send => ("send", topic),
        };
        let duration = match a.content.get("duration") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => py_str(v),
            None => "as_needed".into(),
        };
        self.report.used.push(super::Used {
            file: file.clone(),
            setting: format!("addresses.{}", a.name),
            what: format!("{word}s {message_type} on {topic}"),
        });
        let label = if a.name == a.stem {
            file
        } else {
            format!("{file} as {}", a.name)
        };
        self.ignored_keys(&label, &a.content, ADDRESS_KEYS);
        self.ignored_additional_info(&label, &a.content);
        self.report
            .resolved
            .push((label, redact(&Value::Object(a.content.clone()))));
        Address {
            carrier: carrier.to_string(),
            send_or_receive: direction,
            message_type: vec![message_type],
            duration,
            topic,
        }
    }

    fn ignored_additional_info(&mut self, label: &str, content: &Object) {
        let Some(Value::Object(info)) = content.get("additional_info") else {
            return;
        };
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

    fn classify(
        &mut self,
        resolved: ResolvedAddress,
        consumed: &BTreeSet<String>,
    ) -> Result<AddressInfo, E> {
        let c = &resolved.content;
        let string = |v: Option<&Value>| match v {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let carrier = string(c.get("carrier"));
        let direction = match c.get("send_or_receive") {
            Some(Value::String(s)) if s == "send" => Some(Direction::Send),
            Some(Value::String(s)) if s == "receive" => Some(Direction::Receive),
            _ => None,
        };
        let topic = string(c.get("additional_info").and_then(|i| i.get("topic")));
        let message_type = string(c.get("message_type"));
        let source = match &carrier {
            Some(name) => Some(
                self.carrier(name, (Kind::Addresses, &resolved.stem), "carrier")?
                    .source
                    .clone(),
            ),
            None => None,
        };
        let seen = Seen {
            content: c,
            carrier: carrier.as_deref(),
            source: source.as_deref(),
            direction,
            message_type: message_type.as_deref(),
            has_topic: topic.is_some(),
        };
        let verdict = match seen.skip_reason(consumed) {
            Some(r) => Verdict::Skip(r),
            None => Verdict::Candidate,
        };
        Ok(AddressInfo {
            resolved,
            carrier,
            direction,
            topic,
            message_type,
            verdict,
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
        let (verb, word, example_duration) = match d {
            Direction::Receive => ("receives", "receive", "always"),
            Direction::Send => ("sends", "send", "on_message"),
        };
        let near = if near.is_empty() {
            String::new()
        } else {
            format!(" ({})", near.join("; "))
        };
        E::Key {
            file: self.folder.path(Kind::System, "system"),
            key: "addresses".into(),
            problem: format!(
                "no listed address {verb} {} over MQTT{near}",
                types.join(" or ")
            ),
            fix: format!(
                "list an address with \"send_or_receive\": \"{word}\", \"message_type\": \"{}\", \"duration\": \"{example_duration}\", \
                 an mqtt carrier and \"additional_info\": {{\"topic\": ...}}",
                types.first().copied().unwrap_or_default()
            ),
        }
    }
}

/// What classification read from one address.
struct Seen<'a> {
    content: &'a Object,
    carrier: Option<&'a str>,
    source: Option<&'a str>,
    direction: Option<Direction>,
    message_type: Option<&'a str>,
    has_topic: bool,
}

impl Seen<'_> {
    /// Why the address is not one gator-ota uses, checked in the order an
    /// operator would fix them.
    fn skip_reason(&self, consumed: &BTreeSet<String>) -> Option<String> {
        let shown = |key: &str| {
            self.content
                .get(key)
                .map_or("missing".into(), |v| v.to_string())
        };
        let Some(name) = self.carrier else {
            return Some("names no carrier".to_string());
        };
        if let Some(src) = self.source.filter(|s| *s != "mqtt") {
            return Some(format!("carrier {name} is a {src:?} carrier"));
        }
        let Some(direction) = self.direction else {
            return Some(format!(
                "send_or_receive is {}, neither \"send\" nor \"receive\"",
                shown("send_or_receive")
            ));
        };
        let Some(t) = self.message_type else {
            return Some(format!(
                "message_type is {}, not one type (SCARECRO expands only a list written in the address's own file)",
                shown("message_type")
            ));
        };
        match direction {
            Direction::Receive if !consumed.contains(t) => {
                return Some(format!("no gator-ota task runs on {t}"));
            }
            Direction::Send if t != CONFIRM_RECEIPT => {
                return Some(format!("gator-ota sends no {t} messages"));
            }
            _ => {}
        }
        if !self.has_topic {
            return Some("has no additional_info.topic".to_string());
        }
        self.duration_reason(direction)
    }

    /// SCARECRO starts a receive address only `always` (or every N
    /// seconds), and sends only `on_message` (or every N seconds).
    fn duration_reason(&self, direction: Direction) -> Option<String> {
        let duration = self.content.get("duration").cloned().unwrap_or(Value::Null);
        let numeric = match &duration {
            Value::Number(n) => n.as_u64().is_some(),
            // `str(duration).isnumeric()` in `System.schedule_jobs`.
            Value::String(s) => !s.is_empty() && s.chars().all(|ch| ch.is_ascii_digit()),
            _ => false,
        };
        match direction {
            Direction::Receive if duration != "always" && !numeric => Some(format!(
                "duration {duration}: SCARECRO starts receiving only for \"always\" or a number of seconds"
            )),
            Direction::Send if duration != "on_message" && !numeric => Some(format!(
                "duration {duration}: SCARECRO sends only \"on_message\" or every N seconds"
            )),
            _ => None,
        }
    }
}

/// `util.forward_backward_map_additional_info([send, receive])`: the
/// carrier's send addresses, then its receive addresses, each in the
/// system's order, used or not.
fn topic_table(infos: &[AddressInfo], chosen: &str) -> Vec<(String, String)> {
    let mut topics = Vec::new();
    for d in [Direction::Send, Direction::Receive] {
        topics.extend(
            infos
                .iter()
                .filter(|i| i.carrier.as_deref() == Some(chosen) && i.direction == Some(d))
                .filter_map(|i| {
                    i.topic
                        .as_ref()
                        .map(|t| (i.resolved.name.clone(), t.clone()))
                }),
        );
    }
    topics
}
