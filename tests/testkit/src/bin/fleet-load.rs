//! Simulated Data Gators for `tests/bench-fleet.sh`: `--devices` MACs, each
//! publishing a `version` ota_status and a telemetry message every
//! `--interval-ms`, spread evenly over the interval and over `--connections`
//! MQTT connections, for `--duration-s` seconds. QoS 0 by default, as the
//! firmware's PubSubClient publishes.
//!
//! Prints one line at the end: `sent=N seconds=S rate=R behind_ms=B`, where
//! `behind_ms` is how late the last message went out against its schedule
//! (large: the publisher, not the service, was the limit).

use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use paho_mqtt as mqtt;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    #[arg(long, default_value_t = 4)]
    connections: u32,
    #[arg(long, default_value_t = 0)]
    qos: i32,
}

fn topic(kind: &str, device: u32) -> String {
    format!("datagator/{kind}/246F28{device:06X}")
}

fn payloads(device: u32) -> [(String, String); 2] {
    [
        (
            topic("ota_status", device),
            r#"{"STATUS_MSG":"version","SERVER_FW_VERSION":"v1.0.1","DEVICE_FW_VERSION":"v1.0.0"}"#
                .to_string(),
        ),
        (
            topic("tlm", device),
            format!(
                r#"{{"ID":"246F28{device:06X}","FIRMWARE_VERSION":"V1.0.0","BATTERY":3.91,"TEMP":21.4,"RH":48.2,"SOIL_MOISTURE":[412,398,377],"RSSI":-67,"UPTIME":{device}}}"#
            ),
        ),
    ]
}

/// One connection's share: devices `first, first + step, ...`.
fn run(args: &Args, first: u32, start: Instant) -> (u64, Duration) {
    let create = mqtt::CreateOptionsBuilder::new()
        .server_uri(&args.url)
        .client_id(format!("fleet-load-{}-{first}", std::process::id()))
        .persistence(mqtt::PersistenceType::None)
        .max_buffered_messages(100_000)
        .finalize();
    let client = mqtt::Client::new(create).expect("MQTT client");
    let opts = mqtt::ConnectOptionsBuilder::new()
        .clean_session(true)
        .keep_alive_interval(Duration::from_secs(30))
        .finalize();
    client.connect(opts).expect("connect to the broker");
    let step = args.connections;
    let mine: Vec<u32> = (first..args.devices).step_by(step as usize).collect();
    let messages: Vec<[(String, String); 2]> = mine.iter().map(|&d| payloads(d)).collect();
    let interval = Duration::from_millis(args.interval_ms);
    let end = Duration::from_secs(args.duration_s);
    let (mut sent, mut behind) = (0u64, Duration::ZERO);
    let mut round = 0u32;
    'rounds: loop {
        for (i, pair) in messages.iter().enumerate() {
            // Device d reports at round * interval + its slot in the interval.
            let slot = interval * (mine[i]) / args.devices.max(1);
            let due = interval * round + slot;
            if due >= end {
                break 'rounds;
            }
            let now = start.elapsed();
            if due > now {
                thread::sleep(due - now);
            } else {
                behind = now - due;
            }
            for (t, p) in pair {
                let msg = mqtt::Message::new(t.as_str(), p.as_bytes(), args.qos);
                client.publish(msg).expect("publish");
                sent += 1;
            }
        }
        round += 1;
    }
    let _ = client.disconnect(None);
    (sent, behind)
}

fn main() {
    let args = Args::parse();
    let start = Instant::now();
    let results: Vec<(u64, Duration)> = thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                let args = &args;
                s.spawn(move || run(args, c, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("publisher thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let sent: u64 = results.iter().map(|r| r.0).sum();
    let behind = results.iter().map(|r| r.1).max().unwrap_or_default();
    println!(
        "sent={sent} seconds={secs:.2} rate={:.1} behind_ms={}",
        sent as f64 / secs,
        behind.as_millis()
    );
}
