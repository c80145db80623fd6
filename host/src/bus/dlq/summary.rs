//! A dead letter as a list shows it: what it is and why it failed, from
//! the two ends of its `data` only ([`scripts::peek`]), and a preview cut
//! to [`PREVIEW_BYTES`]. A list of big payloads then costs what its
//! summaries weigh, not what producers wrote; the whole letter is one
//! [`super::Dlq::get`] away.
//!
//! LeanMQ writes an event's `event_type` and `event_id` first and appends
//! `_failures` and `_metadata` last, so the start and the end of `data`
//! hold all a summary needs; what is not there is said to be unknown, never
//! guessed.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::letter::id_millis;
use super::time::time_text;
use crate::bus::entry::StreamEntry;
use crate::bus::leanmq::{self, Failure};
use crate::bus::scripts::Peek;

/// Bytes of a `data`'s start read for its summary: where producers put
/// `event_type` and `event_id`.
pub const HEAD_BYTES: usize = 4 << 10;

/// Bytes of a `data`'s end read for its summary: where dead-lettering
/// appends `_failures` and `_metadata` (a record's reason is at most a
/// few KiB, so this holds the last few failures).
pub const TAIL_BYTES: usize = 16 << 10;

/// Bytes of a `data` shown in a list, and of a reason.
pub const PREVIEW_BYTES: usize = 1 << 10;

/// What a list shows of one dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The entry's id in the DLQ.
    pub id: String,
    /// When it was dead-lettered (the id's time), in ms since the epoch.
    pub dead_lettered_ms: u64,
    /// Bytes of its `data` (of the entry, if it has no `data`).
    pub bytes: u64,
    /// What the list shows and filters on; `None`: none, or not in the
    /// start read (see [`Summary::known_event_type`]).
    pub event_type: Option<String>,
    /// Its `event_id`, else `_metadata.id`: how logs name the event.
    pub event_id: Option<String>,
    /// How many failures it records; `None`: its `_failures` are not
    /// within the ends read.
    pub failure_count: Option<usize>,
    /// The failure it is here for.
    pub last_failure: Option<Failure>,
    /// The start of `data` as text, cut between characters.
    pub preview: String,
    /// `data` goes on past the preview.
    pub preview_cut: bool,
    /// `data` was read whole: nothing in it is unknown.
    pub whole: bool,
}

impl Summary {
    /// Reads what the peek brought: the whole `data` as a dead letter when
    /// it is small, else its ends, leniently.
    pub fn from_peek(peek: &Peek) -> Self {
        let bytes = peek.data_len.unwrap_or(peek.bytes);
        let (preview, preview_cut) = preview(&peek.head, bytes);
        let mut summary = Summary {
            id: peek.id.clone(),
            dead_lettered_ms: id_millis(&peek.id).unwrap_or(0),
            bytes,
            event_type: None,
            event_id: None,
            failure_count: None,
            last_failure: None,
            preview,
            preview_cut,
            whole: peek.whole(),
        };
        if summary.whole {
            let entry = StreamEntry {
                id: peek.id.clone(),
                fields: vec![(b"data".to_vec(), peek.head.clone())],
            };
            let letter = leanmq::read_letter(&entry);
            summary.event_type = letter.event_type;
            summary.event_id = letter.event_id;
            summary.failure_count = Some(letter.failures.len());
            summary.last_failure = letter.failures.last().cloned();
        } else if peek.data_len.is_some() {
            let found = top_level(&peek.head);
            summary.event_type = found.event_type;
            let failures = found.failures.or_else(|| value_of(&peek.tail, "_failures"));
            if let Some(Value::Array(list)) = failures {
                summary.failure_count = Some(list.len());
                summary.last_failure = list.last().map(Failure::read);
            }
            let metadata = found.metadata.or_else(|| value_of(&peek.tail, "_metadata"));
            summary.event_id = found.event_id.or_else(|| {
                metadata
                    .as_ref()
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        }
        summary
    }

    /// The last failure's kind.
    pub fn kind(&self) -> Option<&str> {
        self.last_failure.as_ref().and_then(|f| f.kind.as_deref())
    }

    /// The kind, if it is known (`None`: the failures were not read).
    pub fn known_kind(&self) -> Option<Option<&str>> {
        (self.whole || self.failure_count.is_some()).then(|| self.kind())
    }

    /// The event type, if it is known (`None`: not in the start read).
    pub fn known_event_type(&self) -> Option<Option<&str>> {
        (self.whole || self.event_type.is_some()).then_some(self.event_type.as_deref())
    }

    /// The JSON the console lists: the summary, the reason and the preview
    /// cut to [`PREVIEW_BYTES`] (`preview_cut` says so), no payload.
    pub fn to_json(&self) -> Value {
        let last = self.last_failure.as_ref();
        serde_json::json!({
            "id": self.id,
            "dead_lettered_at": time_text(self.dead_lettered_ms as f64 / 1000.0),
            "bytes": self.bytes,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "kind": self.kind(),
            "reason": last.map(|f| cut_text(&f.reason)),
            "attempt": last.and_then(|f| f.attempt),
            "failures": self.failure_count,
            "preview": self.preview,
            "preview_cut": self.preview_cut,
        })
    }
}

/// `reason`, cut to [`PREVIEW_BYTES`] between characters and ended with
/// `…` when cut.
fn cut_text(reason: &str) -> Cow<'_, str> {
    if reason.len() <= PREVIEW_BYTES {
        return Cow::Borrowed(reason);
    }
    let end = reason.floor_char_boundary(PREVIEW_BYTES);
    Cow::Owned(format!("{}…", &reason[..end]))
}

/// The first [`PREVIEW_BYTES`] of `head` as text, cut between characters
/// (bytes that are not UTF-8 shown as U+FFFD), and whether `bytes` go on
/// past it.
fn preview(head: &[u8], bytes: u64) -> (String, bool) {
    let mut end = head.len().min(PREVIEW_BYTES);
    // Back off a character cut in two: its other bytes continue it.
    let mut backed = 0;
    while backed < 3 && end > 0 && head.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end -= 1;
        backed += 1;
    }
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    (text, (end as u64) < bytes)
}

/// What the start of a dead letter's `data` says, read key by key until
/// it is cut.
#[derive(Default)]
struct TopLevel {
    event_type: Option<String>,
    event_id: Option<String>,
    failures: Option<Value>,
    metadata: Option<Value>,
}

/// The top-level keys a summary needs, from the start of a JSON object
/// that may be cut anywhere: each key is kept once its value was read
/// whole; other values are skipped unbuilt.
fn top_level(head: &[u8]) -> TopLevel {
    let mut found = TopLevel::default();
    let mut de = serde_json::Deserializer::from_slice(head);
    // The error is where the start was cut: what came before is kept.
    let _ = Keys(&mut found).deserialize(&mut de);
    found
}

struct Keys<'a>(&'a mut TopLevel);

impl<'de> DeserializeSeed<'de> for Keys<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let text = |v: Value| v.as_str().map(str::to_string);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "event_type" => self.0.event_type = text(map.next_value()?),
                "event_id" => self.0.event_id = text(map.next_value()?),
                "_failures" => self.0.failures = Some(map.next_value()?),
                "_metadata" => self.0.metadata = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The value of the last `"<key>":` in `tail` that is followed by a whole
/// JSON value: how the end of a cut `data` says its `_failures` and
/// `_metadata`.
fn value_of(tail: &[u8], key: &str) -> Option<Value> {
    let quoted = format!("\"{key}\"");
    let text = String::from_utf8_lossy(tail);
    text.rmatch_indices(&quoted).find_map(|(at, _)| {
        let rest = text[at + quoted.len()..].trim_start().strip_prefix(':')?;
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        values.next()?.ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek(data: &str, head: usize, tail: usize) -> Peek {
        let whole = data.len() <= head + tail;
        Peek {
            id: "1764557000123-0".into(),
            bytes: 4 + data.len() as u64,
            data_len: Some(data.len() as u64),
            head: if whole { data } else { &data[..head] }.as_bytes().to_vec(),
            tail: if whole {
                ""
            } else {
                &data[data.len() - tail..]
            }
            .as_bytes()
            .to_vec(),
        }
    }

    const FAILURES: &str = r#""_failures":[{"timestamp":1.5,"reason":"old","kind":"trap","attempt":3},{"timestamp":2.5,"reason":"pay: rejected: no","kind":"reject","subscriber":"pay","attempt":1}],"_metadata":{"id":"m-1","timestamp":2.5,"ttl":null}}"#;

    #[test]
    fn a_small_letter_is_read_whole() {
        let data = format!(r#"{{"event_type":"Ping","event_id":"e-1","n":1,{FAILURES}"#);
        let s = Summary::from_peek(&peek(&data, 4096, 16384));
        assert!(s.whole);
        assert_eq!(s.event_type.as_deref(), Some("Ping"));
        assert_eq!(s.event_id.as_deref(), Some("e-1"));
        assert_eq!(s.failure_count, Some(2));
        assert_eq!(s.kind(), Some("reject"));
        assert_eq!(s.dead_lettered_ms, 1_764_557_000_123);
        assert_eq!(s.preview, data);
        assert!(!s.preview_cut);
    }

    #[test]
    fn a_big_letter_is_summarized_from_its_ends() {
        let pad = "x".repeat(100_000);
        let data = format!(r#"{{"event_type":"Ping","pad":"{pad}",{FAILURES}"#);
        let s = Summary::from_peek(&peek(&data, 4096, 16384));
        assert!(!s.whole);
        assert_eq!(s.event_type.as_deref(), Some("Ping"));
        assert_eq!(s.event_id.as_deref(), Some("m-1"), "from _metadata");
        assert_eq!(s.failure_count, Some(2));
        let last = s.last_failure.as_ref().unwrap();
        assert_eq!(
            (last.reason.as_str(), last.attempt),
            ("pay: rejected: no", Some(1))
        );
        assert_eq!(s.bytes, data.len() as u64);
        assert_eq!(s.preview.len(), PREVIEW_BYTES);
        assert!(data.starts_with(&s.preview) && s.preview_cut);
        let json = s.to_json();
        assert_eq!(json["kind"], "reject");
        assert_eq!(json["failures"], 2);
        assert!(json.get("data").is_none());
    }

    #[test]
    fn what_the_ends_do_not_hold_is_unknown_not_guessed() {
        // `event_type` after a field longer than the head, failures longer
        // than the tail.
        let pad = "x".repeat(10_000);
        let reasons: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"reason":"{i} {pad}","kind":"trap"}}"#))
            .collect();
        let data = format!(
            r#"{{"pad":"{pad}","event_type":"Ping","_failures":[{}]}}"#,
            reasons.join(",")
        );
        let s = Summary::from_peek(&peek(&data, 4096, 16384));
        assert_eq!(s.known_event_type(), None);
        assert_eq!(s.known_kind(), None);
        assert_eq!(s.failure_count, None);
        // A long reason is cut in the list, and says so.
        let long = format!(
            r#"{{"event_type":"T","_failures":[{{"reason":"{}"}}]}}"#,
            "é".repeat(2000)
        );
        let json = Summary::from_peek(&peek(&long, 4096, 16384)).to_json();
        let reason = json["reason"].as_str().unwrap();
        assert!(
            reason.len() <= PREVIEW_BYTES + 3 && reason.ends_with('…'),
            "{reason}"
        );
    }

    #[test]
    fn a_preview_is_cut_between_characters() {
        let data = format!("a{}", "é".repeat(2000));
        let s = Summary::from_peek(&peek(&data, 4096, 16384));
        assert_eq!(s.preview.len(), PREVIEW_BYTES - 1);
        assert!(s.preview.ends_with('é') && s.preview_cut);
        assert_eq!(s.event_type, None, "not JSON: nothing but the preview");
    }
}
