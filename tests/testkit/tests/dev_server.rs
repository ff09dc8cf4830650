//! The `s3-dev-server` binary is driven by scripts through its stdout line
//! and signals, so test exactly that contract.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use gator_ota_testkit::{ACCESS_KEY, REGION, SECRET_KEY, wait_until};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, RetryConfig};

#[tokio::test]
async fn dev_server_serves_and_stops_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("firmware/dg")).unwrap();
    std::fs::write(root.path().join("firmware/dg/v1.bin"), b"dev server bytes").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_s3-dev-server"))
        .arg("--root")
        .arg(root.path())
        .args(["--port", "0", "--bucket", "extra-bucket"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn s3-dev-server");

    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read startup line");
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
        .to_owned();
    assert!(
        root.path().join("extra-bucket").is_dir(),
        "--bucket creates the bucket"
    );

    let retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name("firmware")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region(REGION)
        .with_retry(retry)
        .build()
        .unwrap();
    let got = store
        .get(&ObjectPath::from("dg/v1.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"dev server bytes");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let mut exit = None;
    wait_until(
        Duration::from_secs(10),
        "s3-dev-server to exit after SIGTERM",
        || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        },
    );
    assert!(exit.unwrap().success(), "clean exit on SIGTERM: {exit:?}");
}

#[tokio::test]
async fn dev_server_memory_serves_the_roots_objects_from_memory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("firmware/dg")).unwrap();
    std::fs::write(
        root.path().join("firmware/dg/v1.bin"),
        b"memory server bytes",
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_s3-dev-server"))
        .arg("--root")
        .arg(root.path())
        .args(["--port", "0", "--memory"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn s3-dev-server --memory");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read startup line");
    let endpoint = line.trim().strip_prefix("listening on ").map(str::to_owned);
    // Loaded at start: the file can go, the object stays.
    std::fs::remove_file(root.path().join("firmware/dg/v1.bin")).unwrap();

    let store = AmazonS3Builder::new()
        .with_endpoint(
            endpoint
                .as_deref()
                .unwrap_or_else(|| panic!("startup line {line:?}")),
        )
        .with_allow_http(true)
        .with_bucket_name("firmware")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region(REGION)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build()
        .unwrap();
    let got = store.get(&ObjectPath::from("dg/v1.bin")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        &got.unwrap().bytes().await.unwrap()[..],
        b"memory server bytes"
    );
}
