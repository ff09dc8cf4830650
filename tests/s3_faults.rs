//! S3 misbehaving: answers that never come, 503 SlowDown, a Range header
//! ignored, an object shorter than its HEAD says, SSE-KMS ETags and S3's own
//! checksums (SHA-256, CRC-32C, CRC-64/NVME). The gateway talks to the real S3 server through the testkit's
//! fault-injecting front; each test ends in the state and reason an operator
//! would expect, within bounds far below the carrier's `timeout`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gator_ota_testkit::{
    Action, Fault, S3Front, checksum_crc32c, checksum_crc64nvme, checksum_sha256,
    pseudo_random_bytes, to_hex,
};
use serde_json::json;

const KEY: &str = "fw/a.bin";
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// An answer held far longer than any bound in these tests.
const HELD: Duration = Duration::from_secs(3600);

/// A world whose gateway reaches the bucket through a fault front.
struct Faulty {
    world: World,
    front: S3Front,
}

impl Faulty {
    fn new() -> Self {
        let world = World::new();
        let front = S3Front::start(&world.s3);
        Self { world, front }
    }

    /// Quick retries, `attempts` of them, a 1 s header bound, statuses on.
    fn env(&self, attempts: u32) -> Vec<(String, String)> {
        let mut env = self.world.env();
        for (k, v) in [
            (
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
                self.front.endpoint(),
            ),
            (
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__HEADER_TIMEOUT",
                "1s".into(),
            ),
            ("GATOR_OTA__JOBS__ATTEMPTS", attempts.to_string()),
            ("GATOR_OTA__JOBS__BACKOFF_MIN", "100ms".into()),
            ("GATOR_OTA__JOBS__BACKOFF_MAX", "300ms".into()),
            ("GATOR_OTA__JOBS__IDLE_TIMEOUT", "1s".into()),
        ] {
            env.push((k.to_string(), v));
        }
        env.extend(status_env());
        env
    }

    fn statuses(&self) -> Subscriber {
        Subscriber::new(&self.world.broker.url(), STATUS_TOPIC)
    }
}

/// Publishes `msg` and returns its statuses until the last, and how long
/// that took.
fn run(
    f: &Faulty,
    statuses: &Subscriber,
    msg: &serde_json::Value,
) -> (Vec<serde_json::Value>, Duration) {
    let started = Instant::now();
    f.world.publish_json(msg);
    let seen = statuses_until_done(statuses, msg["id"].as_str().unwrap());
    (seen, started.elapsed())
}

fn assert_installed(seen: &[serde_json::Value]) {
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "INSTALLED", "{seen:?}");
}

/// The FAILED status's detail, after checking its reason.
fn assert_failed(seen: &[serde_json::Value], reason: &str) -> String {
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "FAILED", "{seen:?}");
    assert_eq!(last["reason"], reason, "{seen:?}");
    last["detail"].as_str().unwrap_or_default().to_string()
}

/// A GET whose answer is held twice: the job retries it and succeeds once
/// the store answers.
#[test]
fn a_get_without_answer_is_retried_and_the_job_succeeds_once_it_answers() {
    let f = Faulty::new();
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 100_000, 2);
    let held = f
        .front
        .add(Fault::get(KEY, Action::DelayHeaders(HELD)).times(2));
    let gw = Gateway::start(f.env(5));
    let statuses = f.statuses();

    let (seen, took) = run(&f, &statuses, &firmware_image("hung-get", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert_eq!(held.hits(), 2);
    assert_eq!(
        gw.count("the GET got no answer within 1s"),
        2,
        "{}",
        gw.log()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_job_with_nothing_staged_asks_the_store_once() {
    let f = Faulty::new();
    // Large enough to arrive in many chunks, so progress lines are logged.
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 3_000_000, 12);
    let gw = Gateway::start(f.env(3));
    let statuses = f.statuses();

    let (seen, _) = run(&f, &statuses, &firmware_image("once", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    // The progress lines, polled by the writer, name the job.
    gw.wait_line(&["msg_id=once", "DOWNLOADING", "percent="]);
    let asked: Vec<_> = f
        .front
        .seen()
        .into_iter()
        .map(|s| (s.method, s.range))
        .collect();
    assert_eq!(asked, [("GET".to_string(), None)], "one plain GET, no HEAD");
}

/// The 300 kB object at KEY, whose job `msg_id` is cut after 100 kB (the
/// first GET stalls) and whose gateway is then killed; returns the object's
/// SHA-256. The next gateway resumes the job from the staged bytes, and asks
/// the object's version with a HEAD first: the HEAD the tests below hold.
fn cut_and_killed(f: &Faulty, msg_id: &str, seed: u64) -> [u8; 32] {
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 300_000, seed);
    f.front.add(Fault::get(KEY, Action::StallAfter(100_000)));
    let gw = Gateway::start(f.env(50));
    f.world.publish_json(&firmware_image(msg_id, "a", KEY));
    // The stalled attempt ended (idle timeout): its bytes are synced.
    gw.wait_log("download attempt failed");
    gw.kill();
    f.front.clear();
    sha
}

#[test]
fn a_head_without_answer_is_retried_and_the_job_succeeds_once_it_answers() {
    let f = Faulty::new();
    let sha = cut_and_killed(&f, "hung-head", 1);
    let held = f
        .front
        .add(Fault::head(KEY, Action::DelayHeaders(HELD)).times(2));
    let statuses = f.statuses();
    let gw = Gateway::start(f.env(5));

    let seen = statuses_until_done(&statuses, "hung-head");
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert_eq!(held.hits(), 2);
    assert_eq!(
        gw.count("the HEAD got no answer within 1s"),
        2,
        "{}",
        gw.log()
    );
    gw.wait_log("resuming with a ranged GET");
}

/// A HEAD or GET (`method`) that is never answered: the job fails with
/// TIMEOUT after its attempts, far sooner than the store's `timeout`, with
/// `detail` in its FAILED status. The HEAD is a resumed job's (see
/// [`cut_and_killed`]).
fn never_answered(method: &str, fault: fn(&str, Action) -> Fault, detail: &str) -> Duration {
    let f = Faulty::new();
    let msg_id = format!("never-{}", method.to_lowercase());
    if method == "HEAD" {
        cut_and_killed(&f, &msg_id, 9);
    } else {
        f.world.s3.put_object(BUCKET, KEY, b"image");
    }
    f.front.add(fault(KEY, Action::DelayHeaders(HELD)));
    let statuses = f.statuses();
    let started = Instant::now();
    let _gw = Gateway::start(f.env(3));
    if method != "HEAD" {
        f.world.publish_json(&firmware_image(&msg_id, "a", KEY));
    }
    let seen = statuses_until_done(&statuses, &msg_id);
    let took = started.elapsed();
    let got = assert_failed(&seen, "TIMEOUT");
    assert!(got.contains(detail), "{got}");
    // 3 × 1 s, plus two backoffs of at most 300 ms: nowhere near `timeout`.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!f.world.image("a").exists());
    assert!(!f.world.pointer().exists());
    took
}

#[test]
fn a_head_that_never_answers_fails_with_timeout_within_its_bound() {
    let took = never_answered("HEAD", Fault::head, "gave up after 3 attempts");
    assert!(took >= 3 * HEADER_TIMEOUT, "took {took:?}");
}

#[test]
fn a_get_that_never_answers_fails_with_timeout_within_its_bound() {
    never_answered("GET", Fault::get, "the GET got no answer");
}

#[test]
fn hung_jobs_do_not_hold_back_a_job_for_another_file() {
    let f = Faulty::new();
    for key in ["fw/hung1.bin", "fw/hung2.bin"] {
        f.world.s3.put_object(BUCKET, key, b"never arrives");
        f.front.add(Fault::any(key, Action::DelayHeaders(HELD)));
    }
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 100_000, 3);
    // Enough attempts that the hung jobs outlive the test; concurrency stays
    // at its default (2), so the two of them could take every worker.
    let gw = Gateway::start(f.env(30));
    let statuses = f.statuses();
    let confirms = f.world.confirms();

    for n in ["hung1", "hung2"] {
        let mut msg = firmware_image(n, n, &format!("fw/{n}.bin"));
        msg["config_path"] = json!(format!("pointers/{n}.json"));
        f.world.publish_json(&msg);
    }
    wait_until(
        DEADLINE,
        "both hung jobs to be waiting on the store",
        || f.front.count("GET", "fw/hung1.bin") >= 1 && f.front.count("GET", "fw/hung2.bin") >= 1,
    );

    let (seen, took) = run(&f, &statuses, &firmware_image("healthy", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert_eq!(confirms.recv_json(DEADLINE).unwrap()["file_name"], "a");
    // One header bound at most (the hung jobs' attempts give their slots
    // back when it passes), and a little for the job itself.
    assert!(
        took < HEADER_TIMEOUT + Duration::from_secs(5),
        "took {took:?}"
    );
    // The hung jobs are still trying: the healthy one did not wait them out.
    assert_eq!(gw.count("firmware job failed"), 0, "{}", gw.log());
    assert!(f.front.count("GET", "fw/hung1.bin") < 30);
}

/// `times` SlowDown answers to a GET: retried with the job's
/// backoff, and the job succeeds. Returns the world and the gateway, still
/// running, for further checks.
fn slow_down_then_answered(
    fault: fn(&str, Action) -> Fault,
    times: usize,
    seed: u64,
) -> (Faulty, Gateway) {
    let f = Faulty::new();
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 50_000, seed);
    let slow = f.front.add(fault(KEY, Action::SlowDown).times(times));
    let gw = Gateway::start(f.env(5));
    let statuses = f.statuses();

    let msg_id = format!("slow-{seed}");
    let (seen, _) = run(&f, &statuses, &firmware_image(&msg_id, "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert_eq!(slow.hits(), times);
    (f, gw)
}

#[test]
fn slow_down_on_the_first_two_heads_is_retried_and_the_job_succeeds() {
    let f = Faulty::new();
    let sha = cut_and_killed(&f, "slow-head", 4);
    let slow = f.front.add(Fault::head(KEY, Action::SlowDown).times(2));
    let statuses = f.statuses();
    let gw = Gateway::start(f.env(5));

    let seen = statuses_until_done(&statuses, "slow-head");
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert_eq!(slow.hits(), 2);
    gw.wait_log("download attempt failed");
}

#[test]
fn slow_down_on_gets_is_retried_and_the_job_succeeds() {
    slow_down_then_answered(Fault::get, 3, 5);
}

#[test]
fn slow_down_on_every_request_fails_unreachable_after_the_attempts() {
    let f = Faulty::new();
    f.world.s3.put_object(BUCKET, KEY, b"image");
    f.front.add(Fault::any(KEY, Action::SlowDown));
    let _gw = Gateway::start(f.env(3));
    let statuses = f.statuses();

    let (seen, took) = run(&f, &statuses, &firmware_image("slow-always", "a", KEY));
    let detail = assert_failed(&seen, "UNREACHABLE");
    assert!(detail.contains("gave up after 3 attempts"), "{detail}");
    assert!(f.front.count("GET", KEY) >= 3, "{:?}", f.front.seen());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(!f.world.image("a").exists());
}

#[test]
fn a_whole_object_sent_for_a_resume_range_starts_the_download_over() {
    let f = Faulty::new();
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 300_000, 6);
    // The first transfer stalls (cut by the idle timeout); the resume's Range
    // is ignored.
    f.front
        .add(Fault::get(KEY, Action::StallAfter(100_000)).times(1));
    let ignored = f.front.add(Fault::get(KEY, Action::IgnoreRange).ranged());
    let gw = Gateway::start(f.env(5));
    let statuses = f.statuses();

    let (seen, _) = run(&f, &statuses, &firmware_image("no-range", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    assert!(ignored.hits() >= 1, "{:?}", f.front.seen());
    gw.wait_log("the store ignored the Range header");
    let gets: Vec<_> = f
        .front
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.range)
        .collect();
    assert_eq!(
        gets.last(),
        Some(&None),
        "the last GET is from byte 0: {gets:?}"
    );
}

#[test]
fn an_object_shorter_than_its_head_size_fails_with_size_mismatch() {
    let f = Faulty::new();
    f.world.s3.put_object(BUCKET, "fw/old.bin", b"old image");
    f.world.s3.put_random_object(BUCKET, KEY, 200_000, 7);
    let _gw = Gateway::start(f.env(4));
    let statuses = f.statuses();
    let (seen, _) = run(&f, &statuses, &firmware_image("old", "old", "fw/old.bin"));
    assert_installed(&seen);

    f.front.add(Fault::get(KEY, Action::ShortObject(50_000)));
    let (seen, took) = run(&f, &statuses, &firmware_image("short", "a", KEY));
    let detail = assert_failed(&seen, "SIZE_MISMATCH");
    assert!(detail.contains("gave up after 4 attempts"), "{detail}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!f.world.image("a").exists());
    assert_eq!(std::fs::read_to_string(f.world.pointer()).unwrap(), "old");
}

#[test]
fn an_sse_kms_etag_is_not_taken_for_an_md5() {
    let f = Faulty::new();
    let sha = f.world.s3.put_random_object(BUCKET, KEY, 100_000, 8);
    f.front.add(Fault::any(KEY, Action::SseKms));
    let gw = Gateway::start(f.env(3));
    let statuses = f.statuses();

    // No checksum in the message, and the ETag looks like an MD5 but is not.
    let (seen, _) = run(&f, &statuses, &firmware_image("kms", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    gw.wait_line(&["encryption=\"aws:kms\"", "only the size was checked"]);
}

#[test]
fn the_objects_own_sha256_is_checked_when_it_has_one() {
    let f = Faulty::new();
    let good = f
        .world
        .s3
        .put_random_object(BUCKET, "fw/good.bin", 100_000, 9);
    f.world
        .s3
        .put_random_object(BUCKET, "fw/bad.bin", 100_000, 10);
    for (key, sha) in [("fw/good.bin", good), ("fw/bad.bin", [0x5a; 32])] {
        // SSE-KMS: the ETag cannot vouch for the bytes, the checksum must.
        f.front.add(Fault::any(key, Action::SseKms));
        f.front.add(Fault::any(
            key,
            Action::ChecksumSha256(checksum_sha256(&sha)),
        ));
    }
    let gw = Gateway::start(f.env(3));
    let statuses = f.statuses();

    let (seen, _) = run(
        &f,
        &statuses,
        &firmware_image("good", "good", "fw/good.bin"),
    );
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("good")), good);

    let (seen, _) = run(&f, &statuses, &firmware_image("bad", "bad", "fw/bad.bin"));
    let detail = assert_failed(&seen, "CHECKSUM_MISMATCH");
    assert!(
        detail.contains(&format!(
            "{} (the object's x-amz-checksum-sha256)",
            to_hex(&[0x5a; 32])
        )),
        "{detail}"
    );
    assert!(!f.world.image("bad").exists());
    assert_eq!(std::fs::read_to_string(f.world.pointer()).unwrap(), "good");
    gw.wait_log("reason=CHECKSUM_MISMATCH");
}

/// Two SSE-KMS objects, so their ETags cannot vouch for the bytes, each
/// with a checksum `rule` (the value made by `checksum`): `good`'s of its
/// own bytes, `bad`'s of other bytes. The first is installed through that
/// checksum; the second fails naming `header`, the expected and the
/// computed value.
fn own_crc_is_checked(rule: fn(String) -> Action, checksum: fn(&[u8]) -> String, header: &str) {
    let f = Faulty::new();
    let len = 100_000;
    let (good_bytes, bad_bytes) = (pseudo_random_bytes(len, 11), pseudo_random_bytes(len, 12));
    let good = f
        .world
        .s3
        .put_random_object(BUCKET, "fw/good.bin", len as u64, 11);
    f.world
        .s3
        .put_random_object(BUCKET, "fw/bad.bin", len as u64, 12);
    let wrong = checksum(b"another image");
    for (key, value) in [
        ("fw/good.bin", checksum(&good_bytes)),
        ("fw/bad.bin", wrong.clone()),
    ] {
        f.front.add(Fault::any(key, Action::SseKms));
        f.front.add(Fault::any(key, rule(value)));
    }
    let gw = Gateway::start(f.env(3));
    let statuses = f.statuses();

    let (seen, _) = run(
        &f,
        &statuses,
        &firmware_image("good", "good", "fw/good.bin"),
    );
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("good")), good);
    gw.wait_line(&["the image matches the object's own checksum", header]);

    let (seen, _) = run(&f, &statuses, &firmware_image("bad", "bad", "fw/bad.bin"));
    let detail = assert_failed(&seen, "CHECKSUM_MISMATCH");
    let name = header.trim_start_matches("x-amz-checksum-");
    let got = checksum(&bad_bytes);
    assert_eq!(
        detail,
        format!("{name} is {got}, expected {wrong} (the object's {header})")
    );
    assert!(!f.world.image("bad").exists());
    assert_eq!(std::fs::read_to_string(f.world.pointer()).unwrap(), "good");
}

#[test]
fn the_objects_own_crc32c_is_checked_when_it_has_one() {
    own_crc_is_checked(
        Action::ChecksumCrc32c,
        checksum_crc32c,
        "x-amz-checksum-crc32c",
    );
}

#[test]
fn the_objects_own_crc64nvme_is_checked_when_it_has_one() {
    own_crc_is_checked(
        Action::ChecksumCrc64Nvme,
        checksum_crc64nvme,
        "x-amz-checksum-crc64nvme",
    );
}

#[test]
fn a_crc64nvme_is_right_across_a_cut_and_a_ranged_resume() {
    let f = Faulty::new();
    let (len, seed) = (300_000, 13);
    let sha = f.world.s3.put_random_object(BUCKET, KEY, len, seed);
    let crc = checksum_crc64nvme(&pseudo_random_bytes(len as usize, seed));
    f.front.add(Fault::any(KEY, Action::SseKms));
    f.front.add(Fault::any(KEY, Action::ChecksumCrc64Nvme(crc)));
    // The first transfer stalls and is cut by the idle timeout.
    f.front
        .add(Fault::get(KEY, Action::StallAfter(100_000)).times(1));
    let gw = Gateway::start(f.env(5));
    let statuses = f.statuses();

    let (seen, _) = run(&f, &statuses, &firmware_image("crc-resume", "a", KEY));
    assert_installed(&seen);
    assert_eq!(sha256_file(&f.world.image("a")), sha);
    gw.wait_log("resuming with a ranged GET");
    gw.wait_line(&[
        "the image matches the object's own checksum",
        "x-amz-checksum-crc64nvme",
    ]);
    let ranges: Vec<_> = f
        .front
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.range)
        .collect();
    assert!(
        matches!(ranges.as_slice(), [None, Some(r)] if r.starts_with("bytes=100000-")),
        "one GET from byte 0, then one from where it was cut: {ranges:?}"
    );
}
