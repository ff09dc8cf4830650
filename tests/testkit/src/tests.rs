//! Self-tests: if these fail, every downstream test failure is suspect, so
//! they check the harness against the same clients the product uses.

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, RetryConfig};
use sha2::Sha256;

use crate::*;
use crate::{Action, Fault, S3Front, checksum_crc32c, checksum_crc64nvme, checksum_sha256};

const RECV: Duration = Duration::from_secs(5);

#[test]
fn subscriber_receives_published_message() {
    let broker = Broker::start();
    assert_eq!(broker.url(), format!("tcp://127.0.0.1:{}", broker.port()));

    let sub = Subscriber::new(&broker.url(), "gator/test/#");
    publish(&broker.url(), "gator/test/hello", r#"{"n":1}"#);

    let msg = sub.recv_json(RECV).expect("published message is delivered");
    assert_eq!(msg, serde_json::json!({ "n": 1 }));
    sub.expect_none(Duration::from_millis(200));
}

#[test]
fn subscriber_only_sees_its_topic() {
    let broker = Broker::start();
    let sub = Subscriber::new(&broker.url(), "gator/a");
    publish(&broker.url(), "gator/b", "not for you");
    publish(&broker.url(), "gator/a", "for you");
    assert_eq!(sub.recv(RECV).as_deref(), Some("for you"));
}

#[test]
fn broker_restart_keeps_port_and_serves_again() {
    let mut broker = Broker::start();
    let port = broker.port();
    assert!(broker.is_running());

    broker.stop();
    assert!(!broker.is_running());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "stopped broker must not accept connections"
    );

    broker.restart();
    assert_eq!(broker.port(), port);
    assert!(broker.is_running());
    let sub = Subscriber::new(&broker.url(), "gator/restarted");
    publish(&broker.url(), "gator/restarted", "back");
    assert_eq!(sub.recv(RECV).as_deref(), Some("back"));
    assert!(
        broker.log().contains("mosquitto version"),
        "log: {}",
        broker.log()
    );
}

#[test]
fn extra_config_is_applied() {
    // A broker that only accepts authenticated clients rejects our anonymous
    // publisher, proving the extra lines reached mosquitto.
    let pwfile = tempfile::NamedTempFile::new().unwrap();
    let broker = Broker::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        pwfile.path().display()
    ));
    let url = broker.url();
    let rejected = std::panic::catch_unwind(|| publish(&url, "gator/x", "y"));
    assert!(rejected.is_err(), "anonymous publish must be refused");
}

#[test]
fn tls_broker_serves_the_test_pki() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let broker = Broker::start_tls(&pki, true);
    assert_eq!(
        broker.tls_url(),
        format!("ssl://127.0.0.1:{}", broker.port())
    );

    let url = broker.tls_url();
    let sub = Subscriber::new_tls(&url, "gator/tls", &pki);
    publish_tls(&url, "gator/tls", "over tls", &pki);
    assert_eq!(sub.recv(RECV).as_deref(), Some("over tls"));
    assert!(
        broker.log().contains(tls::CLIENT_CN),
        "the client certificate is the user name: {}",
        broker.log()
    );

    let plain = broker.url();
    let refused = std::panic::catch_unwind(|| publish(&plain, "gator/tls", "plain"));
    assert!(refused.is_err(), "a plaintext client must be refused");
    let other = TestPki::new(&dir.path().join("other"));
    let refused = std::panic::catch_unwind(|| publish_tls(&url, "gator/tls", "x", &other));
    assert!(refused.is_err(), "a client trusting another CA must refuse");
    sub.expect_none(Duration::from_millis(200));
}

fn client(server: &S3Server, bucket: &str, secret: &str) -> AmazonS3 {
    client_at(&server.endpoint(), bucket, secret)
}

fn client_at(endpoint: &str, bucket: &str, secret: &str) -> AmazonS3 {
    // No retries: the tests below want the first failure, not minutes of
    // backoff against a stopped server.
    let retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    // Signed like gator-ota's own requests, checksum mode included.
    let mut headers = object_store::HeaderMap::new();
    headers.insert(
        "x-amz-checksum-mode",
        object_store::HeaderValue::from_static("ENABLED"),
    );
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_client_options(
            object_store::ClientOptions::new()
                .with_allow_http(true)
                .with_default_headers(headers),
        )
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(secret)
        .with_region(REGION)
        .with_retry(retry)
        .build()
        .expect("build S3 client")
}

#[tokio::test]
async fn put_object_is_served_to_signed_get() {
    let s3 = S3Server::start();
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{}", s3.port()));
    s3.create_bucket("firmware");
    s3.put_object("firmware", "datagator/v1.2.3/fw.bin", b"firmware bytes");
    assert!(
        s3.object_path("firmware", "datagator/v1.2.3/fw.bin")
            .is_file()
    );

    let store = client(&s3, "firmware", SECRET_KEY);
    let path = ObjectPath::from("datagator/v1.2.3/fw.bin");
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"firmware bytes");

    let meta = store.head(&path).await.unwrap();
    assert_eq!(meta.size, 14);
    let md5 = to_hex(&Md5::digest(b"firmware bytes"));
    assert_eq!(meta.e_tag.as_deref(), Some(format!("\"{md5}\"").as_str()));

    let range = store.get_range(&path, 9..14).await.unwrap();
    assert_eq!(&range[..], b"bytes");
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let s3 = S3Server::start();
    s3.create_bucket("firmware");
    s3.put_object("firmware", "fw.bin", b"secret firmware");

    let store = client(&s3, "firmware", "not-the-secret-key");
    let err = store.get(&ObjectPath::from("fw.bin")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("403") || text.contains("SignatureDoesNotMatch"),
        "unexpected error: {text}"
    );
}

#[tokio::test]
async fn overwrite_and_delete_are_visible() {
    let s3 = S3Server::start();
    s3.create_bucket("bucket");
    let store = client(&s3, "bucket", SECRET_KEY);
    let path = ObjectPath::from("k");

    s3.put_object("bucket", "k", b"one");
    let first = store.head(&path).await.unwrap().e_tag;
    s3.put_object("bucket", "k", b"two!");
    let meta = store.head(&path).await.unwrap();
    assert_eq!(meta.size, 4);
    assert_ne!(meta.e_tag, first, "ETag must follow the content");
    assert_eq!(
        &store.get(&path).await.unwrap().bytes().await.unwrap()[..],
        b"two!"
    );

    s3.delete_object("bucket", "k");
    let err = store.get(&path).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn random_object_matches_digest_and_generator() {
    let s3 = S3Server::start();
    s3.create_bucket("big");
    // Not a multiple of the write chunk or of 8, to cover the tail paths.
    let len = 3 * 1024 * 1024 + 13;
    let digest = s3.put_random_object("big", "blob", len as u64, 42);

    let expected = pseudo_random_bytes(len, 42);
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&expected)));

    let store = client(&s3, "big", SECRET_KEY);
    let path = ObjectPath::from("blob");
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&got)), digest);

    let start = 1024 * 1024 - 5;
    let range = store
        .get_range(&path, start as u64..(start + 100) as u64)
        .await
        .unwrap();
    assert_eq!(&range[..], &expected[start..start + 100]);

    // Same seed, same bytes; different seed, different bytes.
    assert_eq!(pseudo_random_bytes(100, 42), expected[..100]);
    assert_ne!(pseudo_random_bytes(100, 43), expected[..100]);
}

#[tokio::test]
async fn put_object_from_file_round_trips() {
    let s3 = S3Server::start();
    s3.create_bucket("bucket");
    let src = tempfile::NamedTempFile::new().unwrap();
    let content = pseudo_random_bytes(200_000, 7);
    std::fs::write(src.path(), &content).unwrap();

    let digest = s3.put_object_from_file("bucket", "from/file.bin", src.path());
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&content)));
    let store = client(&s3, "bucket", SECRET_KEY);
    let got = store
        .get(&ObjectPath::from("from/file.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &content[..]);
}

#[tokio::test]
async fn s3_stop_fails_requests_and_restart_recovers() {
    let mut s3 = S3Server::start();
    let port = s3.port();
    s3.create_bucket("bucket");
    s3.put_object("bucket", "k", b"still here");
    let store = client(&s3, "bucket", SECRET_KEY);
    let path = ObjectPath::from("k");
    assert!(store.head(&path).await.is_ok());

    s3.stop();
    assert!(!s3.is_running());
    assert!(
        store.head(&path).await.is_err(),
        "stopped server must not answer"
    );

    s3.restart();
    assert_eq!(s3.port(), port);
    assert!(s3.is_running());
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"still here");
}

#[test]
fn s3_server_works_without_a_runtime() {
    // Sync tests get the server too; a raw TCP connect proves it listens.
    let s3 = S3Server::start();
    TcpStream::connect((Ipv4Addr::LOCALHOST, s3.port())).expect("S3 server accepts TCP");
}

#[test]
fn start_at_uses_given_root_and_port() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let s3 = S3Server::start_at(root.path().join("nested"), Some(port));
    assert_eq!(s3.port(), port);
    s3.create_bucket("bucket");
    assert!(root.path().join("nested/bucket").is_dir());
    assert_eq!(
        s3.root(),
        root.path().join("nested").canonicalize().unwrap()
    );
}

#[tokio::test]
async fn s3_stop_cuts_off_in_flight_download() {
    use futures::StreamExt;

    let mut s3 = S3Server::start();
    s3.create_bucket("bucket");
    // Far more than socket buffers can hold, so the body is still streaming.
    let len: u64 = 16 * 1024 * 1024;
    s3.put_random_object("bucket", "huge", len, 1);
    let store = client(&s3, "bucket", SECRET_KEY);

    let mut body = store
        .get(&ObjectPath::from("huge"))
        .await
        .unwrap()
        .into_stream();
    let mut received = body.next().await.expect("first chunk").unwrap().len() as u64;
    s3.stop();

    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => received += bytes.len() as u64,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        failed,
        "body must end in an error, got {received} of {len} bytes"
    );
    assert!(received < len);
}

#[test]
#[should_panic(expected = "bogus_option_for_the_testkit")]
fn broker_startup_failure_reports_mosquitto_error() {
    // mosquitto names the offending line on stderr; the panic must carry it.
    Broker::start_with_config("bogus_option_for_the_testkit true");
}

#[tokio::test]
async fn front_passes_signed_requests_through_untouched() {
    let s3 = S3Server::start();
    s3.create_bucket("firmware");
    s3.put_object("firmware", "fw/a.bin", b"firmware bytes");
    let front = S3Front::start(&s3);
    let store = client_at(&front.endpoint(), "firmware", SECRET_KEY);
    let path = ObjectPath::from("fw/a.bin");

    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"firmware bytes");
    let meta = store.head(&path).await.unwrap();
    let md5 = to_hex(&Md5::digest(b"firmware bytes"));
    assert_eq!(meta.e_tag.as_deref(), Some(format!("\"{md5}\"").as_str()));
    let range = store.get_range(&path, 9..14).await.unwrap();
    assert_eq!(&range[..], b"bytes");
    assert_eq!(front.count("GET", "fw/a.bin"), 2);
    assert_eq!(front.count("HEAD", "fw/a.bin"), 1);

    // The signature still covers what the client sent.
    let wrong = client_at(&front.endpoint(), "firmware", "not-the-secret");
    assert!(wrong.head(&path).await.is_err());
}

#[test]
fn crc_checksums_are_the_catalogues_in_s3_encoding() {
    // CRC-32C("123456789") = 0xE3069283, CRC-64/NVME = 0xAE8B14860A799888,
    // base64 of their big-endian bytes.
    assert_eq!(checksum_crc32c(b"123456789"), "4waSgw==");
    assert_eq!(checksum_crc64nvme(b"123456789"), "rosUhgp5mIg=");
    // Of no bytes: zero for both (all-ones init and final xor).
    assert_eq!(checksum_crc32c(b""), "AAAAAA==");
    assert_eq!(checksum_crc64nvme(b""), "AAAAAAAAAAA=");
}

#[tokio::test]
async fn front_faults_do_what_they_say() {
    use futures::StreamExt;

    let s3 = S3Server::start();
    s3.create_bucket("firmware");
    let bytes = pseudo_random_bytes(100_000, 1);
    s3.put_object("firmware", "fw/a.bin", &bytes);
    let front = S3Front::start(&s3);
    let store = client_at(&front.endpoint(), "firmware", SECRET_KEY);
    let path = ObjectPath::from("fw/a.bin");
    let key = "fw/a.bin";

    let slow = front.add(Fault::head(key, Action::SlowDown).times(1));
    assert!(store.head(&path).await.is_err(), "503 SlowDown");
    assert!(store.head(&path).await.is_ok(), "only once");
    assert_eq!(slow.hits(), 1);

    front.add(Fault::get(key, Action::DelayHeaders(Duration::from_secs(30))).times(1));
    let held = tokio::time::timeout(Duration::from_millis(300), store.get(&path)).await;
    assert!(held.is_err(), "no answer while the headers are held");
    front.clear();

    front.add(Fault::get(key, Action::IgnoreRange).ranged());
    let ranged = store.get_range(&path, 10..20).await;
    assert!(
        ranged.is_err(),
        "a 200 to a Range is refused by object_store"
    );
    front.clear();

    front.add(Fault::get(key, Action::ShortObject(1000)));
    let mut body = store.get(&path).await.unwrap().into_stream();
    let mut got = 0;
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut && got == 1000, "cut at byte 1000, got {got}");
    assert!(store.get_range(&path, 1000..2000).await.is_err(), "416");
    front.clear();

    front.add(Fault::get(key, Action::StallAfter(500)));
    let mut body = store.get(&path).await.unwrap().into_stream();
    let mut got = 0;
    while let Ok(Some(Ok(c))) = tokio::time::timeout(Duration::from_millis(500), body.next()).await
    {
        got += c.len();
    }
    assert_eq!(got, 500, "stalled after 500 bytes");
    front.clear();

    let sha = Sha256::digest(&bytes);
    front.add(Fault::any(key, Action::SseKms));
    front.add(Fault::any(
        key,
        Action::ChecksumSha256(checksum_sha256(&sha.into())),
    ));
    let head = store.head(&path).await.unwrap();
    let got = store.get(&path).await.unwrap();
    let md5 = format!("\"{}\"", to_hex(&Md5::digest(&bytes)));
    assert_ne!(head.e_tag.as_deref(), Some(md5.as_str()), "not the MD5");
    assert_eq!(head.e_tag, got.meta.e_tag, "the same fake ETag each time");
    assert_eq!(head.e_tag.as_ref().map(|t| t.len()), Some(34), "md5-like");
}

/// The memory server on a free port of its own runtime, with its store.
async fn memory_server() -> (String, MemoryStore, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let store = MemoryStore::new();
    store.create_bucket("firmware");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = store.clone();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        serve_memory_s3(listener, served, ACCESS_KEY, SECRET_KEY, stopped)
            .await
            .unwrap();
    });
    (endpoint, store, stop)
}

#[tokio::test]
async fn memory_server_serves_get_head_range_and_put() {
    let (endpoint, store, _stop) = memory_server().await;
    // Over two body chunks, so the chunking and its seams are exercised.
    let data = pseudo_random_bytes(2 * BODY_CHUNK + 12_345, 7);
    store.put("firmware", "dg/fw.bin", data.clone().into());
    let s3 = client_at(&endpoint, "firmware", SECRET_KEY);
    let path = ObjectPath::from("dg/fw.bin");

    let got = s3.get(&path).await.unwrap();
    let md5 = format!("\"{}\"", to_hex(&Md5::digest(&data)));
    assert_eq!(got.meta.e_tag.as_deref(), Some(md5.as_str()));
    assert_eq!(got.meta.size, data.len() as u64);
    assert_eq!(got.bytes().await.unwrap(), data);

    let meta = s3.head(&path).await.unwrap();
    assert_eq!(
        (meta.size, meta.e_tag.as_deref()),
        (data.len() as u64, Some(md5.as_str()))
    );

    let start = BODY_CHUNK as u64 - 3;
    let range = s3.get_range(&path, start..start + 10).await.unwrap();
    assert_eq!(&range[..], &data[start as usize..start as usize + 10]);
    let past = s3
        .get_range(&path, data.len() as u64 + 1..data.len() as u64 + 5)
        .await;
    assert!(past.is_err(), "a range past the end is refused: {past:?}");

    s3.put(&ObjectPath::from("up.bin"), b"uploaded".to_vec().into())
        .await
        .unwrap();
    let up = s3.get(&ObjectPath::from("up.bin")).await.unwrap();
    assert_eq!(&up.bytes().await.unwrap()[..], b"uploaded");
    let missing = s3.get(&ObjectPath::from("nope.bin")).await.unwrap_err();
    assert!(
        matches!(missing, object_store::Error::NotFound { .. }),
        "{missing}"
    );
}

#[tokio::test]
async fn memory_server_refuses_a_wrong_signature() {
    let (endpoint, store, _stop) = memory_server().await;
    store.put("firmware", "fw.bin", b"secret firmware".to_vec().into());
    let s3 = client_at(&endpoint, "firmware", "not-the-secret-key");
    let err = s3
        .get(&ObjectPath::from("fw.bin"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") || err.contains("SignatureDoesNotMatch"),
        "unexpected error: {err}"
    );
}
