//! Delivery under fire: faults that come together in the field, against the
//! real broker and S3 server. The broker restarting every second or two
//! while jobs and statuses flow; a stop (SIGKILL, SIGTERM) while messages
//! wait behind a full queue; an outage during which hundreds of jobs end; a
//! flood of large messages while S3 hangs. Each test counts what reached the
//! broker, what was processed and what was confirmed, and prints it.
//!
//! `tests/soak.sh` runs the flapping test for minutes instead of seconds
//! (`GATOR_OTA_SOAK_SECONDS`, `GATOR_OTA_SOAK_RATE`).

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gator_ota_testkit::{Collector, publish_until_acked};

const CONFIRM_WAIT: Duration = Duration::from_secs(90);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Settings for many small jobs: statuses on, quick retries, and the
/// inbox's "held" line in the log so a test knows what the gateway took.
fn busy_env(world: &World) -> Vec<(String, String)> {
    let mut env = world.env();
    env.extend(status_env());
    for (k, v) in [
        ("GATOR_OTA_LOG", "info,gator_ota_actors::ingress=debug"),
        ("GATOR_OTA__JOBS__BACKOFF_MIN", "100ms"),
        ("GATOR_OTA__JOBS__BACKOFF_MAX", "300ms"),
        ("GATOR_OTA__JOBS__ATTEMPTS", "1000"),
        ("GATOR_OTA__JOBS__KEEP_IMAGES", "2"),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn job(name: &str) -> serde_json::Value {
    firmware_image(name, name, "fw/small.bin")
}

/// The small image every job of these tests fetches.
fn put_small_image(world: &World, len: usize, seed: u64) {
    let bytes = gator_ota_testkit::pseudo_random_bytes(len, seed);
    world.s3.put_object(BUCKET, "fw/small.bin", &bytes);
}

/// One job per name, each published once (the broker is up).
fn publish_jobs_once(world: &World, names: &[String]) {
    for n in names {
        world.publish_json(&job(n));
    }
}

/// How many confirm_receipts each file got.
fn confirm_counts(confirms: &Collector) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for c in confirms.all() {
        if let Some(f) = c["file_name"].as_str() {
            *counts.entry(f.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits for a confirm of every name; panics with what is missing.
fn expect_all_confirmed(confirms: &Collector, names: &[String], gw_log: impl Fn() -> String) {
    // However long the backlog, confirms keep coming while it drains.
    let mut seen = 0;
    while !confirms.wait_distinct("file_name", names.len(), CONFIRM_WAIT) {
        let now = confirms.distinct("file_name").len();
        if now == seen {
            break;
        }
        seen = now;
    }
    let counts = confirm_counts(confirms);
    let missing: Vec<&String> = names.iter().filter(|n| !counts.contains_key(*n)).collect();
    let about_first: Vec<String> = missing
        .first()
        .map(|m| {
            let needle = format!("={m} ");
            gw_log()
                .lines()
                .filter(|l| l.contains(&needle) || l.contains("ERROR") || l.contains("WARN"))
                .take(40)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        missing.is_empty(),
        "{} of {} never confirmed, e.g. {:?}; gateway log about the first:\n{}\ntail:\n{}",
        missing.len(),
        names.len(),
        &missing[..missing.len().min(5)],
        about_first.join("\n"),
        tail(&gw_log(), 20)
    );
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn duplicates(counts: &BTreeMap<String, usize>) -> usize {
    counts.values().map(|n| n - 1).sum()
}

/// Publishes jobs at `rate` per second until `stop`; returns those the
/// broker acknowledged.
fn publish_jobs(url: String, rate: u64, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let pace = Duration::from_millis(1000 / rate.max(1));
        let mut sent = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let name = format!("flap-{i}");
            if publish_until_acked(
                &url,
                RECEIVE_TOPIC,
                &job(&name).to_string(),
                Duration::from_secs(30),
            ) {
                sent.push(name);
            }
            thread::sleep(pace);
        }
        sent
    })
}

#[test]
fn a_flapping_broker_with_statuses_on_crashes_nothing_and_loses_nothing() {
    let seconds = env_number("GATOR_OTA_SOAK_SECONDS", 20);
    let rate = env_number("GATOR_OTA_SOAK_RATE", 5);
    let kill = env_number("GATOR_OTA_SOAK_KILL", 0) == 1;
    // With `kill`, a broker that keeps nothing, killed (SIGKILL) each time:
    // in-flight packets are cut and every session is gone after a restart.
    let broker = if kill {
        Broker::start()
    } else {
        Broker::start_persistent()
    };
    let mut world = World::with_broker(broker);
    put_small_image(&world, 4096, 1);
    let confirms = Collector::start(&world.broker.url(), CONFIRM_TOPIC);
    let statuses = Collector::start(&world.broker.url(), STATUS_TOPIC);
    let gw = Gateway::start(busy_env(&world));

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_jobs(world.broker.url(), rate, stop.clone());
    let started = Instant::now();
    let mut restarts = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        // The fault schedule, not a wait for a condition.
        thread::sleep(Duration::from_millis(1000 + fastrand_ms(1500)));
        world.broker.restart();
        restarts += 1;
        assert!(
            gw.is_running(),
            "gator-ota died ({:?}) after {restarts} broker restarts; log tail:\n{}",
            gw.exit_status(),
            tail(&gw.log(), 40)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().unwrap();
    if kill {
        // A broker that keeps nothing loses what it queued; only crashes count.
        confirms.wait_distinct("file_name", sent.len(), Duration::from_secs(20));
    } else {
        expect_all_confirmed(&confirms, &sent, || gw.log());
    }
    assert!(gw.is_running(), "gator-ota died: {:?}", gw.exit_status());
    // Under tests/soak.sh --valgrind, memcheck reports each invalid read,
    // write or free on the gateway's stderr as it happens.
    let memcheck: Vec<String> = gw
        .log()
        .lines()
        .filter(|l| l.starts_with("==") && l.contains("== "))
        .map(str::to_string)
        .collect();
    assert!(
        memcheck.is_empty(),
        "memcheck reported:\n{}",
        memcheck.join("\n")
    );
    let counts = confirm_counts(&confirms);
    println!(
        "flapping broker: {seconds} s, {restarts} restarts, {} messages reached the broker, \
         {} processed, {} confirmed ({} duplicate confirms), {} status messages, crashes: 0",
        sent.len(),
        gw.count("msg_type=firmware_image"),
        counts.len(),
        duplicates(&counts),
        statuses.all().len(),
    );
    assert!(restarts >= 3 && !sent.is_empty(), "the test did too little");
}

/// A cheap spread for the fault schedule, without another dependency.
fn fastrand_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos % max.max(1)
}

/// Settings whose S3 endpoint is `hung`: every job waits on it.
fn hung_env(env: &[(String, String)], hung: &HungS3) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT".into(),
        format!("http://127.0.0.1:{}", hung.port),
    ));
    env
}

/// 60 messages (`GATOR_OTA_STOP_MESSAGES`) taken from the broker while the job queue is full (S3 does
/// not answer), then the gateway stops; after a restart with S3 answering,
/// every one is confirmed.
fn stop_with_a_full_queue(stop: impl FnOnce(Gateway)) {
    let world = World::new();
    put_small_image(&world, 2048, 2);
    let hung = HungS3::start();
    let mut env = busy_env(&world);
    env.push(("GATOR_OTA__PIPELINE__QUEUE".into(), "4".into()));
    let confirms = Collector::start(&world.broker.url(), CONFIRM_TOPIC);
    let gw = Gateway::start(hung_env(&env, &hung));
    let count = env_number("GATOR_OTA_STOP_MESSAGES", 60);
    let names: Vec<String> = (0..count).map(|i| format!("queued-{i}")).collect();
    publish_jobs_once(&world, &names);
    // Every message has left the broker: it is the gateway's now.
    gw.wait_count("held in the inbox", names.len());
    assert!(confirm_counts(&confirms).is_empty());
    stop(gw);

    let gw = Gateway::start(env);
    expect_all_confirmed(&confirms, &names, || gw.log());
    let counts = confirm_counts(&confirms);
    println!(
        "full queue, stopped: {count} reached the broker, {} confirmed, {} duplicate confirms",
        counts.len(),
        duplicates(&counts)
    );
}

#[test]
fn sigkill_with_a_full_queue_loses_no_message() {
    stop_with_a_full_queue(Gateway::kill);
}

#[test]
fn sigterm_with_a_full_queue_loses_no_message() {
    stop_with_a_full_queue(|gw| {
        let status = gw.terminate();
        assert!(status.success(), "gator-ota exited with {status}");
    });
}

/// 300 messages wait at a gateway whose S3 does not answer; the broker
/// goes away; the gateway restarts with S3 answering and ends every job
/// while the broker is still away. Once the broker is back, a persistent
/// listener gets all 300 confirms, once each.
#[test]
fn confirms_made_while_the_broker_is_down_all_arrive_after_it_returns() {
    const JOBS: usize = 300;
    let mut world = World::with_broker(Broker::start_persistent());
    put_small_image(&world, 1024, 3);
    let hung = HungS3::start();
    let env = busy_env(&world);
    let confirms = Collector::start(&world.broker.url(), CONFIRM_TOPIC);
    let gw = Gateway::start(hung_env(&env, &hung));
    let names: Vec<String> = (0..JOBS).map(|i| format!("outage-{i}")).collect();
    publish_jobs_once(&world, &names);
    gw.wait_count("held in the inbox", JOBS);
    world.broker.terminate();
    gw.kill();

    // Every job ends, and confirms, while the broker is away.
    let gw = Gateway::spawn(env);
    gw.wait_count("confirm_receipt sent", JOBS);
    world.broker.start_again();
    expect_all_confirmed(&confirms, &names, || gw.log());
    let counts = confirm_counts(&confirms);
    println!(
        "outage: {JOBS} jobs confirmed while the broker was down, {} arrived, {} duplicates",
        counts.len(),
        duplicates(&counts)
    );
    assert_eq!(
        duplicates(&counts),
        0,
        "a confirm was sent twice without a fault in between"
    );
}

/// An S3 endpoint that accepts connections and never answers.
struct HungS3 {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl HungS3 {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for HungS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_flood_while_s3_hangs_keeps_memory_bounded_and_loses_nothing() {
    let jobs = env_number("GATOR_OTA_FLOOD_MESSAGES", 400) as usize;
    let world = World::with_broker(Broker::start_persistent());
    put_small_image(&world, 512, 4);
    let hung = HungS3::start();
    let real = busy_env(&world);
    let confirms = Collector::start(&world.broker.url(), CONFIRM_TOPIC);
    let gw = Gateway::start(hung_env(&real, &hung));
    let idle = gw.memory_kib("VmRSS");
    let padding = "x".repeat(60 * 1024);
    let names: Vec<String> = (0..jobs).map(|i| format!("flood-{i}")).collect();
    for n in &names {
        let mut msg = firmware_image(n, n, "fw/small.bin");
        msg["notes"] = serde_json::json!(padding);
        world.publish_json(&msg);
    }
    gw.wait_count("held in the inbox", jobs);
    let peak = gw.memory_kib("VmHWM");
    println!(
        "flood: {jobs} messages of 60 KiB while S3 hangs: RSS idle {idle} KiB, peak {peak} KiB"
    );
    // The debug build's own footprint is larger than a release build's;
    // what the flood adds is what must stay small (the queue's 16 jobs).
    assert!(
        peak.saturating_sub(idle) <= 8 * 1024,
        "the flood grew RSS from {idle} to {peak} KiB"
    );
    gw.kill();

    // Nothing was dropped: with S3 back, every message is confirmed.
    let gw = Gateway::start(real);
    expect_all_confirmed(&confirms, &names, || gw.log());
}
