//! One consumer in one consumer group: the reads and claims both loops use,
//! and the parsing of their replies.
//!
//! An entry is *pending* from the moment a read hands it to a consumer until
//! it is acknowledged. The group's pending list is the bus's memory across
//! crashes: an entry whose consumer died stays pending, goes idle, and is
//! reclaimed here by whoever runs next, with its delivery count as attempt.

use std::time::{Duration, Instant};

use redis::streams::StreamInfoConsumersReply;
use redis::{FromRedisValue, ParsingError, RedisResult, Value};

use super::connection::{Connector, RedisConn};
/// Re-exported while other modules still import it from here; its home
/// is [`super::entry`].
use super::entry::StreamEntry;
use super::entry::{self, text};
use super::keys::{Keys, QueueKeys};
use super::layout;
use super::scripts;

/// How often housekeeping runs at most: half the claim window, within these.
const TIDY_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

/// A read that brought more than this leaves its connection holding a
/// buffer as large (the client keeps its buffer's capacity): the reader is
/// replaced, so an oversized entry costs its memory once, not for the life
/// of the process.
const LARGE_READ_BYTES: usize = 8 << 20;

/// An entry taken over from another consumer, with how often it was
/// delivered (the attempt it is on).
#[derive(Debug)]
pub struct Claimed {
    pub entry: StreamEntry,
    pub deliveries: u32,
}

/// This process's consumer in one group.
pub struct GroupConsumer {
    keys: Keys,
    queue: QueueKeys,
    consumer: String,
    reader: RedisConn,
    /// How to open a new reader (and its block time), to shed a large read.
    reopen: Option<(Connector, Duration)>,
    commands: RedisConn,
    /// Where the next reclaim scan continues.
    cursor: String,
    /// When housekeeping is next due.
    next_tidy: Instant,
    /// When the next scan for abandoned entries is due.
    next_reclaim: Instant,
    /// Its stream is a LeanMQ queue, set up with LeanMQ's bookkeeping.
    leanmq: bool,
}

impl GroupConsumer {
    /// `reader` is used only for blocking reads; `commands` may be shared.
    pub fn new(
        keys: Keys,
        queue: QueueKeys,
        consumer: String,
        reader: RedisConn,
        commands: RedisConn,
    ) -> Self {
        GroupConsumer {
            keys,
            queue,
            consumer,
            reader,
            reopen: None,
            commands,
            cursor: "0-0".into(),
            next_tidy: Instant::now() + TIDY_EVERY.0,
            next_reclaim: Instant::now(),
            leanmq: true,
        }
    }

    /// The same, opening a new reader from `connector` (for reads that
    /// block up to `block`) after a large read: see [`Self::shed`].
    pub fn reopens_with(mut self, connector: Connector, block: Duration) -> Self {
        self.reopen = Some((connector, block));
        self
    }

    /// The same, on a stream that is no LeanMQ queue: a lost group is
    /// recreated without LeanMQ's bookkeeping (see [`layout::ensure_group`]).
    pub fn plain(mut self) -> Self {
        self.leanmq = false;
        self
    }

    /// After reading `entries`: if they weighed more than
    /// [`LARGE_READ_BYTES`], replaces the reader, whose buffer kept their
    /// size. A reader that cannot be opened now is kept.
    pub async fn shed(&mut self, entries: &[StreamEntry]) {
        let bytes: usize = entries.iter().map(StreamEntry::bytes).sum();
        let Some((connector, block)) = &self.reopen else {
            return;
        };
        if bytes <= LARGE_READ_BYTES {
            return;
        }
        match connector.reader(*block).await {
            Ok(reader) => {
                self.reader = reader;
                tracing::info!(
                    stream = %self.queue.stream,
                    "read {} MiB at once; replaced the reader to release its buffer",
                    bytes >> 20
                );
            }
            Err(err) => tracing::warn!(
                stream = %self.queue.stream,
                "cannot replace the reader after a large read: {err}"
            ),
        }
    }

    /// The stream, DLQ and groups this consumer works on.
    pub fn queue(&self) -> &QueueKeys {
        &self.queue
    }

    /// The shared connection, for commits.
    pub fn commands(&mut self) -> &mut RedisConn {
        &mut self.commands
    }

    /// Recreates the stream and group after Redis lost them.
    pub async fn recreate(&mut self) -> RedisResult<()> {
        if !self.leanmq {
            let queue = &self.queue;
            return layout::ensure_group(&mut self.commands, &queue.stream, &queue.group).await;
        }
        layout::ensure_queue(&mut self.commands, &self.keys, &self.queue).await
    }

    /// Entries never delivered to anyone, waiting up to `block` for some
    /// (`None`: answer at once). The read does not hold on to this consumer,
    /// so the next batch can be read while the last one is committed; at
    /// most one read may be under way at a time: they share a connection.
    pub fn read_new(
        &self,
        count: usize,
        block: Option<Duration>,
    ) -> impl std::future::Future<Output = RedisResult<Vec<StreamEntry>>> + Send + 'static {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(&self.queue.stream).arg(">");
        let mut reader = self.reader.clone();
        async move {
            let Read(entries) = read.query_async(&mut reader).await?;
            Ok(entries)
        }
    }

    /// Every half of `idle` (and at start): takes over up to `count` entries
    /// pending longer than `idle`, whose consumer is presumed dead. Empty
    /// when no scan is due.
    pub async fn reclaim_due(&mut self, idle: Duration, count: usize) -> RedisResult<Vec<Claimed>> {
        if Instant::now() < self.next_reclaim {
            return Ok(Vec::new());
        }
        let (claimed, lost) = self.reclaim(idle, count).await?;
        if !lost.is_empty() {
            tracing::warn!(
                stream = %self.queue.stream,
                ids = ?lost,
                "{} pending entries were deleted from the stream before they were handled \
                 (trimmed by a producer's MAXLEN?)",
                lost.len()
            );
        }
        // A full batch means there may be more: scan again at once.
        if claimed.len() < count {
            self.next_reclaim = Instant::now() + idle / 2;
        }
        if !claimed.is_empty() {
            tracing::info!(
                stream = %self.queue.stream,
                "reclaimed {} entries left pending by a stopped consumer",
                claimed.len()
            );
        }
        Ok(claimed)
    }

    /// The ids of the oldest `count` entries pending in the group up to
    /// `last` (included), whoever holds them, oldest first: what the
    /// group has read and not yet acknowledged.
    pub async fn pending_up_to(&mut self, last: &str, count: usize) -> RedisResult<Vec<String>> {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg("-")
            .arg(last)
            .arg(count)
            .query_async(&mut self.commands)
            .await?;
        Ok(pending.into_iter().map(|(id, ..)| id).collect())
    }

    /// Reclaims entries idle for `idle` now, without waiting for the next
    /// scan: for a caller that knows one is due.
    pub async fn reclaim_now(&mut self, idle: Duration, count: usize) -> RedisResult<Vec<Claimed>> {
        self.next_reclaim = Instant::now();
        self.reclaim_due(idle, count).await
    }

    /// How long until the next reclaim scan is due.
    pub fn until_reclaim(&self) -> Duration {
        self.next_reclaim.saturating_duration_since(Instant::now())
    }

    /// Takes over up to `count` entries that have been pending longer than
    /// `min_idle`. Returns the entries and the ids that were pending but
    /// whose entry no longer exists.
    async fn reclaim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> RedisResult<(Vec<Claimed>, Vec<String>)> {
        let AutoClaimed {
            cursor,
            entries,
            deleted,
        } = redis::cmd("XAUTOCLAIM")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands)
            .await?;
        self.cursor = cursor;
        let entries: Vec<StreamEntry> = entries
            .into_iter()
            .filter(|e| !e.fields.is_empty())
            .collect();
        let counts = self.delivery_counts(&entries).await?;
        let claimed = entries
            .into_iter()
            .zip(counts)
            .map(|(entry, deliveries)| Claimed { entry, deliveries })
            .collect();
        Ok((claimed, deleted))
    }

    async fn delivery_counts(&mut self, entries: &[StreamEntry]) -> RedisResult<Vec<u32>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XPENDING")
                .arg(&self.queue.stream)
                .arg(&self.queue.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u64)>> =
            pipe.query_async(&mut self.commands).await?;
        Ok(replies
            .into_iter()
            .map(|r| r.first().map_or(1, |(_, _, _, n)| *n as u32))
            .collect())
    }

    /// Claims `ids` for another attempt: bumps their delivery count and
    /// returns those still pending.
    pub async fn claim(&mut self, ids: &[String]) -> RedisResult<Vec<StreamEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<StreamEntry> = redis::cmd("XCLAIM")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .query_async(&mut self.commands)
            .await?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.fields.is_empty())
            .collect())
    }

    /// Every few seconds (half of `idle`): reads the depth of the DLQ (a
    /// metric), trims the stream to about `keep` entries (never
    /// past what a group still needs; 0 keeps all) and forgets consumers of
    /// the group that hold nothing and have been idle past `idle`: processes
    /// that are gone.
    pub async fn tidy(&mut self, keep: usize, idle: Duration) -> RedisResult<()> {
        if Instant::now() < self.next_tidy {
            return Ok(());
        }
        self.next_tidy = Instant::now() + (idle / 2).clamp(TIDY_EVERY.0, TIDY_EVERY.1);
        if keep > 0 {
            let removed = scripts::trim(&mut self.commands, &self.queue.stream, keep).await?;
            if removed > 0 {
                tracing::debug!(stream = %self.queue.stream, "trimmed {removed} acknowledged entries");
            }
        }
        let depth: u64 = redis::cmd("XLEN")
            .arg(&self.queue.dlq)
            .query_async(&mut self.commands)
            .await?;
        crate::telemetry::metrics::dlq_depth(&self.queue.dlq, depth);
        let consumers: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .query_async(&mut self.commands)
            .await?;
        for gone in consumers.consumers.iter().filter(|c| {
            c.name != self.consumer && c.pending == 0 && c.idle as u128 > idle.as_millis() * 2
        }) {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.queue.stream)
                .arg(&self.queue.group)
                .arg(&gone.name)
                .query_async::<Value>(&mut self.commands)
                .await?;
            tracing::debug!(stream = %self.queue.stream, consumer = %gone.name, "forgot a consumer that is gone");
        }
        Ok(())
    }

    /// Resets the idle time of `ids` without counting a delivery, so entries
    /// still being worked on are not taken for abandoned. The future owns
    /// what it needs: a caller runs it beside the work it renews, never
    /// in its way (Redis may take long to answer).
    pub fn renew(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = RedisResult<()>> + Send + 'static {
        let mut claim = redis::cmd("XCLAIM");
        claim
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID");
        let mut conn = self.commands.clone();
        let empty = ids.is_empty();
        async move {
            if empty {
                return Ok(());
            }
            claim.query_async::<Value>(&mut conn).await.map(drop)
        }
    }
}

/// What Redis says of `group` on `stream`: its pending count, lag...;
/// `None` if the stream or the group does not exist.
pub async fn group_info(
    conn: &mut RedisConn,
    stream: &str,
    group: &str,
) -> RedisResult<Option<redis::streams::StreamInfoGroup>> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(None);
    }
    let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    Ok(reply.groups.into_iter().find(|g| g.name == group))
}

/// The entries of an `XREADGROUP` reply (of one stream; nil when none).
struct Read(Vec<StreamEntry>);

impl FromRedisValue for Read {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let lists: Vec<Value> = match value {
            Value::Nil => return Ok(Read(Vec::new())),
            Value::Map(streams) => streams.into_iter().map(|(_, list)| list).collect(),
            Value::Array(streams) => streams
                .into_iter()
                .map(|stream| match stream {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        Ok(pair.pop().unwrap_or(Value::Nil))
                    }
                    _ => Err(ParsingError::from(
                        "stream reply is not a [name, entries] pair",
                    )),
                })
                .collect::<Result<_, _>>()?,
            other => return Err(format!("unexpected stream reply {other:?}").into()),
        };
        let mut entries = Vec::new();
        for list in lists {
            entries.extend(entry::list(list)?);
        }
        Ok(Read(entries))
    }
}

/// An `XAUTOCLAIM` reply: the next cursor, the claimed entries and the ids
/// that were pending but no longer exist in the stream.
struct AutoClaimed {
    cursor: String,
    entries: Vec<StreamEntry>,
    deleted: Vec<String>,
}

impl FromRedisValue for AutoClaimed {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let Value::Array(parts) = value else {
            return Err("XAUTOCLAIM reply is not an array".into());
        };
        let mut parts = parts.into_iter();
        let cursor = parts
            .next()
            .and_then(text)
            .ok_or("XAUTOCLAIM reply has no cursor")?;
        let entries = entry::list(parts.next().unwrap_or(Value::Nil))?;
        let deleted = match parts.next() {
            Some(Value::Array(ids)) => ids.into_iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        Ok(AutoClaimed {
            cursor,
            entries,
            deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_into_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"events:all".to_vec()),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"1-1".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"data".to_vec()),
                    Value::BulkString(b"{}".to_vec()),
                ]),
            ])]),
        ])]);
        let Read(entries) = Read::from_redis_value(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-1");
        assert_eq!(entries[0].data(), Some(&b"{}"[..]));
        assert!(Read::from_redis_value(Value::Nil).unwrap().0.is_empty());
        assert!(Read::from_redis_value(Value::Int(3)).is_err());
    }

    #[test]
    fn a_claim_reports_deleted_entries() {
        let reply = Value::Array(vec![
            Value::BulkString(b"0-0".to_vec()),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"2-0".to_vec()),
                Value::Nil,
            ])]),
            Value::Array(vec![Value::BulkString(b"1-0".to_vec())]),
        ]);
        let claimed = AutoClaimed::from_redis_value(reply).unwrap();
        assert_eq!(claimed.cursor, "0-0");
        assert_eq!(claimed.entries[0].fields, vec![]);
        assert_eq!(claimed.deleted, ["1-0"]);
    }
}
