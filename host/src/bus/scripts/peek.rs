//! Reading a page of a DLQ for its list without its payloads (see
//! `peek.lua` for why entries are read one at a time inside Redis).

use std::sync::LazyLock;

use redis::{RedisResult, Script, Value};

use crate::bus::connection::RedisConn;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("peek.lua")));

/// Which entries of which DLQ, and how much of each.
#[derive(Debug, Clone)]
pub struct PeekRange<'a> {
    /// The DLQ's key: the script's one key, so it runs on a cluster too.
    pub dlq: &'a str,
    /// Where to start: an id, `(<id>` to start after it, or `-`.
    pub from: &'a str,
    /// The last id to read; empty: the DLQ's last entry now (only its id
    /// is read, in [`Peeked::last`]).
    pub to: &'a str,
    /// Most entries.
    pub count: usize,
    /// Bytes of ids, heads and tails the reply may hold, about (it stops
    /// at the entry that reaches it).
    pub budget: usize,
    /// Bytes of each `data`'s start.
    pub head: usize,
    /// Bytes of each `data`'s end.
    pub tail: usize,
}

/// One entry, as much of it as a list needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// The entry's id in the DLQ: what the full entry is fetched by.
    pub id: String,
    /// The entry's fields and values, in bytes.
    pub bytes: u64,
    /// Bytes of its `data`; `None`: it has no `data` (the head is then
    /// its first field as `name=value`).
    pub data_len: Option<u64>,
    /// The start of `data`; all of it when it is no longer than head and
    /// tail together (then `tail` is empty).
    pub head: Vec<u8>,
    /// The end of `data`.
    pub tail: Vec<u8>,
}

impl Peek {
    /// Whether the head is the whole `data`.
    pub fn whole(&self) -> bool {
        self.data_len == Some(self.head.len() as u64)
    }
}

/// What one call read.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Oldest first.
    pub entries: Vec<Peek>,
    /// The budget ended the page before the count or the range did.
    pub budget_spent: bool,
    /// The last id of the range (the DLQ's last entry when `to` was
    /// empty); `None`: the DLQ is empty.
    pub last: Option<String>,
}

/// Reads the entries of `range`, each cut to its ends.
pub async fn peek(conn: &mut RedisConn, range: &PeekRange<'_>) -> RedisResult<Peeked> {
    let flat: Vec<Value> = SCRIPT
        .key(range.dlq)
        .arg(range.from)
        .arg(range.to)
        .arg(range.count)
        .arg(range.budget)
        .arg(range.head)
        .arg(range.tail)
        .invoke_async(conn)
        .await?;
    decode(flat).map_err(|what| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply from the DLQ peek script",
            what,
        ))
    })
}

/// `[budget_spent, last, id, bytes, data_len, head, tail, ...]` → the
/// entries.
fn decode(flat: Vec<Value>) -> Result<Peeked, String> {
    let mut values = flat.into_iter();
    let budget_spent = int(values.next())? == 1;
    let last = String::from_utf8(bytes(values.next())?).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    while let Some(id) = values.next() {
        let id = String::from_utf8(bytes(Some(id))?).map_err(|e| e.to_string())?;
        let size = u64::try_from(int(values.next())?).map_err(|e| e.to_string())?;
        let data_len = u64::try_from(int(values.next())?).ok();
        entries.push(Peek {
            id,
            bytes: size,
            data_len,
            head: bytes(values.next())?,
            tail: bytes(values.next())?,
        });
    }
    Ok(Peeked {
        entries,
        budget_spent,
        last: (!last.is_empty()).then_some(last),
    })
}

fn int(value: Option<Value>) -> Result<i64, String> {
    match value {
        Some(Value::Int(n)) => Ok(n),
        other => Err(format!("expected a number, got {other:?}")),
    }
}

fn bytes(value: Option<Value>) -> Result<Vec<u8>, String> {
    match value {
        Some(Value::BulkString(b)) => Ok(b),
        Some(Value::SimpleString(s)) => Ok(s.into_bytes()),
        other => Err(format!("expected text, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_reads_into_entries() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let peeked = decode(vec![
            Value::Int(1),
            text("2-0"),
            text("1-0"),
            Value::Int(12),
            Value::Int(8),
            text("{\"a\":1}x"),
            text(""),
            text("2-0"),
            Value::Int(5),
            Value::Int(-1),
            text("body=hi"),
            text(""),
        ])
        .unwrap();
        assert!(peeked.budget_spent);
        assert_eq!(peeked.last.as_deref(), Some("2-0"));
        assert_eq!(peeked.entries.len(), 2);
        assert!(peeked.entries[0].whole());
        assert_eq!(peeked.entries[1].data_len, None);
        assert!(!peeked.entries[1].whole());
        assert!(decode(vec![Value::Int(0), text(""), text("1-0")]).is_err());
        assert_eq!(decode(vec![Value::Int(0), text("")]).unwrap().last, None);
    }
}
