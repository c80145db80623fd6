//! What a call did through the host API, buffered until the commit: state
//! writes and reads, and publishes, each with what it costs the host, so a
//! call's buffers are bounded (`effects_mb`) and a publish the fan-out would
//! refuse is refused at the call.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use super::{json_kind, Due, Published, QueuedRequest, Reads, Seen};
use crate::config::PublishLimits;

/// Room left for what the bus adds to a published object: `event_type`
/// (counted apart), `event_id`, `timestamp` and `_metadata` with its hops.
pub const ENVELOPE_BYTES: usize = 256;

/// Why a publish was refused; the host decides by the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefused {
    /// Not an event: an empty type, data that is not a JSON object.
    Invalid(String),
    /// Its `data` would be over `bus.max_payload_bytes`.
    TooLarge { bytes: usize, limit: usize },
    /// The event handled is `hops` publishes from its producer, the limit:
    /// a cycle of plugins, most likely. The call fails with it.
    HopLimit { hops: u32 },
}

impl fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishRefused::Invalid(why) => f.write_str(why),
            PublishRefused::TooLarge { bytes, limit } => write!(
                f,
                "the event would be {bytes} bytes, over the limit of {limit} \
                 (bus.max_payload_bytes)"
            ),
            PublishRefused::HopLimit { hops } => write!(
                f,
                "publish refused: this event is {hops} publishes from its producer, the \
                 limit (bus.max_hops); a cycle of plugins publishing to one another?"
            ),
        }
    }
}

/// A buffered state write; `None` deletes the key.
pub type StateWrite = (String, Option<String>);

/// Everything a call did through the host API, buffered until the commit.
///
/// Reads see the call's own writes first, so a handler behaves as if it
/// wrote through; nothing reaches Redis unless the call returns `ok`. What
/// it read of the committed state is kept too: the commit applies the
/// result only if that still holds, which makes state serializable.
///
/// A key written many times keeps one buffered value, its last, and
/// [`Self::bytes`] says what the buffers hold, so the host can bound what a
/// call makes it keep (`effects_mb`): a plugin's own memory is limited, the
/// host's copy of its effects must be too.
#[derive(Debug, Default)]
pub struct Effects {
    published: Vec<Published>,
    /// Requests to send once the event is committed.
    requests: Vec<QueuedRequest>,
    /// One write per key, at the position of its first write.
    writes: Vec<StateWrite>,
    /// Where each written key is in `writes`.
    written: HashMap<String, usize>,
    reads: Reads,
    /// Where each read key is in `reads`.
    read_at: HashMap<String, usize>,
    /// What the buffers hold, about: see [`Self::bytes`].
    bytes: usize,
    /// Hops of the event the call handles.
    hops: u32,
    limits: PublishLimits,
}

/// What a buffered entry costs beyond its text: the allocations and
/// bookkeeping around it, so a flood of empty writes is not free.
pub const EFFECT_OVERHEAD_BYTES: usize = 64;

impl Effects {
    /// The effects of a call handling an event `hops` publishes from its
    /// producer, under `limits`.
    pub fn for_event(hops: u32, limits: PublishLimits) -> Self {
        Effects {
            hops,
            limits,
            ..Effects::default()
        }
    }

    /// About how many bytes of host memory the buffered effects take: keys
    /// (held twice, in the writes and their index), values, published
    /// events' text and what was read, each with [`EFFECT_OVERHEAD_BYTES`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What [`Self::bytes`] would be after a write of `key` with a value of
    /// `value_len` bytes (`None`: a delete), before making it.
    pub fn bytes_after_write(&self, key: &str, value_len: Option<usize>) -> usize {
        let new = value_len.unwrap_or(0);
        match self.written.get(key) {
            Some(&i) => {
                let old = self.writes[i].1.as_ref().map_or(0, String::len);
                self.bytes - old + new
            }
            None => self.bytes + write_cost(key) + new,
        }
    }

    /// What [`Self::bytes`] would be after publishing `data` as `event_type`.
    pub fn bytes_after_publish(&self, event_type: &str, data: &str) -> usize {
        self.bytes + publish_cost(event_type, data)
    }

    /// Remembers that the call saw `seen` for `key` in the committed state
    /// (reads of its own writes are not asked for: see [`Self::pending`]).
    /// Only the first read of a key counts: later ones saw the same.
    pub fn read(&mut self, key: &str, seen: &Seen) {
        if !seen.earlier_in_batch && !self.read_at.contains_key(key) {
            self.bytes += read_cost(key, seen);
            self.read_at.insert(key.to_string(), self.reads.len());
            self.reads.push((key.to_string(), seen.clone()));
        }
    }

    /// What this call's first read of `key` saw, if it read it: a call
    /// reads a key once from Redis, and again from here (what its result
    /// rests on, and so what the commit checks).
    pub fn already_read(&self, key: &str) -> Option<&Seen> {
        self.read_at.get(key).map(|&i| &self.reads[i].1)
    }

    /// What the call read of the committed state.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Takes what the call read, for a failure that rests on it.
    pub fn take_reads(&mut self) -> Reads {
        for (key, seen) in &self.reads {
            self.bytes -= read_cost(key, seen);
        }
        self.read_at.clear();
        std::mem::take(&mut self.reads)
    }

    /// A state value this call wrote or deleted, if it touched `key`.
    pub fn pending(&self, key: &str) -> Option<Option<&str>> {
        self.written.get(key).map(|&i| self.writes[i].1.as_deref())
    }

    /// Buffers a write of `key`; a key written before keeps one value.
    pub fn set(&mut self, key: String, value: String) {
        self.write(key, Some(value));
    }

    /// Buffers a deletion of `key`.
    pub fn delete(&mut self, key: String) {
        self.write(key, None);
    }

    fn write(&mut self, key: String, value: Option<String>) {
        self.bytes = self.bytes_after_write(&key, value.as_ref().map(String::len));
        match self.written.get(&key) {
            Some(&i) => self.writes[i].1 = value,
            None => {
                self.written.insert(key.clone(), self.writes.len());
                self.writes.push((key, value));
            }
        }
    }

    /// Why a publish of `data` as `event_type` is refused, if that shows
    /// without parsing it: an empty type, the hop limit, text over the
    /// size limit. The host asks before it charges the call's budget.
    pub fn refuse_early(&self, event_type: &str, data: &str) -> Option<PublishRefused> {
        if event_type.is_empty() {
            return Some(PublishRefused::Invalid(
                "event type must not be empty".into(),
            ));
        }
        if self.hops >= self.limits.max_hops {
            return Some(PublishRefused::HopLimit { hops: self.hops });
        }
        let bytes = data.len() + event_type.len();
        let limit = self.limits.max_bytes;
        (bytes > limit).then_some(PublishRefused::TooLarge { bytes, limit })
    }

    /// Buffers an event to publish: `data` must be a JSON object, and the
    /// event within the limits. Returns its event id.
    ///
    /// The id is derived from `id_seed` and the publish's position in the
    /// call, so a re-run of the same delivery publishes the same ids.
    pub fn publish(
        &mut self,
        id_seed: &str,
        event_type: &str,
        data: &str,
    ) -> Result<String, PublishRefused> {
        self.publish_at(id_seed, event_type, data, None)
    }

    /// [`Self::publish`], routed when `due` says (`None`: at once).
    pub fn publish_at(
        &mut self,
        id_seed: &str,
        event_type: &str,
        data: &str,
        due: Option<Due>,
    ) -> Result<String, PublishRefused> {
        if let Some(refused) = self.refuse_early(event_type, data) {
            return Err(refused);
        }
        let object = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return Err(PublishRefused::Invalid(format!(
                    "data must be a JSON object, got {}",
                    json_kind(&other)
                )))
            }
            Err(err) => {
                return Err(PublishRefused::Invalid(format!(
                    "data is not valid JSON: {err}"
                )))
            }
        };
        // The object is written back as serde_json writes it, which may be
        // longer than the text given (`1e15` becomes `1000000000000000.0`),
        // but never eight times longer: measure only when that could pass.
        let envelope = ENVELOPE_BYTES + 2 * Value::from(event_type).to_string().len();
        let limit = self.limits.max_bytes;
        if data.len().saturating_mul(8) + envelope > limit {
            let bytes = Value::Object(object.clone()).to_string().len() + envelope;
            if bytes > limit {
                return Err(PublishRefused::TooLarge { bytes, limit });
            }
        }
        self.bytes += publish_cost(event_type, data);
        let name = format!("{id_seed}/{}", self.published.len());
        let event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string();
        self.published.push(Published {
            event_type: event_type.to_string(),
            event_id: event_id.clone(),
            data: object,
            hops: self.hops + 1,
            due,
        });
        Ok(event_id)
    }

    /// Buffers a request to send after the commit; the caller checked it
    /// against the budget (see [`QueuedRequest::cost`]).
    pub fn queue(&mut self, request: QueuedRequest) {
        self.bytes += request.cost();
        self.requests.push(request);
    }

    /// Largest entry the bus takes (`bus.max_payload_bytes`): a queued
    /// request is one, read back by a sender with others in a batch.
    pub fn max_entry_bytes(&self) -> usize {
        self.limits.max_bytes
    }

    /// The requests queued, in order.
    pub fn requests(&self) -> &[QueuedRequest] {
        &self.requests
    }

    /// The events published, in order.
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// The state writes, one per key (its last value), in the order of
    /// each key's first write.
    pub fn writes(&self) -> &[StateWrite] {
        &self.writes
    }

    /// Whether the call did nothing but succeed: no writes, no publishes,
    /// no queued requests, nothing read that its result could rest on.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty()
            && self.writes.is_empty()
            && self.reads.is_empty()
            && self.requests.is_empty()
    }
}

/// What remembering a read of `key` that saw `seen` costs the budget.
pub fn read_cost(key: &str, seen: &Seen) -> usize {
    key.len()
        + seen.value.as_ref().map_or(0, String::len)
        + seen.stamp.as_ref().map_or(0, String::len)
        + EFFECT_OVERHEAD_BYTES
}

/// What buffering a write of a new `key` costs beyond its value: the key
/// is held twice (the write and its index).
fn write_cost(key: &str) -> usize {
    2 * key.len() + EFFECT_OVERHEAD_BYTES
}

/// What buffering a published event costs: its text, parsed.
fn publish_cost(event_type: &str, data: &str) -> usize {
    event_type.len() + data.len() + EFFECT_OVERHEAD_BYTES
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
            &[("k".to_string(), None)],
            "a key written many times keeps one buffered write, its last"
        );
    }

    #[test]
    fn rewriting_a_key_keeps_one_value_and_its_cost() {
        let mut effects = Effects::default();
        effects.set("a".into(), "x".repeat(1000));
        let once = effects.bytes();
        assert!(once >= 1000, "{once}");
        for _ in 0..1000 {
            effects.set("a".into(), "y".repeat(1000));
        }
        assert_eq!(effects.bytes(), once, "1000 rewrites cost nothing more");
        assert_eq!(effects.writes().len(), 1);
        assert_eq!(effects.bytes_after_write("a", None), once - 1000);
        effects.delete("a".into());
        assert_eq!(effects.bytes(), once - 1000);
        effects.set("b".into(), "z".into());
        assert_eq!(
            effects.writes(),
            &[
                ("a".to_string(), None),
                ("b".to_string(), Some("z".to_string()))
            ],
            "keys keep the order of their first write"
        );
        let before = effects.bytes();
        assert_eq!(
            effects.bytes_after_publish("T", "{}"),
            before + 3 + EFFECT_OVERHEAD_BYTES
        );
        effects.publish("s", "T", "{}").unwrap();
        assert_eq!(effects.bytes(), before + 3 + EFFECT_OVERHEAD_BYTES);
        effects.read("r", &Seen::value(Some("12345".into())));
        effects.take_reads();
        assert_eq!(
            effects.bytes(),
            before + 3 + EFFECT_OVERHEAD_BYTES,
            "taken reads are freed"
        );
    }

    #[test]
    fn a_key_read_once_is_answered_from_the_first_read() {
        let mut effects = Effects::default();
        assert_eq!(effects.already_read("k"), None);
        effects.read("k", &Seen::value(Some("1".into())));
        effects.read("k", &Seen::value(Some("2".into())));
        assert_eq!(
            effects.already_read("k"),
            Some(&Seen::value(Some("1".into())))
        );
        effects.take_reads();
        assert_eq!(effects.already_read("k"), None, "taken reads are forgotten");
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
        let err = effects.publish("s", "T", "[1]").unwrap_err().to_string();
        assert!(err.contains("an array"), "{err}");
        let err = effects.publish("s", "T", "nope").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = effects.publish("s", "", "{}").unwrap_err().to_string();
        assert!(err.contains("must not be empty"), "{err}");
        assert!(effects.is_empty());
    }

    #[test]
    fn publish_refuses_what_the_fanout_would_refuse_and_counts_hops() {
        let limits = PublishLimits {
            max_bytes: 4096,
            max_hops: 3,
        };
        let mut effects = Effects::for_event(2, limits);
        let fits = format!("{{\"x\":\"{}\"}}", "a".repeat(4096 - 400));
        effects.publish("s", "T", &fits).unwrap();
        assert_eq!(effects.published()[0].hops, 3, "one more than the event's");
        let over = format!("{{\"x\":\"{}\"}}", "a".repeat(4096));
        assert!(matches!(
            effects.publish("s", "T", &over),
            Err(PublishRefused::TooLarge { limit: 4096, .. })
        ));
        // Short text, long once written back: measured, refused.
        let numbers = format!("{{\"x\":[{}1e15]}}", "1e15,".repeat(300));
        assert!(matches!(
            effects.publish("s", "T", &numbers),
            Err(PublishRefused::TooLarge { .. })
        ));
        let mut last = Effects::for_event(3, limits);
        let refused = last.publish("s", "T", "{}").unwrap_err();
        assert_eq!(refused, PublishRefused::HopLimit { hops: 3 });
        assert!(refused.to_string().contains("bus.max_hops"), "{refused}");
        assert!(last.published().is_empty());
    }
}
