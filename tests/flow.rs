//! The firmware flow end to end: a real broker, a real S3-protocol server
//! with SigV4 credentials, and the real `gator-ota` binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn happy_path_installs_image_and_pointer_then_confirms() {
    let world = World::new();
    let sha = world.s3.put_random_object(
        BUCKET,
        "data-gator/gator_1.2.3.bin",
        3 * 1024 * 1024 + 17,
        1,
    );
    let gw = world.gateway();
    let confirms = world.confirms();

    world.publish_json(&json!({
        "id": "cloud-1",
        "time": "2026-11-27T10:00:00.000000",
        "file_name": "gator_1.2.3",
        "cloud_path": "data-gator/gator_1.2.3.bin",
        "confirm_receipt": true,
    }));

    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["id"], SYSTEM_ID);
    assert_eq!(confirm["file_name"], "gator_1.2.3");
    assert_eq!(confirm["confirm_receipt"], true);
    assert_eq!(confirm.as_object().unwrap().len(), 4, "{confirm}");
    let time = confirm["time"].as_str().unwrap();
    assert_eq!(time.len(), 26, "{time}");
    chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S%.6f")
        .expect("SCARECRO time format");

    assert_eq!(sha256_file(&world.image("gator_1.2.3")), sha);
    assert_eq!(
        std::fs::read_to_string(world.pointer()).unwrap(),
        "gator_1.2.3"
    );
    gw.wait_log("msg_id=cloud-1");
    let leftovers: Vec<_> = files_under(&world.data_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".gator-ota-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn no_confirm_when_not_asked() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let gw = world.gateway();
    let confirms = world.confirms();

    let mut msg = firmware_image("m-no-confirm", "a", "fw/a.bin");
    msg["confirm_receipt"] = json!(false);
    world.publish_json(&msg);

    gw.wait_log("confirm_receipt not requested");
    assert_eq!(std::fs::read(world.image("a")).unwrap(), b"image a");
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "a");
    confirms.expect_none(Duration::from_millis(500));
}

#[test]
fn explicit_paths_inside_the_data_dir_are_honoured() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/b.bin", b"image b");
    let gw = world.gateway();
    let confirms = world.confirms();
    let image = world.data_dir().join("gators/field-3/b-image.bin");

    let mut msg = firmware_image("m-paths", "b", "fw/b.bin");
    msg["disk_path"] = json!(image.to_str().unwrap());
    msg["config_path"] = json!("gators/field-3/current.txt");
    world.publish_json(&msg);

    confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(std::fs::read(&image).unwrap(), b"image b");
    assert_eq!(
        std::fs::read_to_string(world.data_dir().join("gators/field-3/current.txt")).unwrap(),
        "b"
    );
    drop(gw);
}

/// Each bad message gets its own log line and no side effect, and the good
/// message right after it is still processed.
#[test]
fn bad_input_is_rejected_and_the_next_message_still_works() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/good.bin", b"good image");
    let gw = world.gateway();
    let confirms = world.confirms();
    let outside = world.dir.path().join("outside-marker");
    std::fs::write(&outside, "untouched").unwrap();

    let bad: Vec<(String, &str)> = vec![
        ("this is not json {".into(), "payload is not JSON"),
        (json!({"id": "m2", "file_name": 42, "cloud_path": "fw/good.bin"}).to_string(), "field `file_name` must be a string, not a number"),
        (json!({"id": "m3", "cloud_path": "fw/good.bin"}).to_string(), "field `file_name` is missing"),
        (json!({"id": "m4", "file_name": "x"}).to_string(), "field `cloud_path` is missing"),
        (json!({"id": "m5", "file_name": "x", "cloud_path": "fw/x.bin", "confirm_receipt": "yes"}).to_string(), "field `confirm_receipt` must be true or false"),
        (json!({"id": "m6", "file_name": "missing", "cloud_path": "fw/does-not-exist.bin"}).to_string(), "does not exist in the bucket"),
        (json!({"id": "m7", "file_name": "x", "cloud_path": "fw/good.bin", "disk_path": outside.to_str().unwrap()}).to_string(), "is outside the allowed folders"),
        (json!({"id": "m8", "file_name": "x", "cloud_path": "fw/good.bin", "config_path": "../outside-marker"}).to_string(), "has a `..`"),
        (json!({"id": "m9", "file_name": "../../x", "cloud_path": "fw/good.bin"}).to_string(), "must be a plain file name"),
        ("[1, 2, 3]".into(), "the content is not a JSON object"),
    ];
    for (payload, expected) in &bad {
        publish(&world.broker.url(), RECEIVE_TOPIC, payload);
        gw.wait_log(expected);
        world.publish_json(&firmware_image("good", "good", "fw/good.bin"));
        let confirm = confirms
            .recv_json(DEADLINE)
            .expect("the good message is confirmed");
        assert_eq!(confirm["file_name"], "good", "after {payload}");
    }
    gw.wait_log("msg_id=m6");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched");
    let written: Vec<_> = files_under(&world.data_dir().join("firmware_images"));
    assert_eq!(
        written,
        vec![world.image("good")],
        "only the good image is on disk"
    );
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "good");
    confirms.expect_none(Duration::from_millis(300));
}

#[test]
fn wrong_credentials_fail_cleanly_and_the_service_goes_on() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let mut env = world.env();
    env.retain(|(k, _)| !k.ends_with("SECRET_ACCESS_KEY"));
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__SECRET_ACCESS_KEY".into(),
        "not-the-secret".into(),
    ));
    let gw = Gateway::start(env);
    let confirms = world.confirms();

    world.publish_json(&firmware_image("auth-1", "a", "fw/a.bin"));
    gw.wait_log("the bucket refused the credentials");
    world.publish_json(&firmware_image("auth-2", "a", "fw/a.bin"));
    gw.wait_count("the bucket refused the credentials", 2);

    assert!(!world.image("a").exists());
    assert!(!world.pointer().exists());
    confirms.expect_none(Duration::from_millis(300));
}

#[test]
fn unreachable_store_fails_cleanly_and_recovers() {
    let mut world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let gw = world.gateway();
    let confirms = world.confirms();

    world.s3.stop();
    world.publish_json(&firmware_image("down-1", "a", "fw/a.bin"));
    gw.wait_log("cannot fetch the object");
    assert!(!world.image("a").exists());
    assert!(!world.pointer().exists());

    world.s3.restart();
    world.publish_json(&firmware_image("up-1", "a", "fw/a.bin"));
    let confirm = confirms
        .recv_json(DEADLINE)
        .expect("confirm after the store is back");
    assert_eq!(confirm["file_name"], "a");
    assert_eq!(std::fs::read(world.image("a")).unwrap(), b"image a");
}

#[test]
fn two_messages_back_to_back() {
    let world = World::new();
    let sha_a = world
        .s3
        .put_random_object(BUCKET, "fw/a.bin", 2 * 1024 * 1024, 2);
    let sha_b = world
        .s3
        .put_random_object(BUCKET, "fw/b.bin", 1024 * 1024 + 3, 3);
    let _gw = world.gateway();
    let confirms = world.confirms();

    world.publish_json(&firmware_image("first", "a", "fw/a.bin"));
    world.publish_json(&firmware_image("second", "b", "fw/b.bin"));

    let first = confirms.recv_json(DEADLINE).expect("first confirm");
    let second = confirms.recv_json(DEADLINE).expect("second confirm");
    assert_eq!(
        (first["file_name"].as_str(), second["file_name"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(sha256_file(&world.image("a")), sha_a);
    assert_eq!(sha256_file(&world.image("b")), sha_b);
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), "b");
}

#[test]
fn a_64_mib_image_arrives_intact() {
    let world = World::new();
    let len = 64 * 1024 * 1024 + 5;
    let sha = world.s3.put_random_object(BUCKET, "fw/big.bin", len, 64);
    let _gw = world.gateway();
    let confirms = world.confirms();

    world.publish_json(&firmware_image("big", "big", "fw/big.bin"));

    let confirm = confirms
        .recv_json(Duration::from_secs(120))
        .expect("confirm for the big image");
    assert_eq!(confirm["file_name"], "big");
    assert_eq!(std::fs::metadata(world.image("big")).unwrap().len(), len);
    assert_eq!(sha256_file(&world.image("big")), sha);
}

#[test]
fn reconnects_and_resubscribes_after_a_broker_outage() {
    let mut world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let gw = world.gateway();

    world.broker.stop();
    gw.wait_log("lost the broker connection");
    world.broker.restart();
    gw.wait_count("subscribed", 2);

    let confirms = world.confirms();
    world.publish_json(&firmware_image("after-outage", "a", "fw/a.bin"));
    assert_eq!(
        confirms
            .recv_json(DEADLINE)
            .expect("confirm after the outage")["file_name"],
        "a"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let world = World::new();
    let gw = world.gateway();
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn oversized_payloads_are_refused_unparsed() {
    let world = World::new();
    world.s3.put_object(BUCKET, "fw/a.bin", b"image a");
    let mut env = world.env();
    env.push((
        "GATOR_OTA__PIPELINE__MAX_PAYLOAD_BYTES".into(),
        "512".into(),
    ));
    let gw = Gateway::start(env);
    let confirms = world.confirms();

    let mut msg = firmware_image("huge", "a", "fw/a.bin");
    msg["padding"] = json!("x".repeat(2000));
    world.publish_json(&msg);
    gw.wait_log("payload larger than pipeline.max_payload_bytes");
    world.publish_json(&firmware_image("small", "a", "fw/a.bin"));
    assert_eq!(confirms.recv_json(DEADLINE).unwrap()["file_name"], "a");
}

/// The S3 carrier set up by AWS's standard variables alone, as an operator
/// used to the AWS CLI would: the store's address, plain HTTP, region, keys.
#[test]
fn the_standard_aws_variables_reach_the_store() {
    let world = World::new();
    world
        .s3
        .put_object(BUCKET, "fw/aws.bin", b"image from aws vars");
    let aws = [
        ("AWS_ENDPOINT_URL", world.s3.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_DEFAULT_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
    ];
    let mut env: Vec<(String, String)> = world
        .env()
        .into_iter()
        .filter(|(k, _)| {
            ![
                "ENDPOINT",
                "ALLOW_HTTP",
                "REGION",
                "ACCESS_KEY_ID",
                "SECRET_ACCESS_KEY",
            ]
            .iter()
            .any(|s| k.ends_with(&format!("S3_FIRMWARE_OTA__{s}")))
        })
        .collect();
    assert_eq!(env.len(), world.env().len() - aws.len());
    env.extend(aws.map(|(k, v)| (k.to_string(), v)));
    let _gw = Gateway::start(env);
    let confirms = world.confirms();
    world.publish_json(&firmware_image("aws-1", "aws", "fw/aws.bin"));
    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["file_name"], "aws");
    assert_eq!(
        std::fs::read(world.image("aws")).unwrap(),
        b"image from aws vars"
    );
}

/// `GATOR_OTA_LOG_FORMAT=json`: every line a log shipper reads is one JSON
/// object, and a job's lines carry the job's fields.
#[test]
fn json_logs_are_one_object_per_line_with_the_job_fields() {
    let world = World::new();
    world
        .s3
        .put_object(BUCKET, "fw/json.bin", b"image for json logs");
    let mut env = world.env();
    env.push(("GATOR_OTA_LOG_FORMAT".into(), "json".into()));
    let gw = Gateway::start(env);
    let confirms = world.confirms();
    world.publish_json(&firmware_image("json-1", "json", "fw/json.bin"));
    confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    gw.wait_log("\"msg_id\":\"json-1\"");
    let log = gw.log();
    assert!(gw.terminate().success(), "{log}");

    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let job_lines: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["name"] == "job"
                        && s["msg_id"] == "json-1"
                        && s["file_name"] == "json"
                        && s["cloud_path"] == "fw/json.bin"
                })
            })
        })
        .collect();
    assert!(!job_lines.is_empty(), "no line in the job's span:\n{log}");
}
