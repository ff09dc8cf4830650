//! `publish-sample`: the whole flow, seen from the cloud's side.
//!
//! Writes a sample image into the local bucket folder, publishes the
//! `firmware_image` the SCARECRO cloud would send, waits for the gateway's
//! `confirm_receipt`, and checks the installed bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gator_ota_actors::mqtt::{connect_failure_hint, normalise_url, ssl_options};
use gator_ota_settings::{Bucket, Carrier, Direction, Settings};
use paho_mqtt as paho;
use sha2::{Digest, Sha256};

use crate::cli::SampleArgs;

/// Named as Data Gator images are (`..._vM.m.p.bin`): the devices read their
/// version from the name, and so does the fleet view.
const SAMPLE_FILE: &str = "datagator_v1.0.0.bin";

pub fn publish_sample(args: &SampleArgs) -> ExitCode {
    let loaded = gator_ota_settings::load_all(
        args.settings.settings.as_deref(),
        args.settings.scarecro_configs.as_deref(),
    );
    let settings = match loaded.map(|l| l.settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match publish(&settings, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publish-sample: {e}");
            ExitCode::FAILURE
        }
    }
}

fn publish(settings: &Settings, args: &SampleArgs) -> Result<(), String> {
    let (bucket, key) = sample_location(settings)?;
    let sha = write_sample(&bucket.join(&key), args.size)
        .map_err(|e| format!("cannot write the sample image: {e}"))?;
    println!(
        "sample image: {} ({} bytes, sha256 {sha})",
        bucket.join(&key).display(),
        args.size
    );
    let receive = topic_for(settings, Direction::Receive, "firmware_image")?;
    let confirm = topic_for(settings, Direction::Send, "confirm_receipt")?;
    let (client, rx) = connect(settings)?;
    client.subscribe(&confirm, 1).map_err(|e| e.to_string())?;

    let msg_id = format!("sample-{}", chrono::Utc::now().timestamp_millis());
    let firmware_image = serde_json::json!({
        "id": msg_id,
        "time": gator_ota_actors::time::now(),
        "file_name": SAMPLE_FILE,
        "cloud_path": key,
        "confirm_receipt": true,
    });
    client
        .publish(paho::Message::new(&receive, firmware_image.to_string(), 1))
        .map_err(|e| e.to_string())?;
    println!("published firmware_image on {receive}:\n  {firmware_image}");
    println!("waiting for confirm_receipt on {confirm} ...");
    let content = wait_for_confirm(&rx, args.timeout)?;
    println!("confirm_receipt:\n  {content}");
    let _ = client.disconnect(None);
    check_installed(settings, &sha)
}

/// The local bucket folder of the firmware task's carrier, and the key the
/// sample goes under (inside the carrier's prefix).
fn sample_location(settings: &Settings) -> Result<(PathBuf, String), String> {
    let task = settings
        .tasks
        .values()
        .find(|t| t.message_type == "firmware_image")
        .ok_or("no task runs on firmware_image")?;
    let Some(Carrier::S3(s3)) = settings.carriers.get(&task.config_name) else {
        return Err(format!("carrier {} is not an s3 carrier", task.config_name));
    };
    let Bucket::Folder(bucket) = s3.location(&settings.system.data_dir) else {
        return Err("the bucket is not a local folder (file://); upload an image and publish a firmware_image yourself".into());
    };
    let prefix = s3.prefix.trim_end_matches('/');
    let key = if prefix.is_empty() {
        format!("firmware/{SAMPLE_FILE}")
    } else {
        format!("{prefix}/{SAMPLE_FILE}")
    };
    Ok((bucket, key))
}

/// A client of the service's broker, with the service's TLS settings (CA,
/// client certificate, host check), consuming before it connects.
fn connect(settings: &Settings) -> Result<(paho::Client, Receiver), String> {
    let mqtt_name = settings
        .addresses
        .values()
        .next()
        .map(|a| a.carrier.clone())
        .unwrap_or_default();
    let mqtt = settings.mqtt(&mqtt_name).ok_or("no MQTT carrier")?;
    let client = paho::Client::new(
        paho::CreateOptionsBuilder::new()
            .server_uri(normalise_url(&mqtt.url))
            .client_id(format!("gator-ota-sample-{}", std::process::id()))
            .persistence(None)
            .finalize(),
    )
    .map_err(|e| e.to_string())?;
    let rx = client.start_consuming();
    let mut opts = paho::ConnectOptionsBuilder::new();
    opts.clean_session(true);
    if !mqtt.username.is_empty() {
        opts.user_name(&mqtt.username)
            .password(mqtt.password.expose());
    }
    if let Some(ssl) = ssl_options(&mqtt_name, mqtt).map_err(|e| e.to_string())? {
        opts.ssl_options(ssl);
    }
    client.connect(opts.finalize()).map_err(|e| {
        let hint = connect_failure_hint(&normalise_url(&mqtt.url), &e);
        format!("cannot reach the broker at {}: {e}; {hint}", mqtt.url)
    })?;
    Ok((client, rx))
}

type Receiver = paho::SyncReceiver<Option<paho::Message>>;

/// The confirm_receipt for the sample, or why none came in time.
fn wait_for_confirm(rx: &Receiver, timeout: Duration) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no confirm_receipt within {timeout:?}; is `gator-ota run` running with the same settings? Its log says why a job failed"
            ));
        }
        let Ok(Some(msg)) = rx.recv_timeout(left) else {
            continue;
        };
        let Ok(content) = serde_json::from_slice::<serde_json::Value>(msg.payload()) else {
            continue;
        };
        if content["file_name"] == SAMPLE_FILE {
            return Ok(content);
        }
    }
}

/// The installed bytes against the sample's checksum, and the pointer.
fn check_installed(settings: &Settings, sha: &str) -> Result<(), String> {
    let root = &settings.allowed_roots()[0];
    let installed = root
        .join(&settings.firmware.images_dir)
        .join(format!("{SAMPLE_FILE}.bin"));
    let pointer = root.join(&settings.firmware.pointer_file);
    match std::fs::read(&installed).map(|b| hex(&Sha256::digest(b))) {
        Ok(h) if h == sha => println!(
            "installed image {} matches (sha256 {h})",
            installed.display()
        ),
        Ok(h) => {
            return Err(format!(
                "installed image {} differs: sha256 {h}",
                installed.display()
            ));
        }
        Err(e) => println!("(cannot read {} from here: {e})", installed.display()),
    }
    if let Ok(p) = std::fs::read_to_string(&pointer) {
        println!("pointer {} names {p:?}", pointer.display());
    }
    Ok(())
}

fn topic_for(settings: &Settings, dir: Direction, message_type: &str) -> Result<String, String> {
    settings
        .addresses
        .values()
        .find(|a| a.send_or_receive == dir && a.message_type.iter().any(|t| t == message_type))
        .map(|a| a.topic.replace("/#", "").replace("/+", ""))
        .ok_or_else(|| format!("no {dir:?} address carries {message_type}"))
}

/// Deterministic, incompressible bytes, so a broken transfer cannot look right.
fn write_sample(path: &Path, size: u64) -> std::io::Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        if std::mem::take(&mut first) {
            // The ESP32 image magic, which HTTPUpdate checks first.
            buf[0] = 0xE9;
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
