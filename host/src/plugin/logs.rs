//! What a plugin writes to the host's log: escaped, bounded, rate-limited.
//!
//! A plugin's log messages and printed lines end up in the host's own log,
//! so they are hostile input: a newline would start a line that looks like
//! the host's (`… ERROR eventhost::daemon: …`), a terminal escape could
//! rewrite the screen, and a loop could write gigabytes. So every control
//! character is escaped ([`escape`]), a message is cut at
//! [`MAX_MESSAGE_BYTES`], a call writes at most [`MAX_CALL_BYTES`], and a
//! subscriber at most [`RATE_PER_SECOND`] lines a second (bursts of
//! [`BURST`]) across its instances; what is dropped is counted and said in
//! one line.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest message (or printed line) kept, in bytes after escaping.
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// Bytes of log one call may write, messages and printed lines together.
pub const MAX_CALL_BYTES: usize = 64 << 10;
/// Lines a second a subscriber may log, on average.
pub const RATE_PER_SECOND: f64 = 100.0;
/// Lines a subscriber may log at once before the rate applies.
pub const BURST: f64 = 500.0;

pub use crate::telemetry::escape;

/// What one call logged and dropped; reset at the start of each call.
#[derive(Debug, Default)]
pub struct CallLog {
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl CallLog {
    /// Lines and bytes dropped because the call went over
    /// [`MAX_CALL_BYTES`]; takes them.
    pub fn take_dropped(&mut self) -> Option<(u64, u64)> {
        let dropped = (self.dropped_lines, self.dropped_bytes);
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        (dropped.0 > 0).then_some(dropped)
    }
}

/// One subscriber's log rate, shared by its instances.
#[derive(Debug, Clone)]
pub struct LogGate {
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// A line let through, and what the rate limit dropped before it, to say.
#[derive(Debug, PartialEq)]
pub struct Admitted {
    pub line: String,
    /// Lines and bytes dropped by the rate limit since the last line let
    /// through.
    pub dropped_before: Option<(u64, u64)>,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate {
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
            })),
        }
    }
}

impl LogGate {
    /// Escapes and cuts `message`, and lets it through if the call's
    /// budget and the subscriber's rate allow it; else counts it dropped.
    pub fn admit(&self, call: &mut CallLog, message: &str) -> Option<Admitted> {
        if call.bytes >= MAX_CALL_BYTES {
            call.dropped_lines += 1;
            call.dropped_bytes += message.len() as u64;
            return None;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * RATE_PER_SECOND;
        bucket.tokens = (bucket.tokens + refill).min(BURST);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.dropped_lines += 1;
            bucket.dropped_bytes += message.len() as u64;
            return None;
        }
        bucket.tokens -= 1.0;
        let dropped_before =
            (bucket.dropped_lines > 0).then(|| (bucket.dropped_lines, bucket.dropped_bytes));
        bucket.dropped_lines = 0;
        bucket.dropped_bytes = 0;
        drop(bucket);
        let line = escape(message, MAX_MESSAGE_BYTES);
        call.bytes += line.len();
        Some(Admitted {
            line,
            dropped_before,
        })
    }
}

/// Logs that the rate limit dropped `lines` lines (`bytes` bytes) of a
/// subscriber's log.
pub fn say_rate_dropped(subscriber: &str, event_id: &str, (lines, bytes): (u64, u64)) {
    tracing::warn!(
        subscriber,
        event_id,
        "dropped {lines} log lines ({bytes} bytes) of this plugin: over its rate of \
         {RATE_PER_SECOND} lines/s (bursts of {BURST})"
    );
}

/// Logs that a call went over [`MAX_CALL_BYTES`] and `lines` lines
/// (`bytes` bytes) of its log were dropped.
pub fn say_call_dropped(subscriber: &str, event_id: &str, (lines, bytes): (u64, u64)) {
    tracing::warn!(
        subscriber,
        event_id,
        "dropped {lines} log lines ({bytes} bytes) of this event: over the limit of {} KiB of \
         log per event",
        MAX_CALL_BYTES >> 10
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_messages_cut() {
        assert_eq!(escape("plain text, é", 100), "plain text, é");
        assert_eq!(
            escape("a\nb\r\nERROR x\t\u{1b}[2J\u{7f}", 100),
            "a\\nb\\r\\nERROR x\\t\\u{1b}[2J\\u{7f}"
        );
        let cut = escape(&"x".repeat(5000), 100);
        assert!(cut.starts_with(&"x".repeat(100)), "{cut}");
        assert!(cut.ends_with("… (4900 more bytes cut)"), "{cut}");
        assert!(!escape(&"\n".repeat(5000), 100).contains('\n'));
    }

    #[test]
    fn a_call_writes_at_most_its_budget() {
        let gate = LogGate::default();
        let mut call = CallLog::default();
        let line = "y".repeat(1000);
        let mut let_through = 0;
        for _ in 0..200 {
            if gate.admit(&mut call, &line).is_some() {
                let_through += 1;
            }
        }
        assert_eq!(let_through, MAX_CALL_BYTES.div_ceil(1000));
        assert_eq!(
            call.take_dropped(),
            Some((200 - let_through as u64, (200 - let_through as u64) * 1000))
        );
        assert_eq!(call.take_dropped(), None);
    }

    #[test]
    fn a_subscriber_is_rate_limited_across_calls_and_told_what_was_dropped() {
        let gate = LogGate::default();
        let mut admitted = 0;
        for _ in 0..(BURST as usize + 50) {
            // A fresh call each time: only the rate applies.
            if gate.admit(&mut CallLog::default(), "z").is_some() {
                admitted += 1;
            }
        }
        assert!(admitted <= BURST as usize + 1, "{admitted}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let next = gate.admit(&mut CallLog::default(), "again").unwrap();
        let (lines, bytes) = next.dropped_before.unwrap();
        assert!(lines >= 48, "{lines}");
        assert_eq!(bytes, lines);
        let after = gate.admit(&mut CallLog::default(), "and again");
        assert!(after.is_none_or(|a| a.dropped_before.is_none()));
    }
}
