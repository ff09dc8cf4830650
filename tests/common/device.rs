//! What a Data Gator does against the gateway, for the fleet and rollout
//! tests: an ESP32 image installed through a real `firmware_image`, and
//! HTTP/1.0 requests as the ESP32's HTTPClient makes them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gator_ota_testkit::{Publisher, pseudo_random_bytes};
use serde_json::{Value, json};

use super::{BUCKET, Broker, DEADLINE, World, firmware_image};

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

/// A Data Gator: its MAC, the version it runs, whether what it flashes
/// boots.
pub struct DataGator {
    pub mac: String,
    pub version: String,
    pub boots: bool,
    mqtt: Publisher,
}

impl DataGator {
    pub fn new(n: usize, broker: &Broker, boots: bool) -> Self {
        Self {
            mac: format!("24:6F:28:00:{:02X}:{:02X}", n / 256, n % 256),
            version: "v1.0.0".into(),
            boots,
            mqtt: Publisher::new(&broker.url()),
        }
    }

    pub fn publish(&self, kind: &str, content: Value) {
        let topic = format!("datagator/{kind}/{}", self.mac);
        self.mqtt.send(&topic, &content.to_string());
    }

    /// Telemetry carries the version with a capital V.
    pub fn telemetry(&self) {
        let v = self.version.replacen('v', "V", 1);
        self.publish("tlm", json!({"FIRMWARE_VERSION": v, "BATTERY": 3.97}));
    }

    /// One OTA check as `include/update.cpp` makes it, up to the reboot:
    /// the image request's status (`None` when the versions match). On
    /// `304` HTTPUpdate reports no update and the device stays as it is.
    pub fn ota_check(&mut self, http: SocketAddr) -> Option<u16> {
        let (status, body) = http_get(http, "/current_version.txt", &[]);
        assert_eq!(status, 200, "the pointer");
        let name = String::from_utf8(body).unwrap();
        let server = name[name.len() - 10..name.len() - 4].to_string();
        self.publish(
            "ota_status",
            json!({"STATUS_MSG": "version", "SERVER_FW_VERSION": server, "DEVICE_FW_VERSION": self.version}),
        );
        if server == self.version {
            return None;
        }
        self.publish("ota_status", json!({"STATUS_MSG": "started"}));
        let (status, image) = http_get(http, &format!("/{name}"), &self.httpupdate_headers());
        match status {
            200 => {
                assert_eq!(image.first(), Some(&0xE9), "the image");
                self.publish("ota_status", json!({"STATUS_MSG": "finished"}));
                if self.boots {
                    self.version = server;
                }
            }
            304 => assert!(image.is_empty(), "a 304 has no body"),
            other => panic!("{} got {other}", self.mac),
        }
        Some(status)
    }

    /// Arduino-ESP32 HTTPUpdate's request headers.
    pub fn httpupdate_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("User-Agent", "ESP32-http-Update".into()),
            ("Cache-Control", "no-cache".into()),
            ("x-ESP32-STA-MAC", self.mac.clone()),
            ("x-ESP32-AP-MAC", self.mac.clone()),
            ("x-ESP32-free-space", "1966080".into()),
            ("x-ESP32-sketch-size", "912384".into()),
            (
                "x-ESP32-sketch-md5",
                "00000000000000000000000000000000".into(),
            ),
            ("x-ESP32-chip-size", "4194304".into()),
            ("x-ESP32-sdk-version", "v4.4.7".into()),
            ("x-ESP32-mode", "sketch".into()),
        ]
    }
}
