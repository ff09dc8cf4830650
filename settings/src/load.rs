//! Stacking the layers: embedded defaults, the operator's file, environment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Value};

use crate::{
    Carrier, DEFAULT_TOML, Firmware, MqttCarrier, Pipeline, S3Carrier, Secret, Settings,
    SettingsError, System,
};

/// Environment variables with this prefix override settings:
/// `GATOR_OTA__SECTION__KEY`, `__` between every level.
pub const ENV_PREFIX: &str = "GATOR_OTA";
/// Names the settings file when `--settings` is not given.
pub const ENV_SETTINGS_FILE: &str = "GATOR_OTA_SETTINGS";

/// A snapshot of the environment, so tests need not touch the process's own.
pub type Env = HashMap<String, String>;

/// Loads and validates the settings from the process environment.
pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
    load_with_env(file, &std::env::vars().collect())
}

/// Loads and validates the settings with `env` standing in for the environment.
pub fn load_with_env(file: Option<&Path>, env: &Env) -> Result<Settings, SettingsError> {
    crate::scarecro::load_all_with_env(file, None, env).map(|loaded| loaded.settings)
}

/// Stacks the layers and validates them. A SCARECRO folder's layer goes
/// right above the defaults, which then leave out what the folder replaces.
pub(crate) fn load_layers(
    file: Option<&Path>,
    scarecro: Option<&crate::scarecro::Layer>,
    env: &Env,
) -> Result<Settings, SettingsError> {
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| env.get(ENV_SETTINGS_FILE).map(PathBuf::from));
    let defaults = scarecro.map_or_else(|| DEFAULT_TOML.to_string(), |l| l.defaults());
    let mut builder = Config::builder().add_source(File::from_str(&defaults, FileFormat::Toml));
    if let Some(layer) = scarecro {
        builder = builder.add_source(layer.clone());
    }
    if let Some(file) = &file {
        if !file.is_file() {
            return Err(SettingsError::invalid(
                "--settings",
                format!("{} is not a readable file", file.display()),
                "give the path of a TOML settings file, or leave it out to run on the defaults",
            ));
        }
        builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
    }
    let ours: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("firmware.allowed_roots")
            .with_list_parse_key("firmware.public_keys")
            .with_list_parse_key("firmware.public_key_files")
            .try_parsing(true)
            .source(Some(ours)),
    );
    let cfg = builder.build()?;

    let mut settings = Settings {
        system: get::<System>(&cfg, "system")?,
        firmware: get::<Firmware>(&cfg, "firmware")?,
        pipeline: get::<Pipeline>(&cfg, "pipeline")?,
        jobs: get(&cfg, "jobs")?,
        messages: get(&cfg, "messages")?,
        carriers: BTreeMap::new(),
        addresses: get(&cfg, "addresses")?,
        tasks: get(&cfg, "tasks")?,
    };
    let raw: BTreeMap<String, Value> = get(&cfg, "carriers")?;
    for (name, value) in raw {
        settings
            .carriers
            .insert(name.clone(), carrier(&name, value)?);
    }
    apply_secret_files_and_aws_env(&mut settings, env)?;
    settings.validate()?;
    Ok(settings)
}

fn get<T: serde::de::DeserializeOwned>(cfg: &Config, key: &str) -> Result<T, SettingsError> {
    cfg.get::<T>(key).map_err(|e| {
        SettingsError::invalid(
            key,
            e.to_string(),
            "correct the value or remove it to use the default",
        )
    })
}

/// Carriers differ by `source`, so each table is read by what it says it is.
fn carrier(name: &str, value: Value) -> Result<Carrier, SettingsError> {
    let key = format!("carriers.{name}");
    let table = value.clone().into_table().map_err(|e| {
        SettingsError::invalid(&key, e.to_string(), "make it a table with a `source` key")
    })?;
    let source = table
        .get("source")
        .map(|v| v.to_string())
        .unwrap_or_default();
    let bad = |e: config::ConfigError| {
        SettingsError::invalid(
            &key,
            e.to_string(),
            "correct the value or remove it to use the default",
        )
    };
    match source.as_str() {
        "mqtt" => Ok(Carrier::Mqtt(
            value.try_deserialize::<MqttCarrier>().map_err(bad)?,
        )),
        "s3" => Ok(Carrier::S3(
            value.try_deserialize::<S3Carrier>().map_err(bad)?,
        )),
        other => Err(SettingsError::invalid(
            format!("{key}.source"),
            format!("unknown carrier source {other:?}"),
            "use \"mqtt\" or \"s3\"",
        )),
    }
}

/// Secrets may live in files (systemd credentials) or the standard AWS
/// variables, so they need not be written into a settings file.
fn apply_secret_files_and_aws_env(settings: &mut Settings, env: &Env) -> Result<(), SettingsError> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env.get(*n).filter(|v| !v.is_empty()).cloned())
    };
    for (name, carrier) in &mut settings.carriers {
        match carrier {
            Carrier::Mqtt(m) => {
                if let Some(path) = &m.password_file {
                    m.password = read_secret(&format!("carriers.{name}.password_file"), path)?;
                }
                if let Some(path) = &m.key_password_file {
                    m.key_password =
                        read_secret(&format!("carriers.{name}.key_password_file"), path)?;
                }
            }
            Carrier::S3(s) => {
                if let Some(path) = &s.secret_access_key_file {
                    s.secret_access_key =
                        read_secret(&format!("carriers.{name}.secret_access_key_file"), path)?;
                }
                if s.access_key_id.is_empty() {
                    s.access_key_id = var(&["AWS_ACCESS_KEY_ID"]).unwrap_or_default();
                }
                if s.secret_access_key.is_empty() {
                    s.secret_access_key =
                        Secret::new(var(&["AWS_SECRET_ACCESS_KEY"]).unwrap_or_default());
                }
                if s.region.is_empty() {
                    s.region = var(&["AWS_REGION", "AWS_DEFAULT_REGION"]).unwrap_or_default();
                }
                if s.endpoint.is_empty() {
                    s.endpoint = var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]).unwrap_or_default();
                }
            }
        }
    }
    Ok(())
}

fn read_secret(key: &str, path: &Path) -> Result<Secret, SettingsError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
        .map_err(|e| {
            SettingsError::invalid(
                key,
                format!("cannot read {}: {e}", path.display()),
                "point it at a readable file holding only the secret",
            )
        })
}
