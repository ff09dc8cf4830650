//! The firmware server as the Data Gators and ESP-IDF devices use it: real
//! curl and a raw TCP client against the running `gator-ota`, fed by a real
//! broker and the real S3 server.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gator_ota_testkit::{Action, Fault, S3Front, checksum_crc64nvme, pseudo_random_bytes, to_hex};
use md5::{Digest, Md5};
use serde_json::Value;

/// The station MAC a Data Gator sends in `x-ESP32-STA-MAC`.
const DEVICE_MAC: &str = "24:6F:28:AA:BB:CC";

/// An image as an ESP32 build makes one: it starts with the image magic.
fn esp_image(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = pseudo_random_bytes(len, seed);
    bytes[0] = 0xE9;
    bytes
}

fn md5_hex(bytes: &[u8]) -> String {
    to_hex(&Md5::digest(bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Sha256;
    to_hex(&Sha256::digest(bytes))
}

/// Puts `bytes` at `key`, publishes a firmware_image for it and waits for
/// the confirm_receipt.
fn install(world: &World, id: &str, file_name: &str, key: &str, bytes: &[u8]) {
    let confirms = world.confirms();
    world.s3.put_object(BUCKET, key, bytes);
    world.publish_json(&firmware_image(id, file_name, key));
    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["file_name"], file_name);
}

/// One curl run: status, response headers (lower-cased names), body.
struct Fetched {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Fetched {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {path} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head).unwrap();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_string();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default().to_string();
    let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Fetched {
        status,
        version,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// A raw request (curl would normalise `..` and friends away); returns the
/// status line and the rest of the response.
fn raw(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, response)
}

fn raw_get(addr: SocketAddr, target: &str) -> String {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"),
    )
    .0
}

fn device_log(world: &World) -> Vec<Value> {
    let path = world.data_dir().join(".gator-ota/devices.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// curl arguments for the request Arduino-ESP32's HTTPUpdate makes
/// (`libraries/HTTPUpdate/src/HTTPUpdate.cpp`): HTTP/1.0 and its headers.
fn httpupdate_args(sketch_md5: &str) -> Vec<String> {
    [
        "-0",
        "-A",
        "ESP32-http-Update",
        "-H",
        "Cache-Control: no-cache",
        "-H",
        &format!("x-ESP32-STA-MAC: {DEVICE_MAC}"),
        "-H",
        "x-ESP32-AP-MAC: 24:6F:28:AA:BB:CD",
        "-H",
        "x-ESP32-free-space: 1966080",
        "-H",
        "x-ESP32-sketch-size: 912384",
        "-H",
        &format!("x-ESP32-sketch-md5: {sketch_md5}"),
        "-H",
        "x-ESP32-chip-size: 4194304",
        "-H",
        "x-ESP32-sdk-version: v4.4.7",
        "-H",
        "x-ESP32-mode: sketch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `GET /<name>` as HTTPUpdate sends it from a device running `running`.
fn httpupdate_get(addr: SocketAddr, name: &str, running: &[u8]) -> Fetched {
    let args = httpupdate_args(&md5_hex(running));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(addr, &format!("/{name}"), &args)
}

/// A message with a `sha256` is checked by it: the download takes no MD5,
/// and the server's `x-MD5` (which HTTPUpdate checks the flashed image
/// against) and its "already running" answer come from its own read.
#[test]
fn x_md5_is_right_when_the_download_took_no_md5() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let image = esp_image(200 * 1024 + 3, 5);
    let name = "datagator_v1.0.2.bin";
    let key = "data-gator/datagator_v1.0.2.bin";
    let confirms = world.confirms();
    world.s3.put_object(BUCKET, key, &image);
    let mut message = firmware_image("m-sha", name, key);
    message["sha256"] = sha256_hex(&image).into();
    world.publish_json(&message);
    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["file_name"], name);
    let index =
        std::fs::read_to_string(world.data_dir().join(".gator-ota/installed.json")).unwrap();
    assert!(!index.contains("\"md5\""), "no MD5 was taken: {index}");

    let got = httpupdate_get(addr, name, b"the running sketch");
    assert_eq!(got.status, 200);
    assert!(got.body == image);
    assert_eq!(got.header("x-md5"), Some(md5_hex(&image).as_str()));
    assert_eq!(httpupdate_get(addr, name, &image).status, 304);
}

#[test]
fn a_data_gator_fetches_the_pointer_then_the_image_as_httpupdate_does() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    assert_eq!(curl(addr, "/current_version.txt", &["-0"]).status, 404);

    let image = esp_image(300 * 1024 + 7, 11);
    let name = "datagator_v1.0.1.bin";
    install(
        &world,
        "m-dg",
        name,
        "data-gator/datagator_v1.0.1.bin",
        &image,
    );

    let pointer = curl(addr, "/current_version.txt", &["-0"]);
    assert_eq!(pointer.status, 200);
    assert_eq!(
        pointer.body,
        name.as_bytes(),
        "the pointer's bytes, no newline"
    );
    assert_eq!(pointer.header("content-length"), Some("20"));

    let args = httpupdate_args(&md5_hex(b"the running sketch"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = curl(addr, &format!("/{name}"), &args);
    assert_eq!((got.version.as_str(), got.status), ("HTTP/1.0", 200));
    assert_eq!(got.body.len(), image.len());
    assert!(got.body == image, "the body is the S3 object");
    assert_eq!(got.body[0], 0xE9);
    let len = image.len().to_string();
    assert_eq!(got.header("content-length"), Some(len.as_str()));
    assert_eq!(got.header("transfer-encoding"), None);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.header("x-md5"), Some(md5_hex(&image).as_str()));
    assert_eq!(got.header("x-sha256"), Some(sha256_hex(&image).as_str()));
    let etag = format!("\"{}\"", sha256_hex(&image));
    assert_eq!(got.header("etag"), Some(etag.as_str()));

    // A device already running this image is told so.
    let args = httpupdate_args(&md5_hex(&image));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = curl(addr, &format!("/{name}"), &args);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    wait_until(DEADLINE, "both requests in the device log", || {
        device_log(&world).len() >= 2
    });
    let log = device_log(&world);
    let full = &log[0];
    assert_eq!(full["device"], DEVICE_MAC);
    assert_eq!(full["mac"], DEVICE_MAC);
    assert_eq!(full["ip"], "127.0.0.1");
    assert_eq!(full["image"], name);
    assert_eq!(full["user_agent"], "ESP32-http-Update");
    assert_eq!(full["status"], 200);
    assert_eq!(full["bytes_sent"], image.len() as u64);
    assert_eq!(full["completed"], true);
    assert_eq!(log[1]["status"], 304);
    assert_eq!(log[1]["bytes_sent"], 0);
}

#[test]
fn esp_https_ota_gets_head_ranges_a_resume_and_not_modified() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let image = esp_image(200 * 1024 + 3, 12);
    let name = "gator_v2.0.0.bin";
    install(&world, "m-ota", name, "fw/gator_v2.0.0.bin", &image);
    let path = format!("/{name}");
    let len = image.len();

    let head = curl(addr, &path, &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    // HEAD sends no body (curl -I prints only the head; a raw client
    // reading to the end sees where the response stops).
    let (status, response) = raw(addr, &format!("HEAD {path} HTTP/1.0\r\n\r\n"));
    assert!(status.contains("200"), "{status}");
    assert!(String::from_utf8_lossy(&response).ends_with("\r\n\r\n"));

    let first = curl(addr, &path, &["-H", "Range: bytes=0-0"]);
    assert_eq!(first.status, 206);
    assert_eq!(first.body, [0xE9]);
    assert_eq!(
        first.header("content-range"),
        Some(format!("bytes 0-0/{len}").as_str())
    );

    let mut assembled = Vec::new();
    while assembled.len() < 100_000 {
        let (a, b) = (assembled.len(), assembled.len() + 65535);
        let part = curl(addr, &path, &["-H", &format!("Range: bytes={a}-{b}")]);
        assert_eq!(part.status, 206);
        assembled.extend_from_slice(&part.body);
    }
    let resume = curl(
        addr,
        &path,
        &["-H", &format!("Range: bytes={}-", assembled.len())],
    );
    assert_eq!(resume.status, 206);
    assert_eq!(
        resume.header("content-length"),
        Some((len - assembled.len()).to_string().as_str())
    );
    assembled.extend_from_slice(&resume.body);
    assert!(assembled == image, "the ranges make up the image");

    let past = curl(addr, &path, &["-H", &format!("Range: bytes={len}-")]);
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    let etag = format!("\"{}\"", sha256_hex(&image));
    let cached = curl(addr, &path, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let other = curl(addr, &path, &["-H", "If-None-Match: \"something-else\""]);
    assert_eq!(other.status, 200);
    assert_eq!(other.body.len(), len);
    // HTTP/1.1 keeps the connection for the next request.
    let two = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} ",
        ])
        .arg(format!("http://{addr}{path}"))
        .arg(format!("http://{addr}/current_version.txt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&two.stdout).trim(), "1 0");
}

#[test]
fn only_pointers_and_installed_images_are_served() {
    let world = World::new();
    let mut env = world.env();
    env.push((
        "GATOR_OTA_LOG".into(),
        "gator_ota_actors::http=debug,info".into(),
    ));
    let gw = Gateway::start(env);
    let addr = gw.http_addr();
    let image = esp_image(4096, 13);
    install(
        &world,
        "m-only",
        "gw_v1.0.0.bin",
        "fw/gw_v1.0.0.bin",
        &image,
    );
    // The image on disk is <file_name>.bin; beside it, files gator-ota did
    // not install, and a secret in the data folder.
    let images = world.data_dir().join("firmware_images");
    std::fs::write(images.join("foreign.bin"), b"not installed").unwrap();
    std::fs::write(images.join(".gator-ota-0123456789abcdef.part"), b"staged").unwrap();
    std::fs::write(world.data_dir().join("secret.txt"), b"secret").unwrap();

    assert!(raw_get(addr, "/gw_v1.0.0.bin").contains("200"));
    assert!(
        raw_get(addr, "/gw_v1.0.0.bin.bin").contains("200"),
        "the name on disk too"
    );
    assert!(
        raw_get(addr, "/gw_v1%2E0.0.bin").contains("200"),
        "percent-decoded"
    );
    // `/` is the fleet view's status page (README: "Fleet view"), never a
    // listing of a folder.
    let (status, page) = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 200 "), "{status}");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("<h1>gator-ota"), "{page}");
    assert!(
        !page.contains("secret.txt") && !page.contains("foreign.bin"),
        "{page}"
    );
    for target in [
        "/firmware_images/",
        "/firmware_images/gw_v1.0.0.bin.bin",
        "/../gw_v1.0.0.bin",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        "/secret.txt",
        "/foreign.bin",
        "/latest_firmware.json",
        "/.gator-ota/installed.json",
        "/%2egator-ota%2finstalled.json",
        "/.gator-ota-0123456789abcdef.part",
        "/gw_v1.0.0.bin%00",
        "/gw_v1.0.0.bin/",
        "/current_version.txt/../secret.txt",
        "http://gateway/../secret.txt",
        "*",
    ] {
        let status = raw_get(addr, target);
        assert!(
            status.contains(" 404 ") || status.contains(" 400 "),
            "{target}: {status}"
        );
        assert!(!status.contains(" 200 "), "{target}");
    }
    gw.wait_line(&["not served", "/etc/passwd"]);
    let (status, _) = raw(
        addr,
        "POST /gw_v1.0.0.bin HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 405 "), "{status}");
}

/// Bytes the kernel may hold between the server and a client that reads
/// nothing: the most a loopback connection buffers on both ends.
fn socket_buffers() -> usize {
    let max = |p: &str| -> usize {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.split_whitespace().last()?.parse().ok())
            .unwrap_or(8 << 20)
    };
    max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem")
}

/// Reads a response head and returns what came after it.
fn read_head(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            return (head, buf[end + 4..].to_vec());
        }
    }
}

#[test]
fn an_image_replaced_mid_download_keeps_its_old_bytes() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    // Larger than all the kernel can buffer, so most of the old image is
    // still to be read from the file when the new one lands.
    let len = socket_buffers() + 4 * 1024 * 1024;
    let (old, new) = (esp_image(len, 21), esp_image(len, 22));
    let name = "gator_v3.0.0.bin";
    install(&world, "m-old", name, "fw/gator_v3.0.0.bin", &old);

    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(format!("GET /{name} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let (head, mut body) = read_head(&mut conn);
    assert!(head.contains(&sha256_hex(&old)), "{head}");

    install(&world, "m-new", name, "fw/gator_v3.0.0.bin", &new);
    let installed: [u8; 32] = sha2::Sha256::digest(&new).into();
    assert_eq!(sha256_file(&world.image(name)), installed);
    conn.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), old.len());
    assert!(body == old, "the whole download is the old image");

    let fresh = curl(addr, &format!("/{name}"), &[]);
    assert_eq!(fresh.header("x-sha256"), Some(sha256_hex(&new).as_str()));
    assert!(fresh.body == new);
}

#[test]
fn a_pointer_whose_image_is_gone_is_withheld() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let name = "gator_v4.0.0.bin";
    install(
        &world,
        "m-gone",
        name,
        "fw/gator_v4.0.0.bin",
        &esp_image(1000, 31),
    );
    assert_eq!(curl(addr, "/current_version.txt", &[]).status, 200);

    std::fs::remove_file(world.image(name)).unwrap();
    assert_eq!(curl(addr, "/current_version.txt", &[]).status, 404);
    assert_eq!(curl(addr, &format!("/{name}"), &[]).status, 404);
    // Not a byte of the pointer went out: a device never learns a name it
    // cannot fetch.
    assert_eq!(std::fs::read_to_string(world.pointer()).unwrap(), name);

    // A stop ends the server with the service.
    let status = gw.terminate();
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after exit"
    );
}

fn run_curl_in_background(addr: SocketAddr, path: &str) -> std::thread::JoinHandle<Fetched> {
    let path = path.to_string();
    std::thread::spawn(move || curl(addr, &path, &[]))
}

#[test]
fn slow_clients_are_cut_and_connections_are_capped() {
    let world = World::new();
    let mut env = world.env();
    env.push(("GATOR_OTA__HTTP__MAX_CONNECTIONS".into(), "2".into()));
    env.push(("GATOR_OTA__HTTP__REQUEST_TIMEOUT".into(), "1s".into()));
    let gw = Gateway::start(env);
    let addr = gw.http_addr();
    let big = esp_image(socket_buffers() + 2 * 1024 * 1024, 41);
    install(&world, "m-big", "big_v1.0.0.bin", "fw/big_v1.0.0.bin", &big);

    // A slowloris client: a header byte now and then, never the end.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /current_version.txt HTTP/1.1\r\nHost: g\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let cut = loop {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            break started.elapsed();
        }
        slow.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut b = [0u8; 256];
        match slow.read(&mut b) {
            Ok(n) => {
                answer.extend_from_slice(&b[..n]);
                break started.elapsed();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break started.elapsed(),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut");
    };
    // The cut comes one request_timeout after the connection opened; the
    // client notices it at its next write, a tenth of a second later.
    assert!(
        (Duration::from_millis(400)..Duration::from_secs(3)).contains(&cut),
        "cut at {cut:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    drop(slow);

    // Two downloads that read nothing hold both connections.
    let hold = |_: usize| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.write_all(b"GET /big_v1.0.0.bin HTTP/1.0\r\n\r\n")
            .unwrap();
        let (head, _) = read_head(&mut c);
        assert!(head.contains(" 200 "), "{head}");
        c
    };
    let held: Vec<TcpStream> = (0..2).map(hold).collect();
    let waiting = run_curl_in_background(addr, "/current_version.txt");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !waiting.is_finished(),
        "a third connection was served beside two"
    );
    drop(held);
    let got = waiting.join().unwrap();
    assert_eq!(got.status, 200);
    wait_until(DEADLINE, "the cut downloads in the device log", || {
        device_log(&world)
            .iter()
            .filter(|r| r["image"] == "big_v1.0.0.bin" && r["completed"] == false)
            .count()
            == 2
    });
}

#[test]
fn two_hundred_devices_download_at_once() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let image = esp_image(256 * 1024 + 1, 51);
    let name = "fleet_v1.0.0.bin";
    install(&world, "m-fleet", name, "fw/fleet_v1.0.0.bin", &image);
    let want = sha256_hex(&image);

    let devices: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let (status, response) = raw(
                    addr,
                    &format!(
                        "GET /{name} HTTP/1.0\r\nx-ESP32-STA-MAC: 24:6F:28:00:01:{i:02X}\r\n\r\n"
                    ),
                );
                let start = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                (status, sha256_hex(&response[start..]))
            })
        })
        .collect();
    for d in devices {
        let (status, sha) = d.join().unwrap();
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(sha, want);
    }
    wait_until(DEADLINE, "a record per device", || {
        let log = device_log(&world);
        log.len() == 200 && log.iter().all(|r| r["completed"] == true)
    });
    let macs: std::collections::BTreeSet<String> = device_log(&world)
        .iter()
        .map(|r| r["mac"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(macs.len(), 200);
}

/// The exit of a gateway that must refuse to start, and its log.
fn refused_start(env: Vec<(String, String)>) -> String {
    let gw = Gateway::spawn(env);
    wait_until(DEADLINE, "gator-ota to exit", || gw.exit_status().is_some());
    assert!(!gw.exit_status().unwrap().success());
    std::thread::sleep(Duration::from_millis(100)); // let the log reader drain
    gw.log()
}

#[test]
fn the_server_is_off_when_disabled_and_a_taken_port_stops_the_start() {
    let world = World::new();
    let mut env = world.env();
    env.push(("GATOR_OTA__HTTP__ENABLED".into(), "false".into()));
    let gw = Gateway::start(env);
    assert_eq!(gw.count("firmware server listening"), 0);
    drop(gw);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut env = world.env();
    env.push(("GATOR_OTA__HTTP__LISTEN".into(), addr.clone()));
    let log = refused_start(env);
    assert!(
        log.contains(&format!(
            "settings key `http.listen`: cannot listen on {addr}"
        )),
        "{log}"
    );

    let mut env = world.env();
    env.push(("GATOR_OTA_SETTINGS".into(), {
        let path = world.dir.path().join("outside.toml");
        std::fs::write(
            &path,
            "[http]\npointers = [{ url = \"/current_version.txt\", file = \"/etc/passwd\" }]\n",
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    }));
    let log = refused_start(env);
    assert!(
        log.contains("settings key `http.pointers[0].file`"),
        "{log}"
    );
    assert!(log.contains("outside the allowed folders"), "{log}");
}

/// Reads one response with a `Content-Length` from a kept connection:
/// its head and exactly its body (none for a `HEAD`).
fn read_response(
    conn: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head ended");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let len = if head_only { 0 } else { len };
    pending.drain(..end + 4);
    while pending.len() < len {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the body ended");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = pending.drain(..len).collect();
    (head, body)
}

#[test]
fn kept_and_pipelined_requests_are_answered_in_order_and_bad_heads_refused() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let name = "keep_v1.0.0.bin";
    let image = esp_image(200_000, 61);
    install(&world, "m-keep", name, "fw/keep_v1.0.0.bin", &image);

    // HTTP/1.1: three requests in one write, answered in order on one
    // connection, which stays open for a fourth.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let three = format!(
        "GET /current_version.txt HTTP/1.1\r\nHost: g\r\n\r\nHEAD /{name} HTTP/1.1\r\nHost: g\r\n\r\nGET /{name} HTTP/1.1\r\nHost: g\r\nRange: bytes=10-19\r\n\r\n"
    );
    conn.write_all(three.as_bytes()).unwrap();
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut conn, &mut pending, false);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, name.as_bytes());
    let (head, body) = read_response(&mut conn, &mut pending, true);
    assert!(head.contains("Content-Length: 200000"), "{head}");
    assert!(body.is_empty(), "HEAD has no body");
    let (head, body) = read_response(&mut conn, &mut pending, false);
    assert!(head.starts_with("HTTP/1.1 206 "), "{head}");
    assert_eq!(body, &image[10..20]);
    conn.write_all(format!("GET /{name} HTTP/1.1\r\nHost: g\r\n\r\n").as_bytes())
        .unwrap();
    let (_, body) = read_response(&mut conn, &mut pending, false);
    assert!(body == image, "the whole image on the kept connection");

    // HTTP/1.0 keeps the connection only when asked, and says so.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let keep = "GET /current_version.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    conn.write_all(keep.as_bytes()).unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut conn, &mut pending, false);
    assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
    assert!(head.contains("Connection: keep-alive"), "{head}");
    conn.write_all(b"GET /current_version.txt HTTP/1.0\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut conn, &mut pending, false);
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(body, name.as_bytes());
    assert_eq!(conn.read(&mut [0u8; 16]).unwrap(), 0, "closed after it");

    // Heads that cannot be answered: a status, then the connection closes.
    let crowded = format!(
        "GET /{name} HTTP/1.1\r\n{}\r\n",
        "X-Many: 1\r\n".repeat(100)
    );
    let huge = format!(
        "GET /{name} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    for (request, status) in [
        ("GARBAGE\r\n\r\n".to_string(), " 400 "),
        ("GET / SPDY/3\r\n\r\n".to_string(), " 400 "),
        (crowded, " 431 "),
        (huge, " 431 "),
    ] {
        let (line, _) = raw(addr, &request);
        assert!(line.contains(status), "{request:.40}: {line}");
    }
    assert_eq!(curl(addr, &format!("/{name}"), &[]).status, 200);
}

/// Installs an image larger than the kernel can buffer and starts its
/// download: the connection (its head read, `200`), the image and the
/// body bytes that came with the head.
fn start_large_download(
    world: &World,
    addr: SocketAddr,
    stem: &str,
    seed: u64,
) -> (TcpStream, Vec<u8>, Vec<u8>) {
    let name = format!("{stem}_v1.0.0.bin");
    let image = esp_image(socket_buffers() + 2 * 1024 * 1024, seed);
    install(
        world,
        &format!("m-{stem}"),
        &name,
        &format!("fw/{name}"),
        &image,
    );
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(format!("GET /{name} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let (head, body) = read_head(&mut conn);
    assert!(head.contains(" 200 "), "{head}");
    (conn, image, body)
}

#[test]
fn a_device_that_stops_reading_is_cut_after_send_timeout() {
    let world = World::new();
    let mut env = world.env();
    env.push(("GATOR_OTA__HTTP__SEND_TIMEOUT".into(), "1s".into()));
    let gw = Gateway::start(env);
    let addr = gw.http_addr();
    let name = "stall_v1.0.0.bin";
    let (mut conn, image, _) = start_large_download(&world, addr, "stall", 71);
    let started = Instant::now();
    wait_until(DEADLINE, "the stalled download cut and recorded", || {
        device_log(&world)
            .iter()
            .any(|r| r["image"] == name && r["completed"] == false)
    });
    // Cut a send_timeout after the last bytes the kernel took, which was
    // about when the head arrived here.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut too early"
    );
    // The socket is closed: what the kernel buffered, then the end.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.len() < image.len());
    assert_eq!(curl(addr, &format!("/{name}"), &[]).body.len(), image.len());
}

#[test]
fn a_stop_lets_a_download_in_flight_finish() {
    let world = World::new();
    let gw = world.gateway();
    let addr = gw.http_addr();
    let (mut conn, image, mut body) = start_large_download(&world, addr, "stop", 81);
    let term = Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    wait_until(DEADLINE, "the server to stop accepting", || {
        TcpStream::connect(addr).is_err()
    });
    conn.read_to_end(&mut body).unwrap();
    assert!(body == image, "the whole image, though the service stops");
    wait_until(DEADLINE, "gator-ota to exit", || gw.exit_status().is_some());
    assert!(gw.exit_status().unwrap().success());
}

/// Most objects in S3 carry a CRC-64/NVME, and a download checked by it
/// takes no SHA-256 or MD5: the index records the CRC. The server still
/// sends the image's own `x-SHA256`, ETag and `x-MD5` (from its first read,
/// checked against the CRC), refuses the file once it rots on the disk, and
/// a repeated message re-checks the installed image by the CRC and
/// downloads it again.
#[test]
fn an_image_checked_by_its_crc_alone_is_served_with_its_own_digests() {
    let world = World::new();
    let front = S3Front::start(&world.s3);
    let image = esp_image(150 * 1024 + 1, 21);
    let (name, key) = ("datagator_v1.0.3.bin", "data-gator/datagator_v1.0.3.bin");
    world.s3.put_object(BUCKET, key, &image);
    front.add(Fault::any(
        key,
        Action::ChecksumCrc64Nvme(checksum_crc64nvme(&image)),
    ));
    let mut env = world.env();
    env.push((
        "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT".into(),
        front.endpoint(),
    ));
    let gw = Gateway::start(env);
    let addr = gw.http_addr();
    let confirms = world.confirms();
    let message = firmware_image("m-crc", name, key);
    world.publish_json(&message);
    let confirm = confirms.recv_json(DEADLINE).expect("a confirm_receipt");
    assert_eq!(confirm["file_name"], name);
    gw.wait_line(&["the image matches the object's own checksum", "crc64nvme"]);
    let index_path = world.data_dir().join(".gator-ota/installed.json");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let recorded = index.to_string();
    assert!(recorded.contains("crc64nvme"), "{recorded}");
    assert!(
        !recorded.contains("\"sha256\"") && !recorded.contains("\"md5\""),
        "{recorded}"
    );

    let got = httpupdate_get(addr, name, b"the running sketch");
    assert_eq!(got.status, 200);
    assert!(got.body == image);
    assert_eq!(got.header("x-md5"), Some(md5_hex(&image).as_str()));
    assert_eq!(got.header("x-sha256"), Some(sha256_hex(&image).as_str()));
    let etag = format!("\"{}\"", sha256_hex(&image));
    assert_eq!(got.header("etag"), Some(etag.as_str()));

    // One byte rots, same size: the server refuses the file...
    let installed = world.image(name);
    let mut rotten = std::fs::read(&installed).unwrap();
    rotten[1000] ^= 0x40;
    std::fs::write(&installed, &rotten).unwrap();
    wait_until(DEADLINE, "the rotten image refused", || {
        httpupdate_get(addr, name, b"the running sketch").status == 404
    });
    // ...and the repeated message finds it by the CRC and downloads it again.
    world.publish_json(&firmware_image("m-crc-again", name, key));
    let confirm = confirms
        .recv_json(DEADLINE)
        .expect("a second confirm_receipt");
    assert_eq!(confirm["file_name"], name);
    gw.wait_log("no longer matches its checksum");
    assert!(std::fs::read(&installed).unwrap() == image);
    let again = httpupdate_get(addr, name, b"the running sketch");
    assert_eq!(again.status, 200);
    assert!(again.body == image);
}
