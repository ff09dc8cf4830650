//! Stacking the layers: embedded defaults, the operator's file, environment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat, Value};
use serde::de::IgnoredAny;

use crate::keys::check_env_names;
use crate::merged::Merged;
use crate::{Carrier, DEFAULT_TOML, Firmware, Pipeline, Secret, Settings, SettingsError, System};

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
    check_env_names(env)?;
    // Any layer, the environment too, may make a carrier an S3 one; the AWS
    // layer for those then goes between the file and the environment.
    let s3 = crate::aws_env::s3_carriers(&builder.clone().add_source(ours(env)).build()?);
    let cfg = builder
        .add_source(crate::aws_env::AwsLayer::new(&s3, env)?)
        .add_source(ours(env))
        .build()?;
    let merged = Merged::new(
        config::Source::collect(&cfg)?,
        env,
        file.as_deref(),
        scarecro.map(crate::scarecro::Layer::origin),
    );
    crate::keys::check(&merged)?;

    let mut settings = Settings {
        system: merged.section::<System>("system")?,
        firmware: merged.section::<Firmware>("firmware")?,
        pipeline: merged.section::<Pipeline>("pipeline")?,
        jobs: merged.section("jobs")?,
        http: merged.section("http")?,
        fleet: merged.section("fleet")?,
        rollout: merged.section("rollout")?,
        messages: merged.section("messages")?,
        carriers: BTreeMap::new(),
        addresses: merged.section("addresses")?,
        tasks: merged.section("tasks")?,
    };
    let names: BTreeMap<String, IgnoredAny> = merged.section("carriers")?;
    for name in names.keys() {
        settings
            .carriers
            .insert(name.clone(), carrier(&merged, name)?);
    }
    if let Some(layer) = scarecro
        && !merged.set_above_defaults("system.data_dir")
        && !merged.set_above_defaults("firmware.allowed_roots")
    {
        in_scarecro_working_dir(&mut settings, layer.working_dir());
    }
    apply_secret_files(&mut settings)
        .and_then(|()| settings.validate())
        .map_err(|e| merged.locate(e))?;
    Ok(settings)
}

/// A drop-in for SCARECRO's s3.py writes where it wrote: a message's
/// relative `disk_path` and `config_path` open from SCARECRO's working
/// folder, so the web server that already serves that folder keeps seeing
/// new images. The state folder goes there too, unless given as absolute.
fn in_scarecro_working_dir(settings: &mut Settings, working_dir: &Path) {
    settings.firmware.allowed_roots = vec![working_dir.to_path_buf()];
    if settings.system.data_dir.is_relative() {
        settings.system.data_dir = working_dir.join(&settings.system.data_dir);
    }
}

/// The `GATOR_OTA__` variables, the top layer.
fn ours(env: &Env) -> Environment {
    let ours: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .list_separator(",")
        .with_list_parse_key("firmware.allowed_roots")
        .with_list_parse_key("firmware.public_keys")
        .with_list_parse_key("firmware.public_key_files")
        .with_list_parse_key("http.listen")
        .try_parsing(true)
        .source(Some(ours))
}

/// Carriers differ by `source`, so each table is read by what it says it is.
fn carrier(m: &Merged, name: &str) -> Result<Carrier, SettingsError> {
    let key = format!("carriers.{name}");
    let source_key = format!("{key}.source");
    match m.get(&source_key).map(Value::to_string).as_deref() {
        Some("mqtt") => m.section(&key).map(Carrier::Mqtt),
        Some("s3") => m.section(&key).map(Carrier::S3),
        Some(_) => Err(m.bad_value(&source_key, Some("\"mqtt\" or \"s3\""), None)),
        None => Err(m.misnamed_entry(&key, "source").unwrap_or_else(|| {
            SettingsError::invalid(
                &source_key,
                format!("is missing from [{key}]{}", m.origin(&key)),
                "add source = \"mqtt\" or source = \"s3\"",
            )
        })),
    }
}

/// Secrets may live in files (systemd credentials), so they need not be
/// written into a settings file; a file named replaces the secret from any layer.
fn apply_secret_files(settings: &mut Settings) -> Result<(), SettingsError> {
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
