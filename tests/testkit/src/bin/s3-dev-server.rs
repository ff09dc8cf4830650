//! Serves a directory over the S3 API, in the foreground, for benchmark
//! scripts and the local demo.
//!
//! It runs the same server code as the tests' `S3Server` (s3s-fs with SigV4
//! auth), so numbers from benchmarks and behaviour in the demo match what the
//! test suite verifies. Buckets are subdirectories of `--root`; files placed
//! in them are served as objects.
//!
//! With `--memory` it loads those files into memory at start and serves them
//! from there in large chunks instead (SigV4 still on): the benchmark's
//! server, fast enough that a client downloading from it measures itself.
//! Objects PUT to it then live in memory only.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gator_ota_testkit::{ACCESS_KEY, MemoryStore, REGION, SECRET_KEY, serve_memory_s3, serve_s3};

/// Serve a directory as an S3 endpoint on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "s3-dev-server")]
struct Args {
    /// Directory holding one subdirectory per bucket (created if missing).
    #[arg(long)]
    root: PathBuf,

    /// Loopback port to listen on; 0 picks a free one (printed on startup).
    #[arg(long, default_value_t = 9000)]
    port: u16,

    /// Access key clients must sign with.
    #[arg(long, default_value = ACCESS_KEY, requires = "secret_key")]
    access_key: String,

    /// Secret key clients must sign with.
    #[arg(long, default_value = SECRET_KEY, requires = "access_key")]
    secret_key: String,

    /// Bucket to create under the root before serving (repeatable).
    #[arg(long = "bucket")]
    buckets: Vec<String>,

    /// Serve from memory: load the root's objects at start, answer in
    /// large chunks, keep PUTs in memory (nothing is written to the root).
    #[arg(long)]
    memory: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3-dev-server: cannot start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3-dev-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    std::fs::create_dir_all(&args.root)?;
    for bucket in &args.buckets {
        // Catch a name the server would answer with InvalidBucketName now,
        // rather than on the first request.
        if !s3s::path::check_bucket_name(bucket) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid S3 bucket name {bucket:?}"),
            ));
        }
        std::fs::create_dir_all(args.root.join(bucket))?;
    }

    // Loaded before the port is announced, so a script's first request
    // finds every object.
    let memory = if args.memory {
        let store = MemoryStore::new();
        let loaded = store.load_dir(&args.root)?;
        eprintln!("s3-dev-server: {loaded} objects loaded into memory");
        Some(store)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
    let port = listener.local_addr()?.port();
    // Scripts wait for this exact line (and parse the port from it), so it
    // is printed only once the socket is bound; stdout is line-buffered.
    println!("listening on http://127.0.0.1:{port}");
    eprintln!(
        "s3-dev-server: root {}, access key {:?}, region {REGION}; Ctrl-C or SIGTERM to stop",
        args.root.display(),
        args.access_key
    );

    if let Some(store) = memory {
        serve_memory_s3(
            listener,
            store,
            &args.access_key,
            &args.secret_key,
            shutdown_signal(),
        )
        .await
    } else {
        serve_s3(
            listener,
            &args.root,
            &args.access_key,
            &args.secret_key,
            shutdown_signal(),
        )
        .await
    }
}

/// Resolves on SIGINT (interactive use) or SIGTERM (what scripts and
/// process supervisors send).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
