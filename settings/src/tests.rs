//! Refused settings: a typo in a file or a variable, a value of the wrong
//! type, a value that cannot work. Each error names the full key, the value
//! as given, where it was set and the fix.

use std::path::{Path, PathBuf};

use crate::{Env, SettingsError, load_with_env};

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A settings file holding `toml`, in a folder that lives as long as it.
struct SettingsFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn settings_file(toml: &str) -> SettingsFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gator-ota.toml");
    std::fs::write(&path, toml).unwrap();
    SettingsFile { _dir: dir, path }
}

/// The key and the whole message of the error loading `file` and `vars`.
pub(crate) fn refused(file: Option<&Path>, vars: &[(&str, &str)]) -> (String, String) {
    match load_with_env(file, &env(vars)) {
        Ok(_) => panic!("{file:?} {vars:?} was accepted"),
        Err(e @ SettingsError::Invalid { .. }) => {
            let text = e.to_string();
            let SettingsError::Invalid { key, .. } = e else {
                unreachable!()
            };
            (key, text)
        }
        Err(other) => panic!("expected a settings key error, got {other}"),
    }
}

fn refused_file(toml: &str) -> (String, String) {
    let file = settings_file(toml);
    let (key, text) = refused(Some(&file.path), &[]);
    let shown = file.path.display().to_string();
    assert!(
        text.contains(&format!("(in {shown})")),
        "names the file: {text}"
    );
    (key, text)
}

fn refused_env(var: &str, value: &str) -> (String, String) {
    refused(None, &[(var, value)])
}

fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[test]
fn a_misspelt_section_in_a_file_is_refused_with_the_one_meant() {
    let (key, text) = refused_file("[job]\nattempts = 3\n");
    assert_eq!(key, "job");
    assert_has(&text, &["is not a section", "did you mean `jobs`?"]);

    let (key, text) = refused_file("[firmwares]\nmax_image_bytes = 3\n");
    assert_eq!(key, "firmwares");
    assert_has(&text, &["did you mean `firmware`?"]);

    let (key, text) = refused_file("[database]\nurl = \"x\"\n");
    assert_eq!(key, "database");
    assert_has(&text, &["remove it; the sections are system, firmware,"]);
}

#[test]
fn a_misspelt_key_is_refused_in_every_kind_of_table() {
    let cases = [
        ("[jobs]\nattemps = 3\n", "jobs.attemps", "jobs.attempts"),
        ("[pipeline]\nqeue = 3\n", "pipeline.qeue", "pipeline.queue"),
        (
            "[firmware]\nmax_image_byte = 3\n",
            "firmware.max_image_byte",
            "firmware.max_image_bytes",
        ),
        ("[system]\nidd = \"x\"\n", "system.idd", "system.id"),
        (
            "[carriers.mqtt]\nurll = \"tcp://h:1\"\n",
            "carriers.mqtt.urll",
            "carriers.mqtt.url",
        ),
        (
            "[carriers.s3_firmware_ota]\nbukcet = \"s3://b\"\n",
            "carriers.s3_firmware_ota.bukcet",
            "carriers.s3_firmware_ota.bucket",
        ),
        (
            "[addresses.cloud_mqtt_receive]\ntopik = \"t\"\n",
            "addresses.cloud_mqtt_receive.topik",
            "addresses.cloud_mqtt_receive.topic",
        ),
        (
            "[messages.firmware_image]\nid_feld = \"id\"\n",
            "messages.firmware_image.id_feld",
            "messages.firmware_image.id_field",
        ),
        (
            "[tasks.download_new_firmware_image]\nsource_typ = \"carrier\"\n",
            "tasks.download_new_firmware_image.source_typ",
            "tasks.download_new_firmware_image.source_type",
        ),
    ];
    for (toml, bad, meant) in cases {
        let (key, text) = refused_file(toml);
        assert_eq!(key, bad, "{text}");
        assert_has(&text, &[&format!("did you mean `{meant}`?")]);
    }
    // A carrier's keys depend on its source: `bucket` is an S3 key.
    let (key, text) = refused_file("[carriers.mqtt]\nbucket = \"s3://b\"\n");
    assert_eq!(key, "carriers.mqtt.bucket");
    assert_has(&text, &["remove it; [carriers.mqtt] takes source, url,"]);
    // The free-form `arguments` of a task are not checked.
    load_with_env(
        Some(&settings_file("[tasks.download_new_firmware_image]\narguments = { any = 1 }\n").path),
        &env(&[]),
    )
    .unwrap();
}

#[test]
fn a_misspelt_environment_variable_is_refused_with_the_one_meant() {
    let (key, text) = refused_env("GATOR_OTA__JOB__ATTEMPTS", "3");
    assert_eq!(key, "job");
    assert_has(
        &text,
        &[
            "(set by GATOR_OTA__JOB__ATTEMPTS)",
            "did you mean `jobs` (GATOR_OTA__JOBS__ATTEMPTS)?",
        ],
    );

    let (key, text) = refused_env("GATOR_OTA__JOBS__ATTEMPS", "3");
    assert_eq!(key, "jobs.attemps");
    assert_has(
        &text,
        &["did you mean `jobs.attempts` (GATOR_OTA__JOBS__ATTEMPTS)?"],
    );

    let (key, text) = refused_env("GATOR_OTA__JOBS_ATTEMPTS", "3");
    assert_eq!(key, "jobs_attempts");
    assert_has(
        &text,
        &["did you mean `jobs.attempts` (GATOR_OTA__JOBS__ATTEMPTS)?"],
    );

    let (key, text) = refused_env("GATOR_OTA_JOBS__ATTEMPTS", "3");
    assert_eq!(key, "jobs.attempts");
    assert_has(
        &text,
        &["is never read", "rename it GATOR_OTA__JOBS__ATTEMPTS"],
    );

    let (key, text) = refused_env("GATOR_OTA__JOBS__", "3");
    assert_eq!(key, "jobs.");
    assert_has(&text, &["names no key"]);

    let (key, text) = refused_env("GATOR_OTA__DATABASE__URL", "x");
    assert_eq!(key, "database");
    assert_has(&text, &["unset GATOR_OTA__DATABASE__URL"]);
}

#[test]
fn a_misspelt_entry_name_is_not_taken_for_a_new_entry() {
    let (key, text) = refused_env("GATOR_OTA__CARRIERS__MQT__URL", "tcp://h:1883");
    assert_eq!(key, "carriers.mqt");
    assert_has(
        &text,
        &[
            "is not a configured carrier (set by GATOR_OTA__CARRIERS__MQT__URL)",
            "did you mean `carriers.mqtt` (GATOR_OTA__CARRIERS__MQTT__URL)?",
        ],
    );
    let (key, text) = refused_env("GATOR_OTA__CARRIERS__MQTT_URL", "tcp://h:1883");
    assert_eq!(key, "carriers.mqtt_url");
    assert_has(
        &text,
        &["did you mean `carriers.mqtt.url` (GATOR_OTA__CARRIERS__MQTT__URL)?"],
    );
    let (key, text) = refused_file("[addresses.cloud_mqtt_receiv]\ntopic = \"t\"\n");
    assert_eq!(key, "addresses.cloud_mqtt_receiv");
    assert_has(&text, &["did you mean `addresses.cloud_mqtt_receive`?"]);

    // A genuinely new entry is told what it lacks.
    let (key, text) = refused_file("[carriers.backup]\nsource = \"s3\"\nbucket = \"s3://b\"\n");
    assert_eq!(key, "carriers.backup.region");
    assert_has(
        &text,
        &[
            "is missing from [carriers.backup]",
            "add it, e.g. `region = \"\"`",
        ],
    );
}

#[test]
fn a_wrong_type_in_a_file_names_the_key_the_value_and_the_form() {
    let cases = [
        (
            "[jobs]\nattempts = \"many\"\n",
            "jobs.attempts",
            "\"many\"",
            "is not an integer",
            "`attempts = 5` (the default)",
        ),
        (
            "[jobs]\nbackoff_min = \"soon\"\n",
            "jobs.backoff_min",
            "\"soon\"",
            "is not a duration",
            "`backoff_min = \"1s\"` (the default)",
        ),
        (
            "[jobs]\nprogress_step = 300\n",
            "jobs.progress_step",
            "300",
            "is not a whole number from 0 to 255",
            "`progress_step = 10`",
        ),
        (
            "[pipeline]\nqueue = \"big\"\n",
            "pipeline.queue",
            "\"big\"",
            "is not an integer",
            "`queue = 16` (the default)",
        ),
        (
            "[firmware]\nrequire_signature = \"maybe\"\n",
            "firmware.require_signature",
            "\"maybe\"",
            "is not true or false",
            "`require_signature = false`",
        ),
        (
            "[firmware]\nallowed_roots = \"/data\"\n",
            "firmware.allowed_roots",
            "\"/data\"",
            "is not a list",
            "`allowed_roots = []`",
        ),
        (
            "[carriers.mqtt]\nqos = \"high\"\n",
            "carriers.mqtt.qos",
            "\"high\"",
            "is not an integer",
            "`qos = 1`",
        ),
        (
            "[addresses.cloud_mqtt_receive]\nsend_or_receive = \"sned\"\n",
            "addresses.cloud_mqtt_receive.send_or_receive",
            "\"sned\"",
            "is not \"send\" or \"receive\"",
            "`send_or_receive = \"receive\"`",
        ),
    ];
    for (toml, bad, given, problem, example) in cases {
        let (key, text) = refused_file(toml);
        assert_eq!(key, bad, "{text}");
        assert_has(&text, &[given, problem, example]);
    }
    let (key, text) = refused_file("jobs = 5\n");
    assert_eq!(key, "jobs");
    assert_has(
        &text,
        &["5 (in ", "is not a table", "make it a table, [jobs]"],
    );
}

#[test]
fn a_wrong_type_in_the_environment_names_the_variable_and_its_form() {
    let (key, text) = refused_env("GATOR_OTA__JOBS__ATTEMPTS", "many");
    assert_eq!(key, "jobs.attempts");
    assert_has(
        &text,
        &[
            "\"many\" (set by GATOR_OTA__JOBS__ATTEMPTS) is not an integer",
            "`GATOR_OTA__JOBS__ATTEMPTS=5` (the default)",
        ],
    );
    let (key, text) = refused_env("GATOR_OTA__PIPELINE__QUEUE", "-1");
    assert_eq!(key, "pipeline.queue");
    assert_has(&text, &["\"-1\"", "is not a whole number, 0 or more"]);
    let (key, text) = refused_env("GATOR_OTA__FIRMWARE__MAX_IMAGE_BYTES", "big");
    assert_eq!(key, "firmware.max_image_bytes");
    assert_has(
        &text,
        &["\"big\" (set by GATOR_OTA__FIRMWARE__MAX_IMAGE_BYTES)"],
    );
    let (key, text) = refused_env("GATOR_OTA__CARRIERS__MQTT__KEEP_ALIVE", "often");
    assert_eq!(key, "carriers.mqtt.keep_alive");
    assert_has(
        &text,
        &[
            "is not a duration",
            "`GATOR_OTA__CARRIERS__MQTT__KEEP_ALIVE=30s`",
        ],
    );
}

#[test]
fn a_bad_credential_is_refused_without_being_shown() {
    let (key, text) = refused_file("[carriers.mqtt]\npassword = [\"hunter2\"]\n");
    assert_eq!(key, "carriers.mqtt.password");
    assert!(!text.contains("hunter2"), "{text}");
    assert_has(&text, &["is not a string"]);
}

#[test]
fn a_broker_url_must_name_a_host_and_a_real_port() {
    for (url, problem) in [
        ("tcp://127.0.0.1:99999", "has port \"99999\""),
        ("tcp://127.0.0.1:0", "has port \"0\""),
        ("mqtt://broker:mqtt", "has port \"mqtt\""),
        ("tcp://:1883", "names no host"),
        ("ws://broker:80", "has scheme ws://"),
        ("tcp://user:pw@broker:1883", "holds a user name or password"),
        ("tcp://broker:1883/path", "has a path"),
    ] {
        let (key, text) = refused_env("GATOR_OTA__CARRIERS__MQTT__URL", url);
        assert_eq!(key, "carriers.mqtt.url", "{text}");
        assert_has(
            &text,
            &[&format!("{url:?} {problem}"), "use tcp://host:1883"],
        );
    }
    let (key, text) = refused_file("[carriers.mqtt]\nurl = \"tcp://127.0.0.1:99999\"\n");
    assert_eq!(key, "carriers.mqtt.url");
    assert_has(&text, &["a port is a number from 1 to 65535"]);
    for url in [
        "tcp://broker",
        "mqtt://broker:1883/",
        "ssl://[::1]:8883",
        "mqtts://broker.example:65535",
    ] {
        let s = load_with_env(None, &env(&[("GATOR_OTA__CARRIERS__MQTT__URL", url)]));
        assert!(s.is_ok(), "{url}: {}", s.unwrap_err());
    }
}

#[test]
fn values_that_cannot_work_are_refused() {
    let s3 = |field: &str| format!("GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__{field}");
    let cases = [
        (
            vec![(s3("ENDPOINT"), "https://minio:99999")],
            "carriers.s3_firmware_ota.endpoint",
            "has port \"99999\"",
        ),
        (
            vec![(s3("BUCKET"), "s3://bucket/firmware")],
            "carriers.s3_firmware_ota.bucket",
            "put a folder in it into prefix",
        ),
        (
            vec![(s3("TIMEOUT"), "0s")],
            "carriers.s3_firmware_ota.timeout",
            "is 0",
        ),
        (
            vec![(s3("CONNECT_TIMEOUT"), "0s")],
            "carriers.s3_firmware_ota.connect_timeout",
            "is 0",
        ),
        (
            vec![(s3("HEADER_TIMEOUT"), "0s")],
            "carriers.s3_firmware_ota.header_timeout",
            "is 0",
        ),
        (
            vec![("GATOR_OTA__CARRIERS__MQTT__KEEP_ALIVE".into(), "20h")],
            "carriers.mqtt.keep_alive",
            "above MQTT's limit of 65535s",
        ),
        (
            vec![(
                "GATOR_OTA__FIRMWARE__POINTER_FILE".into(),
                "../pointer.json",
            )],
            "firmware.pointer_file",
            "has an empty, `.` or `..` part",
        ),
        (
            vec![("GATOR_OTA__FIRMWARE__IMAGES_DIR".into(), "")],
            "firmware.images_dir",
            "has an empty, `.` or `..` part",
        ),
    ];
    for (vars, bad, problem) in cases {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let (key, text) = refused(None, &vars);
        assert_eq!(key, bad, "{text}");
        assert_has(&text, &[problem]);
    }
    let s = load_with_env(
        None,
        &env(&[
            ("GATOR_OTA__FIRMWARE__IMAGES_DIR", "images/"),
            (
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
                "https://minio.example:9000/store",
            ),
        ]),
    );
    assert!(s.is_ok(), "{}", s.unwrap_err());
}

#[test]
fn the_shipped_settings_files_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("deploy/settings.example.toml");
    let vars = std::fs::read_to_string(root.join("deploy/gator-ota.env.example")).unwrap();
    let vars: Vec<(&str, &str)> = vars
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert!(vars.iter().any(|(k, _)| k.starts_with("GATOR_OTA__")));
    let s = load_with_env(Some(&example), &env(&vars));
    assert!(s.is_ok(), "{}", s.unwrap_err());
}
