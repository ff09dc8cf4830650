//! What a Data Gator says, parsed: its MAC (from the topic it publishes on),
//! versions as it writes them, and its OTA messages.
//!
//! Everything here is a pure function of one message, so a malformed one
//! is an error value with the field it is about, never a panic.

use serde_json::Value;

use gator_ota_settings::{DATAGATOR_OTA, DATAGATOR_OTA_STATUS, DATAGATOR_TLM};

/// Longest text kept from a device (an error's detail, a status word): a
/// device cannot make the registry grow by talking more.
pub const MAX_TEXT: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error(
        "topic {topic:?} does not end in a MAC address (12 hex digits, `:` or `-` between pairs allowed)"
    )]
    NotAMac { topic: String },
    #[error("the {msg_type} message content is not a JSON object")]
    NotAnObject { msg_type: String },
    #[error("field `{field}` is missing or not a string")]
    Missing { field: &'static str },
    #[error("field `{field}` is {value:?}, not a version such as \"v1.0.1\"")]
    BadVersion { field: &'static str, value: String },
    #[error("`STATUS_MSG` is {0:?}, not \"version\", \"started\", \"finished\" or \"error\"")]
    UnknownStatus(String),
    #[error("message type {0:?} is not a Data Gator message")]
    NotADeviceMessage(String),
}

/// A station MAC, as `AA:BB:CC:DD:EE:FF` whatever way the device wrote it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(String);

impl Mac {
    /// Accepts 12 hex digits, bare or with `:` or `-` between each pair.
    pub fn parse(text: &str) -> Option<Self> {
        let bare: String = if text.len() == 17 {
            let sep = text.as_bytes()[2];
            if !matches!(sep, b':' | b'-') {
                return None;
            }
            let parts: Vec<&str> = text.split(sep as char).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        } else {
            text.to_string()
        };
        if bare.len() != 12 || !bare.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let up = bare.to_ascii_uppercase();
        let pairs: Vec<&str> = (0..6).map(|i| &up[i * 2..i * 2 + 2]).collect();
        Some(Self(pairs.join(":")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A firmware version as the Data Gator compares it: `v1.0.1` and `V1.0.1`
/// are one version. Kept as `v` and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

impl Version {
    /// `vM.m.p` (any case, the `v` optional, any number of digits per part).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let digits = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let parts: Vec<&str> = digits.split('.').collect();
        let ok = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| Self(format!("v{digits}")))
    }

    /// The version in a Data Gator image's file name, `..._vM.m.p.bin`.
    pub fn of_image(file_name: &str) -> Option<Self> {
        let stem = file_name
            .strip_suffix(".bin")
            .or_else(|| file_name.strip_suffix(".BIN"))?;
        let (_, tail) = stem.rsplit_once('_')?;
        tail.starts_with(['v', 'V']).then(|| Self::parse(tail))?
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One thing a device said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `STATUS_MSG: version`: it compared its version with the server's.
    Checked {
        server: Option<Version>,
        device: Option<Version>,
    },
    Started,
    Finished,
    Error {
        detail: String,
    },
    /// Telemetry; `FIRMWARE_VERSION` when it carried one.
    Telemetry {
        version: Option<Version>,
    },
}

/// Parses one message: the MAC from the last part of `topic`, the report
/// from `content`.
pub fn parse(msg_type: &str, topic: &str, content: &Value) -> Result<(Mac, Report), DeviceError> {
    let last = topic.rsplit('/').next().unwrap_or_default();
    let mac = Mac::parse(last).ok_or_else(|| DeviceError::NotAMac { topic: clip(topic) })?;
    let Some(fields) = content.as_object() else {
        return Err(DeviceError::NotAnObject {
            msg_type: msg_type.to_string(),
        });
    };
    let report = match msg_type {
        DATAGATOR_TLM => Report::Telemetry {
            version: optional_version(fields.get("FIRMWARE_VERSION"), "FIRMWARE_VERSION")?,
        },
        DATAGATOR_OTA_STATUS | DATAGATOR_OTA => ota_report(fields)?,
        other => return Err(DeviceError::NotADeviceMessage(clip(other))),
    };
    Ok((mac, report))
}

fn ota_report(fields: &serde_json::Map<String, Value>) -> Result<Report, DeviceError> {
    let status = fields
        .get("STATUS_MSG")
        .and_then(Value::as_str)
        .ok_or(DeviceError::Missing {
            field: "STATUS_MSG",
        })?;
    Ok(match status.to_ascii_lowercase().as_str() {
        "version" => Report::Checked {
            server: optional_version(fields.get("SERVER_FW_VERSION"), "SERVER_FW_VERSION")?,
            device: optional_version(fields.get("DEVICE_FW_VERSION"), "DEVICE_FW_VERSION")?,
        },
        "started" => Report::Started,
        "finished" => Report::Finished,
        "error" => {
            let mut rest = fields.clone();
            rest.remove("STATUS_MSG");
            let detail = if rest.is_empty() {
                "error".to_string()
            } else {
                Value::Object(rest).to_string()
            };
            Report::Error {
                detail: clip(&detail),
            }
        }
        _ => return Err(DeviceError::UnknownStatus(clip(status))),
    })
}

fn optional_version(
    v: Option<&Value>,
    field: &'static str,
) -> Result<Option<Version>, DeviceError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            Version::parse(s)
                .map(Some)
                .ok_or_else(|| DeviceError::BadVersion {
                    field,
                    value: clip(s),
                })
        }
        Some(other) => Err(DeviceError::BadVersion {
            field,
            value: clip(&other.to_string()),
        }),
    }
}

/// At most [`MAX_TEXT`] bytes of `s`, cut at a character boundary.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn macs_are_normalised_and_strangers_refused() {
        for ok in ["24:6f:28:aa:bb:cc", "24-6F-28-AA-BB-CC", "246F28AABBCC"] {
            assert_eq!(
                Mac::parse(ok).unwrap().as_str(),
                "24:6F:28:AA:BB:CC",
                "{ok}"
            );
        }
        for bad in [
            "",
            "24:6F:28:AA:BB",
            "24:6F:28:AA:BB:CG",
            "246F28AABBCCDD",
            "24:6F-28:AA:BB:CC",
            "+",
            "../x",
            "24:6F:28:AA:BB:CÇ",
        ] {
            assert!(Mac::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn versions_compare_as_the_device_reports_them() {
        assert_eq!(Version::parse("v1.0.1"), Version::parse("V1.0.1"));
        assert_eq!(Version::parse("1.0.1"), Version::parse("V1.0.1"));
        assert_ne!(Version::parse("v1.0.1"), Version::parse("v1.0.2"));
        for bad in ["", "v1.0", "v1.0.1.2", "vx.0.1", "v1..1", "v123456.0.0"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
        let v = Version::of_image("datagator_v1.0.1.bin").unwrap();
        assert_eq!(v.as_str(), "v1.0.1");
        assert_eq!(
            Version::of_image("DataGator_V2.3.4.bin").unwrap().as_str(),
            "v2.3.4"
        );
        assert!(Version::of_image("datagator.bin").is_none());
        assert!(Version::of_image("datagator_v1.0.1.bin.sig").is_none());
        assert!(Version::of_image("fw_x1.0.1.bin").is_none());
    }

    #[test]
    fn ota_messages_parse() {
        let topic = "datagator/ota_status/24:6F:28:AA:BB:CC";
        let msg = json!({"STATUS_MSG":"version","SERVER_FW_VERSION":"v1.0.1","DEVICE_FW_VERSION":"v1.0.0"});
        let (mac, r) = parse(DATAGATOR_OTA_STATUS, topic, &msg).unwrap();
        assert_eq!(mac.as_str(), "24:6F:28:AA:BB:CC");
        assert_eq!(
            r,
            Report::Checked {
                server: Version::parse("v1.0.1"),
                device: Version::parse("v1.0.0")
            }
        );
        let (_, r) = parse(
            DATAGATOR_OTA_STATUS,
            topic,
            &json!({"STATUS_MSG":"started"}),
        )
        .unwrap();
        assert_eq!(r, Report::Started);
        let (_, r) = parse(
            DATAGATOR_OTA,
            "datagator/ota/246F28AABBCC",
            &json!({"STATUS_MSG":"error","CODE":-104}),
        )
        .unwrap();
        assert_eq!(
            r,
            Report::Error {
                detail: "{\"CODE\":-104}".into()
            }
        );
        let (_, r) = parse(
            DATAGATOR_TLM,
            "datagator/tlm/246F28AABBCC",
            &json!({"FIRMWARE_VERSION":"V1.0.1","BAT":3.9}),
        )
        .unwrap();
        assert_eq!(
            r,
            Report::Telemetry {
                version: Version::parse("v1.0.1")
            }
        );
    }

    #[test]
    fn malformed_messages_name_what_is_wrong() {
        let topic = "datagator/ota_status/246F28AABBCC";
        assert!(matches!(
            parse(
                DATAGATOR_OTA_STATUS,
                "datagator/ota_status/not-a-mac",
                &json!({})
            ),
            Err(DeviceError::NotAMac { .. })
        ));
        assert!(matches!(
            parse(DATAGATOR_OTA_STATUS, topic, &json!([1, 2])),
            Err(DeviceError::NotAnObject { .. })
        ));
        assert_eq!(
            parse(DATAGATOR_OTA_STATUS, topic, &json!({"STATUS": "x"})).unwrap_err(),
            DeviceError::Missing {
                field: "STATUS_MSG"
            }
        );
        assert!(matches!(
            parse(
                DATAGATOR_OTA_STATUS,
                topic,
                &json!({"STATUS_MSG": "dancing"})
            ),
            Err(DeviceError::UnknownStatus(_))
        ));
        assert!(matches!(
            parse(DATAGATOR_TLM, topic, &json!({"FIRMWARE_VERSION": 7})),
            Err(DeviceError::BadVersion {
                field: "FIRMWARE_VERSION",
                ..
            })
        ));
        let huge = "x".repeat(100_000);
        let e = parse(DATAGATOR_OTA_STATUS, topic, &json!({"STATUS_MSG": huge})).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        let (_, r) = parse(
            DATAGATOR_OTA,
            topic,
            &json!({"STATUS_MSG":"error","DETAIL":huge}),
        )
        .unwrap();
        let Report::Error { detail } = r else {
            panic!()
        };
        assert!(detail.len() <= MAX_TEXT + 3);
    }
}
