//! The stacked layers before they are typed: where each value came from, and
//! errors that name the full key, the value as given and the fix.
//!
//! `config` names only the section when a value inside it is bad
//! (`for key `jobs``) and forgets which environment variable set it. So the
//! sections are typed here from the merged tree, and each error is rebuilt
//! from the path `config` puts on it, the value in the tree, and the default
//! that shows the right form.

use std::collections::BTreeMap;
use std::path::Path;

use config::{ConfigError, Value, ValueKind};
use serde::de::DeserializeOwned;

use crate::load::{ENV_PREFIX, Env};
use crate::{DEFAULT_TOML, SettingsError as E};

/// How `config` marks a value that came from the environment.
const FROM_ENV: &str = "the environment";

/// The sections made of named entries, with what one entry is called.
pub(crate) const ENTRIES: &[(&str, &str)] = &[
    ("messages", "message"),
    ("carriers", "carrier"),
    ("addresses", "address"),
    ("tasks", "task"),
];

/// The merged settings tree and what is needed to explain any key in it.
pub(crate) struct Merged {
    root: Value,
    /// Settings key (`jobs.attempts`) → the variable that set it and its text.
    env: BTreeMap<String, (String, String)>,
    /// The embedded defaults, for examples of the right form.
    defaults: toml::Table,
    /// The settings file as the operator named it (`config` shows it
    /// relative to the current folder).
    file: Option<String>,
    /// The origin of values from a SCARECRO folder.
    folder: Option<String>,
}

/// The variable that sets `key`: `jobs.attempts` → `GATOR_OTA__JOBS__ATTEMPTS`.
pub(crate) fn var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The settings key an environment variable sets, as `config` derives it
/// (lowercased, `__` between levels); `None` for other variables.
pub(crate) fn env_key(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?.strip_prefix("__")?;
    Some(rest.to_lowercase().replace("__", "."))
}

impl Merged {
    pub(crate) fn new(
        root: config::Map<String, Value>,
        env: &Env,
        file: Option<&Path>,
        folder: Option<&str>,
    ) -> Self {
        let env = env
            .iter()
            .filter_map(|(var, raw)| Some((env_key(var)?, (var.clone(), raw.clone()))))
            .collect();
        Self {
            root: Value::new(None, ValueKind::Table(root)),
            env,
            defaults: toml::from_str(DEFAULT_TOML).expect("the embedded defaults are valid TOML"),
            file: file.map(|f| f.display().to_string()),
            folder: folder.map(str::to_string),
        }
    }

    /// The value at `key` (`carriers.mqtt.url`, `firmware.allowed_roots[0]`);
    /// the empty key is the whole tree.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        let mut v = &self.root;
        for seg in key.split('.').filter(|s| !s.is_empty()) {
            let (name, indexes) = seg.split_at(seg.find('[').unwrap_or(seg.len()));
            v = match &v.kind {
                ValueKind::Table(t) => t.get(name)?,
                _ => return None,
            };
            for i in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
                v = match &v.kind {
                    ValueKind::Array(a) => a.get(i.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
        }
        Some(v)
    }

    /// The keys of the table at `key`, sorted; empty if it is not a table.
    pub(crate) fn keys(&self, key: &str) -> Vec<&str> {
        let mut keys: Vec<&str> = match self.get(key).map(|v| &v.kind) {
            Some(ValueKind::Table(t)) => t.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        keys.sort_unstable();
        keys
    }

    /// The key and variable of the first value at or under `key` that the
    /// environment set.
    pub(crate) fn env_leaf(&self, key: &str) -> Option<(&str, &str)> {
        let key = key.split('[').next().unwrap_or(key);
        self.env
            .iter()
            .find(|(k, _)| {
                (k.as_str() == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('.')))
                    && self.get(k).is_some_and(|v| v.origin() == Some(FROM_ENV))
            })
            .map(|(k, (var, _))| (k.as_str(), var.as_str()))
    }

    /// ` (GATOR_OTA__…)`: the variable that would set `meant`, when the
    /// environment set `key`; empty otherwise.
    pub(crate) fn env_hint(&self, key: &str, meant: &str) -> String {
        let key = key.split('[').next().unwrap_or(key);
        match self.env_leaf(key) {
            Some((leaf, _)) => {
                format!(" ({})", var_name(&format!("{meant}{}", &leaf[key.len()..])))
            }
            None => String::new(),
        }
    }

    /// ` (set by GATOR_OTA__…)` or ` (in FILE)`: where the value at `key`, or
    /// the values under it, were set; empty for the embedded defaults.
    pub(crate) fn origin(&self, key: &str) -> String {
        let mut leaves = Vec::new();
        if let Some(v) = self.get(key) {
            collect_leaves(key.to_string(), v, &mut leaves);
        }
        let mut places: Vec<String> = Vec::new();
        for (leaf, v) in leaves {
            let place = match v.origin() {
                Some(FROM_ENV) => match self.env_leaf(&leaf) {
                    Some((_, var)) => format!("set by {var}"),
                    None => "set in the environment".into(),
                },
                Some(place) if place.starts_with(crate::aws_env::ORIGIN) => {
                    format!("set by {}", &place[crate::aws_env::ORIGIN.len()..])
                }
                Some(place) if Some(place) == self.folder.as_deref() => {
                    format!("from the SCARECRO folder {place}")
                }
                Some(place) => format!("in {}", self.file.as_deref().unwrap_or(place)),
                None => continue,
            };
            if !places.contains(&place) {
                places.push(place);
            }
        }
        match places.len() {
            0 => String::new(),
            1..=3 => format!(" ({})", places.join(", ")),
            n => format!(" ({}, and {} more)", places[..3].join(", "), n - 3),
        }
    }

    /// Whether the operator's file or the environment set `key` (an empty
    /// list counts); the embedded defaults and a SCARECRO folder do not.
    pub(crate) fn set_above_defaults(&self, key: &str) -> bool {
        self.get(key)
            .and_then(|v| v.origin())
            .is_some_and(|o| Some(o) != self.folder.as_deref())
    }

    /// `e` with where its key was set, for errors found after typing.
    pub(crate) fn locate(&self, e: E) -> E {
        match e {
            E::Invalid { key, problem, fix } => {
                let origin = self.origin(&key);
                E::Invalid {
                    problem: format!("{problem}{origin}"),
                    key,
                    fix,
                }
            }
            other => other,
        }
    }

    /// The table at `key`, typed. A bad value inside it becomes an error that
    /// names its full key, the value as given, where it was set and the fix.
    pub(crate) fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, E> {
        let value = self.get(key).cloned().ok_or_else(|| {
            E::invalid(
                key,
                "is missing",
                format!("add [{key}] (see settings/default.toml)"),
            )
        })?;
        T::deserialize(value).map_err(|e| self.explain(key, e))
    }

    fn explain(&self, section: &str, e: ConfigError) -> E {
        let (inner, expected, message) = match e {
            ConfigError::Type { key, expected, .. } => (key, Some(expected.to_string()), None),
            ConfigError::At { error, key, .. } => {
                let text = error.to_string();
                (key, expected_in(&text), Some(text))
            }
            ConfigError::NotFound(field) => return self.missing(&join(section, &field)),
            other => {
                let text = other.to_string();
                (None, expected_in(&text), Some(text))
            }
        };
        let key = inner.map_or_else(|| section.to_string(), |k| join(section, &k));
        if let Some(field) = message.as_deref().and_then(unknown_field) {
            let key = join(&key, field);
            return E::invalid(
                &key,
                format!("is not a key{}", self.origin(&key)),
                format!(
                    "remove it; the keys here are {}",
                    expected.unwrap_or_default()
                ),
            );
        }
        self.bad_value(
            &key,
            expected.as_deref().map(plain_type).as_deref(),
            message,
        )
    }

    /// The error for a value of the wrong type or form at `key`.
    pub(crate) fn bad_value(
        &self,
        key: &str,
        expected: Option<&str>,
        message: Option<String>,
    ) -> E {
        let given = format!("{}{}", self.shown(key), self.origin(key));
        let example = self.example(key);
        match (expected, message) {
            (Some("a table"), _) => E::invalid(
                key,
                format!("{given} is not a table"),
                format!("make it a table, [{key}], with its keys on the lines below"),
            ),
            (Some(expected), _) => E::invalid(
                key,
                format!("{given} is not {expected}"),
                match example {
                    Some(ex) => format!("give {expected}, e.g. {ex} (the default)"),
                    None => format!("give {expected}"),
                },
            ),
            (None, message) => E::invalid(
                key,
                format!(
                    "{given}: {}",
                    message.unwrap_or_else(|| "is not valid".into())
                ),
                match example {
                    Some(ex) => format!("write it in the form of the default, {ex}"),
                    None => "correct the value".into(),
                },
            ),
        }
    }

    /// The error for a key the type needs and no layer gives.
    fn missing(&self, key: &str) -> E {
        let (entry, field) = key.rsplit_once('.').unwrap_or(("", key));
        if let Some(e) = self.misnamed_entry(entry, field) {
            return e;
        }
        let fix = match self.example(key) {
            Some(ex) => format!("add it, e.g. {ex}"),
            None => "add it".into(),
        };
        E::invalid(
            key,
            format!("is missing from [{entry}]{}", self.origin(entry)),
            fix,
        )
    }

    /// A typo in an entry's name (`GATOR_OTA__CARRIERS__MQT__URL`) makes a
    /// new entry that lacks `field`; this names the entry probably meant.
    pub(crate) fn misnamed_entry(&self, entry: &str, field: &str) -> Option<E> {
        let (section, name) = entry.split_once('.')?;
        let noun = ENTRIES.iter().find(|(s, _)| *s == section)?.1;
        let others = || self.keys(section).into_iter().filter(|k| *k != name);
        let meant = crate::keys::one_underscore(name, others())
            .or_else(|| crate::keys::closest(name, others()).map(str::to_string))?;
        let meant = format!("{section}.{meant}");
        Some(E::invalid(
            entry,
            format!(
                "is not a configured {noun}{}, and as a new {noun} it lacks `{field}`",
                self.origin(entry)
            ),
            format!(
                "did you mean `{meant}`{}? A new {noun} needs every key, `{field}` too",
                self.env_hint(entry, &meant)
            ),
        ))
    }

    /// The value at `key` as the operator gave it; credentials are not shown.
    fn shown(&self, key: &str) -> String {
        let field = key.rsplit('.').next().unwrap_or(key);
        if crate::scarecro::is_secret(field) {
            return "the value".into();
        }
        let Some(v) = self.get(key) else {
            return "the value".into();
        };
        if v.origin() == Some(FROM_ENV)
            && !key.contains('[')
            && let Some((_, raw)) = self.env.get(key)
        {
            return format!("{raw:?}");
        }
        match &v.kind {
            ValueKind::String(s) => format!("{s:?}"),
            ValueKind::Table(_) => "a table".into(),
            ValueKind::Array(_) => "a list".into(),
            ValueKind::Nil => "an empty value".into(),
            other => other.to_string(),
        }
    }

    /// The default of `key`, or of the same key in a default entry of its
    /// section, written the way `key` was set: `attempts = 5` in a file,
    /// `GATOR_OTA__JOBS__ATTEMPTS=5` in the environment.
    fn example(&self, key: &str) -> Option<String> {
        if key.contains('[') {
            return None;
        }
        let segs: Vec<&str> = key.split('.').collect();
        let value = lookup(&self.defaults, &segs).or_else(|| {
            let [section, entry, field] = segs[..] else {
                return None;
            };
            let source = self
                .get(&format!("{section}.{entry}.source"))
                .map(Value::to_string);
            self.defaults
                .get(section)?
                .as_table()?
                .values()
                .filter_map(toml::Value::as_table)
                .filter(|e| {
                    section != "carriers"
                        || e.get("source").and_then(toml::Value::as_str) == source.as_deref()
                })
                .find_map(|e| e.get(field))
        })?;
        if self.get(key).is_some_and(|v| v.origin() == Some(FROM_ENV)) {
            Some(format!("`{}={}`", var_name(key), env_form(value)))
        } else {
            Some(format!("`{} = {value}`", segs[segs.len() - 1]))
        }
    }
}

fn collect_leaves<'a>(key: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match &v.kind {
        ValueKind::Table(t) if !t.is_empty() => {
            let mut entries: Vec<_> = t.iter().collect();
            entries.sort_unstable_by_key(|(k, _)| *k);
            for (k, v) in entries {
                collect_leaves(join(&key, k), v, out);
            }
        }
        _ => out.push((key, v)),
    }
}

fn lookup<'a>(table: &'a toml::Table, segs: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = segs.split_last()?;
    let mut t = table;
    for s in parents {
        t = t.get(*s)?.as_table()?;
    }
    t.get(*last)
}

fn join(parent: &str, child: &str) -> String {
    match (parent, child) {
        ("", c) => c.to_string(),
        (p, c) if c.starts_with('[') => format!("{p}{c}"),
        (p, c) => format!("{p}.{c}"),
    }
}

/// `GATOR_OTA__…=` form of a default: lists comma-separated, strings bare.
fn env_form(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(env_form).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// What serde or `config` says was expected, from `..., expected X`.
fn expected_in(message: &str) -> Option<String> {
    message
        .split_once(", expected ")
        .map(|(_, expected)| expected.to_string())
}

/// The field of serde's `unknown field `x`, expected ...`.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// A type in the words of a settings file rather than of `config`.
fn plain_type(expected: &str) -> String {
    if expected.starts_with("struct ") || expected.starts_with("a map") {
        return "a table".into();
    }
    if matches!(expected, "a sequence" | "an array") {
        return "a list".into();
    }
    if expected == "a boolean" {
        return "true or false".into();
    }
    if expected.starts_with("an unsigned 64 bit") {
        return "a whole number, 0 or more".into();
    }
    let bits = |prefix: &str| {
        expected
            .strip_prefix(prefix)?
            .strip_suffix(" bit integer")?
            .parse::<u32>()
            .ok()
    };
    if let Some(bits) = bits("an unsigned ") {
        return format!("a whole number from 0 to {}", (1u128 << bits) - 1);
    }
    if let Some(bits) = bits("an signed ") {
        let max = (1i128 << (bits - 1)) - 1;
        return format!("a whole number from {} to {max}", -max - 1);
    }
    expected.to_string()
}
