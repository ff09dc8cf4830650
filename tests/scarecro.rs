//! Running from a SCARECRO gateway's configuration folder.
//!
//! The example folder under `settings/scarecro-example` is a whole gateway:
//! inheritance, all three keywords, a multi-type address, and carriers and
//! tasks gator-ota does not implement. Copied and pointed at a real broker
//! and a real S3-protocol server, it must deliver firmware end to end; the
//! operator's TOML file and the environment still go on top of it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/settings/scarecro-example");
/// The bucket the example's s3_firmware_ota carrier names.
const EXAMPLE_BUCKET: &str = "scarecro-firmware";
const EXAMPLE_ID: &str = "gateway-17";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A copy of the example folder in `dir`.
fn example_copy(dir: &Path) -> PathBuf {
    let configs = dir.join("configs");
    copy_dir(Path::new(EXAMPLE), &configs);
    configs
}

/// The example gateway, its cloud broker swapped for the test's (plain TCP,
/// so without credentials, which is what makes SCARECRO use TLS).
fn gateway_folder(world: &World) -> PathBuf {
    let configs = example_copy(world.dir.path());
    edit_json(&configs.join("carriers/cloud_mqtt.json"), |c| {
        c.insert("mqtt_url".into(), json!("127.0.0.1"));
        c.insert("mqtt_port".into(), json!(world.broker.port()));
        c.remove("mqtt_username");
        c.remove("mqtt_password");
    });
    configs
}

/// What an operator adds on top of the folder: where to keep data (when
/// `data_dir` is given), the S3-compatible endpoint, faster reconnects for
/// a test.
fn operator_settings(world: &World, data_dir: Option<&Path>) -> PathBuf {
    let file = world.dir.path().join("gator-ota.toml");
    let system = data_dir.map_or(String::new(), |d| {
        format!("[system]\ndata_dir = {:?}\n", d.display().to_string())
    });
    std::fs::write(
        &file,
        format!(
            "{system}\
             [carriers.s3_firmware_ota]\n\
             endpoint = {endpoint:?}\n\
             allow_http = true\n\
             region = {REGION:?}\n\
             connect_timeout = \"2s\"\n\
             [carriers.cloud_mqtt]\n\
             reconnect_min = \"100ms\"\n\
             reconnect_max = \"1s\"\n",
            endpoint = world.s3.endpoint(),
        ),
    )
    .unwrap();
    file
}

/// The example gateway running: the folder through the settings key,
/// secrets through the environment (they override the placeholders in
/// carriers/s3_base.json).
fn example_gateway(world: &World, data_dir: Option<&Path>) -> Gateway {
    let configs = gateway_folder(world);
    let settings = operator_settings(world, data_dir);
    let v = |k: &str, v: &str| (k.to_string(), v.to_string());
    Gateway::start(vec![
        v("GATOR_OTA_SETTINGS", settings.to_str().unwrap()),
        v(
            "GATOR_OTA__SYSTEM__SCARECRO_CONFIGS",
            configs.to_str().unwrap(),
        ),
        v(
            "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ACCESS_KEY_ID",
            ACCESS_KEY,
        ),
        v(
            "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__SECRET_ACCESS_KEY",
            SECRET_KEY,
        ),
    ])
}

/// SCARECRO's s3.py opens a message's relative paths from the folder it
/// runs in (the one holding `configs/`); so does the drop-in, unless the
/// operator names `system.data_dir` or `firmware.allowed_roots`.
#[test]
fn relative_message_paths_land_in_scarecro_s_working_folder() {
    let world = World::new();
    world.s3.create_bucket(EXAMPLE_BUCKET);
    let sha = world
        .s3
        .put_random_object(EXAMPLE_BUCKET, "data-gator/gator_2.2.0.bin", 70_001, 3);
    let gw = example_gateway(&world, None);
    let confirms = Subscriber::new(&world.broker.url(), "confirm_receipt");
    publish(
        &world.broker.url(),
        "firmware_image",
        &json!({
            "id": "cloud-9",
            "time": "2026-11-27T10:00:00.000000",
            "file_name": "datagator_v2.2.0.bin",
            "cloud_path": "data-gator/gator_2.2.0.bin",
            "disk_path": "generated_data/firmware/datagator_v2.2.0.bin",
            "config_path": "generated_data/current_version.txt",
        })
        .to_string(),
    );
    confirms
        .recv_json(DEADLINE)
        .unwrap_or_else(|| panic!("a confirm_receipt; log:\n{}", gw.log()));
    let working = world.dir.path();
    let image = working.join("generated_data/firmware/datagator_v2.2.0.bin");
    assert_eq!(sha256_file(&image), sha);
    assert_eq!(
        std::fs::read_to_string(working.join("generated_data/current_version.txt")).unwrap(),
        "datagator_v2.2.0.bin"
    );
    assert!(working.join("gator-ota-data/.gator-ota").is_dir());
    assert!(!world.data_dir().exists());
    assert!(
        gw.log().contains("resolve against") && gw.log().contains("SCARECRO's working folder"),
        "{}",
        gw.log()
    );
}

#[test]
fn the_example_gateway_folder_delivers_firmware_end_to_end() {
    let world = World::new();
    world.s3.create_bucket(EXAMPLE_BUCKET);
    let sha = world.s3.put_random_object(
        EXAMPLE_BUCKET,
        "data-gator/gator_2.1.0.bin",
        2 * 1024 * 1024 + 3,
        7,
    );
    let gw = example_gateway(&world, Some(&world.data_dir()));
    // `$msg_type` made the send topic "confirm_receipt".
    let confirms = Subscriber::new(&world.broker.url(), "confirm_receipt");

    // SCARECRO subscribes to `<topic>/#` and maps a deeper topic to the
    // address whose topic it contains.
    for (topic, id) in [
        ("firmware_image/gateway-17", "cloud-1"),
        ("firmware_image", "cloud-2"),
    ] {
        publish(
            &world.broker.url(),
            topic,
            &json!({
                "id": id,
                "time": "2026-11-27T10:00:00.000000",
                "file_name": "gator_2.1.0",
                "cloud_path": "data-gator/gator_2.1.0.bin",
            })
            .to_string(),
        );
        let confirm = confirms
            .recv_json(DEADLINE)
            .unwrap_or_else(|| panic!("a confirm_receipt for {topic}; log:\n{}", gw.log()));
        // `$system_id` in carriers/s3_base.json: the id the cloud knows.
        assert_eq!(confirm["id"], EXAMPLE_ID);
        assert_eq!(confirm["file_name"], "gator_2.1.0");
        assert_eq!(confirm["confirm_receipt"], true);
        gw.wait_log(&format!("msg_id={id}"));
    }
    assert_eq!(sha256_file(&world.image("gator_2.1.0")), sha);
    assert_eq!(
        std::fs::read_to_string(world.pointer()).unwrap(),
        "gator_2.1.0"
    );

    // `$name` in the inherited mqtt_base.json is the inheriting carrier's
    // name, suffixed with the system id as SCARECRO's mqtt.py does; the
    // example asks for MQTT 5.
    let broker_log = world.broker.log();
    assert!(
        broker_log.contains("as cloud_mqtt_gateway-17 (p5"),
        "{broker_log}"
    );

    let log = gw.log();
    for skipped in [
        "addresses/weather_rack_433.json",
        "addresses/renogy_charger_ble.json",
        "addresses/datagator_local_mqtt.json",
        "addresses/weather_rack_mongodb.json",
        "carriers/local_mongodb.json",
        "tasks/take_camera_pictures.json",
        "tasks/clean_generated_data.json",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("SCARECRO config skipped") && l.contains(skipped)),
            "{skipped} is not reported as skipped:\n{log}"
        );
    }
    assert!(
        log.contains("setting=addresses.cloud_mqtt_receive_firmware_image"),
        "{log}"
    );
    assert!(!log.contains(SECRET_KEY), "{log}");
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
    cmd.arg("check-config")
        .args(args)
        .env_remove("GATOR_OTA_SETTINGS");
    for (k, _) in std::env::vars() {
        if k.starts_with("GATOR_OTA__") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn check_config_shows_what_the_folder_became_with_secrets_redacted() {
    let out = check_config(
        &["--scarecro-configs", EXAMPLE],
        &[("GATOR_OTA__CARRIERS__CLOUD_MQTT__QOS", "2")],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    for expected in [
        "id = \"gateway-17\"",
        // Credentials in the folder: SCARECRO uses TLS.
        "url = \"ssl://mqtt.example.com:8883\"",
        "client_id = \"cloud_mqtt_gateway-17\"",
        "bucket = \"s3://scarecro-firmware\"",
        "prefix = \"data-gator\"",
        "topic = \"firmware_image/#\"",
        "[addresses.cloud_mqtt_send_immediate_confirm_receipt]",
        // The environment still wins over the folder.
        "qos = 2",
        "addresses/cloud_mqtt_receive.json -> addresses.cloud_mqtt_receive_firmware_image",
        "addresses/cloud_mqtt_receive.json (cloud_mqtt_receive_system_command): no gator-ota task runs on system_command",
        "addresses/weather_rack_433.json (weather_rack_433): carrier radio_433 is a \"433_radio\" carrier",
        "tasks/clean_generated_data.json (clean_generated_data): runs SCARECRO's Python task",
        "carriers/local_mongodb.json (local_mongodb): source \"mongodb\"",
        "<redacted>",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    for secret in [
        "set-the-broker-password-here",
        "set-the-secret-access-key-here",
        "set-the-database-password-here",
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} leaked:\n{stderr}");
    }
    assert!(
        !stdout.contains("[carriers.mqtt]"),
        "the default carrier must not run next to the folder's:\n{stdout}"
    );
    toml::from_str::<toml::Table>(&stdout).expect("the output is still TOML");
}

/// Runs check-config on a broken copy of the example and returns stderr.
fn broken(edit: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let configs = example_copy(dir.path());
    edit(&configs);
    let out = check_config(&["--scarecro-configs", configs.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn folder_errors_name_the_file_and_the_key() {
    let err = broken(|c| {
        std::fs::write(c.join("carriers/s3_base.json"), "{\"source\": \"s3\",,}").unwrap()
    });
    assert!(
        err.contains("carriers/s3_base.json: is not valid JSON"),
        "{err}"
    );

    let err = broken(|c| std::fs::remove_file(c.join("carriers/mqtt_base.json")).unwrap());
    assert!(
        err.contains("carriers/cloud_mqtt.json, key `inheritance`: names \"mqtt_base\""),
        "{err}"
    );

    let err = broken(|c| {
        edit_json(&c.join("carriers/mqtt_base.json"), |m| {
            m.insert("inheritance".into(), json!(["cloud_mqtt"]));
        })
    });
    assert!(
        err.contains("key `inheritance`: inheritance cycle"),
        "{err}"
    );
    assert!(
        err.contains(
            "carriers/cloud_mqtt.json -> carriers/mqtt_base.json -> carriers/cloud_mqtt.json"
        ),
        "{err}"
    );

    let err = broken(|c| {
        edit_json(&c.join("tasks/download_new_firmware_image.json"), |m| {
            m.insert("config_name".into(), json!("s3_missing"));
        })
    });
    assert!(
        err.contains(
            "tasks/download_new_firmware_image.json, key `config_name`: names \"s3_missing\""
        ),
        "{err}"
    );
    assert!(
        err.contains("carriers/s3_missing.json does not exist"),
        "{err}"
    );

    let err = broken(|c| std::fs::remove_file(c.join("system/system.json")).unwrap());
    assert!(err.contains("there is no system/system.json"), "{err}");
}
