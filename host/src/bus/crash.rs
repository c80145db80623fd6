//! Crash points: where a test makes the host die as `kill -9` would, at
//! the one moment a guarantee rests on, instead of hoping a random kill
//! lands there.
//!
//! `EVENTHOST_CRASH_AT=<point>` (read once) makes the host SIGKILL itself
//! the first time it reaches that point. Unset, a point costs one load of
//! a static.

use std::sync::OnceLock;

/// The points a test can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// On a cluster: a fan-out batch's copies are written, its partition
    /// entries not yet acknowledged.
    FanoutAfterCopy,
    /// On a cluster: an outbox batch is relayed to the ingress, not yet
    /// acknowledged in the outbox.
    RelayAfterPublish,
    /// A commit that queued requests to send after it is written; the
    /// sender may or may not have read them yet.
    CommitQueued,
    /// The after-commit sender has read committed requests (they are
    /// pending for this host), none of them sent.
    SenderAfterRead,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::FanoutAfterCopy => "fanout-after-copy",
            Point::RelayAfterPublish => "relay-after-publish",
            Point::CommitQueued => "commit-queued",
            Point::SenderAfterRead => "sender-after-read",
        }
    }
}

/// Dies here if the environment names `point`.
pub fn here(point: Point) {
    static ASKED: OnceLock<Option<String>> = OnceLock::new();
    let asked = ASKED.get_or_init(|| std::env::var("EVENTHOST_CRASH_AT").ok());
    if asked.as_deref() == Some(point.name()) {
        tracing::error!("EVENTHOST_CRASH_AT={}: killing this process", point.name());
        // SAFETY: kill(2) on our own pid; nothing after it runs.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
