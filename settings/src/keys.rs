//! Which sections and keys exist, so that a typo in a file or in an
//! environment variable is refused instead of silently ignored.
//!
//! The keys come from the settings types: serde announces the fields of a
//! struct when it deserialises one, so this list cannot fall behind them.
//! The merged tree is walked rather than relying on `deny_unknown_fields`
//! alone, because only the tree knows where a key was set, and carriers are
//! typed by their `source`.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::load::{ENV_PREFIX, Env};
use crate::merged::{ENTRIES, Merged, env_key};
use crate::{
    Address, Firmware, Fleet, Http, Jobs, MessageSpec, MqttCarrier, Pipeline, Rollout, S3Carrier,
    SettingsError as E, System, Task,
};

/// The top-level sections, in the order of `settings/default.toml`.
const SECTIONS: &[&str] = &[
    "system",
    "firmware",
    "pipeline",
    "jobs",
    "http",
    "fleet",
    "rollout",
    "messages",
    "carriers",
    "addresses",
    "tasks",
];

/// Refuses the first unknown section or key (in key order), naming where it
/// was set and, when one is close, the key probably meant.
pub(crate) fn check(m: &Merged) -> Result<(), E> {
    for section in m.keys("") {
        if !SECTIONS.contains(&section) {
            return Err(unknown(m, section, "is not a section", SECTIONS, true));
        }
        if let Some((_, noun)) = ENTRIES.iter().find(|(s, _)| *s == section) {
            let names = m.keys(section);
            let tables: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| is_table(m, section, n))
                .collect();
            for name in names {
                let entry = format!("{section}.{name}");
                if !tables.contains(&name) {
                    let problem = format!("is not a table, so it is no {noun}");
                    return Err(unknown(m, &entry, &problem, &tables, true));
                }
                if let Some(fields) = entry_fields(m, section, &entry) {
                    check_fields(m, &entry, fields)?;
                }
            }
        } else {
            check_fields(m, section, section_fields(section))?;
        }
    }
    Ok(())
}

/// Refuses `GATOR_OTA_JOBS__ATTEMPTS` and the like: a settings variable with
/// one underscore after the prefix, which would otherwise never be read;
/// and `GATOR_OTA__JOBS__`, which names no key.
pub(crate) fn check_env_names(env: &Env) -> Result<(), E> {
    let mut vars: Vec<&String> = env.keys().collect();
    vars.sort_unstable();
    for var in vars {
        if let Some(key) = env_key(var)
            && key.split('.').any(str::is_empty)
        {
            return Err(E::invalid(
                key,
                format!("{var} names no key: it is empty between two `__` or at either end"),
                format!("name a key below {ENV_PREFIX}__, e.g. {ENV_PREFIX}__JOBS__ATTEMPTS"),
            ));
        }
    }
    let single = format!("{ENV_PREFIX}_");
    let Some(var) = env
        .keys()
        .filter(|k| k.starts_with(&single) && env_key(k).is_none() && k.contains("__"))
        .min()
    else {
        return Ok(());
    };
    let meant = format!("{ENV_PREFIX}__{}", &var[single.len()..]);
    let key = env_key(&meant).unwrap_or_default();
    Err(E::invalid(
        &key,
        format!(
            "{var} is never read: settings variables start with {ENV_PREFIX}__ (two underscores)"
        ),
        format!("rename it {meant}"),
    ))
}

/// Keys of earlier versions, with what replaced them: an upgrade that keeps
/// an old settings file is told exactly what to change.
const RETIRED: &[(&str, &str)] = &[(
    "pipeline.mqtt_buffer",
    "set pipeline.outbox_window (confirms and statuses in flight to the broker) and pipeline.inbox_warning (inbox backlog that is logged) instead; both default to 256",
)];

fn check_fields(m: &Merged, table: &str, fields: &[&str]) -> Result<(), E> {
    let unknown_key = m.keys(table).into_iter().find(|k| !fields.contains(k));
    if let Some(k) = unknown_key {
        let key = format!("{table}.{k}");
        if let Some((_, fix)) = RETIRED.iter().find(|(old, _)| *old == key) {
            let problem = format!("was split into two settings{}", m.origin(&key));
            return Err(E::invalid(key, problem, *fix));
        }
    }
    match unknown_key {
        Some(k) => Err(unknown(
            m,
            &format!("{table}.{k}"),
            &format!("is not a key of [{table}]"),
            fields,
            false,
        )),
        None => Ok(()),
    }
}

fn section_fields(section: &str) -> &'static [&'static str] {
    match section {
        "system" => fields::<System>(),
        "firmware" => fields::<Firmware>(),
        "pipeline" => fields::<Pipeline>(),
        "jobs" => fields::<Jobs>(),
        "http" => fields::<Http>(),
        "fleet" => fields::<Fleet>(),
        "rollout" => fields::<Rollout>(),
        _ => &[],
    }
}

/// The keys of one entry; `None` for a carrier of no known source, which
/// the typed pass reports.
fn entry_fields(m: &Merged, section: &str, entry: &str) -> Option<&'static [&'static str]> {
    match section {
        "messages" => Some(fields::<MessageSpec>()),
        "addresses" => Some(fields::<Address>()),
        "tasks" => Some(fields::<Task>()),
        "carriers" => match m.get(&format!("{entry}.source"))?.to_string().as_str() {
            "mqtt" => Some(fields::<MqttCarrier>()),
            "s3" => Some(fields::<S3Carrier>()),
            _ => None,
        },
        _ => None,
    }
}

fn is_table(m: &Merged, section: &str, name: &str) -> bool {
    matches!(
        m.get(&format!("{section}.{name}")).map(|v| &v.kind),
        Some(config::ValueKind::Table(_))
    )
}

/// The error for the unknown `key`, whose valid siblings are `candidates`
/// (tables, if `nesting`).
fn unknown(m: &Merged, key: &str, problem: &str, candidates: &[&str], nesting: bool) -> E {
    let (parent, name) = key.rsplit_once('.').unwrap_or(("", key));
    let env = m.env_leaf(key).map(|(_, var)| var.to_string());
    let meant = (env.is_some() && nesting)
        .then(|| one_underscore(name, candidates.iter().copied()))
        .flatten()
        .or_else(|| closest(name, candidates.iter().copied()).map(str::to_string));
    let fix = match meant {
        Some(meant) => {
            let meant = if parent.is_empty() {
                meant
            } else {
                format!("{parent}.{meant}")
            };
            format!("did you mean `{meant}`{}?", m.env_hint(key, &meant))
        }
        None => {
            let remove = env.map_or_else(|| "remove it".to_string(), |var| format!("unset {var}"));
            let valid = candidates.join(", ");
            match (parent, nesting) {
                ("", _) => format!("{remove}; the sections are {valid}"),
                (parent, true) => format!("{remove}; the {parent} are {valid}"),
                (parent, false) => format!("{remove}; [{parent}] takes {valid}"),
            }
        }
    };
    E::invalid(key, format!("{problem}{}", m.origin(key)), fix)
}

/// `jobs.attempts` for `jobs_attempts`: in a variable, one underscore where
/// the two between levels belong is an easy slip.
pub(crate) fn one_underscore<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    candidates.into_iter().find_map(|c| {
        let rest = word.strip_prefix(c)?.strip_prefix('_')?;
        (!rest.is_empty()).then(|| format!("{c}.{rest}"))
    })
}

/// The candidate `word` was probably meant to be, if one is close enough to
/// be a typo.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The field names of `T`, as its derived `Deserialize` announces them.
pub(crate) fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut found));
    found
}

/// A deserializer that only records the field list a struct asks for.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_types() {
        assert!(fields::<Jobs>().contains(&"attempts"));
        assert!(fields::<MqttCarrier>().contains(&"password_file"));
        assert!(fields::<S3Carrier>().contains(&"secret_access_key_file"));
        assert_eq!(fields::<MessageSpec>(), ["id_field", "time_field"]);
    }

    #[test]
    fn typos_are_matched_and_strangers_are_not() {
        assert_eq!(
            closest("attemps", ["concurrency", "attempts"]),
            Some("attempts")
        );
        assert_eq!(closest("job", SECTIONS.iter().copied()), Some("jobs"));
        assert_eq!(
            closest("firmwares", SECTIONS.iter().copied()),
            Some("firmware")
        );
        assert_eq!(closest("database", SECTIONS.iter().copied()), None);
    }
}
