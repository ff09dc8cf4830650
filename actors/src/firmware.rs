//! The `firmware_image` message: what it must hold, and the job it becomes.
//!
//! Field rules and defaults follow SCARECRO's `s3.py`
//! (`handle_new_firmware_message`): `disk_path` defaults to
//! `<root>/firmware_images/<file_name>.bin`, `config_path` to
//! `<root>/latest_firmware.json`, `confirm_receipt` to true. Unknown fields are
//! ignored so a newer cloud can add some.

use serde_json::{Map, Value};

use crate::paths::{ConfinedPath, Confinement, PathError, check_file_name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("the content is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{field}` must be {expected}, not {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "cloud_path {0:?} is not a usable object key (`..`, empty segment or control character)"
    )]
    BadCloudPath(String),
    #[error("cloud_path {path:?} is outside the carrier's prefix {prefix:?}")]
    OutsidePrefix { path: String, prefix: String },
    #[error("field `{field}` must be {digits} hexadecimal digits")]
    BadChecksum { field: &'static str, digits: usize },
    #[error(
        "config_path {0:?} is the same file as disk_path; a path is an image or a pointer, never both"
    )]
    SameFile(String),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Where the defaults for absent fields come from.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub images_dir: String,
    pub pointer_file: String,
    /// Bucket key prefix; `cloud_path` must start with it when set.
    pub prefix: String,
}

/// One accepted firmware_image, with every path already confined.
#[derive(Debug, Clone)]
pub struct FirmwareJob {
    pub msg_id: String,
    pub file_name: String,
    pub cloud_path: String,
    pub disk_path: ConfinedPath,
    pub config_path: ConfinedPath,
    pub confirm_receipt: bool,
    /// What the publisher says the image is; checked before install.
    pub expect: Expected,
    /// A detached Ed25519 signature (base64), when the message carries one.
    pub signature: Option<String>,
}

/// Integrity claims a message may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub size: Option<u64>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    /// Lowercase hex.
    pub md5: Option<String>,
}

impl FirmwareJob {
    pub fn from_content(
        msg_id: &str,
        content: &Value,
        confinement: &Confinement,
        defaults: &Defaults,
    ) -> Result<Self, InvalidMessage> {
        let obj = content.as_object().ok_or(InvalidMessage::NotAnObject)?;
        let file_name = string(obj, "file_name")?.ok_or(InvalidMessage::Missing("file_name"))?;
        check_file_name(&file_name)?;
        let cloud_path = string(obj, "cloud_path")?.ok_or(InvalidMessage::Missing("cloud_path"))?;
        check_cloud_path(&cloud_path, &defaults.prefix)?;
        let disk_path = match string(obj, "disk_path")? {
            Some(p) => confinement.resolve("disk_path", &p)?,
            None => confinement.resolve(
                "disk_path",
                &format!(
                    "{}/{file_name}.bin",
                    defaults.images_dir.trim_end_matches('/')
                ),
            )?,
        };
        let config_path = match string(obj, "config_path")? {
            Some(p) => confinement.resolve("config_path", &p)?,
            None => confinement.resolve("config_path", &defaults.pointer_file)?,
        };
        if disk_path == config_path {
            return Err(InvalidMessage::SameFile(
                config_path.full().display().to_string(),
            ));
        }
        let confirm_receipt = match obj.get("confirm_receipt") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(InvalidMessage::WrongType {
                    field: "confirm_receipt",
                    expected: "true or false",
                    found: kind(other),
                });
            }
        };
        let size = match obj.get("size") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                return Err(InvalidMessage::WrongType {
                    field: "size",
                    expected: "a whole number of bytes",
                    found: kind(other),
                });
            }
        };
        let expect = Expected {
            size,
            sha256: hex_field(obj, "sha256", 64)?,
            md5: hex_field(obj, "md5", 32)?,
        };
        Ok(Self {
            msg_id: msg_id.to_string(),
            file_name,
            cloud_path,
            disk_path,
            config_path,
            confirm_receipt,
            expect,
            signature: string(obj, "signature")?.filter(|s| s.len() <= 256),
        })
    }
}

/// A string field; absent and `null` are both "not given".
fn string(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, InvalidMessage> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(InvalidMessage::WrongType {
            field,
            expected: "a string",
            found: kind(other),
        }),
    }
}

fn hex_field(
    obj: &Map<String, Value>,
    field: &'static str,
    digits: usize,
) -> Result<Option<String>, InvalidMessage> {
    let Some(value) = string(obj, field)? else {
        return Ok(None);
    };
    if value.len() != digits || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InvalidMessage::BadChecksum { field, digits });
    }
    Ok(Some(value.to_ascii_lowercase()))
}

fn check_cloud_path(path: &str, prefix: &str) -> Result<(), InvalidMessage> {
    let bad = || InvalidMessage::BadCloudPath(path.to_string());
    // Control characters (NUL among them) are refused as the fetcher's
    // `object_store::path::Path::parse` refuses them: a key it cannot use
    // must not be queued and journalled first.
    if path.is_empty() || path.len() > 1024 || path.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad());
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad());
    }
    if !prefix.is_empty() {
        let prefix = prefix.trim_end_matches('/');
        let inside = path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
        if !inside {
            return Err(InvalidMessage::OutsidePrefix {
                path: path.to_string(),
                prefix: prefix.to_string(),
            });
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup() -> (tempfile::TempDir, Confinement, Defaults) {
        let dir = tempfile::tempdir().unwrap();
        let c = Confinement::new(&[dir.path().to_path_buf()]).unwrap();
        let d = Defaults {
            images_dir: "firmware_images".into(),
            pointer_file: "latest_firmware.json".into(),
            prefix: String::new(),
        };
        (dir, c, d)
    }

    #[test]
    fn defaults_follow_s3_py() {
        let (_dir, c, d) = setup();
        let job = FirmwareJob::from_content(
            "m1",
            &json!({"id": "cloud", "file_name": "gator_1.2.3", "cloud_path": "fw/gator_1.2.3.bin"}),
            &c,
            &d,
        )
        .unwrap();
        assert_eq!(
            job.disk_path.full(),
            c.home().join("firmware_images/gator_1.2.3.bin")
        );
        assert_eq!(
            job.config_path.full(),
            c.home().join("latest_firmware.json")
        );
        assert!(job.confirm_receipt);
    }

    #[test]
    fn bad_content_is_named() {
        let (_dir, c, mut d) = setup();
        let cases = [
            (json!([1]), InvalidMessage::NotAnObject),
            (
                json!({"cloud_path": "a"}),
                InvalidMessage::Missing("file_name"),
            ),
            (
                json!({"file_name": "a"}),
                InvalidMessage::Missing("cloud_path"),
            ),
            (
                json!({"file_name": 5, "cloud_path": "a"}),
                InvalidMessage::WrongType {
                    field: "file_name",
                    expected: "a string",
                    found: "a number",
                },
            ),
            (
                json!({"file_name": "a", "cloud_path": "a", "confirm_receipt": "yes"}),
                InvalidMessage::WrongType {
                    field: "confirm_receipt",
                    expected: "true or false",
                    found: "a string",
                },
            ),
            (
                json!({"file_name": "a", "cloud_path": "x/../y"}),
                InvalidMessage::BadCloudPath("x/../y".into()),
            ),
            (
                json!({"file_name": "a", "cloud_path": "a", "disk_path": "x/p.json", "config_path": "x/p.json"}),
                InvalidMessage::SameFile(c.home().join("x/p.json").display().to_string()),
            ),
        ];
        for (content, want) in cases {
            assert_eq!(
                FirmwareJob::from_content("m", &content, &c, &d).unwrap_err(),
                want,
                "{content}"
            );
        }
        let err = FirmwareJob::from_content(
            "m",
            &json!({"file_name": "a", "cloud_path": "a", "disk_path": "/etc/x"}),
            &c,
            &d,
        )
        .unwrap_err();
        assert!(
            matches!(err, InvalidMessage::Path(PathError::OutsideRoots { .. })),
            "{err}"
        );
        d.prefix = "firmware/".into();
        let err = FirmwareJob::from_content(
            "m",
            &json!({"file_name": "a", "cloud_path": "other/a"}),
            &c,
            &d,
        )
        .unwrap_err();
        assert!(matches!(err, InvalidMessage::OutsidePrefix { .. }), "{err}");
        assert!(
            FirmwareJob::from_content(
                "m",
                &json!({"file_name": "a", "cloud_path": "firmware/a"}),
                &c,
                &d
            )
            .is_ok()
        );
    }

    /// Regression: a key with a control character passed the check, was
    /// journalled and queued, and only the worker's `ObjectPath::parse`
    /// refused it.
    #[test]
    fn keys_the_fetcher_cannot_parse_are_refused() {
        let (_dir, c, d) = setup();
        for key in [
            "fw/a\nb",
            "fw/a\0",
            "fw/\x7f",
            "fw/\tx",
            "\r/a",
            "fw/\x1b[2J",
        ] {
            assert!(object_store::path::Path::parse(key).is_err(), "{key:?}");
            assert_eq!(
                FirmwareJob::from_content(
                    "m",
                    &json!({"file_name": "a", "cloud_path": key}),
                    &c,
                    &d
                )
                .unwrap_err(),
                InvalidMessage::BadCloudPath(key.into()),
                "{key:?}"
            );
        }
        // Other unicode is a valid key and stays accepted.
        let key = "fw/\u{e9}t\u{e9}/\u{1F600}.bin";
        assert!(object_store::path::Path::parse(key).is_ok());
        assert!(
            FirmwareJob::from_content("m", &json!({"file_name": "a", "cloud_path": key}), &c, &d)
                .is_ok()
        );
    }
}
