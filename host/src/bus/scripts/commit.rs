//! A subscriber's one atomic write: a batch of results committed (see
//! `commit.lua` for what it does and why a result is committed once).

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, RedisResult, Script, Value};

use crate::bus::connection::RedisConn;
use crate::bus::leanmq;
use crate::bus::state::stamp_field;
use crate::handler::{Effects, Reads, COMPARED_BYTES};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("commit.lua")));

/// One commit of a subscriber: acknowledgements with their effects, and dead
/// letters, each applied only if what it read still holds.
pub struct CommitBatch {
    group: Vec<u8>,
    /// Events ran one at a time, in stream order: a conflict holds back
    /// every record after it.
    ordered: bool,
    /// Entries handled with no effects and no reads: just their ids.
    quiet: Vec<Vec<u8>>,
    /// Everything else, encoded as commit.lua reads it.
    records: Vec<Vec<u8>>,
    entries: usize,
}

/// A count as Lua reads it.
fn count(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Where a subscriber's commit writes.
pub struct CommitKeys<'a> {
    pub stream: &'a str,
    pub dlq: &'a str,
    pub state: &'a str,
    /// Where published events go: `events:all`.
    pub all: &'a str,
}

/// What a commit came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Entries already acknowledged by another consumer: nothing of theirs
    /// was written.
    pub skipped: u64,
    /// Entries whose reads no longer held (or, in an ordered batch, that
    /// came after one): nothing of theirs was written, they stay pending.
    pub conflicts: Vec<String>,
}

impl FromRedisValue for Committed {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = value else {
            return Err("commit reply is not an array".into());
        };
        let mut items = items.into_iter();
        let skipped = match items.next() {
            Some(Value::Int(n)) => n as u64,
            _ => return Err("commit reply has no count".into()),
        };
        let conflicts = items
            .map(String::from_redis_value)
            .collect::<Result<_, _>>()?;
        Ok(Committed { skipped, conflicts })
    }
}

impl CommitBatch {
    /// An empty batch for a subscriber's `group`; `ordered` if its events
    /// ran one at a time, in stream order.
    pub fn new(group: &str, ordered: bool) -> Self {
        CommitBatch {
            group: group.as_bytes().to_vec(),
            ordered,
            quiet: Vec::new(),
            records: Vec::new(),
            entries: 0,
        }
    }

    /// Acknowledges `id` and commits `effects` with it.
    pub fn ok(&mut self, id: &str, effects: &Effects, now: f64) {
        self.entries += 1;
        if effects.is_empty() {
            self.quiet.push(id.as_bytes().to_vec());
            return;
        }
        self.record(b"ok", id, effects.reads());

        let published = effects.published();
        self.records.push(count(published.len()));
        for p in published {
            self.records
                .push(leanmq::publish_payload(p, now).into_bytes());
        }

        // Only the last write of each key matters; keep the order of first
        // writes so the commit reads like the call.
        let writes = effects.writes();
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(writes.len());
        for (i, (key, _)) in writes.iter().enumerate() {
            last.insert(key, i);
        }
        let mut sets = Vec::new();
        let mut deletes = Vec::new();
        for (i, (key, value)) in writes.iter().enumerate() {
            if last[key.as_str()] != i {
                continue;
            }
            match value {
                Some(value) => sets.push((key, value)),
                None => deletes.push(key),
            }
        }
        // A large value is stamped with the entry that wrote it, so a read
        // of it is checked by its stamp and length (see `state.rs`).
        let stamps: Vec<(String, &str)> = sets
            .iter()
            .filter(|(_, value)| value.len() > COMPARED_BYTES)
            .map(|(key, _)| (stamp_field(key), id))
            .collect();
        self.records.push(count(sets.len() + stamps.len()));
        for (key, value) in sets {
            self.records.push(key.as_bytes().to_vec());
            self.records.push(value.as_bytes().to_vec());
        }
        for (field, id) in stamps {
            self.records.push(field.into_bytes());
            self.records.push(id.as_bytes().to_vec());
        }
        self.records.push(count(deletes.len() * 2));
        for key in deletes {
            self.records.push(key.as_bytes().to_vec());
            self.records.push(stamp_field(key).into_bytes());
        }
    }

    /// Acknowledges `id` and writes `payload` to the DLQ, if what the
    /// failure rests on, `reads`, still holds.
    pub fn dead_letter(&mut self, id: &str, payload: String, reads: &Reads) {
        self.record(b"dlq", id, reads);
        self.records.push(payload.into_bytes());
        self.entries += 1;
    }

    /// Checks that `reads` still hold for `id`, which stays pending (a
    /// retry that rests on what it read).
    pub fn check(&mut self, id: &str, reads: &Reads) {
        self.record(b"check", id, reads);
        self.entries += 1;
    }

    /// A record's head: its kind, its entry, what it read.
    fn record(&mut self, kind: &[u8], id: &str, reads: &Reads) {
        self.records.push(kind.to_vec());
        self.records.push(id.as_bytes().to_vec());
        self.records.push(count(reads.len()));
        for (key, seen) in reads {
            self.records.push(key.as_bytes().to_vec());
            match &seen.value {
                None => self.records.push(b"0".to_vec()),
                Some(value) if value.len() <= COMPARED_BYTES => {
                    self.records.push(b"1".to_vec());
                    self.records.push(value.as_bytes().to_vec());
                }
                Some(value) => {
                    self.records.push(b"2".to_vec());
                    self.records.push(count(value.len()));
                    let stamp = seen.stamp.as_deref().unwrap_or_default();
                    self.records.push(stamp.as_bytes().to_vec());
                }
            }
        }
    }

    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Runs the batch as one atomic script.
    pub async fn apply(
        &self,
        conn: &mut RedisConn,
        keys: &CommitKeys<'_>,
    ) -> RedisResult<Committed> {
        if self.records.is_empty() {
            // Nothing but results without effects or reads: nothing to
            // guard, no script needed.
            let acked: u64 = redis::cmd("XACK")
                .arg(keys.stream)
                .arg(&self.group)
                .arg(&self.quiet)
                .query_async(conn)
                .await?;
            return Ok(Committed {
                skipped: self.quiet.len() as u64 - acked,
                conflicts: Vec::new(),
            });
        }
        let mut call = SCRIPT.prepare_invoke();
        call.key(keys.stream)
            .key(keys.dlq)
            .key(keys.state)
            .key(keys.all);
        let quiet = count(self.quiet.len());
        let ordered = if self.ordered {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        };
        let args = [&self.group, &ordered, &quiet]
            .into_iter()
            .chain(&self.quiet)
            .chain(&self.records);
        for arg in args {
            call.arg(arg.as_slice());
        }
        call.invoke_async(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::scripts::text;

    #[test]
    fn commits_keep_only_the_last_write_of_each_key() {
        let mut effects = Effects::default();
        effects.set("a".into(), "1".into());
        effects.set("b".into(), "2".into());
        effects.set("a".into(), "3".into());
        effects.delete("b".into());
        effects.delete("c".into());
        let mut batch = CommitBatch::new("g", false);
        batch.ok("4-0", &Effects::default(), 1.0);
        batch.ok("5-0", &effects, 1.0);
        assert_eq!(batch.len(), 2);
        assert_eq!(text(&batch.quiet), ["4-0"], "no effects: just the id");
        assert_eq!(
            text(&batch.records),
            [
                "ok",
                "5-0",
                "0",
                "0",
                "1",
                "a",
                "3",
                "4",
                "b",
                "\0stamp:b",
                "c",
                "\0stamp:c"
            ]
        );
    }
}
