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
    let outside_pointer = format!(
        "[http]\nlisten = [\"127.0.0.1:0\"]\npointers = [{{ url = \"/current_version.txt\", file = \"/etc/passwd\" }}]\n\
         [system]\ndata_dir = \"{data_dir}\"\n"
    );
    for (toml, key, words) in [
        (
            outside_pointer.as_str(),
            "http.pointers[0].file",
            "is outside the allowed folders",
        ),
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

#[test]
fn check_config_shows_what_the_aws_variables_set_and_what_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    std::fs::write(
        &file,
        "[carriers.s3_firmware_ota]\nbucket = \"s3://fw\"\nregion = \"file-region\"\n",
    )
    .unwrap();
    let out = gator_ota(
        &["check-config", "--settings", file.to_str().unwrap()],
        &[
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAFROMENV"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
            ("AWS_SESSION_TOKEN", "aws-session-token-value"),
            (
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ACCESS_KEY_ID",
                "AKIAOURS",
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in [
        "allow_http = true",
        "endpoint = \"http://127.0.0.1:9000\"",
        "region = \"eu-central-1\"",
        "access_key_id = \"AKIAOURS\"",
        "session_token = \"<redacted>\"",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    for secret in ["aws-secret-value", "aws-session-token-value"] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }

    let out = gator_ota(
        &["check-config", "--settings", file.to_str().unwrap()],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("set by AWS_ENDPOINT_URL"), "{stderr}");
}

/// `gator-ota-gen`, which writes the man pages and completions for packaging.
fn gator_ota_gen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gator-ota-gen"))
        .args(args)
        .output()
        .unwrap()
}

/// The commands `--help` lists (without `help` itself).
fn commands_in_help() -> Vec<String> {
    let out = gator_ota(&["--help"], &[]);
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.contains(&"check-config".to_string()), "{help}");
    commands
}

#[test]
fn the_man_pages_cover_every_command_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = gator_ota_gen(&["man", "--out", man.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(man.join("gator-ota.1")).unwrap();
    assert!(page.contains(".TH gator-ota 1"), "{page}");
    for section in [".SH SUBCOMMANDS", ".SH ENVIRONMENT", ".SH FILES"] {
        assert!(page.contains(section), "no {section} in:\n{page}");
    }
    for var in [
        "GATOR_OTA_LOG_FORMAT",
        "AWS_ALLOW_HTTP",
        "AWS_SESSION_TOKEN",
    ] {
        assert!(page.contains(var), "no {var} in:\n{page}");
    }
    for command in commands_in_help() {
        let name = format!("gator-ota-{command}");
        assert!(
            page.contains(&name.replace('-', "\\-")),
            "no {name} in:\n{page}"
        );
        let sub = std::fs::read_to_string(man.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(sub.contains(".SH SYNOPSIS"), "{sub}");
    }
    assert!(
        !page.contains("generate"),
        "the hidden command shows:\n{page}"
    );
}

#[test]
fn completions_are_generated_for_each_shell_with_every_command() {
    let commands = commands_in_help();
    for shell in ["bash", "zsh", "fish"] {
        let out = gator_ota_gen(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for command in &commands {
            assert!(script.contains(command.as_str()), "{shell}: no {command}");
        }
        assert!(script.contains("log-format"), "{shell}: no --log-format");
    }
    let out = gator_ota_gen(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_bad_log_format_is_refused_with_the_ones_there_are() {
    let out = gator_ota(&["check-config"], &[("GATOR_OTA_LOG_FORMAT", "xml")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("'xml'") && stderr.contains("[possible values: text, json]"),
        "{stderr}"
    );

    // json on a refused setting: the one line is a JSON object naming the key.
    let out = gator_ota(
        &["--log-format", "json", "check-config"],
        &[("GATOR_OTA__JOBS__ATTEMPS", "1")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("jobs.attemps"),
        "{line}"
    );
}
