//! Running from a SCARECRO gateway's own `configs/` folder.
//!
//! An operator replacing SCARECRO's Python OTA carrier points gator-ota at
//! the folder the gateway already has (`--scarecro-configs DIR` or
//! `system.scarecro_configs`). [`folder`] reads it by SCARECRO's rules,
//! [`mapping`] turns the part gator-ota implements into settings and lists
//! the rest as skipped, and the result becomes a settings layer right above
//! the embedded defaults, so the operator's TOML file and the environment
//! still override it (secrets, endpoints, timeouts).
//!
//! With a folder, the default carriers, addresses and tasks are left out:
//! the folder names its own, and a default `mqtt` carrier next to the
//! folder's would be a second broker connection nobody asked for.

mod folder;
mod mapping;
mod report;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use report::is_secret;
pub use report::{Report, Skipped, Used};

use crate::load::{ENV_SETTINGS_FILE, Env, load_layers};
use crate::{DEFAULT_TOML, Settings, SettingsError};

#[derive(Debug, thiserror::Error)]
pub enum ScarecroError {
    #[error("SCARECRO folder {dir}: {problem}. Fix: {fix}")]
    Folder {
        dir: String,
        problem: String,
        fix: String,
    },
    #[error("SCARECRO config {file}: {problem}. Fix: {fix}")]
    File {
        file: String,
        problem: String,
        fix: String,
    },
    #[error("SCARECRO config {file}, key `{key}`: {problem}. Fix: {fix}")]
    Key {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },
}

/// One entry of SCARECRO's MQTT topic → address table (see
/// `MqttCarrier::scarecro_topics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRoute {
    pub address: String,
    pub topic: String,
}

/// Settings, and what a SCARECRO folder contributed to them, if one was used.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub scarecro: Option<Report>,
}

/// Names the SCARECRO folder when neither the command line nor a settings
/// file does.
pub const ENV_SCARECRO_CONFIGS: &str = "GATOR_OTA__SYSTEM__SCARECRO_CONFIGS";

/// Loads and validates the settings from the process environment, with the
/// SCARECRO folder `scarecro_configs` (or the one the settings name).
pub fn load_all(
    file: Option<&Path>,
    scarecro_configs: Option<&Path>,
) -> Result<Loaded, SettingsError> {
    load_all_with_env(file, scarecro_configs, &std::env::vars().collect())
}

/// [`load_all`] with `env` standing in for the environment.
pub fn load_all_with_env(
    file: Option<&Path>,
    scarecro_configs: Option<&Path>,
    env: &Env,
) -> Result<Loaded, SettingsError> {
    let dir = match scarecro_configs {
        Some(d) => Some(d.to_path_buf()),
        None => configured_dir(file, env),
    };
    let Some(dir) = dir else {
        return Ok(Loaded {
            settings: load_layers(file, None, env)?,
            scarecro: None,
        });
    };
    let mut folder = folder::Folder::open(&dir)?;
    let mapped = mapping::map(&mut folder, &templates())?;
    let layer = Layer {
        tree: mapped.tree,
        origin: dir.display().to_string(),
        working_dir: working_dir(folder.dir()),
    };
    let mut settings = load_layers(file, Some(&layer), env)?;
    // The command line wins over a folder the settings file names; show the one used.
    settings.system.scarecro_configs = folder.dir().to_path_buf();
    let mut report = mapped.report;
    if settings.firmware.allowed_roots == [layer.working_dir.clone()] {
        report.notes.push(format!(
            "relative disk_path and config_path values resolve against {}, SCARECRO's working folder, as in SCARECRO, \
             and gator-ota keeps its state in {}; set firmware.allowed_roots or system.data_dir to write elsewhere",
            layer.working_dir.display(),
            settings.system.data_dir.display()
        ));
    }
    Ok(Loaded {
        settings,
        scarecro: Some(report),
    })
}

/// The folder SCARECRO runs in: the one that holds `configs/`. SCARECRO
/// opens a message's relative `disk_path` and `config_path` from there.
fn working_dir(configs: &Path) -> PathBuf {
    let configs = std::path::absolute(configs).unwrap_or_else(|_| configs.to_path_buf());
    configs.parent().map_or(configs.clone(), Path::to_path_buf)
}

/// `system.scarecro_configs` from the environment or the settings file. It
/// is looked up before the layers are stacked because it decides one of them.
fn configured_dir(file: Option<&Path>, env: &Env) -> Option<PathBuf> {
    if let Some(dir) = env.get(ENV_SCARECRO_CONFIGS).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| env.get(ENV_SETTINGS_FILE).map(PathBuf::from))?;
    let text = std::fs::read_to_string(file).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    match table.get("system")?.get("scarecro_configs")? {
        toml::Value::String(s) if !s.is_empty() => Some(PathBuf::from(s)),
        _ => None,
    }
}

/// Tables in the embedded defaults that a SCARECRO folder replaces.
const REPLACED: &[&str] = &["carriers", "addresses", "tasks"];

/// The embedded defaults parsed, for the carrier templates and the pruned
/// default layer.
fn default_table() -> toml::Table {
    toml::from_str(DEFAULT_TOML).expect("the embedded defaults are valid TOML")
}

fn templates() -> mapping::Templates {
    let defaults = default_table();
    let template = |source: &str| -> serde_json::Map<String, Value> {
        defaults
            .get("carriers")
            .and_then(|c| c.as_table())
            .and_then(|c| {
                c.values()
                    .filter_map(|v| v.as_table())
                    .find(|t| t.get("source").and_then(|s| s.as_str()) == Some(source))
            })
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    };
    mapping::Templates {
        mqtt: template("mqtt"),
        s3: template("s3"),
    }
}

/// A SCARECRO folder as a settings layer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    tree: serde_json::Map<String, Value>,
    origin: String,
    working_dir: PathBuf,
}

impl Layer {
    /// Where relative message paths go unless the settings name
    /// `system.data_dir` or `firmware.allowed_roots`.
    pub(crate) fn working_dir(&self) -> &Path {
        &self.working_dir
    }

    /// How values from this layer name their origin.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// The embedded defaults without the tables the folder replaces.
    pub(crate) fn defaults(&self) -> String {
        let mut table = default_table();
        for key in REPLACED {
            table.remove(*key);
        }
        toml::to_string(&table).expect("the embedded defaults serialise")
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self
            .tree
            .iter()
            .map(|(k, v)| (k.clone(), to_config(v, &self.origin)))
            .collect())
    }
}

fn to_config(v: &Value, origin: &String) -> config::Value {
    use config::ValueKind as K;
    let kind = match v {
        Value::Null => K::Nil,
        Value::Bool(b) => K::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => K::I64(i),
            (None, Some(u)) => K::U64(u),
            _ => K::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => K::String(s.clone()),
        Value::Array(items) => K::Array(items.iter().map(|i| to_config(i, origin)).collect()),
        Value::Object(map) => K::Table(
            map.iter()
                .map(|(k, v)| (k.clone(), to_config(v, origin)))
                .collect(),
        ),
    };
    config::Value::new(Some(origin), kind)
}

#[cfg(test)]
mod tests;
