//! AWS's standard variables for the S3 carrier, read the way the AWS CLI and
//! SDKs read them: over a configuration file, under anything more specific.
//!
//! They form a layer of their own between the settings file and the
//! `GATOR_OTA__` variables, so `check-config` shows what they set and an error
//! names the variable a bad value came from. They apply to every S3 carrier
//! (a `file://` bucket has no use for them, and ignores them).

use config::{Map, Value, ValueKind};

use crate::SettingsError;
use crate::load::Env;

/// How a value from one of these variables is marked in the merged tree:
/// this prefix, then the variable's name.
pub(crate) const ORIGIN: &str = "the AWS variable ";

/// Each carrier key with the variables that set it, the preferred first (the
/// AWS CLI's order: `AWS_REGION` over `AWS_DEFAULT_REGION`, the S3-specific
/// endpoint over the general one, object_store's `AWS_ENDPOINT` last).
pub(crate) const VARS: &[(&str, &[&str])] = &[
    ("region", &["AWS_REGION", "AWS_DEFAULT_REGION"]),
    (
        "endpoint",
        &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"],
    ),
    ("access_key_id", &["AWS_ACCESS_KEY_ID"]),
    ("secret_access_key", &["AWS_SECRET_ACCESS_KEY"]),
    ("session_token", &["AWS_SESSION_TOKEN"]),
    ("allow_http", &["AWS_ALLOW_HTTP"]),
];

/// The layer: `carriers.<name>.<key>` for each S3 carrier and each variable set.
#[derive(Debug, Clone)]
pub(crate) struct AwsLayer {
    carriers: Map<String, Value>,
}

impl AwsLayer {
    /// The values `env` gives the carriers named in `s3_carriers`. An empty
    /// variable counts as unset, as it does for the AWS CLI.
    pub(crate) fn new(s3_carriers: &[String], env: &Env) -> Result<Self, SettingsError> {
        let mut set = Map::new();
        for (key, vars) in VARS {
            let Some((var, raw)) = vars
                .iter()
                .find_map(|v| env.get(*v).filter(|s| !s.is_empty()).map(|s| (*v, s)))
            else {
                continue;
            };
            let origin = format!("{ORIGIN}{var}");
            let kind = if *key == "allow_http" {
                ValueKind::Boolean(truthy(raw).ok_or_else(|| bad_bool(s3_carriers, var, raw))?)
            } else {
                ValueKind::String(raw.clone())
            };
            set.insert((*key).to_string(), Value::new(Some(&origin), kind));
        }
        let carriers = s3_carriers
            .iter()
            .filter(|_| !set.is_empty())
            .map(|name| {
                let table = Value::new(None, ValueKind::Table(set.clone()));
                (name.clone(), table)
            })
            .collect();
        Ok(Self { carriers })
    }
}

/// object_store's words for yes (`true`, `1`, `yes`, `y`, `on`) and their
/// opposites; anything else is refused, where object_store would take it for no.
fn truthy(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

fn bad_bool(s3_carriers: &[String], var: &str, raw: &str) -> SettingsError {
    let key = s3_carriers.first().map_or_else(
        || "carriers.<s3>.allow_http".to_string(),
        |name| format!("carriers.{name}.allow_http"),
    );
    SettingsError::invalid(
        key,
        format!("{var}={raw:?} is neither true nor false"),
        format!("set {var}=true for a plain-HTTP test store, or unset it"),
    )
}

impl config::Source for AwsLayer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        if self.carriers.is_empty() {
            return Ok(Map::new());
        }
        let carriers = Value::new(None, ValueKind::Table(self.carriers.clone()));
        Ok(Map::from([("carriers".to_string(), carriers)]))
    }
}

/// The S3 carriers in the tree `config` built: the ones the layer applies to.
pub(crate) fn s3_carriers(cfg: &config::Config) -> Vec<String> {
    let Ok(carriers) = cfg.get_table("carriers") else {
        return Vec::new();
    };
    carriers
        .into_iter()
        .filter(|(_, v)| {
            let Ok(t) = v.clone().into_table() else {
                return false;
            };
            t.get("source")
                .and_then(|v| v.clone().into_string().ok())
                .as_deref()
                == Some("s3")
        })
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{Carrier, Env, S3Carrier, Settings, SettingsError, load_with_env};

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn s3(s: &Settings) -> &S3Carrier {
        match &s.carriers["s3_firmware_ota"] {
            Carrier::S3(c) => c,
            Carrier::Mqtt(_) => panic!("s3_firmware_ota is not an S3 carrier"),
        }
    }

    /// A settings file setting every key the AWS variables also set.
    fn file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.toml");
        std::fs::write(
            &path,
            "[carriers.s3_firmware_ota]\nbucket = \"s3://fw\"\nregion = \"file-region\"\n\
             endpoint = \"https://file.example\"\naccess_key_id = \"FILEKEY\"\n\
             secret_access_key = \"file-secret\"\n",
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn aws_variables_override_the_file_and_ours_override_them() {
        let (_dir, path) = file();
        let s = load_with_env(Some(&path), &env(&[])).unwrap();
        assert_eq!(s3(&s).region, "file-region");

        let s = load_with_env(
            Some(&path),
            &env(&[
                ("AWS_REGION", "aws-region"),
                ("AWS_DEFAULT_REGION", "default-region"),
                ("AWS_ENDPOINT_URL", "https://aws.example"),
                ("AWS_ACCESS_KEY_ID", "AWSKEY"),
                ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
                ("AWS_SESSION_TOKEN", "aws-token"),
                (
                    "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
                    "https://ours.example",
                ),
            ]),
        )
        .unwrap();
        let c = s3(&s);
        assert_eq!(c.region, "aws-region");
        assert_eq!(c.endpoint, "https://ours.example");
        assert_eq!(c.access_key_id, "AWSKEY");
        assert_eq!(c.secret_access_key.expose(), "aws-secret");
        assert_eq!(c.session_token.expose(), "aws-token");
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("aws-token") && !printed.contains("aws-secret"));
    }

    #[test]
    fn the_preferred_variable_wins_and_an_empty_one_is_unset() {
        let (_dir, path) = file();
        let region = |vars: &[(&str, &str)]| {
            s3(&load_with_env(Some(&path), &env(vars)).unwrap())
                .region
                .clone()
        };
        assert_eq!(region(&[("AWS_DEFAULT_REGION", "d")]), "d");
        assert_eq!(
            region(&[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "d")]),
            "d"
        );
        assert_eq!(
            region(&[("AWS_REGION", "r"), ("AWS_DEFAULT_REGION", "d")]),
            "r"
        );
        let endpoint = |vars: &[(&str, &str)]| {
            s3(&load_with_env(Some(&path), &env(vars)).unwrap())
                .endpoint
                .clone()
        };
        assert_eq!(
            endpoint(&[
                ("AWS_ENDPOINT", "https://c.example"),
                ("AWS_ENDPOINT_URL", "https://b.example"),
                ("AWS_ENDPOINT_URL_S3", "https://a.example"),
            ]),
            "https://a.example"
        );
        assert_eq!(
            endpoint(&[("AWS_ENDPOINT", "https://c.example")]),
            "https://c.example"
        );
    }

    #[test]
    fn aws_allow_http_permits_a_plain_http_endpoint() {
        let (_dir, path) = file();
        let http = ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000");
        let s = load_with_env(Some(&path), &env(&[http, ("AWS_ALLOW_HTTP", "true")])).unwrap();
        assert!(s3(&s).allow_http);
        let s = load_with_env(Some(&path), &env(&[http, ("AWS_ALLOW_HTTP", "1")])).unwrap();
        assert!(s3(&s).allow_http);

        let text = |vars: &[(&str, &str)]| match load_with_env(Some(&path), &env(vars)) {
            Err(e @ SettingsError::Invalid { .. }) => e.to_string(),
            other => panic!("{vars:?}: expected a settings error, got {other:?}"),
        };
        let refused = text(&[http]);
        assert!(
            refused.contains("carriers.s3_firmware_ota.endpoint")
                && refused.contains("set by AWS_ENDPOINT_URL"),
            "{refused}"
        );
        let refused = text(&[http, ("AWS_ALLOW_HTTP", "maybe")]);
        assert!(
            refused.contains("carriers.s3_firmware_ota.allow_http")
                && refused.contains("AWS_ALLOW_HTTP=\"maybe\""),
            "{refused}"
        );
        // Ours wins over AWS's, both ways.
        let refused = text(&[
            http,
            ("AWS_ALLOW_HTTP", "true"),
            ("GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ALLOW_HTTP", "false"),
        ]);
        assert!(refused.contains("plain HTTP"), "{refused}");
    }
}
