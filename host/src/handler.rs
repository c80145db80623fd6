//! What the bus hands a handler and what it gets back.
//!
//! This is the seam between the two halves of eventhost: the bus (Redis)
//! produces [`Event`]s and commits [`Outcome`]s; a [`Handler`] (a wasm plugin,
//! or a native one in benchmarks) turns one into the other. Neither side sees
//! the other's machinery: a handler reads state through [`StateReader`] and
//! never touches Redis, the bus never touches wasmtime. A [`HandlerFactory`]
//! is what the daemon makes handlers with.

use std::collections::HashMap;
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
}

impl Failure {
    /// Builds a failure of `kind` with a human-readable `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            reads: Reads::new(),
        }
    }

    /// The same failure, decided on what was read in `reads`.
    pub fn with_reads(mut self, reads: Reads) -> Self {
        self.reads = reads;
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
}

impl Seen {
    /// A value as read, without a stamp.
    pub fn value(value: Option<String>) -> Self {
        Seen { value, stamp: None }
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
}

/// A buffered state write; `None` deletes the key.
pub type StateWrite = (String, Option<String>);

/// Everything a call did through the host API, buffered until the commit.
///
/// Reads see the call's own writes first, so a handler behaves as if it
/// wrote through; nothing reaches Redis unless the call returns `ok`. What
/// it read of the committed state is kept too: the commit applies the
/// result only if that still holds, which makes state serializable.
#[derive(Debug, Default)]
pub struct Effects {
    published: Vec<Published>,
    writes: Vec<StateWrite>,
    overlay: HashMap<String, Option<String>>,
    reads: Reads,
}

impl Effects {
    /// Remembers that the call saw `seen` for `key` in the committed state
    /// (reads of its own writes are not asked for: see [`Self::pending`]).
    /// Only the first read of a key counts: later ones saw the same.
    pub fn read(&mut self, key: &str, seen: &Seen) {
        if !self.reads.iter().any(|(k, _)| k == key) {
            self.reads.push((key.to_string(), seen.clone()));
        }
    }

    /// What the call read of the committed state.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Takes what the call read, for a failure that rests on it.
    pub fn take_reads(&mut self) -> Reads {
        std::mem::take(&mut self.reads)
    }

    /// A state value this call wrote or deleted, if it touched `key`.
    pub fn pending(&self, key: &str) -> Option<Option<&str>> {
        self.overlay.get(key).map(|v| v.as_deref())
    }

    /// Buffers a write of `key`.
    pub fn set(&mut self, key: String, value: String) {
        self.overlay.insert(key.clone(), Some(value.clone()));
        self.writes.push((key, Some(value)));
    }

    /// Buffers a deletion of `key`.
    pub fn delete(&mut self, key: String) {
        self.overlay.insert(key.clone(), None);
        self.writes.push((key, None));
    }

    /// Buffers an event to publish: `data` must be a JSON object. Returns
    /// its event id.
    ///
    /// The id is derived from `id_seed` and the publish's position in the
    /// call, so a re-run of the same delivery publishes the same ids.
    pub fn publish(
        &mut self,
        id_seed: &str,
        event_type: &str,
        data: &str,
    ) -> Result<String, String> {
        if event_type.is_empty() {
            return Err("event type must not be empty".into());
        }
        let object = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return Err(format!(
                    "data must be a JSON object, got {}",
                    json_kind(&other)
                ))
            }
            Err(err) => return Err(format!("data is not valid JSON: {err}")),
        };
        let name = format!("{id_seed}/{}", self.published.len());
        let event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
        self.published.push(Published {
            event_type: event_type.to_string(),
            event_id: event_id.clone(),
            data: object,
        });
        Ok(event_id)
    }

    /// The events published, in order.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// The state writes, in the order they were made.
    pub fn writes(&self) -> &[StateWrite] {
        &self.writes
    }

    /// Whether the call did nothing but succeed: no writes, no publishes,
    /// nothing read that its result could rest on.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty() && self.writes.is_empty() && self.reads.is_empty()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_buffered_writes_in_order() {
        let mut effects = Effects::default();
        assert_eq!(effects.pending("k"), None);
        effects.set("k".into(), "1".into());
        effects.set("k".into(), "2".into());
        assert_eq!(effects.pending("k"), Some(Some("2")));
        effects.delete("k".into());
        assert_eq!(effects.pending("k"), Some(None));
        assert_eq!(
            effects.writes(),
            &[
                ("k".to_string(), Some("1".to_string())),
                ("k".to_string(), Some("2".to_string())),
                ("k".to_string(), None)
            ]
        );
    }

    #[test]
    fn only_the_first_read_of_a_key_is_kept() {
        let mut effects = Effects::default();
        let one = Seen::value(Some("1".into()));
        effects.read("k", &one);
        effects.read("gone", &Seen::default());
        effects.read("k", &Seen::value(Some("2".into())));
        assert_eq!(
            effects.reads(),
            &vec![
                ("k".to_string(), one),
                ("gone".to_string(), Seen::default())
            ]
        );
        assert!(
            !effects.is_empty(),
            "a result that rests on reads is checked"
        );
        assert_eq!(effects.take_reads().len(), 2);
        assert!(effects.is_empty());
    }

    #[test]
    fn publish_keeps_the_type_and_object_with_stable_ids() {
        let mut first = Effects::default();
        let id = first
            .publish("sub/1-0", "Shipped", r#"{"order":7}"#)
            .unwrap();
        let published = &first.published()[0];
        assert_eq!(published.event_type, "Shipped");
        assert_eq!(published.event_id, id);
        assert_eq!(published.data["order"], 7);

        let mut rerun = Effects::default();
        let again = rerun.publish("sub/1-0", "Shipped", "{}").unwrap();
        assert_eq!(id, again, "a re-run publishes the same id");
        let second = rerun.publish("sub/1-0", "Shipped", "{}").unwrap();
        assert_ne!(again, second);
    }

    #[test]
    fn publish_refuses_what_is_not_an_object() {
        let mut effects = Effects::default();
        let err = effects.publish("s", "T", "[1]").unwrap_err();
        assert!(err.contains("an array"), "{err}");
        let err = effects.publish("s", "T", "nope").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = effects.publish("s", "", "{}").unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
        assert!(effects.is_empty());
    }
}
