//! One consumer in one consumer group: the reads and claims both loops use.
//!
//! An entry is *pending* from the moment a read hands it to a consumer until
//! it is acknowledged. The group's pending list is the bus's memory across
//! crashes: an entry whose consumer died stays pending, goes idle, and is
//! reclaimed here by whoever runs next, with its delivery count as attempt.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::StreamInfoConsumersReply;
use redis::{ErrorKind, RedisError, RedisResult, Value};

use super::entry::{self, StreamEntry};
use super::keys::{Keys, QueueKeys};
use super::layout;
use super::scripts;

/// How often housekeeping runs at most: half the claim window, within these.
const TIDY_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));

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
    reader: ConnectionManager,
    commands: ConnectionManager,
    /// Where the next reclaim scan continues.
    cursor: String,
    /// When housekeeping is next due.
    next_tidy: Instant,
    /// When the next scan for abandoned entries is due.
    next_reclaim: Instant,
}

fn parse_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected stream reply", detail))
}

impl GroupConsumer {
    /// `reader` is used only for blocking reads; `commands` may be shared.
    pub fn new(
        keys: Keys,
        queue: QueueKeys,
        consumer: String,
        reader: ConnectionManager,
        commands: ConnectionManager,
    ) -> Self {
        GroupConsumer {
            keys,
            queue,
            consumer,
            reader,
            commands,
            cursor: "0-0".into(),
            next_tidy: Instant::now() + TIDY_EVERY.0,
            next_reclaim: Instant::now(),
        }
    }

    /// The stream, DLQ and groups this consumer works on.
    pub fn queue(&self) -> &QueueKeys {
        &self.queue
    }

    /// The shared connection, for commits.
    pub fn commands(&mut self) -> &mut ConnectionManager {
        &mut self.commands
    }

    /// Recreates the stream and group after Redis lost them.
    pub async fn recreate(&mut self) -> RedisResult<()> {
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
            let reply: Value = read.query_async(&mut reader).await?;
            entry::read_reply(reply).map_err(parse_error)
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
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands)
            .await?;
        let (cursor, entries, deleted) = entry::autoclaim_reply(reply).map_err(parse_error)?;
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
        let reply: Value = redis::cmd("XCLAIM")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .query_async(&mut self.commands)
            .await?;
        let entries = entry::entries(reply).map_err(parse_error)?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.fields.is_empty())
            .collect())
    }

    /// Every few seconds (half of `idle`): trims the stream to about `keep` entries (never
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
    /// still being worked on are not taken for abandoned.
    pub async fn renew(&mut self, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XCLAIM")
            .arg(&self.queue.stream)
            .arg(&self.queue.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async::<Value>(&mut self.commands)
            .await
            .map(drop)
    }
}
