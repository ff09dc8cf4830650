//! The command line: `check-config` and start-up failures.

use std::process::{Command, Output};

fn gator_ota(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
    cmd.args(args).env_remove("GATOR_OTA_SETTINGS");
    for (k, _) in std::env::vars() {
        if k.starts_with("GATOR_OTA__") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn check_config_prints_effective_settings_without_secrets() {
    let out = gator_ota(
        &["check-config"],
        &[
            ("GATOR_OTA__SYSTEM__ID", "gw-42"),
            ("GATOR_OTA__CARRIERS__MQTT__PASSWORD", "mqtt-password-value"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("id = \"gw-42\""), "{stdout}");
    assert!(stdout.contains("download_new_firmware_image"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    for secret in ["mqtt-password-value", "aws-secret-value"] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    }
}

#[test]
fn check_config_names_the_bad_key_and_the_fix() {
    let out = gator_ota(
        &["check-config"],
        &[("GATOR_OTA__CARRIERS__MQTT__QOS", "9")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("carriers.mqtt.qos"), "{stderr}");
    assert!(stderr.contains("use 0, 1 or 2"), "{stderr}");

    let out = gator_ota(
        &["check-config"],
        &[(
            "GATOR_OTA__TASKS__DOWNLOAD_NEW_FIRMWARE_IMAGE__CONFIG_NAME",
            "s3_missing",
        )],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("tasks.download_new_firmware_image.config_name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no carrier named \"s3_missing\""),
        "{stderr}"
    );
}

#[test]
fn check_config_reads_a_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    std::fs::write(&file, "[system]\nid = \"from-file\"\n").unwrap();
    let out = gator_ota(&["check-config", "--settings", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("id = \"from-file\"")
    );

    let out = gator_ota(
        &["check-config", "--settings", "/nonexistent/settings.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("--settings")
    );
}

#[test]
fn the_example_settings_are_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/settings.example.toml");
    let out = gator_ota(&["check-config", "--settings", example], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_refuses_unknown_keys_and_wrong_types_by_their_full_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    let check = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(&file, toml).unwrap();
        let out = gator_ota(&["check-config", "--settings", file.to_str().unwrap()], env);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let in_file = format!("(in {})", file.display());

    let stderr = check("[jobs]\nattemps = 3\n", &[]);
    assert!(stderr.contains("settings key `jobs.attemps`"), "{stderr}");
    assert!(stderr.contains(&in_file), "{stderr}");
    assert!(stderr.contains("did you mean `jobs.attempts`?"), "{stderr}");

    let stderr = check("[job]\nattempts = 3\n", &[]);
    assert!(
        stderr.contains("settings key `job`: is not a section"),
        "{stderr}"
    );

    let stderr = check("[pipeline]\nqueue = \"many\"\n", &[]);
    assert!(
        stderr.contains("settings key `pipeline.queue`: \"many\""),
        "{stderr}"
    );
    assert!(stderr.contains("`queue = 16` (the default)"), "{stderr}");

    let stderr = check("", &[("GATOR_OTA__JOB__ATTEMPTS", "3")]);
    assert!(stderr.contains("settings key `job`"), "{stderr}");
    assert!(
        stderr.contains("did you mean `jobs` (GATOR_OTA__JOBS__ATTEMPTS)?"),
        "{stderr}"
    );

    let stderr = check("[carriers.mqtt]\nurl = \"tcp://127.0.0.1:99999\"\n", &[]);
    assert!(
        stderr.contains("settings key `carriers.mqtt.url`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"tcp://127.0.0.1:99999\" has port"),
        "{stderr}"
    );
}

/// What only the service's plan can tell (an MQTT carrier's name unfit for
/// its state folder, a PEM file that holds no key): `check-config`
/// refuses it with the same words `run` stops with, before `run` touches
/// the disk or the network.
#[test]
fn check_config_refuses_what_run_refuses_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(
        &pem,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let data_dir = data.to_str().unwrap();
    // A second broker: the default one's table under another name.
    let defaults = include_str!("../settings/default.toml");
    let mqtt = &defaults[defaults.find("[carriers.mqtt]").unwrap()..];
    let mqtt = &mqtt[..mqtt[1..].find("\n[").unwrap() + 1];
    let local = mqtt.replace("[carriers.mqtt]", "[carriers.\"local broker\"]");
    let second_broker = format!(
        "{local}\n[addresses.local_status]\ncarrier = \"local broker\"\ntopic = \"local/status\"\n\
         send_or_receive = \"send\"\nduration = \"always\"\nmessage_type = [\"confirm_receipt\"]\n\
         [system]\ndata_dir = \"{data_dir}\"\n"
    );
    let bad_key = format!(
        "[firmware]\npublic_key_files = [\"{}\"]\n[system]\ndata_dir = \"{data_dir}\"\n",
        pem.display()
    );
    for (toml, key, words) in [
        (
            second_broker.as_str(),
            "carriers.local broker",
            "names its folder in the state folder",
        ),
        (
            bad_key.as_str(),
            "firmware.public_key_files[0]",
            "cannot read public key file",
        ),
    ] {
        let file = dir.path().join("settings.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap();
        let check = gator_ota(&["check-config", "--settings", file], &[]);
        let run = gator_ota(&["run", "--settings", file], &[]);
        for out in [&check, &run] {
            assert_eq!(out.status.code(), Some(2), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("settings key `{key}`")),
                "{stderr}"
            );
            assert!(
                stderr.contains(words) && stderr.contains("Fix:"),
                "{stderr}"
            );
        }
        assert!(!data.exists(), "run made its folders before refusing");
    }
}

#[test]
fn a_key_of_an_earlier_version_says_what_replaced_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    std::fs::write(&file, "[pipeline]\nmqtt_buffer = 64\n").unwrap();
    let out = gator_ota(&["check-config", "--settings", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("settings key `pipeline.mqtt_buffer`: was split into two settings"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipeline.outbox_window") && stderr.contains("pipeline.inbox_warning"),
        "{stderr}"
    );
}
