//! The dead letter, both ways: written as LeanMQ's `move_to_dlq` writes
//! it (the event with a record appended to `_failures` and `_metadata`
//! refreshed), and read back leniently for the DLQ's tools.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{metadata_with_hops, value_text};
use crate::bus::entry::StreamEntry;

/// One record of a dead letter's `_failures`, both ways. LeanMQ writes
/// `{timestamp, reason}`; eventhost adds `kind`, `subscriber` and
/// `attempt`, so a tool can sort failures without parsing the reason.
/// Written in this order, what is unknown left out; read leniently, since
/// LeanMQ (or a person) may have written the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// Seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
    /// What went wrong, for a person: `<who>: <what>: <detail>`.
    pub reason: String,
    /// `trap`, `reject`, `retry`, `timeout`, `malformed`, `refused`...;
    /// none when LeanMQ wrote the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The subscriber that failed the event; none for the fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<String>,
    /// The attempt that failed, from 1; the fan-out's: its deliveries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
}

impl Failure {
    /// Reads one record; never fails: a field missing or of another type
    /// is left out, a reason that is not text kept as its JSON.
    pub fn read(record: &Value) -> Self {
        let text = |key: &str| record.get(key).and_then(Value::as_str).map(str::to_string);
        Failure {
            timestamp: record.get("timestamp").and_then(Value::as_f64),
            reason: match record.get("reason") {
                Some(Value::String(reason)) => reason.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            },
            kind: text("kind"),
            subscriber: text("subscriber"),
            attempt: record.get("attempt").and_then(Value::as_u64),
        }
    }

    /// The records of a dead letter's `data`, oldest first; none when it
    /// has no `_failures` list.
    pub fn all_of(data: &Value) -> Vec<Self> {
        data.get("_failures")
            .and_then(Value::as_array)
            .map(|list| list.iter().map(Failure::read).collect())
            .unwrap_or_default()
    }
}

/// The `kind` of a dead letter Redis refused to write as a result: it
/// was quarantined.
pub const REFUSED: &str = "refused";

/// The one way to dead-letter an entry: the fan-out and every subscriber
/// go through it, so every letter carries the same record and the same
/// bound on its size.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterer<'a> {
    /// Who failed the entry; `None`: the fan-out.
    subscriber: Option<&'a str>,
    /// Entries over this many bytes are not copied: see [`dead_letter`].
    limit: usize,
}

/// An entry Redis refused to write, dead-lettered on its own instead.
#[derive(Debug)]
pub struct Quarantined<'r> {
    /// The entry's id in the stream it was read from.
    pub id: &'r str,
    /// What was refused and Redis's reason.
    pub reason: String,
    /// Its dead letter, of kind [`REFUSED`].
    pub payload: String,
}

impl<'a> DeadLetterer<'a> {
    /// The fan-out's: its letters name no subscriber.
    pub fn fanout(limit: usize) -> Self {
        DeadLetterer {
            subscriber: None,
            limit,
        }
    }

    /// Subscriber `name`'s.
    pub fn subscriber(name: &'a str, limit: usize) -> Self {
        DeadLetterer {
            subscriber: Some(name),
            limit,
        }
    }

    /// The DLQ payload of `entry`, failed with `kind` for `reason` on
    /// `attempt` at `now` (seconds since the epoch).
    pub fn letter(
        &self,
        entry: &StreamEntry,
        kind: &str,
        reason: &str,
        attempt: u32,
        now: f64,
    ) -> String {
        let failure = Failure {
            timestamp: Some(now),
            reason: reason.to_string(),
            kind: Some(kind.to_string()),
            subscriber: self.subscriber.map(str::to_string),
            attempt: Some(attempt.into()),
        };
        dead_letter(entry, &failure, self.limit)
    }

    /// Quarantines what Redis refused, on its own and for a reason that
    /// will not change: each `(id, error)` of `refused` whose entry `find`
    /// knows (with its attempt) gets a dead letter of kind [`REFUSED`],
    /// its reason `"{what}: {error}"`; so one entry cannot block the rest.
    pub fn quarantine<'w, 'r>(
        &self,
        refused: &'r [(String, String)],
        what: &str,
        now: f64,
        find: impl Fn(&str) -> Option<(&'w StreamEntry, u32)>,
    ) -> Vec<Quarantined<'r>> {
        refused
            .iter()
            .filter_map(|(id, err)| {
                let (entry, attempt) = find(id)?;
                let reason = format!("{what}: {err}");
                let payload = self.letter(entry, REFUSED, &reason, attempt, now);
                Some(Quarantined {
                    id,
                    reason,
                    payload,
                })
            })
            .collect()
    }
}

/// A dead letter read back: what event it holds and why it failed. What
/// is not LeanMQ's shape is kept as it is, for a person to look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    /// The event's `event_type`, if it has one.
    pub event_type: Option<String>,
    /// Its `event_id`, else `_metadata.id`.
    pub event_id: Option<String>,
    /// Oldest first; the last one is why it is in the DLQ.
    pub failures: Vec<Failure>,
    /// The entry's `data` as stored (with `_failures`): an object, or the
    /// text as it is when it is not JSON; an entry without `data`: its
    /// fields.
    pub data: Value,
}

/// A dead letter's `data` without `_failures` and `_metadata`, the keys
/// dead-lettering adds: what the producer sent.
pub fn payload_of(data: &Value) -> Value {
    match data {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(k, _)| *k != "_failures" && *k != "_metadata")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// Reads a DLQ entry; never fails.
pub fn read_letter(entry: &StreamEntry) -> Letter {
    let data = match entry.data() {
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
        None => Value::Object(fields_of(entry)),
    };
    let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_string);
    Letter {
        event_type: text("event_type"),
        event_id: text("event_id").or_else(|| {
            data.get("_metadata")
                .and_then(|m| m.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }),
        failures: Failure::all_of(&data),
        data,
    }
}

/// A dead letter whose `data` is a JSON object, read without building its
/// payload into JSON values: to show one whole (a payload of 1 MiB of
/// small numbers built into values took over 100 MB).
#[derive(Debug, Clone, PartialEq)]
pub struct RawLetter {
    /// The event's `event_type`, if it has one.
    pub event_type: Option<String>,
    /// Its `event_id`, else `_metadata.id`.
    pub event_id: Option<String>,
    /// Oldest first.
    pub failures: Vec<Failure>,
    /// What [`payload_of`] gives, as JSON text: the object without
    /// `_failures` and `_metadata`, each value copied as it is stored (the
    /// last of a repeated key, as JSON readers take it).
    pub payload: String,
}

/// Reads a DLQ entry like [`read_letter`], its payload kept as text;
/// `None` when its `data` is not a JSON object.
pub fn read_raw_letter(entry: &StreamEntry) -> Option<RawLetter> {
    let text = std::str::from_utf8(entry.data()?).ok()?;
    let fields: super::Fields<'_> = serde_json::from_str(text).ok()?;
    let parsed = |key: &str| {
        fields
            .get(key)
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    };
    let event_id = fields.string("event_id").or_else(|| {
        parsed("_metadata")
            .as_ref()
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let failures = parsed("_failures")
        .as_ref()
        .and_then(Value::as_array)
        .map(|list| list.iter().map(Failure::read).collect())
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let last: Vec<bool> = fields
        .0
        .iter()
        .rev()
        .map(|(key, _)| seen.insert(key.as_ref()))
        .collect();
    let mut payload = String::with_capacity(text.len());
    payload.push('{');
    let kept = fields
        .0
        .iter()
        .zip(last.iter().rev())
        .filter(|((key, _), last)| **last && key != "_failures" && key != "_metadata");
    for (i, ((key, value), _)) in kept.enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(&Value::from(key.as_ref()).to_string());
        payload.push(':');
        payload.push_str(value.get());
    }
    payload.push('}');
    Some(RawLetter {
        event_type: fields.string("event_type"),
        event_id,
        failures,
        payload,
    })
}

/// Bytes of an oversized entry kept in its dead letter: enough to tell what
/// it was, bounded whatever the entry.
pub const PREFIX_BYTES: usize = 1024;

/// The DLQ payload for `entry`: its object with the failure appended to
/// `_failures` and `_metadata` refreshed, as LeanMQ's `move_to_dlq` does.
/// An entry that is not a JSON object is kept under `_raw`/`_raw_hex`/
/// `_fields`, escaped into at most `limit` bytes (see
/// [`preserve_malformed`]). An entry over `limit` bytes is not copied (a
/// dead letter several times its size is what an attacker wants): see
/// [`oversized`].
fn dead_letter(entry: &StreamEntry, failure: &Failure, limit: usize) -> String {
    if entry.bytes() > limit {
        return oversized(entry, failure);
    }
    let parsed = entry
        .data()
        .and_then(|data| match serde_json::from_slice::<Value>(data) {
            Ok(Value::Object(object)) => Some(object),
            _ => None,
        });
    let object = match parsed {
        Some(object) => object,
        None => preserve_malformed(entry, limit),
    };
    with_failure(object, failure)
}

/// A dead letter that keeps only what identifies `entry`, whatever its
/// size: `_oversized: {stream_id, bytes, prefix}` (the first
/// [`PREFIX_BYTES`] of its `data`, or of its first field, as text), with
/// `_failures` and `_metadata` like any dead letter, so LeanMQ's tools
/// read it.
fn oversized(entry: &StreamEntry, failure: &Failure) -> String {
    let head = entry
        .data()
        .or_else(|| entry.fields.first().map(|(_, v)| v.as_slice()))
        .unwrap_or_default();
    let prefix = String::from_utf8_lossy(&head[..head.len().min(PREFIX_BYTES)]);
    let mut oversized = Map::new();
    oversized.insert("stream_id".into(), Value::from(entry.id.as_str()));
    oversized.insert("bytes".into(), Value::from(entry.bytes()));
    oversized.insert("prefix".into(), Value::from(prefix.as_ref()));
    let mut object = Map::new();
    object.insert("_oversized".into(), Value::Object(oversized));
    with_failure(object, failure)
}

/// `object` with `failure` appended to its `_failures` and `_metadata`
/// refreshed, as text. The hops the host counted stay: a replayed event is
/// as far from its producer as it was, so a cycle stopped by `max_hops`
/// does not start over.
fn with_failure(mut object: Map<String, Value>, failure: &Failure) -> String {
    let record = serde_json::to_value(failure).unwrap_or_default();
    match object.get_mut("_failures") {
        Some(Value::Array(list)) => list.push(record),
        _ => {
            object.insert("_failures".into(), Value::Array(vec![record]));
        }
    }

    let id = object
        .get("_metadata")
        .and_then(|m| m.get("id"))
        .and_then(value_text)
        .or_else(|| object.get("event_id").and_then(value_text))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let hops = object
        .get("_metadata")
        .and_then(|m| m.get("hops"))
        .and_then(Value::as_u64)
        .map(|h| h.min(u32::MAX as u64) as u32);
    let now = failure.timestamp.unwrap_or_else(crate::handler::unix_now);
    object.insert("_metadata".into(), metadata_with_hops(&id, now, hops));
    Value::Object(object).to_string()
}

/// What is not a JSON object, kept for a person to look at: text under
/// `_raw`, other bytes as hex under `_raw_hex`, an entry without `data`
/// as its fields under `_fields`. Escaping can make text six times its
/// size (a control character becomes `\u0001`), so what is kept is cut
/// to at most `limit` bytes once escaped (`bus.max_payload_bytes`: a dead
/// letter stays about the size of the largest entry the bus takes, never
/// a multiple of it), and a cut says so: `_raw_truncated: true` and the
/// original size in `_raw_bytes` (`_fields_truncated`, `_fields_bytes`).
fn preserve_malformed(entry: &StreamEntry, limit: usize) -> Map<String, Value> {
    let mut object = Map::new();
    let cut = match entry.data() {
        Some(data) => match std::str::from_utf8(data) {
            Ok(text) => {
                let kept = json_prefix(text, limit);
                object.insert("_raw".into(), Value::from(kept));
                (kept.len() < text.len()).then_some(("_raw", data.len()))
            }
            Err(_) => {
                // Two hex digits a byte.
                let kept = &data[..data.len().min(limit / 2)];
                object.insert("_raw_hex".into(), Value::from(hex::encode(kept)));
                (kept.len() < data.len()).then_some(("_raw", data.len()))
            }
        },
        None => {
            let (fields, whole) = fields_within(entry, limit);
            object.insert("_fields".into(), Value::Object(fields));
            (!whole).then_some(("_fields", entry.bytes()))
        }
    };
    if let Some((key, bytes)) = cut {
        object.insert(format!("{key}_truncated"), Value::Bool(true));
        object.insert(format!("{key}_bytes"), Value::from(bytes));
    }
    object
}

/// Bytes `c` takes at most in a JSON string: a control character as
/// `\u00XX`, a quote or a backslash escaped, anything else as itself.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest prefix of `text`, cut between characters, that takes at
/// most `budget` bytes once escaped in a JSON string.
fn json_prefix(text: &str, budget: usize) -> &str {
    let mut spent = 0;
    for (at, c) in text.char_indices() {
        spent += escaped_len(c);
        if spent > budget {
            return &text[..at];
        }
    }
    text
}

/// An entry's fields as text, each cut so that all of them take at most
/// `budget` bytes once escaped; whether all were kept whole.
fn fields_within(entry: &StreamEntry, budget: usize) -> (Map<String, Value>, bool) {
    let mut left = budget;
    let mut fields = Map::new();
    let mut whole = true;
    for (name, value) in &entry.fields {
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(value);
        let name_kept = json_prefix(&name, left);
        left -= name_kept.chars().map(escaped_len).sum::<usize>();
        let value_kept = json_prefix(&value, left);
        left -= value_kept.chars().map(escaped_len).sum::<usize>();
        whole &= name_kept.len() == name.len() && value_kept.len() == value.len();
        fields.insert(name_kept.to_string(), Value::from(value_kept));
        if !whole {
            break;
        }
    }
    (fields, whole)
}

/// An entry's fields as a JSON object of text, for an entry without
/// `data`: kept for a person to look at.
fn fields_of(entry: &StreamEntry) -> Map<String, Value> {
    entry
        .fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                Value::from(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::leanmq::tests::entry;

    /// A failure of the fan-out's, as `malformed` at time 1.
    fn failure(reason: &str, attempt: Option<u64>) -> Failure {
        Failure {
            timestamp: Some(1.0),
            reason: reason.into(),
            kind: Some("malformed".into()),
            subscriber: None,
            attempt,
        }
    }

    #[test]
    fn dead_letters_append_failures_like_leanmq() {
        let e = entry(
            r#"{"event_type":"T","event_id":"e-1","_failures":[{"timestamp":1.0,"reason":"old"}]}"#,
        );
        let payload =
            DeadLetterer::subscriber("pay", 1 << 20).letter(&e, "trap", "pay: trap: boom", 1, 2.0);
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["event_type"], "T");
        assert_eq!(v["_failures"].as_array().unwrap().len(), 2);
        assert_eq!(v["_failures"][1]["reason"], "pay: trap: boom");
        assert_eq!(v["_failures"][1]["kind"], "trap");
        assert_eq!(v["_metadata"]["id"], "e-1");
    }

    #[test]
    fn dead_letters_keep_the_hops_the_host_counted() {
        let e = entry(
            r#"{"event_type":"T","event_id":"e-1","_metadata":{"id":"e-1","timestamp":1.0,"ttl":null,"hops":8}}"#,
        );
        let payload = DeadLetterer::subscriber("pay", 1 << 20).letter(&e, "reject", "hops", 1, 2.0);
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["_metadata"]["hops"], 8, "{v}");
        assert_eq!(v["_metadata"]["timestamp"], 2.0);
        let fresh = entry(r#"{"event_type":"T","event_id":"e-2"}"#);
        let payload =
            DeadLetterer::subscriber("pay", 1 << 20).letter(&fresh, "reject", "r", 1, 2.0);
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert!(v["_metadata"].get("hops").is_none(), "{v}");
    }

    #[test]
    fn dead_letters_keep_what_is_not_json() {
        let record = failure("r", None);
        let v: Value =
            serde_json::from_str(&dead_letter(&entry("not json"), &record, 100)).unwrap();
        assert_eq!(v["_raw"], "not json");
        let binary = StreamEntry {
            id: "1-0".into(),
            fields: vec![(b"data".to_vec(), vec![0xff, 0x00])],
        };
        let v: Value = serde_json::from_str(&dead_letter(&binary, &record, 100)).unwrap();
        assert_eq!(v["_raw_hex"], "ff00");
        let other = StreamEntry {
            id: "1-0".into(),
            fields: vec![(b"body".to_vec(), b"hi".to_vec())],
        };
        let v: Value = serde_json::from_str(&dead_letter(&other, &record, 100)).unwrap();
        assert_eq!(v["_fields"]["body"], "hi");
        assert_eq!(v["_failures"][0]["kind"], "malformed");
    }

    #[test]
    fn what_is_not_json_is_kept_escaped_within_the_limit_and_a_cut_says_so() {
        let record = failure("r", None);
        // 1,000 control characters (1,004 bytes with the field's name):
        // escaped whole, 6,000 bytes.
        let controls = "\u{1}".repeat(1000);
        let payload = dead_letter(&entry(&controls), &record, 1004);
        assert!(payload.len() < 1004 + 300, "{} bytes", payload.len());
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["_raw"], "\u{1}".repeat(167));
        assert_eq!(v["_raw_truncated"], true);
        assert_eq!(v["_raw_bytes"], 1000);
        // Cut between characters: eight bytes escaped a pair, so 307
        // bytes keep 38 pairs and one é.
        let pairs = "é\u{1}".repeat(100);
        let v: Value = serde_json::from_str(&dead_letter(&entry(&pairs), &record, 307)).unwrap();
        assert_eq!(v["_raw"], format!("{}é", "é\u{1}".repeat(38)));
        // What fits stays whole and unmarked.
        let v: Value = serde_json::from_str(&dead_letter(&entry("a\"b"), &record, 7)).unwrap();
        assert_eq!(v["_raw"], "a\"b");
        assert!(v.get("_raw_truncated").is_none(), "{v}");
        let binary = StreamEntry {
            id: "1-0".into(),
            fields: vec![(b"data".to_vec(), vec![0xff; 100])],
        };
        let v: Value = serde_json::from_str(&dead_letter(&binary, &record, 104)).unwrap();
        assert_eq!(v["_raw_hex"], "ff".repeat(52));
        assert_eq!(v["_raw_truncated"], true);
        assert_eq!(v["_raw_bytes"], 100);
        let fields = StreamEntry {
            id: "1-0".into(),
            fields: vec![
                (b"a".to_vec(), "\u{1}".repeat(100).into_bytes()),
                (b"b".to_vec(), b"x".to_vec()),
            ],
        };
        let v: Value = serde_json::from_str(&dead_letter(&fields, &record, 103)).unwrap();
        assert_eq!(v["_fields"], serde_json::json!({"a": "\u{1}".repeat(17)}));
        assert_eq!(v["_fields_truncated"], true);
        assert_eq!(v["_fields_bytes"], 103);
    }

    #[test]
    fn an_oversized_entry_is_dead_lettered_by_its_id_size_and_prefix() {
        let record = failure("too big", Some(1));
        // Quotes and control characters: escaped whole, this would be up
        // to six times its size.
        let huge = format!(
            "{{\"event_type\":\"T\",\"x\":\"{}\"}}",
            "\"\u{1}".repeat(1 << 20)
        );
        let payload = dead_letter(&entry(&huge), &record, 1 << 20);
        assert!(payload.len() < 8 * PREFIX_BYTES, "{} bytes", payload.len());
        let v: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(v["_oversized"]["stream_id"], "5-0");
        assert_eq!(v["_oversized"]["bytes"], 4 + huge.len());
        let prefix = v["_oversized"]["prefix"].as_str().unwrap();
        assert!(huge.starts_with(prefix) && prefix.len() == PREFIX_BYTES);
        assert_eq!(v["_failures"][0]["reason"], "too big");
        assert!(v["_metadata"]["id"].is_string());
        // A prefix cut inside a character stays text.
        let v: Value = serde_json::from_str(&oversized(
            &entry(&format!("a{}", "é".repeat(600))),
            &record,
        ))
        .unwrap();
        assert!(v["_oversized"]["prefix"]
            .as_str()
            .unwrap()
            .ends_with('\u{fffd}'));
    }

    #[test]
    fn a_failure_record_is_written_as_always_and_read_back_the_same() {
        let e = entry(r#"{"event_type":"T","event_id":"e-1"}"#);
        let payload = DeadLetterer::subscriber("pay", 1 << 20).letter(&e, "trap", "boom", 3, 2.5);
        assert_eq!(
            payload,
            r#"{"event_type":"T","event_id":"e-1","_failures":[{"timestamp":2.5,"reason":"boom","kind":"trap","subscriber":"pay","attempt":3}],"_metadata":{"id":"e-1","timestamp":2.5,"ttl":null}}"#,
            "the wire format LeanMQ's tools and older hosts read"
        );
        let v: Value = serde_json::from_str(&payload).unwrap();
        let read = Failure::all_of(&v);
        assert_eq!(
            read,
            [Failure {
                timestamp: Some(2.5),
                reason: "boom".into(),
                kind: Some("trap".into()),
                subscriber: Some("pay".into()),
                attempt: Some(3),
            }]
        );
        let fanout = DeadLetterer::fanout(1 << 20).letter(&e, "malformed", "bad", 1, 2.5);
        let v: Value = serde_json::from_str(&fanout).unwrap();
        assert_eq!(
            v["_failures"][0].to_string(),
            r#"{"timestamp":2.5,"reason":"bad","kind":"malformed","attempt":1}"#
        );
        // LeanMQ's own record, or a stranger one, reads without a fault.
        let leanmq = serde_json::json!({"_failures":[{"timestamp":1.5,"reason":"old"},{"reason":{"x":1},"attempt":"2"}]});
        let read = Failure::all_of(&leanmq);
        assert_eq!(
            (read[0].timestamp, read[0].kind.as_deref()),
            (Some(1.5), None)
        );
        assert_eq!(
            (read[1].reason.as_str(), read[1].attempt),
            (r#"{"x":1}"#, None)
        );
        assert!(Failure::all_of(&Value::from("not an object")).is_empty());
    }

    #[test]
    fn a_raw_letter_reads_like_a_letter_without_building_its_payload() {
        for data in [
            r#"{"event_type":"T","n":[1, 2],"a":{"b":"é\n"},"_failures":[{"reason":"r","kind":"trap"}],"_metadata":{"id":"m-1"}}"#,
            r#"{"event_id":"e-1","x":1,"x":2,"_failures":"odd"}"#,
            r#"{}"#,
        ] {
            let e = entry(data);
            let raw = read_raw_letter(&e).unwrap();
            let letter = read_letter(&e);
            assert_eq!(raw.event_type, letter.event_type);
            assert_eq!(raw.event_id, letter.event_id);
            assert_eq!(raw.failures, letter.failures);
            let payload: Value = serde_json::from_str(&raw.payload).unwrap();
            assert_eq!(payload, payload_of(&letter.data), "{data}");
        }
        assert_eq!(read_raw_letter(&entry("not json")), None);
        assert_eq!(read_raw_letter(&entry("[1]")), None);
    }

    #[test]
    fn what_redis_refused_is_quarantined_with_its_reason() {
        let work = [entry(r#"{"event_type":"T"}"#)];
        let refused = vec![
            ("5-0".to_string(), "OOM".to_string()),
            ("9-0".to_string(), "gone".to_string()),
        ];
        let quarantined = DeadLetterer::subscriber("pay", 1 << 20).quarantine(
            &refused,
            "pay: Redis refused its commit",
            4.0,
            |id| work.iter().find(|e| e.id == id).map(|e| (e, 2)),
        );
        assert_eq!(quarantined.len(), 1, "an entry not in hand is skipped");
        assert_eq!(quarantined[0].id, "5-0");
        assert_eq!(quarantined[0].reason, "pay: Redis refused its commit: OOM");
        let v: Value = serde_json::from_str(&quarantined[0].payload).unwrap();
        assert_eq!(v["_failures"][0]["kind"], REFUSED);
        assert_eq!(v["_failures"][0]["attempt"], 2);
        assert_eq!(v["_failures"][0]["reason"], quarantined[0].reason.as_str());
    }
}
