//! `gator-ota status`: the fleet summary in the terminal, from the running
//! service's `/status.json`, or from the files on disk when it is down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use gator_ota_actors::fleet::{report::StatusReport, report_from_disk};

use crate::cli::StatusArgs;

/// How long the service has to answer before the files are read instead.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest answer read: a full registry's report is far below it.
const MAX_BODY: u64 = 16 * 1024 * 1024;

pub fn status(args: &StatusArgs) -> ExitCode {
    let loaded = gator_ota_settings::load_all(
        args.settings.settings.as_deref(),
        args.settings.scarecro_configs.as_deref(),
    );
    let settings = match loaded {
        Ok(l) => l.settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let target = args.url.clone().or_else(|| local_address(&settings));
    let report = match target.as_deref().map(fetch) {
        Some(Ok(report)) => report,
        Some(Err(e)) => {
            eprintln!(
                "the service does not answer at {}: {e}; reading the files on disk",
                target.unwrap_or_default()
            );
            report_from_disk(&settings)
        }
        None => report_from_disk(&settings),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}

/// `host:port` of the firmware server's first listen address, reached over
/// loopback when it listens on every address.
fn local_address(settings: &gator_ota_settings::Settings) -> Option<String> {
    if !settings.http.enabled || !settings.fleet.enabled {
        return None;
    }
    let mut addr: SocketAddr = *settings.http.addresses().first()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    (addr.port() != 0).then(|| addr.to_string())
}

/// `GET /status.json` over plain HTTP/1.0: one request, no client library.
fn fetch(target: &str) -> Result<StatusReport, String> {
    let hostport = target
        .strip_prefix("http://")
        .unwrap_or(target)
        .trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET /status.json HTTP/1.0\r\nHost: {hostport}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    conn.take(MAX_BODY)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("/status.json answered {status}"));
    }
    serde_json::from_slice(&response[split + 4..])
        .map_err(|e| format!("/status.json is not a status report: {e}"))
}
