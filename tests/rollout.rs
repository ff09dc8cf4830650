//! Staged rollouts: simulated Data Gators that follow the firmware's loop
//! (poll the pointer, fetch the image with HTTPUpdate's headers, take `304`
//! as "no update") against a real gateway, mosquitto and the S3 server; a
//! canary and two waves, a pause when failures pass the threshold, the
//! cloud's `rollout` control messages, and the state after a restart.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::device::{DataGator, http_get, install_esp_image, status_json};
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const IMAGE: &str = "datagator_v1.0.1.bin";
const CONTROL_TOPIC: &str = "scarecro/rollout";
const FLEET_TOPIC: &str = "scarecro/fleet_status";

/// A gateway with staged rollouts on: `rollout` is the `[rollout]` table's
/// body (after `enabled = true`).
fn rollout_settings(world: &World, rollout: &str) -> PathBuf {
    let file = world.dir.path().join("rollout.toml");
    let toml = format!(
        "[fleet]\nboot_grace = \"1s\"\nstatus_min_interval = \"100ms\"\nstatus_interval = \"2s\"\n\
         [addresses.cloud_fleet]\ncarrier = \"mqtt\"\nsend_or_receive = \"send\"\n\
         message_type = [\"fleet_status\"]\nduration = \"on_message\"\ntopic = \"{FLEET_TOPIC}\"\n\
         [rollout]\nenabled = true\nwave_wait = \"300ms\"\n{rollout}\n"
    );
    std::fs::write(&file, toml).unwrap();
    file
}

fn start_gateway(world: &World, settings: &Path) -> Gateway {
    let mut env = world.env();
    env.push((
        "GATOR_OTA_SETTINGS".into(),
        settings.to_str().unwrap().into(),
    ));
    Gateway::start(env)
}

fn staged(addr: SocketAddr) -> Value {
    status_json(addr)["images"][0]["staged"].clone()
}

/// Waits until the rollout's view satisfies `ok`, and returns it.
fn wait_staged(addr: SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(DEADLINE, what, || {
        last = staged(addr);
        ok(&last)
    });
    last
}

/// Every device checks, then every one reboots and sends telemetry: no
/// device is confirmed while another is still asking, so a wave cannot
/// move in the middle of a round. The MACs served the image.
fn round(devices: &mut [DataGator], http: SocketAddr) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for d in devices.iter_mut() {
        if d.ota_check(http) == Some(200) {
            served.insert(d.mac.clone());
        }
    }
    for d in devices.iter() {
        d.telemetry();
    }
    served
}

/// The wave the README promises: the first 8 bytes of SHA-256 over the MAC,
/// a zero byte and the image name, mod 100, against the waves' shares.
fn in_share(mac: &str, share: u64) -> bool {
    let mut h = Sha256::new();
    h.update(mac.as_bytes());
    h.update([0]);
    h.update(IMAGE.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap()) % 100 < share
}

fn control(world: &World, content: Value) {
    publish(&world.broker.url(), CONTROL_TOPIC, &content.to_string());
}

/// Starts the gateway, has every device report once, waits until the
/// registry knows them all, and installs the image their rollout is of.
fn start_rollout(world: &World, settings: &Path, devices: &[DataGator]) -> (Gateway, SocketAddr) {
    let gw = start_gateway(world, settings);
    let http = gw.http_addr();
    for d in devices {
        d.telemetry();
    }
    wait_until(DEADLINE, "every device in the registry", || {
        status_json(http)["devices"].as_array().unwrap().len() == devices.len()
    });
    install_esp_image(world, "rollout-1", IMAGE, 64 * 1024, 9);
    (gw, http)
}

fn gator_ota_status(settings: &Path, world: &World, url: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
    cmd.args(["status", "--url", url])
        .arg("--settings")
        .arg(settings);
    for (k, _) in std::env::vars() {
        if k.starts_with("GATOR_OTA") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(world.env());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_staged_rollout_goes_canary_then_two_waves() {
    let world = World::new();
    let mut devices: Vec<DataGator> = (0..12)
        .map(|i| DataGator::new(i, &world.broker, true))
        .collect();
    let canary: BTreeSet<String> = devices[..2].iter().map(|d| d.mac.clone()).collect();
    let settings = rollout_settings(
        &world,
        &format!(
            "canary = {:?}\nwaves = [50, 100]\nsuccess_percent = 100\n",
            canary.iter().collect::<Vec<_>>()
        ),
    );
    let (gw, http) = start_rollout(&world, &settings, &devices);
    let s = wait_staged(http, "the rollout at the canary", |s| s["wave"] == 0);
    assert_eq!(
        (s["status"].as_str(), s["waves"].as_u64()),
        (Some("running"), Some(2))
    );
    assert_eq!(s["admitted"], 2);

    assert_eq!(round(&mut devices, http), canary, "only the canary");
    wait_staged(http, "wave 1", |s| s["wave"] == 1);
    let first: BTreeSet<String> = devices
        .iter()
        .filter(|d| !canary.contains(&d.mac) && in_share(&d.mac, 50))
        .map(|d| d.mac.clone())
        .collect();
    assert!(!first.is_empty() && first.len() < 10, "{first:?}");
    assert_eq!(round(&mut devices, http), first, "wave 1: half the fleet");
    let s = wait_staged(http, "wave 2", |s| s["wave"] == 2);
    assert_eq!(s["share"], 100);
    let rest: BTreeSet<String> = devices
        .iter()
        .filter(|d| d.version == "v1.0.0")
        .map(|d| d.mac.clone())
        .collect();
    assert_eq!(round(&mut devices, http), rest, "wave 2: the rest");
    let s = wait_staged(http, "every device confirmed", |s| s["confirmed"] == 12);
    assert_eq!(
        (s["admitted"].as_u64(), s["failed"].as_u64()),
        (Some(12), Some(0))
    );
    assert_eq!(round(&mut devices, http), BTreeSet::new(), "all up to date");

    let fleet_status = Subscriber::new(&world.broker.url(), FLEET_TOPIC);
    wait_until(DEADLINE, "a fleet_status with the last wave", || {
        fleet_status
            .recv_json(Duration::from_millis(500))
            .is_some_and(|m| m["images"][0]["staged"]["wave"] == 2)
    });
    let (_, metrics) = http_get(http, "/metrics", &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    let wave =
        format!("gator_ota_rollout_wave{{pointer=\"/current_version.txt\",image=\"{IMAGE}\"}} 2");
    assert!(metrics.lines().any(|l| l == wave), "{metrics}");
    let text = gator_ota_status(&settings, &world, &http.to_string());
    assert!(
        text.contains("staged rollout: wave 2 of 2 (100%), running; 12 admitted, 12 confirmed"),
        "{text}"
    );
    let (_, page) = http_get(http, "/", &[]);
    assert!(
        String::from_utf8(page)
            .unwrap()
            .contains("Staged rollout: wave 2 of 2")
    );
    assert!(gw.log().contains("staged rollout: next wave"));
}

#[test]
fn failures_past_the_threshold_pause_until_the_cloud_resumes() {
    let world = World::new();
    // The canary's second device flashes an image that does not boot.
    let mut devices: Vec<DataGator> = (0..6)
        .map(|i| DataGator::new(i, &world.broker, i != 1))
        .collect();
    let settings = rollout_settings(
        &world,
        &format!(
            "canary = [{:?}, {:?}]\nwaves = [50, 100]\nsuccess_percent = 100\nfailure_percent = 40\n",
            devices[0].mac, devices[1].mac
        ),
    );
    let gw = start_gateway(&world, &settings);
    let http = gw.http_addr();
    for d in &devices {
        d.telemetry();
    }
    install_esp_image(&world, "rollout-1", IMAGE, 64 * 1024, 9);
    wait_staged(http, "the rollout at the canary", |s| s["admitted"] == 2);
    let served = round(&mut devices, http);
    assert_eq!(served.len(), 2, "{served:?}");
    // Past boot_grace (1 s) the canary still on v1.0.0 failed: 1 of 2 is
    // over 40 %.
    let s = wait_staged(http, "paused", |s| s["status"] == "paused");
    assert_eq!(
        (s["wave"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("rollout.failure_percent"),
        "{s}"
    );
    gw.wait_log("staged rollout stopped");
    // Paused: the failed canary asking again stays on its version.
    assert_eq!(devices[1].ota_check(http), Some(304));

    control(&world, json!({"id": "c1", "action": "resume"}));
    wait_staged(http, "running again", |s| s["status"] == "running");
    // The failure already seen is tolerated: the canary may try again,
    // and this time the image boots.
    devices[1].boots = true;
    assert_eq!(devices[1].ota_check(http), Some(200));
    devices[1].telemetry();
    wait_staged(http, "wave 1 once the canary is confirmed", |s| {
        s["wave"] == 1
    });
}

#[test]
fn the_cloud_pauses_pins_and_aborts_and_the_state_outlives_a_restart() {
    let world = World::new();
    let mut devices: Vec<DataGator> = (0..4)
        .map(|i| DataGator::new(i, &world.broker, true))
        .collect();
    // One canary, which never reports the new version here: the rollout
    // stays at the canary.
    let settings = rollout_settings(
        &world,
        &format!("canary = [{:?}]\nwaves = [50, 100]\n", devices[0].mac),
    );
    let (gw, http) = start_rollout(&world, &settings, &devices);
    wait_staged(http, "the rollout at the canary", |s| s["admitted"] == 1);

    // Bad control messages: a named field in the log, nothing changes.
    control(&world, json!({"id": "bad1", "action": "stop"}));
    gw.wait_line(&["rollout message refused", "field=action", "bad1"]);
    control(
        &world,
        json!({"id": "bad2", "action": "pin", "image": IMAGE}),
    );
    gw.wait_line(&["rollout message refused", "field=mac", "bad2"]);
    control(
        &world,
        json!({"id": "bad3", "action": "pin", "mac": 7, "image": IMAGE}),
    );
    gw.wait_line(&["rollout message refused", "field=mac", "bad3"]);
    assert_eq!(staged(http)["status"], "running");

    // Pause: even the canary is held.
    control(
        &world,
        json!({"id": "c1", "action": "pause", "image": IMAGE}),
    );
    wait_staged(http, "paused", |s| s["status"] == "paused");
    assert_eq!(devices[0].ota_check(http), Some(304));
    control(&world, json!({"id": "c2", "action": "resume"}));
    wait_staged(http, "running", |s| s["status"] == "running");
    assert_eq!(devices[0].ota_check(http), Some(200));

    // Pin: a device outside the wave takes the image; one pinned to the
    // old image is held even once the rollout would reach it.
    assert_eq!(devices[1].ota_check(http), Some(304));
    let pin =
        |mac: &str, image: &str| json!({"id": "p", "action": "pin", "mac": mac, "image": image});
    control(&world, pin(&devices[1].mac, IMAGE));
    control(&world, pin(&devices[2].mac, "datagator_v1.0.0.bin"));
    wait_until(DEADLINE, "both pins", || {
        status_json(http)["pins"]
            .as_object()
            .is_some_and(|p| p.len() == 2)
    });
    assert_eq!(devices[1].ota_check(http), Some(200));
    assert_eq!(devices[2].ota_check(http), Some(304));

    // Abort: devices not yet updated stay on their version, for good.
    control(&world, json!({"id": "c3", "action": "abort"}));
    wait_staged(http, "aborted", |s| s["status"] == "aborted");
    assert_eq!(devices[3].ota_check(http), Some(304));
    control(&world, json!({"id": "c4", "action": "resume"}));
    gw.wait_line(&["rollout message refused", "was aborted", "c4"]);

    gw.terminate();
    let file = world.data_dir().join(".gator-ota/rollout.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        saved["pointers"]["/current_version.txt"]["status"],
        "aborted"
    );

    let offline = gator_ota_status(&settings, &world, &http.to_string());
    assert!(offline.contains("from the files on disk"), "{offline}");
    assert!(
        offline.contains("staged rollout: canary, aborted"),
        "{offline}"
    );
    assert!(
        offline.contains(&format!("pinned: {} to {IMAGE}", devices[1].mac)),
        "{offline}"
    );

    let gw = start_gateway(&world, &settings);
    let http = gw.http_addr();
    let s = wait_staged(http, "the rollout after the restart", |s| !s.is_null());
    assert_eq!(
        (s["status"].as_str(), s["wave"].as_u64()),
        (Some("aborted"), Some(0))
    );
    assert_eq!(devices[3].ota_check(http), Some(304), "still aborted");
    let pins = status_json(http)["pins"].clone();
    assert_eq!(pins[&devices[2].mac], "datagator_v1.0.0.bin", "{pins}");
    assert_eq!(devices[2].ota_check(http), Some(304), "still pinned");
}

#[test]
fn with_rollouts_off_every_device_is_served() {
    let world = World::new();
    let file = world.dir.path().join("off.toml");
    std::fs::write(&file, "[rollout]\ncanary = [\"24:6F:28:00:00:00\"]\n").unwrap();
    let gw = start_gateway(&world, &file);
    let http = gw.http_addr();
    install_esp_image(&world, "rollout-1", IMAGE, 64 * 1024, 9);
    let mut devices: Vec<DataGator> = (0..3)
        .map(|i| DataGator::new(i, &world.broker, true))
        .collect();
    assert_eq!(round(&mut devices, http).len(), 3);
    assert!(status_json(http)["images"][0].get("staged").is_none());
    control(&world, json!({"id": "c1", "action": "pause"}));
    gw.wait_line(&["rollout message refused", "rollout.enabled", "c1"]);
}
