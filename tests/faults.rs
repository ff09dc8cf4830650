//! Fault injection: the flow survives what a gateway in a field meets — a
//! cut transfer, a killed process, an outage, a corrupted object, a full
//! disk, a storm of duplicates — against the real broker and S3 server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use gator_ota_testkit::{Action, Fault, S3Front};
use serde_json::json;

/// Settings that make faults quick to recover from and transfers slow
/// enough to interrupt: `rate` bytes per second. Tests that interrupt a
/// transfer at 20 % leave it several seconds to run, so a slow machine
/// still interrupts it mid-way.
fn env_with(world: &World, rate: u64) -> Vec<(String, String)> {
    let mut env = world.env();
    for (k, v) in [
        ("GATOR_OTA__JOBS__BACKOFF_MIN", "100ms"),
        ("GATOR_OTA__JOBS__BACKOFF_MAX", "500ms"),
        ("GATOR_OTA__JOBS__ATTEMPTS", "40"),
        ("GATOR_OTA__JOBS__IDLE_TIMEOUT", "3s"),
        (
            "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__MAX_BYTES_PER_SECOND",
            &rate.to_string(),
        ),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    env.extend(status_env());
    env
}

const MIB: u64 = 1024 * 1024;

#[test]
fn a_cut_transfer_resumes_with_a_ranged_get() {
    let mut world = World::new();
    let sha = world
        .s3
        .put_random_object(BUCKET, "fw/big.bin", 12 * MIB, 7);
    let gw = Gateway::start(env_with(&world, 2 * MIB));
    let confirms = world.confirms();

    world.publish_json(&firmware_image("cut", "big", "fw/big.bin"));
    gw.wait_log("percent=20");
    world.s3.stop();
    gw.wait_log("download attempt failed");
    world.s3.restart();

    let confirm = confirms
        .recv_json(Duration::from_secs(60))
        .expect("confirm after the resume");
    assert_eq!(confirm["file_name"], "big");
    assert_eq!(sha256_file(&world.image("big")), sha);
    gw.wait_log("resuming with a ranged GET");
    assert_eq!(
        gw.count("downloading bytes="),
        1,
        "the download started once:\n{}",
        gw.log()
    );
}

#[test]
fn a_killed_gateway_finishes_the_job_after_restart_with_one_confirm() {
    let world = World::new();
    let sha = world
        .s3
        .put_random_object(BUCKET, "fw/big.bin", 12 * MIB, 8);
    let env = env_with(&world, 2 * MIB);
    let confirms = world.confirms();

    let gw = Gateway::start(env.clone());
    world.publish_json(&firmware_image("killed", "big", "fw/big.bin"));
    gw.wait_log("percent=20");
    gw.kill();
    assert!(
        !world.image("big").exists(),
        "nothing at disk_path mid-download"
    );

    let gw = Gateway::start(env);
    let confirm = confirms
        .recv_json(Duration::from_secs(60))
        .expect("confirm after the restart");
    assert_eq!(confirm["file_name"], "big");
    assert_eq!(sha256_file(&world.image("big")), sha);
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "big");
    gw.wait_log("resuming an unfinished job");
    gw.wait_log("resuming with a ranged GET");
    confirms.expect_none(Duration::from_secs(1));
    let journal = files_under(&world.data_dir().join(".gator-ota/jobs"));
    assert!(
        journal.is_empty(),
        "finished jobs leave the journal: {journal:?}"
    );
}

#[test]
fn a_broker_outage_during_a_job_does_not_lose_the_confirm() {
    let mut world = World::new();
    let sha = world.s3.put_random_object(BUCKET, "fw/big.bin", 8 * MIB, 9);
    let gw = Gateway::start(env_with(&world, 2 * MIB));

    world.publish_json(&firmware_image("outage", "big", "fw/big.bin"));
    gw.wait_log("percent=20");
    world.broker.stop();
    gw.wait_log("lost the broker connection");
    world.broker.restart();
    let confirms = world.confirms();
    gw.wait_count("subscribed", 2);

    let confirm = confirms
        .recv_json(Duration::from_secs(60))
        .expect("confirm after the outage");
    assert_eq!(confirm["file_name"], "big");
    assert_eq!(sha256_file(&world.image("big")), sha);
}

#[test]
fn messages_published_while_the_gateway_is_offline_arrive_after_it_reconnects() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let env = world.env();
    let confirms = world.confirms();
    // The first run registers the persistent session on the broker.
    Gateway::start(env.clone()).kill();

    world.publish_json(&firmware_image("while-offline", "a", "fw/a.bin"));
    let _gw = Gateway::start(env);
    let confirm = confirms
        .recv_json(DEADLINE)
        .expect("the message queued by the broker is processed");
    assert_eq!(confirm["file_name"], "a");
}

#[test]
fn a_corrupted_object_is_caught_by_its_etag_and_keeps_the_old_image() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/v1.bin", b"version one");
    world.s3.put_object(BUCKET, "fw/v2.bin", b"version two");
    let gw = Gateway::start(env_with(&world, 0));
    let confirms = world.confirms();
    let statuses = Subscriber::new(&world.broker.url(), STATUS_TOPIC);
    let mut first = firmware_image("v1", "v1", "fw/v1.bin");
    first["disk_path"] = json!("firmware_images/current.bin");
    world.publish_json(&first);
    confirms.recv_json(DEADLINE).expect("v1 installed");

    // Flip bytes behind the server's back: its ETag (an MD5) no longer matches.
    std::fs::write(world.s3.object_path(BUCKET, "fw/v2.bin"), b"version tw0").unwrap();
    let mut second = firmware_image("v2", "v2", "fw/v2.bin");
    second["disk_path"] = json!("firmware_images/current.bin");
    world.publish_json(&second);

    let seen = statuses_until_done(&statuses, "v2");
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "FAILED", "{seen:?}");
    assert_eq!(last["reason"], "CHECKSUM_MISMATCH", "{seen:?}");
    assert_eq!(
        std::fs::read(world.data_dir().join("firmware_images/current.bin")).unwrap(),
        b"version one"
    );
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "v1");
    gw.wait_log("reason=CHECKSUM_MISMATCH");
    confirms.expect_none(Duration::from_millis(300));
}

#[test]
fn message_checksums_and_sizes_are_enforced() {
    let world = World::new();
    let sha = world.s3.put_random_object(BUCKET, "fw/a.bin", 100_000, 3);
    let _gw = Gateway::start(env_with(&world, 0));
    let confirms = world.confirms();
    let statuses = Subscriber::new(&world.broker.url(), STATUS_TOPIC);

    let mut wrong_sha = firmware_image("bad-sha", "a", "fw/a.bin");
    wrong_sha["sha256"] = json!("00".repeat(32));
    world.publish_json(&wrong_sha);
    assert_eq!(
        statuses_until_done(&statuses, "bad-sha").last().unwrap()["reason"],
        "CHECKSUM_MISMATCH"
    );

    let mut wrong_size = firmware_image("bad-size", "a", "fw/a.bin");
    wrong_size["size"] = json!(99_999);
    world.publish_json(&wrong_size);
    assert_eq!(
        statuses_until_done(&statuses, "bad-size").last().unwrap()["reason"],
        "SIZE_MISMATCH"
    );
    assert!(!world.image("a").exists());
    assert!(!world.pointer().exists());

    let mut right = firmware_image("right", "a", "fw/a.bin");
    right["sha256"] = json!(gator_ota_testkit::to_hex(&sha));
    right["size"] = json!(100_000);
    world.publish_json(&right);
    let seen = statuses_until_done(&statuses, "right");
    let states: Vec<_> = seen
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("QUEUED"),
        "{states:?}"
    );
    for state in ["DOWNLOADING", "DOWNLOADED", "VERIFIED", "INSTALLED"] {
        assert!(
            states.iter().any(|s| s == state),
            "{state} missing from {states:?}"
        );
    }
    assert_eq!(confirms.recv_json(DEADLINE).unwrap()["file_name"], "a");
}

#[test]
fn twenty_duplicates_download_once_and_confirm_each() {
    let world = World::new();
    world.s3.put_random_object(BUCKET, "fw/a.bin", 2 * MIB, 4);
    let gw = world.gateway();
    let confirms = world.confirms();

    for _ in 0..20 {
        world.publish_json(&firmware_image("dup", "a", "fw/a.bin"));
    }
    for i in 0..20 {
        confirms
            .recv_json(DEADLINE)
            .unwrap_or_else(|| panic!("confirm {i} of 20"));
    }
    assert_eq!(gw.count("downloading bytes="), 1, "{}", gw.log());
    gw.wait_count("already installed", 19);
    assert_eq!(gw.count("already installed"), 19, "{}", gw.log());
    confirms.expect_none(Duration::from_millis(300));
}

#[test]
fn old_images_are_pruned_but_the_current_one_stays() {
    let world = World::new();
    for v in 1..=5 {
        world.s3.put_object(
            BUCKET,
            &format!("fw/v{v}.bin"),
            format!("image {v}").as_bytes(),
        );
    }
    let mut env = world.env();
    env.push(("GATOR_OTA__JOBS__KEEP_IMAGES".into(), "2".into()));
    let _gw = Gateway::start(env);
    let confirms = world.confirms();
    let keep = world.data_dir().join("firmware_images/operator-file.txt");
    std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
    std::fs::write(&keep, "not ours").unwrap();

    for v in 1..=5 {
        world.publish_json(&firmware_image(
            &format!("v{v}"),
            &format!("v{v}"),
            &format!("fw/v{v}.bin"),
        ));
        confirms.recv_json(DEADLINE).expect("confirm");
    }
    let left: Vec<_> = files_under(&world.data_dir().join("firmware_images"))
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["operator-file.txt", "v4.bin", "v5.bin"]);
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "v5");
}

/// A tmpfs of `size` mounted over `dir` for the test's life.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); disk-full test not run",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); disk-full test not run");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_mid_write_fails_the_job_cleanly() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/old.bin", b"old image");
    world.s3.put_random_object(BUCKET, "fw/big.bin", 6 * MIB, 5);
    world
        .s3
        .put_random_object(BUCKET, "fw/huge.bin", 12 * MIB, 6);
    let Some(_disk) = SmallDisk::mount(&world.data_dir(), "10m") else {
        return;
    };
    let mut env = env_with(&world, MIB);
    env.push(("GATOR_OTA__JOBS__RESERVE_BYTES".into(), "0".into()));
    let gw = Gateway::start(env);
    let confirms = world.confirms();
    let statuses = Subscriber::new(&world.broker.url(), STATUS_TOPIC);

    world.publish_json(&firmware_image("old", "old", "fw/old.bin"));
    confirms.recv_json(DEADLINE).expect("old installed");

    // Too big from the start: refused before a byte is written.
    world.publish_json(&firmware_image("huge", "huge", "fw/huge.bin"));
    assert_eq!(
        statuses_until_done(&statuses, "huge").last().unwrap()["reason"],
        "NO_SPACE"
    );

    // Fits at first, then something else takes the space mid-write.
    world.publish_json(&firmware_image("big", "big", "fw/big.bin"));
    gw.wait_log("percent=20");
    let filler = world.data_dir().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 7 * MIB as usize]);
    let seen = statuses_until_done(&statuses, "big");
    assert_eq!(seen.last().unwrap()["reason"], "NO_SPACE", "{seen:?}");

    assert_eq!(std::fs::read(world.image("old")).unwrap(), b"old image");
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "old");
    assert!(!world.image("big").exists());
    let temporaries: Vec<_> = files_under(&world.data_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/.gator-ota-"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    confirms.expect_none(Duration::from_millis(300));
}

#[test]
fn an_object_replaced_mid_download_is_fetched_again_whole() {
    let world = World::new();
    world.s3.put_random_object(BUCKET, "fw/a.bin", 8 * MIB, 10);
    // The first GET stops sending after 1 MiB, so the object is replaced
    // mid-download however much of it the socket buffers could hold (a
    // stopped server lets the client read all it had sent).
    let front = S3Front::start(&world.s3);
    front.add(Fault::get("fw/a.bin", Action::StallAfter(MIB)).times(1));
    let mut env = env_with(&world, MIB);
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT".into(),
        front.endpoint(),
    ));
    let gw = Gateway::start(env);
    let confirms = world.confirms();

    world.publish_json(&firmware_image("replaced", "a", "fw/a.bin"));
    gw.wait_log("percent=10");
    let new_sha = world.s3.put_random_object(BUCKET, "fw/a.bin", 6 * MIB, 11);

    confirms
        .recv_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no confirm for the new version; log:\n{}", gw.log()));
    assert_eq!(sha256_file(&world.image("a")), new_sha);
    gw.wait_log("starting over");
}

#[test]
fn a_burst_larger_than_every_queue_is_processed_whole_and_in_order() {
    let world = World::new();
    world
        .s3
        .put_random_object(BUCKET, "fw/slow.bin", 2 * MIB, 12);
    for i in 0..15 {
        world.s3.put_object(
            BUCKET,
            &format!("fw/s{i}.bin"),
            format!("small {i}").as_bytes(),
        );
    }
    let mut env = env_with(&world, MIB);
    for (k, v) in [
        ("GATOR_OTA__PIPELINE__QUEUE", "1"),
        ("GATOR_OTA__PIPELINE__OUTBOX_WINDOW", "1"),
        ("GATOR_OTA__PIPELINE__INBOX_WARNING", "1"),
        ("GATOR_OTA__JOBS__CONCURRENCY", "1"),
    ] {
        env.push((k.into(), v.into()));
    }
    let gw = Gateway::start(env);
    let confirms = world.confirms();

    world.publish_json(&firmware_image("slow", "slow", "fw/slow.bin"));
    for i in 0..15 {
        world.publish_json(&firmware_image(
            &format!("s{i}"),
            &format!("s{i}"),
            &format!("fw/s{i}.bin"),
        ));
    }
    let mut names = vec![];
    for _ in 0..16 {
        let c = confirms
            .recv_json(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("only {names:?} confirmed; log:\n{}", gw.log()));
        names.push(c["file_name"].as_str().unwrap().to_string());
    }
    let mut want: Vec<String> = (0..15).map(|i| format!("s{i}")).collect();
    want.insert(0, "slow".into());
    assert_eq!(names, want, "every message processed, in order");
    gw.wait_log("ingress is busy");
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "s14");
}

#[test]
fn a_confirm_made_while_the_broker_is_down_is_delivered_after_it_returns() {
    let state = tempfile::tempdir().unwrap();
    let broker = Broker::start_with_config(&format!(
        "persistence true\npersistence_location {}/\n",
        state.path().display()
    ));
    let mut world = World::with_broker(broker);
    world
        .s3
        .put_random_object(BUCKET, "fw/big.bin", 8 * MIB, 13);
    // The cloud's listener: a persistent session the broker keeps.
    drop(Subscriber::persistent(
        &world.broker.url(),
        CONFIRM_TOPIC,
        "cloud-listener",
    ));
    let gw = Gateway::start(env_with(&world, 2 * MIB));

    world.publish_json(&firmware_image("during-outage", "big", "fw/big.bin"));
    gw.wait_log("percent=20");
    world.broker.terminate();
    gw.wait_log("lost the broker connection");
    gw.wait_log("confirm_receipt sent"); // made while the broker is down
    world.broker.restart();

    let listener = Subscriber::persistent(&world.broker.url(), CONFIRM_TOPIC, "cloud-listener");
    let confirm = listener
        .recv_json(DEADLINE)
        .expect("the confirm kept by the gateway");
    assert_eq!(confirm["file_name"], "big");
    assert_eq!(confirm["id"], SYSTEM_ID);
}

#[test]
fn jobs_resumed_after_a_restart_run_before_new_messages() {
    let world = World::new();
    world.s3.put_random_object(BUCKET, "fw/a.bin", 4 * MIB, 20);
    for n in ["b", "c", "d", "e"] {
        world
            .s3
            .put_object(BUCKET, &format!("fw/{n}.bin"), n.as_bytes());
    }
    let mut env = env_with(&world, MIB);
    env.push(("GATOR_OTA__PIPELINE__QUEUE".into(), "1".into()));
    env.push(("GATOR_OTA__JOBS__CONCURRENCY".into(), "1".into()));
    let confirms = world.confirms();

    let gw = Gateway::start(env.clone());
    world.publish_json(&firmware_image("a", "a", "fw/a.bin"));
    gw.wait_log("percent=20");
    for n in ["b", "c", "d"] {
        world.publish_json(&firmware_image(n, n, &format!("fw/{n}.bin")));
    }
    gw.wait_line(&["queued", "msg_id=d"]); // journalled
    gw.kill();

    // More unfinished jobs than the queue holds, and a new message at once.
    let _gw = Gateway::start(env);
    world.publish_json(&firmware_image("e", "e", "fw/e.bin"));
    let mut order = vec![];
    for _ in 0..5 {
        let c = confirms
            .recv_json(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("only {order:?} confirmed"));
        order.push(c["file_name"].as_str().unwrap().to_string());
    }
    assert_eq!(order, ["a", "b", "c", "d", "e"]);
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "e");
}
