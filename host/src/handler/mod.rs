//! What the bus hands a handler and what it gets back.
//!
//! This is the seam between the two halves of eventhost: the bus (Redis)
//! produces [`Event`]s and commits [`Outcome`]s; a [`Handler`] (a wasm plugin,
//! or a native one in benchmarks) turns one into the other. Neither side sees
//! the other's machinery: a handler reads state through [`StateReader`] and
//! never touches Redis, the bus never touches wasmtime. A [`HandlerFactory`]
//! is what the daemon makes handlers with. What a call buffers until the
//! commit is its [`Effects`].

mod effects;
mod request;

pub use effects::{
    read_cost, Effects, PublishRefused, StateWrite, EFFECT_OVERHEAD_BYTES, ENVELOPE_BYTES,
};
pub use request::{
    retry_delay, Delivery, QueuedRequest, RequestSender, DEFAULT_ATTEMPTS, MAX_ATTEMPTS,
    MAX_QUEUED_PER_CALL,
};

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::config::{Config, SubscriberConfig};

/// One event, as delivered to one subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `event_id` of the JSON, else `_metadata.id`, else the stream id.
    pub id: String,
    pub event_type: String,
    /// Entry id in the subscriber's stream.
    pub stream_id: String,
    /// Seconds since the epoch, from the JSON.
    pub timestamp: Option<f64>,
    /// 1 on the first delivery; the stream's delivery count after that.
    pub attempt: u32,
    /// The JSON object as published, without LeanMQ's bookkeeping keys.
    pub data: String,
    /// How many publishes by handlers led to this event (`_metadata.hops`;
    /// 0 from a producer): what it publishes is one more, up to a limit,
    /// so a cycle of plugins ends.
    pub hops: u32,
    /// The W3C trace context the event carries (`traceparent`, top level or
    /// in `_metadata`), checked: sent on the requests its handler makes, so
    /// a trace crosses the bus and the plugin.
    pub traceparent: Option<String>,
}

/// How one call of a handler ended.
#[derive(Debug)]
pub enum Outcome {
    /// Commit these effects together with the acknowledgement.
    Ok(Effects),
    /// Discard every effect; retry or dead-letter according to the kind.
    Failed(Failure),
}

/// Why a call failed; the kind decides between a retry and the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// What the handler read before it decided to fail: a `retry` or a
    /// `reject` may rest on it, so it is checked like an `ok`'s reads.
    pub reads: Reads,
    /// How long the handler asked its `retry` to wait (`retry-after`),
    /// instead of the subscriber's backoff.
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    /// Builds a failure of `kind` with a human-readable `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            reads: Reads::new(),
            retry_after: None,
        }
    }

    /// The same failure, decided on what was read in `reads`.
    pub fn with_reads(mut self, reads: Reads) -> Self {
        self.reads = reads;
        self
    }

    /// The same failure, its reason followed by what the host saw that the
    /// plugin may not have said (a request the grants denied, which a
    /// client may report as no more than a network error).
    pub fn with_host_note(mut self, note: Option<String>) -> Self {
        if let Some(note) = note {
            self.message = format!("{} (the host {note})", self.message);
        }
        self
    }
}

/// The state a call read, each key once with what it saw, in the order
/// first read: what its result rests on.
pub type Reads = Vec<(String, Seen)>;

/// Values up to this size are checked at commit by comparing them; larger
/// ones by their length and [stamp](Seen::stamp), so checking a read never
/// costs Redis a copy of a large value.
pub const COMPARED_BYTES: usize = 1024;

/// What a read saw of one key of a subscriber's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    /// The value; `None`: absent.
    pub value: Option<String>,
    /// For a value over [`COMPARED_BYTES`]: the stamp eventhost's last
    /// write of it left beside it (the entry that wrote it), if any.
    pub stamp: Option<String>,
    /// Written by an earlier event of a batch that runs and commits one
    /// event at a time: it holds at commit exactly when that event's result
    /// is applied (else the batch stops there), so it needs no check.
    pub earlier_in_batch: bool,
}

impl Seen {
    /// A value as read, without a stamp.
    pub fn value(value: Option<String>) -> Self {
        Seen {
            value,
            ..Seen::default()
        }
    }
}

/// The kinds of failure a DLQ reason names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler said it may succeed later.
    Retry,
    /// The handler said it will never succeed (a poison message).
    Reject,
    /// The plugin trapped (a panic, an `unreachable`, a bad memory access).
    Trap,
    /// The plugin ran past its time limit.
    Timeout,
    /// The plugin ran past its memory limit.
    OutOfMemory,
    /// The host could not serve the plugin (state unreadable, no instance
    /// slot); not the plugin's fault, so it is retried like `Retry`.
    Host,
    /// No instance could be had in time: the instance pool is busy, or the
    /// subscriber holds its share of it. Not the event's fault and not an
    /// attempt: it waits and runs again, never to the DLQ.
    Capacity,
    /// Redis did not answer a state read during the call (an outage, a
    /// cluster failing over): not the event's fault and not an attempt; it
    /// waits and runs again, never to the DLQ.
    Unavailable,
}

impl FailureKind {
    /// Whether the event deserves another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureKind::Retry | FailureKind::Host)
    }

    /// The word used in DLQ reasons, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retry => "retry",
            FailureKind::Reject => "reject",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out-of-memory",
            FailureKind::Host => "host-error",
            FailureKind::Capacity => "capacity",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event a handler published, waiting for the commit. The bus wraps it
/// in the wire format (see `bus::leanmq`) when it commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub event_type: String,
    /// Derived from the delivery and the publish's position in the call, so
    /// a re-run publishes the same id.
    pub event_id: String,
    /// The handler's object, as it gave it.
    pub data: Map<String, Value>,
    /// Publishes from the producer's event to this one: the handled
    /// event's hops plus one.
    pub hops: u32,
    /// When it is routed: `None` as soon as it is committed.
    pub due: Option<Due>,
}

/// When an event published for later is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// This long after it is committed (on Redis's clock).
    After(std::time::Duration),
    /// At this Unix time, in ms (on Redis's clock).
    At(u64),
}

impl Due {
    /// Longest a publish may wait: a year (a plugin asking for more is
    /// most likely confused about units).
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
}

/// How a JSON value is described in error messages.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Seconds since the epoch, as LeanMQ's `time.time()` writes timestamps.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Read access to one subscriber's committed state.
#[async_trait]
pub trait StateReader: Send + Sync {
    /// The committed value of `key`, if any.
    async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self.read(key).await?.value)
    }

    /// What is committed for `key`: its value, and its stamp if it has one.
    async fn read(&self, key: &str) -> anyhow::Result<Seen>;
}

/// Runs events for one subscriber.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles one event; must not panic, every failure is an [`Outcome`].
    async fn handle(&self, event: Event, state: Arc<dyn StateReader>) -> Outcome;

    /// What sends the requests its calls queued with `send-after-commit`,
    /// under the subscriber's grants; `None` for a handler that cannot
    /// queue any (native ones).
    fn request_sender(&self) -> Option<Arc<dyn RequestSender>> {
        None
    }
}

/// Makes the handlers of subscribers: wasm plugins for `eventhost run`,
/// native Rust handlers in the throughput benchmark. The daemon's only
/// dependency on what runs events.
#[async_trait]
pub trait HandlerFactory: Send + Sync + 'static {
    /// Loads what `subscribers` need before they start or change (their
    /// plugins), all or nothing: the error names every refusal, located in
    /// `config`.
    async fn load(&self, config: &Config, subscribers: &[SubscriberConfig]) -> anyhow::Result<()>;

    /// A handler for a subscriber with `settings`, from what was loaded.
    fn handler(&self, settings: &SubscriberConfig) -> Arc<dyn Handler>;

    /// The digest of the build a subscriber with `settings` runs, for
    /// operators to tell builds apart across hosts; `None` for handlers
    /// that have no build (native ones).
    fn build(&self, _settings: &SubscriberConfig) -> Option<String> {
        None
    }

    /// The plugin file at `path` changed on disk: loads it again, for the
    /// handlers made from now on.
    async fn reload(&self, path: &Path) -> Reload;
}

/// What reloading a changed plugin file came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// It holds the build already in use (editors write a file in steps),
    /// or no handler uses it.
    Unchanged,
    /// A new build is in use for handlers made from now on; `what` says
    /// which, for the log (e.g. `build 1a2b → 3c4d (compiled) in 180ms`).
    Loaded { what: String },
    /// It is not a usable plugin; the build in use stays.
    Refused { reason: String },
    /// It is gone or still being written; the build in use stays.
    Unsettled,
}
