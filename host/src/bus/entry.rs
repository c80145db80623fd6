//! A stream entry as Redis returns it: the ground floor of the bus.
//!
//! Reads and claims ([`super::group`]), the wire format ([`super::leanmq`])
//! and the DLQ ([`super::dlq`]) all handle entries; this module imports
//! nothing else from `bus`, so each of them can depend on it without
//! depending on the others.

use redis::{FromRedisValue, ParsingError, Value};

/// One stream entry as Redis returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// `<ms>-<seq>`: where it sits in its stream, and when it was added.
    pub id: String,
    /// Empty for an entry deleted while pending (`XCLAIM` says so with nil).
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    /// The `data` field, if present: where LeanMQ keeps the event.
    pub fn data(&self) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(name, _)| name == b"data")
            .map(|(_, value)| value.as_slice())
    }

    /// The `key` field, if present and text: the key of its event that
    /// the entry holds, for a subscriber that keeps order per key (see
    /// `scripts/order.lua`).
    pub fn key(&self) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == b"key")
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The attempt its first delivery is on: 1, or what its field
    /// `attempt` says if a retry's schedule put it back (`later.lua`).
    pub fn first_attempt(&self) -> u32 {
        self.fields
            .iter()
            .find(|(name, _)| name == b"attempt")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
            .filter(|&attempt| attempt >= 1)
            .unwrap_or(1)
    }

    /// The attempt its `deliveries`th delivery is on (a delivery that
    /// ended without a result, a crash, counts as an attempt).
    pub fn attempt(&self, deliveries: u32) -> u32 {
        self.first_attempt()
            .saturating_add(deliveries.saturating_sub(1))
    }

    /// What the entry weighs: its fields' names and values.
    pub fn bytes(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// `[id, [field, value, ...]]`, as `XRANGE`, `XCLAIM` and reads give it.
impl FromRedisValue for StreamEntry {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let Value::Array(pair) = value else {
            return Err("entry is not an [id, fields] pair".into());
        };
        let mut pair = pair.into_iter();
        let id = pair.next().and_then(text).ok_or("entry has no id")?;
        let fields = match pair.next() {
            None | Some(Value::Nil) => Vec::new(),
            Some(Value::Array(flat)) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    fields.push((bytes(k), bytes(v)));
                }
                fields
            }
            Some(Value::Map(map)) => map.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
            Some(other) => return Err(format!("entry fields are not an array: {other:?}").into()),
        };
        Ok(StreamEntry { id, fields })
    }
}

/// A list of entries (nil: none), as one stream of a read reply holds it.
pub(super) fn list(list: Value) -> Result<Vec<StreamEntry>, ParsingError> {
    match list {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(StreamEntry::from_redis_value)
            .collect(),
        other => Err(format!("entry list is not an array: {other:?}").into()),
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// A reply's string, if it is one (ids, cursors).
pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_parses_from_an_array_or_a_map_and_weighs_its_fields() {
        let pair = |fields| Value::Array(vec![Value::BulkString(b"1-0".to_vec()), fields]);
        let flat = Value::Array(vec![
            Value::BulkString(b"data".to_vec()),
            Value::BulkString(b"{}".to_vec()),
        ]);
        let entry = StreamEntry::from_redis_value(pair(flat)).unwrap();
        assert_eq!(entry.data(), Some(&b"{}"[..]));
        assert_eq!(entry.bytes(), 6);
        let map = Value::Map(vec![(Value::SimpleString("n".into()), Value::Int(7))]);
        let entry = StreamEntry::from_redis_value(pair(map)).unwrap();
        assert_eq!(entry.fields, vec![(b"n".to_vec(), b"7".to_vec())]);
        assert_eq!(entry.data(), None);
        assert!(StreamEntry::from_redis_value(pair(Value::Int(1))).is_err());
        assert!(list(Value::Int(1)).is_err());
    }
}
