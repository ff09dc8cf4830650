//! What a SCARECRO folder contributed, for `check-config` and the start-up log.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

/// A config gator-ota took over, and where it went in the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// `<kind>/<name>.json`, relative to the folder.
    pub file: String,
    /// The settings key it became, e.g. `carriers.cloud_mqtt`.
    pub setting: String,
    /// What it does there, in one line.
    pub what: String,
}

/// A config gator-ota leaves to SCARECRO, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    /// The config's SCARECRO name (an expanded address has its own).
    pub name: String,
    pub reason: String,
}

/// The outcome of reading a SCARECRO folder.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The `configs/` folder that was read.
    pub dir: PathBuf,
    pub system_id: String,
    pub used: Vec<Used>,
    pub skipped: Vec<Skipped>,
    /// Keys gator-ota ignores and differences worth knowing about.
    pub notes: Vec<String>,
    /// The used configs after inheritance and substitution, secrets redacted.
    pub resolved: Vec<(String, Value)>,
}

/// Keys whose values are credentials: their values never leave the report.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "api_key",
        "private_key",
        "credential",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// A copy of `value` with every credential replaced by `<redacted>`.
pub(super) fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret(k) && !v.is_null() && v != "" {
                        Value::String("<redacted>".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

impl fmt::Display for Report {
    /// TOML comment lines, so the output of `check-config` stays valid TOML.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# SCARECRO configuration folder {} (system id {:?})",
            self.dir.display(),
            self.system_id
        )?;
        writeln!(f, "#\n# used:")?;
        for u in &self.used {
            writeln!(f, "#   {} -> {}: {}", u.file, u.setting, u.what)?;
        }
        writeln!(f, "#\n# skipped (gator-ota does not implement them):")?;
        if self.skipped.is_empty() {
            writeln!(f, "#   nothing")?;
        }
        for s in &self.skipped {
            writeln!(f, "#   {} ({}): {}", s.file, s.name, s.reason)?;
        }
        if !self.notes.is_empty() {
            writeln!(f, "#\n# notes:")?;
            for n in &self.notes {
                writeln!(f, "#   {n}")?;
            }
        }
        writeln!(
            f,
            "#\n# the used configs after inheritance and substitution, secrets redacted:"
        )?;
        for (label, value) in &self.resolved {
            writeln!(f, "#   {label}:")?;
            let text = serde_json::to_string_pretty(value).unwrap_or_default();
            for line in text.lines() {
                writeln!(f, "#     {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_redacted_at_any_depth() {
        let v = json!({
            "mqtt_password": "hunter2",
            "secret_access_key": "shh",
            "nested": {"db_password": "pw", "list": [{"api_key": "k"}]},
            "mqtt_username": "gw",
            "empty_password": "",
        });
        let r = redact(&v);
        let text = r.to_string();
        for secret in ["hunter2", "shh", "\"pw\"", "\"k\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(r["mqtt_username"], "gw");
        assert_eq!(
            r["empty_password"], "",
            "an unset secret stays visibly unset"
        );
    }
}
