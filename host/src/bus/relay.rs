//! On a Redis Cluster: the events a subscriber's handlers published, moved
//! from its outbox to the ingress.
//!
//! A commit is one script on one shard, and the ingress partitions live on
//! others; so a commit writes what its handler published to the
//! subscriber's outbox (`events:outbox:{<name>}`, in its slot), atomically
//! with the acknowledgement, and this loop relays each entry to the
//! partition its event id picks, then acknowledges and deletes it. A crash
//! between the two relays an entry twice: both copies carry the same
//! event id (a handler's publishes get ids derived from the delivery), so
//! the fan-out drops the second one (`scripts/copy.lua`). Published events
//! are therefore committed with the delivery that made them, delivered at
//! least once, and their effects downstream happen once.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use super::connection::{RedisConn, Replicas};
use super::entry::StreamEntry;
use super::group::GroupConsumer;
use super::keys::{Keys, QueueKeys};
use super::leanmq;
use super::worker::{self, Patience, Round, Worker};
use super::BLOCK;
use crate::config::BusConfig;

/// The relay of one subscriber's outbox in this process.
pub struct Relay {
    /// `relay <subscriber>`, for logs.
    name: String,
    group: GroupConsumer,
    keys: Keys,
    replicas: Replicas,
    bus: BusConfig,
    stop: CancellationToken,
}

impl Relay {
    /// A relay reading an outbox through `group`, until `stop` fires (then
    /// it relays what the outbox holds and ends).
    pub(super) fn new(
        subscriber: &str,
        group: GroupConsumer,
        keys: Keys,
        replicas: Replicas,
        bus: BusConfig,
        stop: CancellationToken,
    ) -> Self {
        Relay {
            name: format!("relay {subscriber}"),
            group,
            keys,
            replicas,
            bus,
            stop,
        }
    }

    /// Relays until stopped; Redis errors are retried with backoff.
    pub async fn run(self) {
        tracing::debug!(stream = %self.group.queue().stream, "outbox relay started");
        let stop = self.stop.clone();
        worker::run(self, stop).await;
    }

    /// Relays `entries` (all from the outbox): to their partitions, then
    /// acknowledged and deleted from the outbox.
    async fn relay(&mut self, entries: &[StreamEntry]) -> RedisResult<()> {
        let mut by_partition: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
        for entry in entries {
            let Some(data) = entry.data() else {
                tracing::warn!(stream_id = %entry.id, "{}: an outbox entry without data; dropped", self.name);
                continue;
            };
            // Written by a commit, so it has an id; if not (or it is not
            // ours: anyone can write to Redis), any partition will do, and
            // the fan-out judges the entry. Read within the payload limit:
            // a huge entry written there is not parsed whole.
            let event_id = leanmq::routing(entry, self.bus.max_payload_bytes)
                .ok()
                .and_then(|routing| routing.id())
                .unwrap_or_else(|| entry.id.clone());
            let partition: QueueKeys = self.keys.ingress_for(&event_id);
            by_partition.entry(partition.stream).or_default().push(data);
        }
        let outbox = self.group.queue().clone();
        let mut conn = self.group.commands().clone();
        let mut patience = Patience::new(&self.name, &self.stop);
        loop {
            match write(&conn, self.replicas, &by_partition).await {
                Ok(()) => break,
                Err(err) => patience.failed(err).await?,
            }
        }
        super::crash::here(super::crash::Point::RelayAfterPublish);
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut done = redis::pipe();
        done.cmd("XACK")
            .arg(&outbox.stream)
            .arg(&outbox.group)
            .arg(&ids)
            .ignore()
            .cmd("XDEL")
            .arg(&outbox.stream)
            .arg(&ids)
            .ignore();
        loop {
            match done.query_async::<()>(&mut conn).await {
                Ok(()) => return Ok(()),
                Err(err) => patience.failed(err).await?,
            }
        }
    }
}

/// Every partition's share, at once; each on enough replicas, if asked.
async fn write(
    conn: &RedisConn,
    replicas: Replicas,
    by_partition: &BTreeMap<String, Vec<&[u8]>>,
) -> RedisResult<()> {
    {
        let writes = by_partition.iter().map(|(stream, events)| {
            let mut conn = conn.clone();
            let mut pipe = redis::pipe();
            for data in events {
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("data")
                    .arg(*data)
                    .ignore();
            }
            async move {
                pipe.query_async::<()>(&mut conn).await?;
                replicas.wait(&mut conn, stream).await
            }
        });
        futures_util::future::try_join_all(writes).await.map(drop)
    }
}

#[async_trait]
impl Worker for Relay {
    fn name(&self) -> &str {
        &self.name
    }

    fn group(&mut self) -> &mut GroupConsumer {
        &mut self.group
    }

    async fn step(&mut self, stopping: bool) -> RedisResult<Round> {
        let mut entries: Vec<StreamEntry> = Vec::new();
        if !stopping {
            let claimed = self
                .group
                .reclaim_due(self.bus.claim_idle, self.bus.read_batch)
                .await?;
            entries.extend(claimed.into_iter().map(|c| c.entry));
        }
        if entries.is_empty() {
            // While stopping: what the outbox holds now, without waiting.
            let block = (!stopping).then(|| {
                BLOCK
                    .min(self.group.until_reclaim())
                    .max(std::time::Duration::from_millis(1))
            });
            entries = self.group.read_new(self.bus.read_batch, block).await?;
        }
        if entries.is_empty() {
            return Ok(if stopping {
                Round::Done
            } else {
                Round::Continue
            });
        }
        self.relay(&entries).await?;
        Ok(Round::Continue)
    }
}
