//! MQTT over TLS against a real mosquitto, with a CA made by each test: the
//! broker's certificate is verified (chain and host name), client
//! certificates work when a broker requires them, and a broker the gateway
//! cannot verify gets no subscription.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use gator_ota_testkit::tls::CLIENT_CN;
use gator_ota_testkit::{TestPki, publish_tls};
use serde_json::json;

/// What the gateway logs when its first connection fails.
const REFUSED: &str = "cannot reach the broker";

/// A TLS broker, the PKI it was made with, and the folder holding the PKI.
fn tls_world(require_client_cert: bool) -> (World, TestPki, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let world = World::with_broker(Broker::start_tls(&pki, require_client_cert));
    (world, pki, dir)
}

/// The world's gateway settings, on `ssl://` with `tls` settings
/// (`CA_FILE`, `CERT_FILE`, ...) added.
fn tls_env(world: &World, tls: &[(&str, &Path)]) -> Vec<(String, String)> {
    let mut env = world.env();
    env.retain(|(k, _)| k != "GATOR_OTA__CARRIERS__MQTT__URL");
    env.push((
        "GATOR_OTA__CARRIERS__MQTT__URL".into(),
        world.broker.tls_url(),
    ));
    for (key, path) in tls {
        env.push((
            format!("GATOR_OTA__CARRIERS__MQTT__{key}"),
            path.to_str().unwrap().to_string(),
        ));
    }
    env
}

/// Publishes a firmware_image over TLS and checks the confirm and the image.
fn round_trip(world: &World, pki: &TestPki, id: &str) {
    let file_name = format!("gator_{id}");
    let key = format!("fw/{file_name}.bin");
    let sha = world.s3.put_random_object(BUCKET, &key, 256 * 1024 + 3, 7);
    let url = world.broker.tls_url();
    let confirms = Subscriber::new_tls(&url, CONFIRM_TOPIC, pki);
    let msg = json!({
        "id": id,
        "time": "2026-11-27T10:00:00.000000",
        "file_name": file_name,
        "cloud_path": key,
    });
    publish_tls(&url, RECEIVE_TOPIC, &msg.to_string(), pki);
    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["id"], SYSTEM_ID);
    assert_eq!(confirm["file_name"], file_name.as_str());
    assert_eq!(confirm["confirm_receipt"], true);
    assert_eq!(sha256_file(&world.image(&file_name)), sha);
}

/// The gateway tried, failed, and never got a session on the broker.
fn assert_refused(world: &World, gw: &Gateway) {
    gw.wait_log(REFUSED);
    // One more attempt, so "never" covers a retry too.
    gw.wait_count(REFUSED, 2);
    let log = gw.log();
    assert!(log.contains("no TLS session: check"), "{log}");
    assert!(!log.contains("subscribed"), "{log}");
    assert!(!log.contains("connected to the broker"), "{log}");
    assert!(
        !world.broker.log().contains(" as gator-ota "),
        "the broker accepted the gateway:\n{}",
        world.broker.log()
    );
}

#[test]
fn firmware_round_trip_over_tls_verified_against_the_test_ca() {
    let (world, pki, _dir) = tls_world(false);
    let gw = Gateway::start(tls_env(&world, &[("CA_FILE", &pki.ca)]));
    round_trip(&world, &pki, "tls-1");
    let log = gw.log();
    assert!(
        log.contains("broker certificate and host name verified"),
        "{log}"
    );
    assert!(
        world.broker.log().contains(" as gator-ota "),
        "{}",
        world.broker.log()
    );
}

#[test]
fn a_broker_requiring_client_certificates_accepts_cert_and_key() {
    let (world, pki, _dir) = tls_world(true);
    let gw = Gateway::start(tls_env(
        &world,
        &[
            ("CA_FILE", &pki.ca),
            ("CERT_FILE", &pki.client_cert),
            ("KEY_FILE", &pki.client_key),
        ],
    ));
    round_trip(&world, &pki, "tls-client-cert");
    // mosquitto took the certificate's common name as the user name.
    let broker_log = world.broker.log();
    assert!(
        broker_log.contains(" as gator-ota ") && broker_log.contains(&format!("u'{CLIENT_CN}'")),
        "{broker_log}"
    );
    drop(gw);
}

#[test]
fn a_broker_requiring_client_certificates_refuses_a_gateway_without_one() {
    let (world, pki, _dir) = tls_world(true);
    let gw = Gateway::spawn(tls_env(&world, &[("CA_FILE", &pki.ca)]));
    assert_refused(&world, &gw);
}

#[test]
fn an_encrypted_client_key_is_unlocked_with_key_password_file() {
    let (world, pki, _dir) = tls_world(true);
    const PASSWORD: &str = "key-passphrase-never-logged";
    let key = pki.encrypted_client_key(PASSWORD);
    let pw_file = pki.dir().join("key-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let gw = Gateway::start(tls_env(
        &world,
        &[
            ("CA_FILE", &pki.ca),
            ("CERT_FILE", &pki.client_cert),
            ("KEY_FILE", &key),
            ("KEY_PASSWORD_FILE", &pw_file),
        ],
    ));
    round_trip(&world, &pki, "tls-encrypted-key");
    assert!(!gw.log().contains(PASSWORD), "{}", gw.log());
}

#[test]
fn an_encrypted_client_key_with_the_wrong_password_is_refused() {
    let (world, pki, _dir) = tls_world(true);
    let key = pki.encrypted_client_key("the right one");
    let mut env = tls_env(
        &world,
        &[
            ("CA_FILE", &pki.ca),
            ("CERT_FILE", &pki.client_cert),
            ("KEY_FILE", &key),
        ],
    );
    env.push((
        "GATOR_OTA__CARRIERS__MQTT__KEY_PASSWORD".into(),
        "a-wrong-password".into(),
    ));
    let gw = Gateway::spawn(env);
    assert_refused(&world, &gw);
    assert!(!gw.log().contains("a-wrong-password"), "{}", gw.log());
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused() {
    let (world, _pki, _dir) = tls_world(false);
    let other = TestPki::new(&world.dir.path().join("other-ca"));
    let gw = Gateway::spawn(tls_env(&world, &[("CA_FILE", &other.ca)]));
    assert_refused(&world, &gw);
}

#[test]
fn a_broker_certificate_for_another_host_is_refused() {
    // Signed by the CA the gateway trusts, but for another name: only the
    // host name check can refuse it.
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::with_server_names(dir.path(), &["broker.elsewhere.test"]);
    let world = World::with_broker(Broker::start_tls(&pki, false));
    let gw = Gateway::spawn(tls_env(&world, &[("CA_FILE", &pki.ca)]));
    assert_refused(&world, &gw);
}

#[test]
fn without_ca_file_the_system_store_does_not_trust_a_private_ca() {
    let (world, _pki, _dir) = tls_world(false);
    let gw = Gateway::spawn(tls_env(&world, &[]));
    gw.wait_log("system store /etc/ssl/certs");
    assert_refused(&world, &gw);
}

fn check_config(env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
    cmd.arg("check-config").env_remove("GATOR_OTA_SETTINGS");
    for (k, _) in std::env::vars() {
        if k.starts_with("GATOR_OTA__") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().cloned()).output().unwrap()
}

#[test]
fn check_config_refuses_a_client_certificate_without_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let url = ("GATOR_OTA__CARRIERS__MQTT__URL", "ssl://127.0.0.1:8883");
    let env = |tls: &[(&str, &Path)]| -> Vec<(String, String)> {
        std::iter::once(url)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(tls.iter().map(|(k, p)| {
                (
                    format!("GATOR_OTA__CARRIERS__MQTT__{k}"),
                    p.to_str().unwrap().to_string(),
                )
            }))
            .collect()
    };

    let out = check_config(&env(&[("CERT_FILE", &pki.client_cert)]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("carriers.mqtt.key_file"), "{stderr}");
    assert!(stderr.contains("Fix: set key_file"), "{stderr}");

    let mut plain = env(&[("CA_FILE", &pki.ca)]);
    plain[0].1 = "tcp://127.0.0.1:1883".into();
    let out = check_config(&plain);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("carriers.mqtt.url"), "{stderr}");
    assert!(stderr.contains("use ssl:// or mqtts://"), "{stderr}");

    let out = check_config(&env(&[
        ("CERT_FILE", &pki.client_cert),
        ("KEY_FILE", &pki.dir().join("missing.key")),
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("carriers.mqtt.key_file"), "{stderr}");
    assert!(stderr.contains("is not a readable file"), "{stderr}");
}

#[test]
fn check_config_redacts_the_key_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    const PASSWORD: &str = "key-password-value";
    let env: Vec<(String, String)> = [
        ("URL", "ssl://127.0.0.1:8883"),
        ("CA_FILE", pki.ca.to_str().unwrap()),
        ("CERT_FILE", pki.client_cert.to_str().unwrap()),
        ("KEY_FILE", pki.client_key.to_str().unwrap()),
        ("KEY_PASSWORD", PASSWORD),
    ]
    .iter()
    .map(|(k, v)| (format!("GATOR_OTA__CARRIERS__MQTT__{k}"), v.to_string()))
    .collect();
    let out = check_config(&env);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("key_password = \"<redacted>\""), "{stdout}");
    assert!(
        stdout.contains(&format!("cert_file = \"{}\"", pki.client_cert.display())),
        "{stdout}"
    );
    assert!(
        !stdout.contains(PASSWORD),
        "the key password leaked:\n{stdout}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
}

/// `publish-sample` connects with the same TLS settings as the service.
#[test]
fn publish_sample_uses_the_tls_settings() {
    let (world, pki, _dir) = tls_world(true);
    let mut env = tls_env(
        &world,
        &[
            ("CA_FILE", &pki.ca),
            ("CERT_FILE", &pki.client_cert),
            ("KEY_FILE", &pki.client_key),
        ],
    );
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET".into(),
        "file://bucket".into(),
    ));
    let _gw = Gateway::start(env.clone());
    let sample = |env: &[(String, String)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
        cmd.args(["publish-sample", "--size", "4096", "--timeout", "20s"])
            .env_remove("GATOR_OTA_SETTINGS");
        for (k, _) in std::env::vars() {
            if k.starts_with("GATOR_OTA__") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().cloned()).output().unwrap()
    };

    let out = sample(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("\"confirm_receipt\":true"), "{stdout}");
    assert!(stdout.contains("matches (sha256"), "{stdout}");

    // Trusting another CA, it refuses the broker and says so.
    let other = TestPki::new(&pki.dir().join("other"));
    let mut untrusting = env.clone();
    untrusting.push((
        "GATOR_OTA__CARRIERS__MQTT__CA_FILE".into(),
        other.ca.to_str().unwrap().to_string(),
    ));
    let out = sample(&untrusting);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the broker"), "{stderr}");
    assert!(stderr.contains("ca_file"), "{stderr}");
}
