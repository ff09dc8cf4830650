//! Polling helpers.
//!
//! Tests against real processes and sockets must wait for things to happen
//! elsewhere. A fixed `sleep` is either too short (flaky on a loaded CI box)
//! or too long (slow everywhere), so every wait in this crate is a bounded
//! poll on an observable condition instead.

use std::net::{Ipv4Addr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_until`] re-checks its condition: short enough that tests
/// don't feel the latency, long enough not to spin a core.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Returns a loopback TCP port that was free a moment ago.
///
/// The OS picks the port, so parallel tests don't collide on hard-coded
/// numbers. The listener is dropped before returning, so another process
/// could in principle grab the port before the caller binds it; callers that
/// spawn servers should treat an early bind failure as retryable.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of ephemeral listener")
        .port()
}

/// Polls `cond` until it returns `true`, panicking once `deadline` has passed.
///
/// The panic message names `what`, so a timeout in CI says which expectation
/// failed rather than just "test timed out". `cond` always gets one last
/// chance after the deadline, so a condition that became true while the
/// thread was descheduled still counts.
///
/// This blocks the calling thread. From an async test, only wait on things
/// that make progress on *other* threads (a child process, the
/// [`S3Server`](crate::S3Server) thread, a multi-thread runtime's workers) —
/// never on a task that needs the current thread to run.
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() >= deadline {
            // One final check: the deadline may have expired while we slept.
            if cond() {
                return;
            }
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port from free_port can be bound");
    }

    #[test]
    fn wait_until_returns_once_condition_holds() {
        let calls = Cell::new(0);
        wait_until(Duration::from_secs(5), "third call", || {
            calls.set(calls.get() + 1);
            calls.get() >= 3
        });
        assert_eq!(calls.get(), 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    fn wait_until_panics_with_context() {
        wait_until(Duration::from_millis(50), "the impossible", || false);
    }
}
