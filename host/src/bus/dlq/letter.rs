//! A dead letter as the DLQ holds it (LeanMQ's shape: `data` with the
//! event and its `_failures`), read leniently into what an operator sees.

use serde::Serialize;
use serde_json::Value;

use super::time::time_text;
use crate::bus::entry::StreamEntry;
use crate::bus::leanmq::{self, Failure, Letter};

/// One entry of a DLQ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The entry's id in the DLQ.
    pub id: String,
    /// When it was dead-lettered (the id's time), in milliseconds since the
    /// epoch.
    pub dead_lettered_ms: u64,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    /// Oldest first; the last one is why it is here.
    pub failures: Vec<Failure>,
    /// The entry's `data` as stored (with `_failures`): an object, or the
    /// text as it is when it is not JSON.
    pub data: Value,
}

impl DeadLetter {
    /// Reads a DLQ entry; never fails: what is not LeanMQ's shape is kept
    /// as it is, for a person to look at.
    pub fn from_entry(entry: &StreamEntry) -> Self {
        let Letter {
            event_type,
            event_id,
            failures,
            data,
        } = leanmq::read_letter(entry);
        DeadLetter {
            dead_lettered_ms: id_millis(&entry.id).unwrap_or(0),
            id: entry.id.clone(),
            event_type,
            event_id,
            failures,
            data,
        }
    }

    /// Why it is here: the last failure.
    pub fn last_failure(&self) -> Option<&Failure> {
        self.failures.last()
    }

    /// The kind of the last failure.
    pub fn kind(&self) -> Option<&str> {
        self.last_failure().and_then(|f| f.kind.as_deref())
    }

    /// The stable JSON shape of a dead letter, as `dlq list --json` prints
    /// it and the console reads it: times as RFC 3339, the last failure's
    /// kind and reason at the top, the payload without the bookkeeping.
    pub fn to_json(&self) -> Value {
        let last = self.last_failure();
        serde_json::json!({
            "id": self.id,
            "dead_lettered_at": time_text(self.dead_lettered_ms as f64 / 1000.0),
            "event_type": self.event_type,
            "event_id": self.event_id,
            "kind": self.kind(),
            "reason": last.map(|f| f.reason.as_str()),
            "attempt": last.and_then(|f| f.attempt),
            "failures": self.failures.iter().map(|f| serde_json::json!({
                "at": f.timestamp.map(time_text),
                "kind": f.kind,
                "subscriber": f.subscriber,
                "attempt": f.attempt,
                "reason": f.reason,
            })).collect::<Vec<_>>(),
            "data": self.payload(),
        })
    }

    /// The data without `_failures` (shown apart) and LeanMQ's
    /// `_metadata`: what the producer sent.
    pub fn payload(&self) -> Value {
        leanmq::payload_of(&self.data)
    }
}

/// The JSON text of [`DeadLetter::to_json`] for `entry`, made without
/// building its payload into values when it is a JSON object (the payload
/// is copied as its stored text): what the console answers for one entry.
pub fn json_text(entry: &StreamEntry) -> String {
    let Some(raw) = leanmq::read_raw_letter(entry) else {
        return DeadLetter::from_entry(entry).to_json().to_string();
    };
    let letter = DeadLetter {
        dead_lettered_ms: id_millis(&entry.id).unwrap_or(0),
        id: entry.id.clone(),
        event_type: raw.event_type,
        event_id: raw.event_id,
        failures: raw.failures,
        data: Value::Null,
    };
    let mut head = letter.to_json();
    if let Some(object) = head.as_object_mut() {
        object.remove("data");
    }
    #[derive(Serialize)]
    struct Whole<'a> {
        #[serde(flatten)]
        head: &'a Value,
        data: &'a serde_json::value::RawValue,
    }
    match serde_json::value::RawValue::from_string(raw.payload) {
        Ok(data) => serde_json::to_string(&Whole {
            head: &head,
            data: &data,
        })
        .unwrap_or_else(|_| DeadLetter::from_entry(entry).to_json().to_string()),
        Err(_) => DeadLetter::from_entry(entry).to_json().to_string(),
    }
}

/// Milliseconds of a stream id `<ms>-<seq>`: when it was added.
pub(crate) fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Whether `id` is a stream id, so that a typo is refused before it
/// reaches a script.
pub fn is_stream_id(id: &str) -> bool {
    matches!(id.split_once('-'), Some((ms, seq))
        if !ms.is_empty() && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit()))
}
