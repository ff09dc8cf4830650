//! The fleet view: simulated Data Gators that follow the firmware's own loop
//! (`include/update.cpp`) against a real gateway with two brokers (the
//! cloud's and the local one the devices talk to), the real S3 server and
//! the firmware server; then what the registry, `/status.json`, `/metrics`,
//! `/healthz`, `fleet_status`, `gator-ota status` and the status page (in
//! headless Chromium) say about them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::device::{DataGator, http_get, install_esp_image, status_json};
use common::*;
use gator_ota_testkit::Publisher;
use serde_json::Value;

const IMAGE: &str = "datagator_v1.0.1.bin";
const FLEET_TOPIC: &str = "scarecro/fleet_status";

/// A gateway whose Data Gator addresses are on a second MQTT carrier,
/// `local`, and which sends `fleet_status` to the cloud.
fn fleet_settings(world: &World, local: &Broker, extra: &str) -> PathBuf {
    let local_table = local_carrier_table(local);
    let file = world.dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "{local_table}\n\
             [fleet]\nboot_grace = \"2s\"\nstatus_min_interval = \"100ms\"\nstatus_interval = \"2s\"\n{extra}\n\
             [addresses.datagator_ota_status]\ncarrier = \"local\"\n\
             [addresses.datagator_ota]\ncarrier = \"local\"\n\
             [addresses.datagator_tlm]\ncarrier = \"local\"\n\
             [addresses.cloud_fleet]\ncarrier = \"mqtt\"\nsend_or_receive = \"send\"\n\
             message_type = [\"fleet_status\"]\nduration = \"on_message\"\ntopic = \"{FLEET_TOPIC}\"\n"
        ),
    )
    .unwrap();
    file
}

fn start_gateway(world: &World, settings: &Path) -> Gateway {
    let mut env = world.env();
    env.push((
        "GATOR_OTA_SETTINGS".into(),
        settings.to_str().unwrap().into(),
    ));
    let gw = Gateway::spawn(env);
    gw.wait_count("subscribed", 2);
    gw
}

fn text(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = http_get(addr, path, &[]);
    (status, String::from_utf8(body).unwrap())
}

/// One OTA check as the firmware makes it, then the reboot's telemetry
/// with whatever version came up (rollouts are off: every update is served).
fn ota_check(d: &mut DataGator, http: SocketAddr) {
    if let Some(status) = d.ota_check(http) {
        assert_eq!(status, 200, "the image");
        d.telemetry();
    }
}

/// `n` Data Gators, every `bad`-th one flashing an image that does not boot.
fn fleet(n: usize, bad: usize, local: &Broker) -> Vec<DataGator> {
    (0..n)
        .map(|i| DataGator::new(i, local, i % bad != bad - 1))
        .collect()
}

/// Every device runs its OTA check at once, each on its own thread.
fn all_check(devices: &mut [DataGator], http: SocketAddr) {
    std::thread::scope(|s| {
        for d in devices.iter_mut() {
            s.spawn(move || ota_check(d, http));
        }
    });
}

fn states(report: &Value) -> BTreeMap<String, u64> {
    let Some(states) = report["images"][0]["states"].as_object() else {
        return BTreeMap::new();
    };
    states
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

fn wait_for_states(addr: SocketAddr, confirmed: u64, failed: u64) -> Value {
    let mut last = Value::Null;
    let what = format!("{confirmed} confirmed and {failed} failed");
    wait_until(DEADLINE, &what, || {
        last = status_json(addr);
        let s = states(&last);
        s.get("confirmed") == Some(&confirmed) && s.get("failed") == Some(&failed)
    });
    last
}

fn gator_ota(args: &[&str], settings: &Path, world: &World) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gator-ota"));
    cmd.args(args).arg("--settings").arg(settings);
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

/// `/metrics` counts the same: one job, every image served whole, the
/// devices by version and rollout state, both carriers connected.
fn check_metrics(http: SocketAddr, n: usize, failing: u64) {
    let (status, metrics) = text(http, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "gator_ota_jobs_total{outcome=\"INSTALLED\",reason=\"\"} 1".to_string(),
        format!("gator_ota_images_served_total{{image=\"{IMAGE}\",outcome=\"completed\"}} {n}"),
        format!(
            "gator_ota_devices{{version=\"v1.0.1\"}} {}",
            n as u64 - failing
        ),
        format!(
            "gator_ota_rollout_devices{{pointer=\"/current_version.txt\",image=\"{IMAGE}\",state=\"failed\"}} {failing}"
        ),
        "gator_ota_mqtt_connected{carrier=\"local\"} 1".to_string(),
        "gator_ota_mqtt_connected{carrier=\"mqtt\"} 1".to_string(),
        "gator_ota_downloaded_bytes_total 204800".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
}

/// The first `fleet_status` on the cloud broker with `report`'s rollout.
fn fleet_status_like(sub: &Subscriber, report: &Value) -> Value {
    let mut seen = None;
    wait_until(DEADLINE, "a fleet_status with the outcome", || {
        while let Some(m) = sub.recv_json(Duration::from_millis(200)) {
            if m["images"][0]["states"] == report["images"][0]["states"] {
                seen = Some(m);
                return true;
            }
        }
        false
    });
    seen.unwrap()
}

#[test]
fn fifty_data_gators_take_an_image_and_every_view_agrees() {
    let world = World::new();
    let local = Broker::start();
    let settings = fleet_settings(&world, &local, "");
    let gw = start_gateway(&world, &settings);
    let http = gw.http_addr();
    let fleet_status = Subscriber::new(&world.broker.url(), FLEET_TOPIC);
    let (n, bad) = (50, 10);
    let mut devices = fleet(n, bad, &local);
    let failing = (n / bad) as u64;
    for d in &devices {
        d.telemetry();
    }
    wait_until(DEADLINE, "every device in the registry", || {
        status_json(http)["devices"].as_array().unwrap().len() == n
    });

    install_esp_image(&world, "fleet-1", IMAGE, 200 * 1024, 5);
    all_check(&mut devices, http);
    // The ones that did not come back on v1.0.1 are "finished" until the
    // grace period (2 s) is over, then failed.
    let report = wait_for_states(http, n as u64 - failing, failing);
    assert_eq!(report["images"][0]["image"], IMAGE);
    assert_eq!(report["images"][0]["version"], "v1.0.1");
    assert_eq!(report["images"][0]["devices"], n);
    assert_eq!(report["versions"]["v1.0.1"], n as u64 - failing);
    assert_eq!(report["versions"]["v1.0.0"], failing);
    for d in report["devices"].as_array().unwrap() {
        let served = &d["served"][0];
        assert_eq!(
            (served["image"].as_str(), served["completed"].as_bool()),
            (Some(IMAGE), Some(true)),
            "{d}"
        );
        if d["rollout"] == "failed" {
            assert_eq!(d["version"], "v1.0.0");
            assert_eq!(
                d["failure"], "finished but still runs the old version",
                "{d}"
            );
        }
    }
    assert_eq!(report["health"]["ok"], true, "{report}");
    assert_eq!(text(http, "/healthz").0, 200);

    check_metrics(http, n, failing);
    let seen = fleet_status_like(&fleet_status, &report);
    assert_eq!(seen["id"], SYSTEM_ID);
    assert_eq!(seen["devices"].as_array().unwrap().len(), n);

    gw.terminate();
    registry_outlives_the_service(&world, &settings, &report, http, &devices[bad - 1].mac);
}

/// While the service is down `gator-ota status` reads its files; started
/// again, it has every device back.
fn registry_outlives_the_service(
    world: &World,
    settings: &Path,
    report: &Value,
    gone: SocketAddr,
    failed_mac: &str,
) {
    let n = report["devices"].as_array().unwrap().len();
    let confirmed = states(report)["confirmed"];
    // Asked where the stopped service listened (the default address might
    // be another program's).
    let offline = gator_ota(&["status", "--url", &gone.to_string()], settings, world);
    assert!(offline.contains("from the files on disk"), "{offline}");
    assert!(
        offline.contains(&format!("{confirmed} of {n} confirmed")),
        "{offline}"
    );
    let line = offline.lines().find(|l| l.starts_with(failed_mac)).unwrap();
    assert!(line.contains("failed") && line.contains("v1.0.0"), "{line}");

    let gw = start_gateway(world, settings);
    let http = gw.http_addr();
    let mut again = Value::Null;
    wait_until(DEADLINE, "the same rollout after the restart", || {
        again = status_json(http);
        states(&again) == states(report)
    });
    let summary = |r: &Value| -> Vec<(Value, Value, Value)> {
        let mut d: Vec<_> = r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["mac"].clone(),
                    d["version"].clone(),
                    d["served"][0]["completed"].clone(),
                )
            })
            .collect();
        d.sort_by_key(|t| t.0.to_string());
        d
    };
    assert_eq!(summary(&again), summary(report));
    let online = gator_ota(&["status", "--url", &http.to_string()], settings, world);
    assert!(
        online.contains("from the running service") && online.contains("health: ok"),
        "{online}"
    );
}

#[test]
fn the_registry_survives_a_kill() {
    let world = World::new();
    let local = Broker::start();
    let settings = fleet_settings(&world, &local, "");
    let gw = start_gateway(&world, &settings);
    let devices = fleet(3, 3, &local);
    for d in &devices {
        d.telemetry();
    }
    let file = world.data_dir().join(".gator-ota/fleet.json");
    wait_until(DEADLINE, "every device in fleet.json", || {
        std::fs::read_to_string(&file).is_ok_and(|s| devices.iter().all(|d| s.contains(&d.mac)))
    });
    gw.kill();
    let gw = start_gateway(&world, &settings);
    let r = status_json(gw.http_addr());
    let back: Vec<(&str, &str)> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["mac"].as_str().unwrap(), d["version"].as_str().unwrap()))
        .collect();
    assert_eq!(back.len(), 3, "{back:?}");
    assert!(back.iter().all(|(_, v)| *v == "v1.0.0"), "{back:?}");
}

#[test]
fn bad_device_messages_are_logged_and_the_registry_stays_bounded() {
    let world = World::new();
    let mut local = Broker::start();
    let settings = fleet_settings(&world, &local, "max_devices = 5\n");
    let mut env = world.env();
    env.extend(status_env());
    env.push((
        "GATOR_OTA_SETTINGS".into(),
        settings.to_str().unwrap().into(),
    ));
    let gw = Gateway::spawn(env);
    gw.wait_count("subscribed", 2);
    let http = gw.http_addr();
    let statuses = Subscriber::new(&world.broker.url(), STATUS_TOPIC);
    let device = Publisher::new(&local.url());
    let mac = "24:6F:28:AA:BB:CC";
    device.send(&format!("datagator/tlm/{mac}"), "{not json");
    device.send(
        &format!("datagator/tlm/{mac}"),
        r#"{"FIRMWARE_VERSION": 7}"#,
    );
    device.send(
        "datagator/tlm/not-a-mac",
        r#"{"FIRMWARE_VERSION": "V1.0.0"}"#,
    );
    device.send(
        &format!("datagator/ota_status/{mac}"),
        r#"{"STATUS_MSG": "dancing"}"#,
    );
    device.send(&format!("datagator/ota/{mac}"), &"x".repeat(100 * 1024));
    gw.wait_line(&[
        "device message ignored",
        "FIRMWARE_VERSION",
        "not a version",
    ]);
    gw.wait_line(&["device message ignored", "does not end in a MAC address"]);
    gw.wait_line(&["device message ignored", "dancing"]);
    gw.wait_line(&["payload is not JSON", "datagator/tlm/"]);
    gw.wait_line(&["larger than pipeline.max_payload_bytes", "datagator/ota/"]);
    // None of it is a firmware job: the cloud hears of no failure.
    statuses.expect_none(Duration::from_millis(500));

    device.send(
        &format!("datagator/tlm/{mac}"),
        r#"{"FIRMWARE_VERSION": "V1.0.0"}"#,
    );
    wait_until(DEADLINE, "the first device in the registry", || {
        status_json(http)["devices"][0]["mac"] == mac
    });
    for i in 0..20 {
        device.send(
            &format!("datagator/tlm/24:6F:28:00:00:{i:02X}"),
            r#"{"FIRMWARE_VERSION": "V1.0.0"}"#,
        );
    }
    wait_until(DEADLINE, "the newest device in the registry", || {
        let r = status_json(http);
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["mac"] == "24:6F:28:00:00:13")
    });
    let r = status_json(http);
    let macs: Vec<&str> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs.len(), 5, "{macs:?}");
    assert!(
        !macs.contains(&mac),
        "the device seen longest ago went first: {macs:?}"
    );
    assert!(gw.is_running());

    // The local broker gone: not healthy, and it says why.
    local.terminate();
    wait_until(DEADLINE, "/healthz to answer 503", || {
        text(http, "/healthz").0 == 503
    });
    let (_, body) = text(http, "/healthz");
    assert!(
        body.contains("MQTT carrier local is not connected"),
        "{body}"
    );
}

#[test]
fn healthz_names_a_stuck_job_and_a_disk_below_the_reserve() {
    use gator_ota_testkit::{Action, Fault, S3Front};
    let world = World::new();
    let local = Broker::start();
    let front = S3Front::start(&world.s3);
    let key = format!("fw/{IMAGE}");
    world.s3.put_object(BUCKET, &key, &[0xE9; 1000]);
    front.add(Fault::get(
        &key,
        Action::DelayHeaders(Duration::from_secs(3600)),
    ));
    let settings = fleet_settings(&world, &local, "stuck_job = \"1s\"\n");
    let mut env = world.env();
    env.push((
        "GATOR_OTA_SETTINGS".into(),
        settings.to_str().unwrap().into(),
    ));
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT".into(),
        front.endpoint(),
    ));
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__HEADER_TIMEOUT".into(),
        "1h".into(),
    ));
    let gw = Gateway::spawn(env.clone());
    gw.wait_count("subscribed", 2);
    let http = gw.http_addr();
    wait_until(DEADLINE, "/healthz to answer 200", || {
        text(http, "/healthz").0 == 200
    });

    // A job whose GET is never answered runs past fleet.stuck_job.
    world.publish_json(&firmware_image("stuck-1", IMAGE, &key));
    wait_until(DEADLINE, "/healthz to answer 503", || {
        text(http, "/healthz").0 == 503
    });
    let (_, body) = text(http, "/healthz");
    assert!(body.contains("longer than fleet.stuck_job"), "{body}");
    assert!(!body.contains("reserve_bytes ("), "{body}");
    let (_, metrics) = text(http, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "gator_ota_jobs_running 1"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "gator_ota_healthy 0"),
        "{metrics}"
    );
    drop(gw);

    // More space asked to be kept free than the disk has.
    env.push((
        "GATOR_OTA__JOBS__RESERVE_BYTES".into(),
        "1000000000000000000".into(),
    ));
    let gw = Gateway::spawn(env);
    gw.wait_count("subscribed", 2);
    let http = gw.http_addr();
    wait_until(DEADLINE, "the free space in /healthz", || {
        text(http, "/healthz")
            .1
            .contains("not over jobs.reserve_bytes")
    });
    assert_eq!(text(http, "/healthz").0, 503);
}

#[test]
fn the_status_page_renders_in_a_browser() {
    let world = World::new();
    let local = Broker::start();
    let settings = fleet_settings(&world, &local, "");
    let gw = start_gateway(&world, &settings);
    let http = gw.http_addr();
    let mut devices = fleet(4, 4, &local);
    install_esp_image(&world, "fleet-1", IMAGE, 64 * 1024, 5);
    all_check(&mut devices, http);
    wait_for_states(http, 3, 1);
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet");
    std::fs::create_dir_all(&artefacts).unwrap();
    let url = format!("http://{http}/");
    let dom = chromium(&["--dump-dom", &url]);
    let text = visible_text(&dom);
    for part in [
        "Current image v1.0.1",
        IMAGE,
        "3 of 4 devices",
        "Devices (4)",
        "finished but still runs the old version",
        "Last jobs",
        "fleet-1",
        "Healthy",
    ] {
        assert!(
            text.contains(part),
            "no {part:?} in the rendered page:\n{text}"
        );
    }
    for d in &devices {
        assert!(text.contains(&d.mac), "no {} in the rendered page", d.mac);
    }
    assert!(!dom.contains("<script"), "the page has no script");
    let shot = artefacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        "--window-size=412,915",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "a real screenshot at {}",
        shot.display()
    );
    println!("status page screenshot: {}", shot.display());
}

/// Headless Chromium with a profile of its own, nothing fetched but `url`.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium (Debian's package; deploy/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The text a reader sees: the DOM without its tags, entities decoded.
fn visible_text(dom: &str) -> String {
    let body = dom.split("<body").nth(1).unwrap_or(dom);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
