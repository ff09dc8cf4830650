//! A request head, parsed by `httparse` and kept as owned values.
//!
//! The firmware server answers `GET` and `HEAD` without bodies, so a head
//! is all a request is; one that says it carries a body is answered and
//! the connection closed, since its body is never read.

use std::net::SocketAddr;

/// Headers a request may carry; HTTPUpdate sends about a dozen.
pub(crate) const MAX_HEADERS: usize = 48;

/// Why a head was refused before any handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP/1.x, or a malformed line: `400`.
    Malformed,
    /// More headers than [`MAX_HEADERS`]: `431`.
    TooManyHeaders,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Other(m) => m,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: Method,
    /// The request target as sent, e.g. `/current_version.txt`.
    pub target: String,
    /// The minor version: `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// Names lowercase; values that are not text are left out.
    headers: Vec<(String, String)>,
    pub peer: Option<SocketAddr>,
}

/// Parses one head from `buf`: `Ok(None)` while it is incomplete, else the
/// request and the bytes it took.
pub(crate) fn parse(
    buf: &[u8],
    peer: Option<SocketAddr>,
) -> Result<Option<(Request, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let headers = req
        .headers
        .iter()
        .filter_map(|h| {
            let value = std::str::from_utf8(h.value).ok()?;
            Some((h.name.to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    let request = Request {
        method,
        target: target.to_string(),
        minor,
        headers,
        peer,
    };
    Ok(Some((request, used)))
}

impl Request {
    /// The first value of header `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path of the target: origin form (`/a?q` → `/a`), or the path of
    /// an absolute form (`http://host/a` → `/a`); `None` for anything else
    /// (`*`, an authority).
    pub(crate) fn path(&self) -> Option<&str> {
        let t = self.target.as_str();
        let path = if t.starts_with('/') {
            t
        } else {
            let rest = t
                .strip_prefix("http://")
                .or_else(|| t.strip_prefix("https://"))?;
            &rest[rest.find('/')?..]
        };
        Some(path.split(['?', '#']).next().unwrap_or(path))
    }

    /// Whether `Connection` lists `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether the client asks to keep the connection: HTTP/1.1 unless it
    /// says `close`, HTTP/1.0 only when it says `keep-alive`.
    pub(crate) fn wants_keep_alive(&self) -> bool {
        if self.minor >= 1 {
            !self.connection_has("close")
        } else {
            self.connection_has("keep-alive")
        }
    }

    /// Whether a body follows the head (which the server never reads).
    pub(crate) fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|l| l.trim() != "0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(head: &str) -> Request {
        parse(head.as_bytes(), None).unwrap().unwrap().0
    }

    #[test]
    fn heads_parse_with_their_version_path_and_headers() {
        let r = one("GET /a.bin?x=1 HTTP/1.0\r\nX-ESP32-STA-MAC: 24:6F:28:00:00:01 \r\n\r\n");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.minor, 0);
        assert_eq!(r.path(), Some("/a.bin"));
        assert_eq!(r.header("x-esp32-sta-mac"), Some("24:6F:28:00:00:01"));
        assert!(!r.wants_keep_alive());
        assert!(one("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").wants_keep_alive());
        assert!(one("HEAD / HTTP/1.1\r\n\r\n").wants_keep_alive());
        assert!(!one("GET / HTTP/1.1\r\nConnection: te, close\r\n\r\n").wants_keep_alive());
        assert_eq!(
            one("GET http://gw/../s HTTP/1.1\r\n\r\n").path(),
            Some("/../s")
        );
        assert_eq!(one("OPTIONS * HTTP/1.1\r\n\r\n").path(), None);
        assert!(one("POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body());
        assert!(!one("POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body());
    }

    #[test]
    fn partial_malformed_and_crowded_heads() {
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: g\r\n", None)
                .unwrap()
                .is_none()
        );
        let (_, used) = parse(b"GET / HTTP/1.1\r\n\r\nGET /next", None)
            .unwrap()
            .unwrap();
        assert_eq!(used, 18);
        assert_eq!(
            parse(b"GET / SPDY/3\r\n\r\n", None).err(),
            Some(HeadError::Malformed)
        );
        assert_eq!(
            parse(b"\x00\x01\r\n\r\n", None).err(),
            Some(HeadError::Malformed)
        );
        let crowded = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse(crowded.as_bytes(), None).err(),
            Some(HeadError::TooManyHeaders)
        );
    }
}
