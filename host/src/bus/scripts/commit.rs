//! A subscriber's one atomic write: a batch of results committed (see
//! `commit.lua` for what it does and why a result is committed once).

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, RedisResult, Script, Value};

use super::calls::{fit_in_one_call, is_refusal, refusal_text};
use super::later::{due_spec, with_later};
use super::order::{order_args, with_order, WaitingLists};
use crate::bus::connection::RedisConn;
use crate::bus::leanmq;
use crate::bus::state::stamp_field;
use crate::handler::{Effects, Reads, COMPARED_BYTES};

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_order(&with_later(include_str!("commit.lua")))));

/// One commit of a subscriber: acknowledgements with their effects, and dead
/// letters, each applied only if what it read still holds.
pub struct CommitBatch {
    group: Vec<u8>,
    /// Events ran one at a time, in stream order: a conflict holds back
    /// every record after it.
    ordered: bool,
    /// A dead letter parks its key (`on_dead_letter = "park"`) instead of
    /// letting the key move on.
    park: bool,
    /// The waiting lists of the keys its entries hold.
    waiting: WaitingLists,
    /// Entries handled with no effects and no reads: just their ids.
    quiet: Vec<Vec<u8>>,
    /// Everything else, one record per entry, encoded as commit.lua reads it.
    records: Vec<Record>,
    entries: usize,
    /// Requests queued to send after the commit, all records together.
    requests: usize,
}

/// One entry's record: its id and its arguments to commit.lua.
struct Record {
    id: String,
    args: Vec<Vec<u8>>,
    bytes: usize,
}

impl Record {
    fn push(&mut self, arg: Vec<u8>) {
        self.bytes += arg.len();
        self.args.push(arg);
    }
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
    /// Where requests to send after the commit go: `events:sub:<name>:http`.
    pub http: &'a str,
    /// The subscriber's order keys (see [`crate::bus::keys::OrderKeys`]).
    pub lists: &'a str,
    pub held: &'a str,
    pub parked: &'a str,
    /// The stream's schedule: its retries, due later.
    pub schedule: &'a str,
    /// The schedule of [`CommitKeys::all`]: events published for later.
    pub later: &'a str,
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
    /// Entries whose record Redis refused on its own, for a reason that
    /// will not change (id, Redis's error): nothing of theirs was written,
    /// they stay pending until the caller dead-letters them.
    pub refused: Vec<(String, String)>,
}

/// One script call's reply: `{skipped, blocked, conflict ids...}`.
struct Reply {
    skipped: u64,
    /// An ordered batch stopped committing: hold back what comes after.
    blocked: bool,
    conflicts: Vec<String>,
}

impl FromRedisValue for Reply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = value else {
            return Err("commit reply is not an array".into());
        };
        let mut items = items.into_iter();
        let (Some(Value::Int(skipped)), Some(Value::Int(blocked))) = (items.next(), items.next())
        else {
            return Err("commit reply has no counts".into());
        };
        let conflicts = items
            .map(String::from_redis_value)
            .collect::<Result<_, _>>()?;
        Ok(Reply {
            skipped: skipped as u64,
            blocked: blocked != 0,
            conflicts,
        })
    }
}

impl CommitBatch {
    /// An empty batch for a subscriber's `group`; `ordered` if its events
    /// ran one at a time, in stream order.
    pub fn new(group: &str, ordered: bool) -> Self {
        CommitBatch {
            group: group.as_bytes().to_vec(),
            ordered,
            park: false,
            waiting: WaitingLists::default(),
            quiet: Vec::new(),
            records: Vec::new(),
            entries: 0,
            requests: 0,
        }
    }

    /// Makes a dead letter park its key, until it is replayed or skipped,
    /// instead of letting the key move on.
    pub fn parking(mut self, park: bool) -> Self {
        self.park = park;
        self
    }

    /// Acknowledges `id`, which holds `key` if it has one, and commits
    /// `effects` with it.
    pub fn ok(&mut self, id: &str, key: Option<&str>, effects: &Effects, now: f64) {
        self.entries += 1;
        if effects.is_empty() {
            match key {
                None => self.quiet.push(id.as_bytes().to_vec()),
                // No effects, but a key to hand on: a short record.
                Some(key) => {
                    let mut record = Record {
                        id: id.to_string(),
                        args: Vec::with_capacity(4),
                        bytes: 0,
                    };
                    record.push(b"done".to_vec());
                    record.push(id.as_bytes().to_vec());
                    let place = self.waiting.place(0, key);
                    for arg in order_args(Some((place, key))) {
                        record.push(arg);
                    }
                    self.records.push(record);
                }
            }
            return;
        }
        let mut record = self.record(b"ok", id, key, effects.reads());

        let published = effects.published();
        let later = published.iter().filter(|p| p.due.is_some()).count();
        record.push(count(published.len() - later));
        for p in published.iter().filter(|p| p.due.is_none()) {
            record.push(leanmq::publish_payload(p, now).into_bytes());
        }
        record.push(count(later));
        for p in published {
            if let Some(due) = p.due {
                record.push(due_spec(due).into_bytes());
                record.push(leanmq::publish_payload(p, now).into_bytes());
            }
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
        record.push(count(sets.len() + stamps.len()));
        for (key, value) in sets {
            record.push(key.as_bytes().to_vec());
            record.push(value.as_bytes().to_vec());
        }
        for (field, id) in stamps {
            record.push(field.into_bytes());
            record.push(id.as_bytes().to_vec());
        }
        record.push(count(deletes.len() * 2));
        for key in deletes {
            record.push(key.as_bytes().to_vec());
            record.push(stamp_field(key).into_bytes());
        }
        let requests = effects.requests();
        record.push(count(requests.len()));
        for request in requests {
            record.push(request.to_json().into_bytes());
        }
        self.requests += requests.len();
        self.records.push(record);
    }

    /// Takes `id`, an entry without a key of a subscriber that keeps order
    /// by `key`, out of the stream and into its key's order (see
    /// `commit.lua`), with its `data`.
    pub fn adopt(&mut self, id: &str, key: &str, data: &[u8]) {
        let mut record = Record {
            id: id.to_string(),
            args: Vec::with_capacity(5),
            bytes: 0,
        };
        record.push(b"adopt".to_vec());
        record.push(id.as_bytes().to_vec());
        let place = self.waiting.place(0, key);
        for arg in order_args(Some((place, key))) {
            record.push(arg);
        }
        record.push(data.to_vec());
        self.records.push(record);
        self.entries += 1;
    }

    /// Acknowledges `id` and writes `payload` to the DLQ, if what the
    /// failure rests on, `reads`, still holds.
    pub fn dead_letter(&mut self, id: &str, key: Option<&str>, payload: String, reads: &Reads) {
        let mut record = self.record(b"dlq", id, key, reads);
        record.push(payload.into_bytes());
        self.records.push(record);
        self.entries += 1;
    }

    /// Acknowledges `id` and schedules it to come back after `delay` as
    /// attempt `attempt`, if what the failure rests on, `reads`, still
    /// holds; its key (if it has one) stays held until then.
    pub fn retry(
        &mut self,
        id: &str,
        key: Option<&str>,
        reads: &Reads,
        delay: std::time::Duration,
        attempt: u32,
    ) {
        let mut record = self.record(b"retry", id, key, reads);
        record.push(count(delay.as_millis() as usize));
        record.push(count(attempt as usize));
        self.records.push(record);
        self.entries += 1;
    }

    /// A record's head: its kind, its entry, its key, what it read.
    fn record(&mut self, kind: &[u8], id: &str, key: Option<&str>, reads: &Reads) -> Record {
        let mut record = Record {
            id: id.to_string(),
            args: Vec::new(),
            bytes: 0,
        };
        record.push(kind.to_vec());
        record.push(id.as_bytes().to_vec());
        let place = key.map(|key| (self.waiting.place(0, key), key));
        for arg in order_args(place) {
            record.push(arg);
        }
        record.push(count(reads.len()));
        for (key, seen) in reads {
            record.push(key.as_bytes().to_vec());
            match &seen.value {
                None => record.push(b"0".to_vec()),
                Some(value) if value.len() <= COMPARED_BYTES => {
                    record.push(b"1".to_vec());
                    record.push(value.as_bytes().to_vec());
                }
                Some(value) => {
                    record.push(b"2".to_vec());
                    record.push(count(value.len()));
                    let stamp = seen.stamp.as_deref().unwrap_or_default();
                    record.push(stamp.as_bytes().to_vec());
                }
            }
        }
        record
    }

    /// How many requests to send after the commit the batch queues.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Commits the batch: one atomic script call, or one per
    /// [`MAX_CALL_BYTES`](super::MAX_CALL_BYTES) of records. If Redis refuses it for a reason that
    /// will not change (see [`is_refusal`]), having written nothing, each
    /// record is tried on its own and those refused alone are returned in
    /// [`Committed::refused`], so one poison record cannot hold back the
    /// others. Any other error is returned: what was not committed stays
    /// pending.
    pub async fn apply(
        &self,
        conn: &mut RedisConn,
        keys: &CommitKeys<'_>,
    ) -> RedisResult<Committed> {
        let records: Vec<&Record> = self.records.iter().collect();
        match self.apply_in_chunks(conn, keys, &records).await {
            Err(err) if is_refusal(&err) && !self.records.is_empty() => {
                tracing::warn!(
                    "Redis refused a commit of {} entries ({err}); committing them one by one",
                    self.entries
                );
                self.apply_one_by_one(conn, keys).await
            }
            other => other,
        }
    }

    /// The batch in calls of at most [`MAX_CALL_BYTES`](super::MAX_CALL_BYTES) (a record larger
    /// than that goes alone); the quiet ids with the first.
    async fn apply_in_chunks(
        &self,
        conn: &mut RedisConn,
        keys: &CommitKeys<'_>,
        records: &[&Record],
    ) -> RedisResult<Committed> {
        let mut committed = Committed::default();
        if records.is_empty() {
            // Nothing but results without effects or reads: nothing to
            // guard, no script needed.
            committed.skipped = self.ack_quiet(conn, keys).await?;
            return Ok(committed);
        }
        let mut quiet: &[Vec<u8>] = &self.quiet;
        let mut rest = records;
        while !rest.is_empty() {
            let take = fit_in_one_call(rest, |r| r.bytes);
            let (chunk, later) = rest.split_at(take);
            let reply = self.call(conn, keys, quiet, chunk).await?;
            quiet = &[];
            rest = later;
            committed.skipped += reply.skipped;
            committed.conflicts.extend(reply.conflicts);
            if reply.blocked && self.ordered {
                // Held back by a conflict or a skip in an earlier call.
                committed
                    .conflicts
                    .extend(rest.iter().map(|r| r.id.clone()));
                break;
            }
        }
        Ok(committed)
    }

    /// After a refused batch: the quiet ids, then each record alone.
    async fn apply_one_by_one(
        &self,
        conn: &mut RedisConn,
        keys: &CommitKeys<'_>,
    ) -> RedisResult<Committed> {
        let mut committed = Committed {
            skipped: self.ack_quiet(conn, keys).await?,
            ..Committed::default()
        };
        let mut records = self.records.iter();
        while let Some(record) = records.next() {
            match self.call(conn, keys, &[], &[record]).await {
                Ok(reply) => {
                    committed.skipped += reply.skipped;
                    committed.conflicts.extend(reply.conflicts);
                    if reply.blocked && self.ordered {
                        committed.conflicts.extend(records.map(|r| r.id.clone()));
                        break;
                    }
                }
                Err(err) if is_refusal(&err) => {
                    committed
                        .refused
                        .push((record.id.clone(), refusal_text(&err)));
                    if self.ordered {
                        // Later events may have read what it wrote.
                        committed.conflicts.extend(records.map(|r| r.id.clone()));
                        break;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(committed)
    }

    /// Acknowledges the quiet ids; how many were acknowledged already.
    async fn ack_quiet(&self, conn: &mut RedisConn, keys: &CommitKeys<'_>) -> RedisResult<u64> {
        let mut skipped = 0;
        for chunk in self.quiet.chunks(10_000) {
            let acked: u64 = redis::cmd("XACK")
                .arg(keys.stream)
                .arg(&self.group)
                .arg(chunk)
                .query_async(conn)
                .await?;
            skipped += chunk.len() as u64 - acked;
        }
        Ok(skipped)
    }

    /// One call of commit.lua with `quiet` ids and `records`.
    async fn call(
        &self,
        conn: &mut RedisConn,
        keys: &CommitKeys<'_>,
        quiet: &[Vec<u8>],
        records: &[&Record],
    ) -> RedisResult<Reply> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(keys.stream)
            .key(keys.dlq)
            .key(keys.state)
            .key(keys.all)
            .key(keys.http)
            .key(keys.held)
            .key(keys.parked)
            .key(keys.schedule)
            .key(keys.later);
        for list in self.waiting.names(&[keys.lists]) {
            call.key(list);
        }
        call.arg(self.group.as_slice())
            .arg(if self.ordered { "1" } else { "0" })
            .arg(if self.park { "1" } else { "0" })
            .arg(quiet.len());
        for id in quiet {
            call.arg(id.as_slice());
        }
        for record in records {
            for arg in &record.args {
                call.arg(arg.as_slice());
            }
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
        batch.ok("4-0", None, &Effects::default(), 1.0);
        batch.ok("5-0", None, &effects, 1.0);
        batch.ok("6-0", Some("o-1"), &Effects::default(), 1.0);
        assert_eq!(batch.len(), 3);
        let lists: Vec<String> = batch.waiting.names(&["o"]).collect();
        assert_eq!(lists, ["o:q:o-1"]);
        assert_eq!(text(&batch.quiet), ["4-0"], "no effects: just the id");
        assert_eq!(
            text(
                &batch
                    .records
                    .iter()
                    .flat_map(|r| r.args.clone())
                    .collect::<Vec<_>>()
            ),
            [
                "ok",
                "5-0",
                "0",
                "0",
                "0",
                "0",
                "1",
                "a",
                "3",
                "4",
                "b",
                "\0stamp:b",
                "c",
                "\0stamp:c",
                "0",
                "done",
                "6-0",
                "1",
                "o-1"
            ]
        );
    }
}
