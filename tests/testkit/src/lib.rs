//! Real infrastructure for gator-ota's tests and benchmarks.
//!
//! The downloader's interesting behaviour lives at its edges — MQTT
//! reconnects, SigV4 signing, interrupted and resumed S3 transfers — so the
//! tests run it against the real thing: a mosquitto process ([`Broker`]) and
//! an S3-protocol server ([`S3Server`], s3s-fs with authentication), with an
//! optional fault-injecting front ([`S3Front`]) for the store's misbehaviour. Each
//! instance gets its own loopback port and temp directory, so tests can run
//! in parallel and can kill or restart "their" servers to inject failures.
//! Benchmarks use [`serve_memory_s3`], an S3 server answering from memory,
//! so that they measure the client rather than s3s-fs's 4 KiB reads.
//!
//! Every wait in here is a bounded poll ([`wait_until`]); the single
//! exception is [`Subscriber::expect_none`], because proving that nothing
//! happens takes time by definition.

mod broker;
mod mem_s3;
mod mqtt;
mod s3;
mod s3_front;
pub mod tls;
mod wait;

pub use broker::{Broker, MOSQUITTO_ENV};
pub use mem_s3::{BODY_CHUNK, MemoryS3, MemoryStore, serve_memory_s3};
pub use mqtt::{Collector, Publisher, Subscriber, publish, publish_tls, publish_until_acked};
pub use s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY, pseudo_random_bytes, serve_s3, to_hex};
pub use s3_front::{
    Action, Fault, FaultHandle, S3Front, Seen, checksum_crc32c, checksum_crc64nvme, checksum_sha256,
};
pub use tls::TestPki;
pub use wait::{free_port, wait_until};

#[cfg(test)]
mod tests;
