//! The mapping of whole folders: the example gateway and small variations.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use crate::{Carrier, Direction, Env};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scarecro-example");

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn example() -> Loaded {
    load_all_with_env(None, Some(Path::new(EXAMPLE)), &env(&[])).unwrap()
}

/// A copy of the example folder to vary.
fn copy() -> (tempfile::TempDir, PathBuf) {
    fn walk(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    walk(Path::new(EXAMPLE), &configs);
    (dir, configs)
}

fn write(configs: &Path, file: &str, value: Value) {
    std::fs::write(
        configs.join(file),
        serde_json::to_string_pretty(&value).unwrap(),
    )
    .unwrap();
}

fn load_dir(configs: &Path) -> Result<Loaded, SettingsError> {
    load_all_with_env(None, Some(configs), &env(&[]))
}

fn scarecro_err(e: SettingsError) -> ScarecroError {
    match e {
        SettingsError::Scarecro(s) => s,
        other => panic!("expected a SCARECRO error, got {other}"),
    }
}

#[test]
fn the_example_maps_onto_the_firmware_job() {
    let loaded = example();
    let s = &loaded.settings;
    assert_eq!(s.system.id, "gateway-17");
    assert!(s.system.scarecro_configs.ends_with("scarecro-example"));

    let names: Vec<&str> = s.carriers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["cloud_mqtt", "s3_firmware_ota"],
        "no default carrier is left"
    );
    let mqtt = s.mqtt("cloud_mqtt").unwrap();
    assert_eq!(mqtt.url, "ssl://mqtt.example.com:8883");
    assert_eq!(mqtt.client_id, "cloud_mqtt_gateway-17");
    assert_eq!(mqtt.username, "gateway-17");
    assert_eq!(mqtt.password.expose(), "set-the-broker-password-here");
    assert_eq!((mqtt.qos, mqtt.version), (1, 5));
    assert_eq!(
        mqtt.keep_alive,
        std::time::Duration::from_secs(30),
        "gator-ota's default"
    );
    let topics: Vec<(&str, &str)> = mqtt
        .scarecro_topics
        .iter()
        .map(|r| (r.address.as_str(), r.topic.as_str()))
        .collect();
    assert_eq!(
        topics,
        [
            (
                "cloud_mqtt_send_immediate_confirm_receipt",
                "confirm_receipt"
            ),
            ("cloud_mqtt_send_immediate_weather_rack", "weather_rack"),
            ("cloud_mqtt_send_immediate_datagator", "datagator"),
            ("cloud_mqtt_receive_firmware_image", "firmware_image"),
            ("cloud_mqtt_receive_system_command", "system_command"),
        ],
        "send addresses first, then receive, each in the system's order"
    );

    let Some(Carrier::S3(s3)) = s.carriers.get("s3_firmware_ota") else {
        panic!("no s3 carrier");
    };
    assert_eq!(s3.bucket, "s3://scarecro-firmware");
    assert_eq!(s3.prefix, "data-gator");
    assert_eq!(s3.access_key_id, "set-the-access-key-id-here");
    assert_eq!(
        s3.timeout,
        std::time::Duration::from_secs(30 * 60),
        "gator-ota's default"
    );

    let addresses: Vec<(&str, Direction, &str, &str)> = s
        .addresses
        .iter()
        .map(|(n, a)| {
            (
                n.as_str(),
                a.send_or_receive,
                a.message_type[0].as_str(),
                a.topic.as_str(),
            )
        })
        .collect();
    assert_eq!(
        addresses,
        [
            (
                "cloud_mqtt_receive_firmware_image",
                Direction::Receive,
                "firmware_image",
                "firmware_image/#"
            ),
            (
                "cloud_mqtt_send_immediate_confirm_receipt",
                Direction::Send,
                "confirm_receipt",
                "confirm_receipt"
            ),
        ]
    );
    let task = &s.tasks["download_new_firmware_image"];
    assert_eq!(
        (
            task.config_name.as_str(),
            task.function.as_str(),
            task.message_type.as_str()
        ),
        (
            "s3_firmware_ota",
            "handle_new_firmware_message",
            "firmware_image"
        )
    );
    assert_eq!(s.tasks.len(), 1);
    assert_eq!(s.messages["firmware_image"].id_field, "id");

    let report = loaded.scarecro.unwrap();
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "cloud_mqtt_receive_system_command",
        "cloud_mqtt_send_immediate_weather_rack",
        "cloud_mqtt_send_immediate_datagator",
        "weather_rack_433",
        "renogy_charger_ble",
        "datagator_local_mqtt",
        "weather_rack_mongodb",
        "take_camera_pictures",
        "clean_generated_data",
        "radio_433",
        "ble",
        "local_mqtt",
        "local_mongodb",
        "camera",
    ] {
        assert!(skipped.contains(&name), "{name} not skipped: {skipped:?}");
    }
    let printed = report.to_string();
    for secret in ["broker-password", "secret-access-key", "database-password"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(
        printed.contains("set-the-access-key-id-here"),
        "a key id is no secret"
    );
}

#[test]
fn file_and_environment_layers_go_on_top_of_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        format!(
            "[system]\nscarecro_configs = {EXAMPLE:?}\n\
             [carriers.cloud_mqtt]\nurl = \"tcp://10.0.0.1:1883\"\nkeep_alive = \"45s\"\n"
        ),
    )
    .unwrap();
    let loaded = load_all_with_env(
        Some(&file),
        None,
        &env(&[
            ("GATOR_OTA__CARRIERS__CLOUD_MQTT__PASSWORD", "from-env"),
            ("GATOR_OTA__SYSTEM__ID", "gw-env"),
        ]),
    )
    .unwrap();
    assert!(
        loaded.scarecro.is_some(),
        "the settings file names the folder"
    );
    let mqtt = loaded.settings.mqtt("cloud_mqtt").unwrap();
    assert_eq!(mqtt.url, "tcp://10.0.0.1:1883");
    assert_eq!(mqtt.keep_alive, std::time::Duration::from_secs(45));
    assert_eq!(mqtt.password.expose(), "from-env");
    assert_eq!(
        mqtt.client_id, "cloud_mqtt_gateway-17",
        "untouched keys stay the folder's"
    );
    assert_eq!(loaded.settings.system.id, "gw-env");

    let by_env = load_all_with_env(None, None, &env(&[(ENV_SCARECRO_CONFIGS, EXAMPLE)])).unwrap();
    assert_eq!(by_env.settings.system.id, "gateway-17");
    let plain = load_all_with_env(None, None, &env(&[])).unwrap();
    assert!(plain.scarecro.is_none());
    assert!(plain.settings.carriers.contains_key("mqtt"));
}

#[test]
fn mqtt_keys_follow_scarecros_mqtt_carrier() {
    let (_d, c) = copy();
    write(
        &c,
        "carriers/cloud_mqtt.json",
        json!({"source": "mqtt", "mqtt_username": "only-a-user", "version": 4}),
    );
    let loaded = load_dir(&c).unwrap();
    let mqtt = loaded.settings.mqtt("cloud_mqtt").unwrap();
    assert_eq!(
        mqtt.url, "tcp://127.0.0.1:1883",
        "SCARECRO's defaults; no TLS without both credentials"
    );
    assert_eq!(mqtt.client_id, "default_default");
    assert_eq!(
        (mqtt.username.as_str(), mqtt.password.is_empty()),
        ("", true)
    );
    assert_eq!((mqtt.qos, mqtt.version), (1, 4));
    let notes = loaded.scarecro.unwrap().notes.join("\n");
    assert!(
        notes.contains("only one of mqtt_username and mqtt_password"),
        "{notes}"
    );
    assert!(notes.contains("ends in _default"), "{notes}");

    write(
        &c,
        "carriers/cloud_mqtt.json",
        json!({"source": "mqtt", "mqtt_port": "8883x"}),
    );
    match scarecro_err(load_dir(&c).unwrap_err()) {
        ScarecroError::Key { file, key, .. } => {
            assert!(file.ends_with("carriers/cloud_mqtt.json"));
            assert_eq!(key, "mqtt_port");
        }
        other => panic!("{other}"),
    }
    write(
        &c,
        "carriers/cloud_mqtt.json",
        json!({"source": "mqtt", "qos": 3}),
    );
    let text = load_dir(&c).unwrap_err().to_string();
    assert!(
        text.contains("carriers/cloud_mqtt.json, key `qos`"),
        "{text}"
    );
    write(
        &c,
        "carriers/cloud_mqtt.json",
        json!({"source": "mqtt", "mqtt_url": "tcp://broker"}),
    );
    let text = load_dir(&c).unwrap_err().to_string();
    assert!(text.contains("key `mqtt_url`"), "{text}");
}

#[test]
fn a_carrier_without_source_is_the_source_of_its_name() {
    let (_d, c) = copy();
    write(
        &c,
        "addresses/cloud_mqtt.json",
        json!({"carrier": "mqtt", "additional_info": {"topic": "$msg_type"}}),
    );
    write(&c, "carriers/mqtt.json", json!({"client_id": "gw"}));
    let loaded = load_dir(&c).unwrap();
    assert_eq!(
        loaded.settings.mqtt("mqtt").unwrap().client_id,
        "gw_default"
    );
}

#[test]
fn the_s3_carrier_system_id_is_the_confirm_receipt_id() {
    let (_d, c) = copy();
    write(
        &c,
        "carriers/s3_firmware_ota.json",
        json!({"source": "s3", "bucket_name": "b"}),
    );
    let loaded = load_dir(&c).unwrap();
    assert_eq!(
        loaded.settings.system.id, "default",
        "SCARECRO's s3.py confirms as \"default\""
    );
    assert!(
        loaded
            .scarecro
            .unwrap()
            .notes
            .iter()
            .any(|n| n.contains("no system_id"))
    );

    write(&c, "carriers/s3_firmware_ota.json", json!({"source": "s3"}));
    let text = load_dir(&c).unwrap_err().to_string();
    assert!(
        text.contains("carriers/s3_firmware_ota.json, key `bucket_name`"),
        "{text}"
    );
}

#[test]
fn without_a_firmware_task_or_address_there_is_nothing_to_run() {
    let (_d, c) = copy();
    write(
        &c,
        "tasks/download_new_firmware_image.json",
        json!({"source_type": "carrier", "config_name": "s3_firmware_ota", "function": "upload", "duration": "on_message", "message_type": "firmware_image"}),
    );
    let text = load_dir(&c).unwrap_err().to_string();
    assert!(text.contains("system.json, key `tasks`"), "{text}");
    assert!(
        text.contains("implements only handle_new_firmware_message"),
        "{text}"
    );

    let (_d, c) = copy();
    write(
        &c,
        "addresses/cloud_mqtt_receive.json",
        json!({"inheritance": ["cloud_mqtt"], "message_type": ["firmware_image"], "send_or_receive": "receive", "duration": "as_needed"}),
    );
    let text = load_dir(&c).unwrap_err().to_string();
    assert!(
        text.contains("key `addresses`: no listed address receives firmware_image"),
        "{text}"
    );
    assert!(
        text.contains("\"as_needed\""),
        "the near miss is explained: {text}"
    );
}

/// SCARECRO gateways talk to a local broker and the cloud's: each MQTT
/// carrier a used address names becomes a connection of its own.
#[test]
fn receive_and_send_on_different_mqtt_carriers_make_two_connections() {
    let (_d, c) = copy();
    write(
        &c,
        "addresses/cloud_mqtt_send_immediate.json",
        json!({"carrier": "local_mqtt", "message_type": "confirm_receipt", "send_or_receive": "send", "duration": "on_message", "additional_info": {"topic": "ack"}}),
    );
    let loaded = load_dir(&c).unwrap();
    let s = &loaded.settings;
    assert!(s.mqtt("cloud_mqtt").is_some() && s.mqtt("local_mqtt").is_some());
    let send = &s.addresses["cloud_mqtt_send_immediate"];
    assert_eq!(send.carrier, "local_mqtt");
    assert_eq!(send.topic, "ack");
    assert_eq!(
        s.addresses["cloud_mqtt_receive_firmware_image"].carrier,
        "cloud_mqtt"
    );
    let report = loaded.scarecro.unwrap();
    assert!(
        report
            .used
            .iter()
            .any(|u| u.setting == "carriers.local_mqtt"),
        "{:?}",
        report.used
    );
    assert!(!report.skipped.iter().any(|k| k.name == "local_mqtt"));
}

#[test]
fn foreign_keys_a_folder_brings_are_listed_as_ignored_not_refused() {
    let (_d, c) = copy();
    write(
        &c,
        "carriers/s3_firmware_ota.json",
        json!({"source": "s3", "bucket_name": "b", "system_id": "gw", "upload_retries": 3, "jobs": {"attemps": 1}}),
    );
    let loaded = load_dir(&c).unwrap();
    let notes = loaded.scarecro.unwrap().notes;
    let s3 = notes
        .iter()
        .find(|n| n.starts_with("carriers/s3_firmware_ota.json: gator-ota ignores "))
        .unwrap_or_else(|| panic!("{notes:?}"));
    assert!(s3.contains("upload_retries") && s3.contains("jobs"), "{s3}");
    let notes = notes.join("\n");
    assert!(
        notes.contains("carriers/cloud_mqtt.json: gator-ota ignores monitor_connection"),
        "{notes}"
    );
}

#[test]
fn the_layers_above_a_folder_are_still_checked_for_unknown_keys() {
    let err = load_all_with_env(
        None,
        Some(Path::new(EXAMPLE)),
        &env(&[("GATOR_OTA__CARRIERS__CLOUD_MQTT__QOSS", "2")]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("settings key `carriers.cloud_mqtt.qoss`")
            && text.contains(
                "did you mean `carriers.cloud_mqtt.qos` (GATOR_OTA__CARRIERS__CLOUD_MQTT__QOS)?"
            ),
        "{text}"
    );
}
