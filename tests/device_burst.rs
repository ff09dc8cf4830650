//! Data Gator messages skip the inbox and wait in memory, bounded by
//! `pipeline.device_queue`: a burst past the bound is dropped and counted,
//! while every firmware_image in the same burst is still confirmed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use gator_ota_testkit::{Action, Collector, Fault, Publisher, S3Front};

/// Device messages that may wait in memory in this test.
const BOUND: usize = 16;
/// Device messages in the burst, well past the bound.
const BURST: usize = 300;
/// Firmware jobs: the first one's GET is held, the rest come in the burst.
const JOBS: usize = 6;

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: gateway\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response to {path}: {response:?}"));
    (status, body.to_string())
}

/// One counter from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

fn tlm(n: usize) -> (String, String) {
    (
        format!("datagator/tlm/246F28{n:06X}"),
        r#"{"FIRMWARE_VERSION":"V1.0.0","BATTERY":3.9}"#.to_string(),
    )
}

fn job(n: usize) -> String {
    firmware_image(
        &format!("burst-{n}"),
        &format!("burst_{n}"),
        &format!("fw/burst_{n}.bin"),
    )
    .to_string()
}

#[test]
fn a_device_burst_past_the_bound_is_dropped_and_every_job_confirmed() {
    let world = World::new();
    let front = S3Front::start(&world.s3);
    for n in 1..=JOBS {
        world
            .s3
            .put_object(BUCKET, &format!("fw/burst_{n}.bin"), &[0xE9; 2048]);
    }
    // Job 1 runs and waits on its GET; job 2 fills the queue of one; ingress
    // then waits on job 3, and everything after it waits behind.
    let held = front.add(
        Fault::get(
            "fw/burst_1.bin",
            Action::DelayHeaders(Duration::from_secs(2)),
        )
        .times(1),
    );
    let mut env = world.env();
    for (k, v) in [
        (
            "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
            front.endpoint(),
        ),
        ("GATOR_OTA__PIPELINE__DEVICE_QUEUE", BOUND.to_string()),
        ("GATOR_OTA__PIPELINE__QUEUE", "1".into()),
        ("GATOR_OTA__JOBS__CONCURRENCY", "1".into()),
    ] {
        env.push((k.into(), v));
    }
    let gw = Gateway::start(env);
    let http = gw.http_addr();
    let confirms = Collector::start(&world.broker.url(), CONFIRM_TOPIC);
    let publisher = Publisher::new(&world.broker.url());

    publisher.send(RECEIVE_TOPIC, &job(1));
    wait_until(DEADLINE, "job 1's GET to be held", || held.hits() == 1);
    publisher.send(RECEIVE_TOPIC, &job(2));
    publisher.send(RECEIVE_TOPIC, &job(3));
    let mut next_job = 4;
    for n in 0..BURST {
        let (topic, payload) = tlm(n);
        publisher.send(&topic, &payload);
        if n % 100 == 50 && next_job <= JOBS {
            publisher.send(RECEIVE_TOPIC, &job(next_job));
            next_job += 1;
        }
    }
    assert_eq!(next_job, JOBS + 1);

    assert!(
        confirms.wait_distinct("file_name", JOBS, DEADLINE),
        "every job confirmed: {:?}\n{}",
        confirms.distinct("file_name"),
        gw.log()
    );
    // Every device message was either taken by the registry or dropped.
    wait_until(DEADLINE, "each device message taken or dropped", || {
        metric(http, "gator_ota_device_messages_total")
            + metric(http, "gator_ota_device_messages_dropped_total")
            == BURST as u64
    });
    let taken = metric(http, "gator_ota_device_messages_total");
    let dropped = metric(http, "gator_ota_device_messages_dropped_total");
    assert!(
        dropped > 0 && taken >= BOUND as u64,
        "the bound filled and the rest was dropped: taken {taken}, dropped {dropped}"
    );
    assert!(gw.count("device messages dropped") >= 1, "{}", gw.log());

    // Still healthy, and a device message after the burst is taken.
    assert_eq!(http_get(http, "/healthz").0, 200, "{}", gw.log());
    let (topic, payload) = tlm(BURST);
    publisher.send(&topic, &payload);
    wait_until(DEADLINE, "a device message after the burst", || {
        metric(http, "gator_ota_device_messages_total") == taken + 1
    });
    let (_, status) = http_get(http, "/status.json");
    assert!(status.contains("24:6F:28:00:01:2C"), "{status}");
}
