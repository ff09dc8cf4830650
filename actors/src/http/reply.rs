//! A response, and how it goes out: the head as one write, a small body
//! with it, an image straight from the page cache with `sendfile(2)`.
//!
//! `sendfile` is why this server has its own connection loop: the bytes of
//! an image go from the page cache to the socket without a copy through
//! user space, as nginx sends them. The HTTP stacks of the ecosystem copy
//! every chunk of a body into a write buffer first, which cost about half
//! of the throughput nginx gets on the same machine.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::routes::Tracker;

/// Bytes per `sendfile` call: bounded so that one fast client cannot keep
/// the server's thread from the others for long.
const SEND_STEP: u64 = 1024 * 1024;

pub(crate) struct Reply {
    pub status: u16,
    headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Close the connection after this reply, whatever the client asked.
    pub close: bool,
}

pub(crate) enum Body {
    Empty,
    Bytes(Bytes),
    /// A `HEAD`: the length a `GET` would send, and no bytes.
    Head(u64),
    File(Box<FileBody>),
}

/// Part of an open image, and the record of how much of it went out.
pub(crate) struct FileBody {
    pub file: File,
    pub offset: u64,
    pub len: u64,
    pub tracker: Tracker,
}

impl Reply {
    pub(crate) fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn text(self, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        self.header("Content-Type", content_type)
            .with_body(Body::Bytes(body.into()))
    }

    pub(crate) fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The status line (in the request's own version: an HTTP/1.0 client
    /// may take nothing newer) and headers. `Content-Length` always, but
    /// for a `304`, which has none.
    fn head(&self, keep_alive: bool, minor: u8) -> Vec<u8> {
        let mut head = format!("HTTP/1.{minor} {} {}\r\n", self.status, reason(self.status));
        let mut line = |name: &str, value: &str| {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        };
        line("Date", &httpdate::fmt_http_date(SystemTime::now()));
        for (name, value) in &self.headers {
            line(name, value);
        }
        let len = match &self.body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Head(n) => *n,
            Body::File(f) => f.len,
        };
        if self.status != 304 {
            line("Content-Length", &len.to_string());
        }
        match (keep_alive, minor) {
            (false, _) => line("Connection", "close"),
            (true, 0) => line("Connection", "keep-alive"),
            (true, _) => {}
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    /// Sends the whole reply; an error means the connection is done. The
    /// client may take nothing for `stall` at most.
    pub(crate) async fn send(
        self,
        stream: &mut TcpStream,
        keep_alive: bool,
        minor: u8,
        stall: Duration,
    ) -> io::Result<()> {
        let mut head = self.head(keep_alive, minor);
        match self.body {
            Body::Empty | Body::Head(_) => write_all(stream, &head, stall).await,
            Body::Bytes(bytes) => {
                head.extend_from_slice(&bytes);
                write_all(stream, &head, stall).await
            }
            Body::File(mut body) => {
                write_all(stream, &head, stall).await?;
                send_file(stream, &mut body, stall).await
            }
        }
    }
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], stall: Duration) -> io::Result<()> {
    tokio::time::timeout(stall, stream.write_all(bytes))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The image's bytes from the page cache to the socket. A file shorter
/// than the index says ends the connection early, so the client sees a
/// short body, never bytes of something else.
async fn send_file(stream: &TcpStream, body: &mut FileBody, stall: Duration) -> io::Result<()> {
    let end = body.offset + body.len;
    while body.offset < end {
        let want = (end - body.offset).min(SEND_STEP) as usize;
        let at = body.offset;
        let ready = stream.async_io(Interest::WRITABLE, || {
            let mut offset = at;
            rustix::fs::sendfile(stream.as_fd(), body.file.as_fd(), Some(&mut offset), want)
                .map_err(io::Error::from)
        });
        let sent = tokio::time::timeout(stall, ready)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
        if sent == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.offset += sent as u64;
        body.tracker.sent(sent as u64);
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(reply: &Reply, keep: bool, minor: u8) -> String {
        String::from_utf8(reply.head(keep, minor)).unwrap()
    }

    #[test]
    fn heads_carry_the_length_and_say_how_the_connection_goes_on() {
        let r = Reply::new(200).text("text/plain", "gw_v1.0.0.bin");
        let h = head(&r, true, 1);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{h}");
        assert!(
            h.contains("\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"),
            "{h}"
        );
        assert!(!h.contains("Connection"), "{h}");
        let h = head(&r, true, 0);
        assert!(h.starts_with("HTTP/1.0 200 OK\r\n"), "{h}");
        assert!(h.contains("Connection: keep-alive\r\n"), "{h}");
        assert!(head(&r, false, 1).contains("Connection: close\r\n"));
        let h = head(&Reply::new(206).with_body(Body::Head(65536)), true, 1);
        assert!(h.contains("Content-Length: 65536\r\n"), "{h}");
        let h = head(&Reply::new(304).header("ETag", "\"ab\""), true, 1);
        assert!(h.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{h}");
        assert!(!h.contains("Content-Length"), "{h}");
        assert!(head(&Reply::new(404), true, 1).contains("Content-Length: 0\r\n"));
    }
}
