//! A subscriber's one atomic write: a batch of results committed (see
//! `commit.lua` for what it does and why a result is committed once).

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::Skipped;
use crate::bus::connection::RedisConn;
use crate::bus::leanmq;
use crate::handler::Effects;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("commit.lua")));

/// One commit of a subscriber: acknowledgements with their effects, and dead
/// letters.
pub struct CommitBatch {
    group: Vec<u8>,
    /// Entries handled with no effects: just their ids.
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

impl CommitBatch {
    /// An empty batch for a subscriber's `group`.
    pub fn new(group: &str) -> Self {
        CommitBatch {
            group: group.as_bytes().to_vec(),
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
        self.records.push(b"ok".to_vec());
        self.records.push(id.as_bytes().to_vec());

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
        self.records.push(count(sets.len()));
        for (key, value) in sets {
            self.records.push(key.as_bytes().to_vec());
            self.records.push(value.as_bytes().to_vec());
        }
        self.records.push(count(deletes.len()));
        for key in deletes {
            self.records.push(key.as_bytes().to_vec());
        }
    }

    /// Acknowledges `id` and writes `payload` to the DLQ.
    pub fn dead_letter(&mut self, id: &str, payload: String) {
        self.records.push(b"dlq".to_vec());
        self.records.push(id.as_bytes().to_vec());
        self.records.push(payload.into_bytes());
        self.entries += 1;
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
    pub async fn apply(&self, conn: &mut RedisConn, keys: &CommitKeys<'_>) -> RedisResult<Skipped> {
        if self.records.is_empty() {
            // Nothing but results without effects: nothing to guard, no
            // script needed.
            let acked: u64 = redis::cmd("XACK")
                .arg(keys.stream)
                .arg(&self.group)
                .arg(&self.quiet)
                .query_async(conn)
                .await?;
            return Ok(self.quiet.len() as u64 - acked);
        }
        let mut call = SCRIPT.prepare_invoke();
        call.key(keys.stream)
            .key(keys.dlq)
            .key(keys.state)
            .key(keys.all);
        let quiet = count(self.quiet.len());
        let args = [&self.group, &quiet]
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

    fn text(args: &[Vec<u8>]) -> Vec<String> {
        args.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn commits_keep_only_the_last_write_of_each_key() {
        let mut effects = Effects::default();
        effects.set("a".into(), "1".into());
        effects.set("b".into(), "2".into());
        effects.set("a".into(), "3".into());
        effects.delete("b".into());
        effects.delete("c".into());
        let mut batch = CommitBatch::new("g");
        batch.ok("4-0", &Effects::default(), 1.0);
        batch.ok("5-0", &effects, 1.0);
        assert_eq!(batch.len(), 2);
        assert_eq!(text(&batch.quiet), ["4-0"], "no effects: just the id");
        assert_eq!(
            text(&batch.records),
            ["ok", "5-0", "0", "1", "a", "3", "2", "b", "c"]
        );
    }
}
