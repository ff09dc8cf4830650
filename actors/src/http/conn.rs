//! One connection: request heads in, replies out, until either side is
//! done or a deadline passes.
//!
//! Deadlines: the first head must be whole within `request_timeout` of the
//! accept (a slowloris client costs one connection slot that long, no
//! more); a kept connection waits `keep_alive` for the next request's first
//! byte, then `request_timeout` for the rest of its head. A closing
//! connection gets `disconnect_timeout` to go away after its last reply, so
//! the client reads every byte before the socket is closed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use super::reply::Reply;
use super::request::{self, HeadError, Request};
use super::routes::{self, State};

/// Largest request head taken; HTTPUpdate's is about 600 bytes.
const HEAD_MAX: usize = 8 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub request_timeout: Duration,
    /// Zero: every connection closes after one reply.
    pub keep_alive: Duration,
    pub disconnect_timeout: Duration,
    /// Time the client may take nothing of a reply.
    pub send_timeout: Duration,
}

enum Next {
    Request(Request),
    /// A head that cannot be answered: this status, and the connection
    /// closes.
    Refused(u16),
    /// The client went away, stayed idle too long, or the server stops.
    Done,
}

/// Serves `stream` until the connection is done. `stop` turns true when the
/// server stops: a connection waiting for its next request closes then; one
/// sending a reply finishes it first.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &State,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        let next = next_request(&mut stream, &mut buf, peer, &limits, first, &mut stop).await;
        let request = match next {
            Next::Request(r) => r,
            Next::Refused(status) => {
                let sent = Reply::new(status).send(&mut stream, false, 1, limits.send_timeout);
                if sent.await.is_ok() {
                    linger(stream, limits.disconnect_timeout).await;
                }
                return;
            }
            Next::Done => return,
        };
        first = false;
        let minor = request.minor;
        let asks_keep = request.wants_keep_alive() && !request.has_body();
        let reply = routes::respond(request, state).await;
        let keep = asks_keep && !reply.close && !limits.keep_alive.is_zero() && !*stop.borrow();
        let sent = reply.send(&mut stream, keep, minor, limits.send_timeout);
        if sent.await.is_err() {
            return;
        }
        if !keep {
            linger(stream, limits.disconnect_timeout).await;
            return;
        }
    }
}

/// Reads until `buf` holds a whole head, and takes it out of `buf`.
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    limits: &Limits,
    first: bool,
    stop: &mut watch::Receiver<bool>,
) -> Next {
    let now = Instant::now();
    let idle_until = now + limits.keep_alive;
    let mut head_until = first.then_some(now + limits.request_timeout);
    let mut chunk = [0u8; 2048];
    loop {
        if !buf.is_empty() {
            head_until.get_or_insert_with(|| Instant::now() + limits.request_timeout);
            match request::parse(buf, Some(peer)) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    return Next::Request(req);
                }
                Ok(None) if buf.len() >= HEAD_MAX => return Next::Refused(431),
                Ok(None) => {}
                Err(HeadError::TooManyHeaders) => return Next::Refused(431),
                Err(HeadError::Malformed) => return Next::Refused(400),
            }
        }
        let idle = buf.is_empty();
        let deadline = head_until.unwrap_or(idle_until);
        let read = tokio::select! {
            r = timeout_at(deadline, stream.read(&mut chunk)) => r,
            _ = stop.wait_for(|s| *s), if idle => return Next::Done,
        };
        match read {
            Ok(Ok(0) | Err(_)) => return Next::Done,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) if idle => return Next::Done,
            Err(_) => return Next::Refused(408),
        }
    }
}

/// Half-closes and waits, up to `within`, for the client to close its end,
/// so that no reset cuts off the reply's last bytes.
async fn linger(mut stream: TcpStream, within: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = timeout(within, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
