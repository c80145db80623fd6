//! LeanMQ's envelope: the wire format of stream entries, both directions,
//! apart from what the bus does with them.
//!
//! A LeanMQ entry has one field, `data`: a JSON object. Producers add
//! `event_type`, `event_id`, `timestamp` and `_metadata: {id, timestamp,
//! ttl}`; the DLQ adds `_failures`; LeanMQ's requeue adds `_requeues`. This
//! module alone knows those keys: it decodes an entry into the [`Event`] a
//! handler sees (without the bookkeeping), and writes published events and
//! dead letters the way LeanMQ does, so its tools read ours.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::entry::StreamEntry;
use crate::config::OrderBy;
use crate::handler::{json_kind, Event, Published};

mod letter;

pub use letter::{
    payload_of, read_letter, read_raw_letter, DeadLetterer, Failure, Letter, Quarantined,
    RawLetter, PREFIX_BYTES, REFUSED,
};

/// Keys LeanMQ adds for its own bookkeeping; a handler never sees them.
const BOOKKEEPING: [&str; 3] = ["_metadata", "_failures", "_requeues"];

/// Why an entry cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    NoData,
    TooLarge {
        size: usize,
        limit: usize,
    },
    NotUtf8,
    NotJson(String),
    NotAnObject(&'static str),
    NoEventType,
    /// It has no key where its subscriber orders by (the field, as
    /// configured), and the subscriber refuses such events.
    NoKey(String),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NoData => write!(f, "entry has no `data` field"),
            Malformed::TooLarge { size, limit } => {
                write!(f, "`data` is {size} bytes, over the limit of {limit}")
            }
            Malformed::NotUtf8 => write!(f, "`data` is not UTF-8"),
            Malformed::NotJson(err) => write!(f, "`data` is not JSON: {err}"),
            Malformed::NotAnObject(kind) => {
                write!(f, "`data` is {kind}, not a JSON object")
            }
            Malformed::NoEventType => write!(f, "`data` has no string `event_type`"),
            Malformed::NoKey(field) => write!(
                f,
                "`data` has no key at `{field}` (a string or number) to order it by, and the \
                 subscriber refuses events without one (without_key = \"refuse\")"
            ),
        }
    }
}

/// The top-level fields of a JSON object, values left unparsed.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    fn parse(data: &'a [u8], limit: usize) -> Result<Self, Malformed> {
        if data.len() > limit {
            return Err(Malformed::TooLarge {
                size: data.len(),
                limit,
            });
        }
        let text = std::str::from_utf8(data).map_err(|_| Malformed::NotUtf8)?;
        serde_json::from_str(text).map_err(|err| match serde_json::from_str::<Value>(text) {
            Ok(other) => Malformed::NotAnObject(json_kind(&other)),
            Err(_) => Malformed::NotJson(err.to_string()),
        })
    }

    /// The last value of `key`, as JSON does with duplicates.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// LeanMQ's `_metadata`, read leniently: a producer may write anything.
#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    /// Kept by eventhost: publishes from the producer's event to this one.
    #[serde(default)]
    hops: Option<Value>,
    #[serde(default)]
    traceparent: Option<Value>,
}

/// What the fan-out reads of an entry: its type, and its fields, from
/// which a route takes the event's id or its key only if it needs them.
pub struct Routing<'a> {
    pub event_type: String,
    fields: Fields<'a>,
}

/// An entry as the fan-out routes it.
pub fn routing(entry: &StreamEntry, limit: usize) -> Result<Routing<'_>, Malformed> {
    let (fields, event_type) = typed(entry, limit)?;
    Ok(Routing { event_type, fields })
}

impl Routing<'_> {
    /// The id a repeated copy of the event is known by (its `event_id`,
    /// else `_metadata.id`; `None`: it has neither).
    pub fn id(&self) -> Option<String> {
        event_id(&self.fields)
    }

    /// The event's key for `order` (see [`order_key`]).
    pub fn key(&self, order: &OrderBy) -> Option<String> {
        key_of(&self.fields, order)
    }
}

/// Longest key kept as it is: a longer one is replaced by its SHA-256, so
/// a producer cannot make Redis key names of any length.
pub const MAX_KEY_BYTES: usize = 128;

/// An event's key for a subscriber that orders by `order`: the value at
/// its field (a non-empty string as it is, a number or boolean as JSON
/// writes it); `None` if it has none there, or an object, array or null.
pub fn order_key(entry: &StreamEntry, order: &OrderBy, limit: usize) -> Option<String> {
    let (fields, _) = typed(entry, limit).ok()?;
    key_of(&fields, order)
}

fn key_of(fields: &Fields<'_>, order: &OrderBy) -> Option<String> {
    let mut path = order.path();
    let mut raw = fields.get(path.next()?)?;
    for name in path {
        let inner: Fields<'_> = serde_json::from_str(raw.get()).ok()?;
        raw = inner.get(name)?;
    }
    let key = match serde_json::from_str::<Value>(raw.get()).ok()? {
        Value::Bool(b) => b.to_string(),
        other => value_text(&other)?,
    };
    if key.len() <= MAX_KEY_BYTES {
        return Some(key);
    }
    use sha2::Digest;
    Some(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    ))
}

/// An entry's fields and its (non-empty) `event_type`.
fn typed(entry: &StreamEntry, limit: usize) -> Result<(Fields<'_>, String), Malformed> {
    let data = entry.data().ok_or(Malformed::NoData)?;
    let fields = Fields::parse(data, limit)?;
    let event_type = fields
        .string("event_type")
        .filter(|t| !t.is_empty())
        .ok_or(Malformed::NoEventType)?;
    Ok((fields, event_type))
}

/// An event's id: its `event_id`, else `_metadata.id`.
fn event_id(fields: &Fields<'_>) -> Option<String> {
    fields.get("event_id").and_then(scalar_text).or_else(|| {
        let metadata: Metadata = fields
            .get("_metadata")
            .and_then(|raw| serde_json::from_str(raw.get()).ok())?;
        metadata.id.as_ref().and_then(value_text)
    })
}

/// Decodes a subscriber-stream entry into the event a handler receives.
pub fn decode_event(entry: &StreamEntry, attempt: u32, limit: usize) -> Result<Event, Malformed> {
    let (fields, event_type) = typed(entry, limit)?;
    let data = entry.data().ok_or(Malformed::NoData)?;
    let metadata: Metadata = fields
        .get("_metadata")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let id = event_id(&fields).unwrap_or_else(|| entry.id.clone());
    let timestamp = fields
        .get("timestamp")
        .and_then(|raw| serde_json::from_str::<f64>(raw.get()).ok())
        .or_else(|| metadata.timestamp.as_ref().and_then(Value::as_f64));

    let traceparent = fields
        .string("traceparent")
        .or_else(|| metadata.traceparent.as_ref().and_then(value_text))
        .filter(|t| is_traceparent(t));
    let text = std::str::from_utf8(data).map_err(|_| Malformed::NotUtf8)?;
    let data = if fields
        .0
        .iter()
        .any(|(k, _)| BOOKKEEPING.contains(&k.as_ref()))
    {
        without_bookkeeping(&fields)
    } else {
        text.to_string()
    };
    Ok(Event {
        id,
        event_type,
        stream_id: entry.id.clone(),
        timestamp,
        attempt,
        data,
        hops: metadata
            .hops
            .as_ref()
            .and_then(Value::as_u64)
            .map_or(0, |h| h.min(u32::MAX as u64) as u32),
        traceparent,
    })
}

/// Whether `text` is a W3C `traceparent` (version, trace id, parent id,
/// flags: `00-<32 hex>-<16 hex>-<2 hex>`): only such text is sent on as a
/// header, whatever a producer wrote.
fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
        && (parts[0] != "00" || parts.len() == 4)
        && text.len() <= 256
}

/// Rewrites the object without LeanMQ's keys, leaving other values verbatim.
fn without_bookkeeping(fields: &Fields<'_>) -> String {
    let mut out = String::with_capacity(256);
    out.push('{');
    let mut first = true;
    for (key, value) in &fields.0 {
        if BOOKKEEPING.contains(&key.as_ref()) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&Value::from(key.as_ref()).to_string());
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    out
}

fn scalar_text(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<Value>(raw.get())
        .ok()
        .as_ref()
        .and_then(value_text)
}

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// LeanMQ's `_metadata`, plus eventhost's `hops` (which LeanMQ ignores)
/// on an event a handler published.
fn metadata_with_hops(id: &str, timestamp: f64, hops: Option<u32>) -> Value {
    let mut meta = Map::new();
    meta.insert("id".into(), Value::from(id));
    meta.insert("timestamp".into(), Value::from(timestamp));
    meta.insert("ttl".into(), Value::Null);
    if let Some(hops) = hops {
        meta.insert("hops".into(), Value::from(hops));
    }
    Value::Object(meta)
}

/// The `data` of an event published at `now`, as a LeanMQ producer writes
/// it: the object plus `event_type`, `event_id`, `timestamp` and
/// `_metadata: {id, timestamp, ttl}`, and the hops the host keeps in
/// `_metadata.hops`.
pub fn publish_payload(published: &Published, now: f64) -> String {
    envelope(
        published.data.clone(),
        &published.event_type,
        &published.event_id,
        now,
        Some(published.hops),
    )
}

/// `data` as a LeanMQ producer writes an event of `event_type`; `hops`
/// for an event a handler published.
pub fn envelope(
    mut data: Map<String, Value>,
    event_type: &str,
    event_id: &str,
    now: f64,
    hops: Option<u32>,
) -> String {
    data.insert("event_type".into(), Value::from(event_type));
    data.insert("event_id".into(), Value::from(event_id));
    data.insert("timestamp".into(), Value::from(now));
    data.insert("_metadata".into(), metadata_with_hops(event_id, now, hops));
    Value::Object(data).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with `data`, at 5-0; the dead letters' tests use it too.
    pub(super) fn entry(data: &str) -> StreamEntry {
        StreamEntry {
            id: "5-0".into(),
            fields: vec![(b"data".to_vec(), data.as_bytes().to_vec())],
        }
    }

    #[test]
    fn a_leanmq_event_decodes_without_its_bookkeeping() {
        let e = entry(
            r#"{"event_type":"OrderCreatedEvent","order_id":"o-1","total":9.5,
                "_metadata":{"id":"m-1","timestamp":17.25,"ttl":null},"_failures":[]}"#,
        );
        let event = decode_event(&e, 2, 1 << 20).unwrap();
        assert_eq!(event.event_type, "OrderCreatedEvent");
        assert_eq!(event.id, "m-1", "no event_id: falls back to _metadata.id");
        assert_eq!(event.timestamp, Some(17.25), "from _metadata");
        assert_eq!(event.attempt, 2);
        assert_eq!(event.stream_id, "5-0");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"event_type":"OrderCreatedEvent","order_id":"o-1","total":9.5})
        );
    }

    #[test]
    fn event_id_and_timestamp_win_over_metadata_and_data_is_kept_verbatim() {
        let text = r#"{"event_type":"T","event_id":"e-9","timestamp":3.5,"x":{"a":[1, 2]}}"#;
        let event = decode_event(&entry(text), 1, 1 << 20).unwrap();
        assert_eq!(event.id, "e-9");
        assert_eq!(event.timestamp, Some(3.5));
        assert_eq!(event.data, text);
    }

    #[test]
    fn the_stream_id_is_the_last_resort_id() {
        let event = decode_event(&entry(r#"{"event_type":"T"}"#), 1, 100).unwrap();
        assert_eq!(event.id, "5-0");
        assert_eq!(event.timestamp, None);
    }

    fn event_type(entry: &StreamEntry, limit: usize) -> Result<String, Malformed> {
        routing(entry, limit).map(|r| r.event_type)
    }

    fn by(field: &str) -> OrderBy {
        OrderBy {
            field: field.into(),
            on_dead_letter: crate::config::OnDeadLetter::Skip,
            without_key: crate::config::WithoutKey::Run,
        }
    }

    #[test]
    fn an_events_key_is_its_field_as_text_at_any_depth() {
        let e = entry(
            r#"{"event_type":"T","order_id":"o-1","n":42,"ok":true,"customer":{"id":"c-7","tier":{"n":2}},"none":null,"empty":"","list":[1]}"#,
        );
        let key = |field: &str| order_key(&e, &by(field), 1000);
        assert_eq!(key("order_id").as_deref(), Some("o-1"));
        assert_eq!(key("n").as_deref(), Some("42"));
        assert_eq!(key("ok").as_deref(), Some("true"));
        assert_eq!(key("customer.id").as_deref(), Some("c-7"));
        assert_eq!(key("customer.tier.n").as_deref(), Some("2"));
        for absent in [
            "missing",
            "none",
            "empty",
            "list",
            "customer",
            "order_id.x",
            "customer.x",
        ] {
            assert_eq!(key(absent), None, "{absent}");
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let e = entry(&format!(r#"{{"event_type":"T","order_id":"{long}"}}"#));
        let hashed = order_key(&e, &by("order_id"), 1000).unwrap();
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 7 + 64,
            "{hashed}"
        );
        let routing = routing(&e, 1000).unwrap();
        assert_eq!(routing.key(&by("order_id")), Some(hashed));
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let no_data = StreamEntry {
            id: "1-0".into(),
            fields: vec![(b"payload".to_vec(), b"{}".to_vec())],
        };
        assert_eq!(event_type(&no_data, 100), Err(Malformed::NoData));
        assert_eq!(
            event_type(&entry("[1,2]"), 100),
            Err(Malformed::NotAnObject("an array"))
        );
        assert_eq!(
            event_type(&entry("42"), 100),
            Err(Malformed::NotAnObject("a number"))
        );
        assert!(matches!(
            event_type(&entry("{nope"), 100),
            Err(Malformed::NotJson(_))
        ));
        assert_eq!(
            event_type(&entry(r#"{"type":"T"}"#), 100),
            Err(Malformed::NoEventType)
        );
        assert_eq!(
            event_type(&entry(r#"{"event_type":7}"#), 100),
            Err(Malformed::NoEventType)
        );
        assert_eq!(
            event_type(&entry(r#"{"event_type":"T","pad":"xxxxxxxxxx"}"#), 10),
            Err(Malformed::TooLarge {
                size: 37,
                limit: 10
            })
        );
        let not_utf8 = StreamEntry {
            id: "1-0".into(),
            fields: vec![(b"data".to_vec(), vec![b'{', 0xff, b'}'])],
        };
        assert_eq!(event_type(&not_utf8, 100), Err(Malformed::NotUtf8));
    }

    #[test]
    fn published_events_get_the_producers_envelope() {
        let mut effects = crate::handler::Effects::default();
        let id = effects
            .publish("sub/1-0", "Shipped", r#"{"order":7}"#)
            .unwrap();
        let data: Value =
            serde_json::from_str(&publish_payload(&effects.published()[0], 12.5)).unwrap();
        assert_eq!(data["event_type"], "Shipped");
        assert_eq!(data["event_id"], id.as_str());
        assert_eq!(data["timestamp"], 12.5);
        assert_eq!(data["order"], 7);
        assert_eq!(data["_metadata"]["id"], id.as_str());
        assert_eq!(data["_metadata"]["timestamp"], 12.5);
        assert_eq!(data["_metadata"]["hops"], 1, "counted by the host");
        let entry = entry(&publish_payload(&effects.published()[0], 12.5));
        assert_eq!(decode_event(&entry, 1, 1 << 20).unwrap().hops, 1);
    }

    #[test]
    fn a_well_formed_traceparent_is_carried_and_anything_else_dropped() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traceparent = |text: &str| decode_event(&entry(text), 1, 1 << 20).unwrap().traceparent;
        let top = format!(r#"{{"event_type":"T","traceparent":"{good}"}}"#);
        assert_eq!(traceparent(&top).as_deref(), Some(good));
        let meta = format!(r#"{{"event_type":"T","_metadata":{{"traceparent":"{good}"}}}}"#);
        assert_eq!(traceparent(&meta).as_deref(), Some(good));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\\r\\nX-Evil: 1",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            let text = format!(r#"{{"event_type":"T","traceparent":"{bad}"}}"#);
            assert_eq!(traceparent(&text), None, "{bad}");
        }
        assert_eq!(traceparent(r#"{"event_type":"T"}"#), None);
    }
}
