//! What a Data Gator does against the gateway, for the fleet and rollout
//! tests: an ESP32 image installed through a real `firmware_image`, and
//! HTTP/1.0 requests as the ESP32's HTTPClient makes them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gator_ota_testkit::pseudo_random_bytes;
use serde_json::Value;

use super::{BUCKET, DEADLINE, World, firmware_image};

/// Installs `name` (`len` bytes starting with the ESP32 image magic, as a
/// build makes them) through a real `firmware_image` message `id`; the
/// pointer names it afterwards.
pub fn install_esp_image(world: &World, id: &str, name: &str, len: usize, seed: u64) {
    let mut bytes = pseudo_random_bytes(len, seed);
    bytes[0] = 0xE9;
    let key = format!("fw/{name}");
    world.s3.put_object(BUCKET, &key, &bytes);
    let confirms = world.confirms();
    world.publish_json(&firmware_image(id, name, &key));
    let c = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(c["file_name"], name);
}

/// One HTTP/1.0 exchange, as the ESP32's HTTPClient makes it.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 192.168.50.10\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to {path}"));
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

/// The service's `/status.json`.
pub fn status_json(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/status.json", &[]);
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}
