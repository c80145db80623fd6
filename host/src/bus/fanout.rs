//! The fan-out loop: `events:all` → one stream per subscriber, by type.
//!
//! Each batch read from `events:all` becomes one script call that copies
//! every entry to the streams of its subscribers and acknowledges it, or
//! moves it to `events:all:dlq` when it cannot be routed. A type nobody
//! subscribes to is acknowledged and counted, never left pending.
//!
//! On a Redis Cluster one fan-out runs per ingress partition, and a
//! subscriber's stream lives on another shard than the partition: each
//! batch is first copied, one script call per subscriber (which drops an
//! event copied to it lately, see `scripts/copy.lua`), then, once every copy
//! is written (and on enough replicas, if asked), acknowledged on the
//! partition. A crash between the two copies the batch again, harmlessly.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use super::connection::Replicas;
use super::entry::StreamEntry;
use super::group::GroupConsumer;
use super::leanmq::{self, DeadLetterer};
use super::routes::{RouteTable, Routes};
use super::scripts::{Copied, CopyBatch, FanoutBatch, FanoutKeys, Routed, Target};
use super::worker::{self, Patience, Round, Worker};
use super::BLOCK;
use crate::config::BusConfig;
use crate::telemetry::metrics;

/// How often a fan-out waiting for an older batch to be routed looks again,
/// and how often it looks for a dead host's batch to take over meanwhile.
const ORDER_POLL: Duration = Duration::from_millis(2);
const ORDER_RECLAIM: Duration = Duration::from_millis(100);

/// A stream id as numbers, to compare: `<ms>-<seq>`.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// An entry of `events:all` delivered this often without being routed is
/// dead-lettered: something keeps failing the batch it is in.
const MAX_FANOUT_DELIVERIES: u32 = 5;

/// The fan-out loop of one process.
pub struct Fanout {
    group: GroupConsumer,
    /// New entries read while the last batch was being applied.
    prefetched: Vec<StreamEntry>,
    /// Entries of the last batch held back behind an older one another
    /// consumer holds (order per key), with their deliveries: next.
    held_back: Vec<(StreamEntry, u32)>,
    routes: RouteTable,
    bus: BusConfig,
    /// On a Redis Cluster: how copies are made durable before the ingress
    /// entry is acknowledged.
    cluster: Option<Replicas>,
    shutdown: CancellationToken,
}

impl Fanout {
    /// A fan-out reading `events:all` through `group`, routing by `routes`.
    /// `cluster`: on a Redis Cluster, with the replicas to wait for.
    pub(super) fn new(
        group: GroupConsumer,
        routes: RouteTable,
        bus: BusConfig,
        cluster: Option<Replicas>,
        shutdown: CancellationToken,
    ) -> Self {
        Fanout {
            group,
            prefetched: Vec::new(),
            held_back: Vec::new(),
            routes,
            bus,
            cluster,
            shutdown,
        }
    }

    /// Routes until shutdown; Redis errors are retried with backoff.
    pub async fn run(self) {
        tracing::info!(stream = %self.group.queue().stream, "fan-out started");
        let shutdown = self.shutdown.clone();
        worker::run(self, shutdown).await;
        tracing::info!("fan-out stopped");
    }

    /// One batch: reclaimed entries first, else new ones. While stopping,
    /// only what was already read is routed.
    async fn route_batch(&mut self, stopping: bool) -> RedisResult<()> {
        let mut work: Vec<(StreamEntry, u32)> = std::mem::take(&mut self.held_back);
        if work.is_empty() && !stopping {
            let claimed = self
                .group
                .reclaim_due(self.bus.claim_idle, self.bus.read_batch)
                .await?;
            work.extend(claimed.into_iter().map(|c| (c.entry, c.deliveries)));
        }
        if work.is_empty() {
            let mut entries = std::mem::take(&mut self.prefetched);
            if entries.is_empty() && !stopping {
                let block = BLOCK.min(self.group.until_reclaim());
                entries = self
                    .group
                    .read_new(
                        self.bus.read_batch,
                        Some(block.max(Duration::from_millis(1))),
                    )
                    .await?;
                self.group.shed(&entries).await;
            }
            work.extend(entries.into_iter().map(|e| (e, 1)));
        }
        if !work.is_empty() {
            let held = self.routes.hold().await;
            if held.routes.keeps_order() && !self.older_routed(&mut work, stopping).await? {
                return Ok(());
            }
            let (mut batch, copies) = self.plan(&work, &held.routes);
            if !copies.is_empty() {
                self.copy(&mut batch, &copies, &work).await?;
                super::crash::here(super::crash::Point::FanoutAfterCopy);
            }
            let routes = &held.routes;
            let (streams, held_sets, lists): (&[String], &[String], &[String]) =
                if self.cluster.is_some() {
                    (&[], &[], &[])
                } else {
                    (&routes.streams, &routes.held, &routes.lists)
                };
            let queue = self.group.queue().clone();
            let keys = FanoutKeys {
                all: &queue.stream,
                all_dlq: &queue.dlq,
                streams,
                held: held_sets,
                lists,
            };
            if stopping || work.len() < self.bus.read_batch {
                self.apply(&batch, &keys, &work).await?;
            } else {
                // A full batch: there is a backlog. Read the next batch while
                // this one is applied, so Redis and the host work at the same
                // time instead of taking turns. What is read here is applied
                // strictly after this batch, so order is kept; if anything
                // fails it stays pending and is reclaimed.
                let next = self.group.read_new(self.bus.read_batch, None);
                let (applied, next) = tokio::join!(self.apply(&batch, &keys, &work), next);
                self.prefetched = next.unwrap_or_default();
                self.group.shed(&self.prefetched).await;
                applied?;
            }
        }
        self.group
            .tidy(self.bus.stream_maxlen, self.bus.claim_idle)
            .await
    }

    /// With a subscriber that keeps order per key, an entry is routed only
    /// once every older entry of the stream is: the events of a key reach
    /// their subscriber in the order they were published, whichever host
    /// read them. `work` keeps what is older than the oldest entry another
    /// consumer holds (a batch read at once has no gap; one with reclaimed
    /// entries may): the rest is held back for the next round. With
    /// nothing to route yet, waits while another host routes an older
    /// batch; one left by a dead host is reclaimed (once idle for
    /// `claim_idle_ms`) and joins `work`. Whether to go on: not if stopping
    /// (what is held stays pending, for whoever comes next).
    async fn older_routed(
        &mut self,
        work: &mut Vec<(StreamEntry, u32)>,
        stopping: bool,
    ) -> RedisResult<bool> {
        let mut waited = Duration::ZERO;
        loop {
            let last = work.last().expect("a batch").0.id.clone();
            let pending = self.group.pending_up_to(&last, work.len() + 1).await?;
            let mine: HashSet<&str> = work.iter().map(|(e, _)| e.id.as_str()).collect();
            let Some(oldest) = pending.into_iter().find(|id| !mine.contains(id.as_str())) else {
                return Ok(true);
            };
            let older = work.partition_point(|(e, _)| stream_id(&e.id) < stream_id(&oldest));
            if older > 0 {
                self.held_back = work.split_off(older);
                return Ok(true);
            }
            if stopping || self.shutdown.is_cancelled() {
                return Ok(false);
            }
            // Idle long enough to be a dead host's: take it, and route it
            // first. Looked for every ORDER_RECLAIM, not every poll.
            let claimed = if waited.as_millis().is_multiple_of(ORDER_RECLAIM.as_millis()) {
                self.group
                    .reclaim_now(self.bus.claim_idle, self.bus.read_batch)
                    .await?
            } else {
                Vec::new()
            };
            if claimed.is_empty() {
                if waited == self.bus.claim_idle {
                    tracing::info!(
                        stream = %self.group.queue().stream,
                        oldest,
                        "waiting for an older batch to be routed first (order per key): \
                         its host is slow, or died and it is reclaimed once idle for \
                         claim_idle_ms"
                    );
                }
                tokio::time::sleep(ORDER_POLL).await;
                waited += ORDER_POLL;
                continue;
            }
            let ids: Vec<String> = work.iter().map(|(e, _)| e.id.clone()).collect();
            work.extend(
                claimed
                    .into_iter()
                    .filter(|c| !ids.contains(&c.entry.id))
                    .map(|c| (c.entry, c.deliveries)),
            );
            work.sort_by_key(|(entry, _)| stream_id(&entry.id));
        }
    }

    /// Decides where each entry goes: the batch for the ingress stream,
    /// and on a cluster the copies, one batch per subscriber (the ingress
    /// batch then only acknowledges what is copied).
    fn plan(&self, work: &[(StreamEntry, u32)], routes: &Routes) -> (FanoutBatch, Vec<CopyBatch>) {
        let queue = self.group.queue();
        let mut batch = FanoutBatch::new(&queue.group);
        let mut copies: Vec<CopyBatch> = match self.cluster {
            Some(_) => routes
                .streams
                .iter()
                .zip(&routes.seen)
                .zip(&routes.order)
                .map(|((stream, seen), (order, _))| CopyBatch::new(stream, seen, order))
                .collect(),
            None => Vec::new(),
        };
        let now = crate::handler::unix_now();
        let letters = self.letters();
        for (entry, deliveries) in work {
            let dead = |kind: &str, reason: String| {
                metrics::fanout_dead_lettered();
                tracing::warn!(stream_id = %entry.id, kind, "{reason}; moved to {}", queue.dlq);
                letters.letter(entry, kind, &reason, *deliveries, now)
            };
            if *deliveries > MAX_FANOUT_DELIVERIES {
                let payload = dead(
                    "abandoned",
                    format!("fan-out: could not be routed after {deliveries} deliveries"),
                );
                batch.dead_letter(&entry.id, payload);
                continue;
            }
            match leanmq::routing(entry, self.bus.max_payload_bytes) {
                Ok(routing) => {
                    let event_type = &routing.event_type;
                    let targets = routes.targets(event_type);
                    if targets.is_empty() {
                        metrics::fanout_unrouted();
                        tracing::debug!(stream_id = %entry.id, event_type, "no subscriber for this type");
                    } else {
                        metrics::fanout_routed(targets.len());
                    }
                    // Each ordering subscriber's key: an event without one
                    // goes unordered (its subscriber may refuse it).
                    let keys: Vec<Option<String>> = targets
                        .iter()
                        .map(|&t| routes.order[t].1.as_ref().and_then(|o| routing.key(o)))
                        .collect();
                    let data = entry.data().unwrap_or_default();
                    if copies.is_empty() {
                        let to: Vec<Target<'_>> = targets
                            .iter()
                            .zip(&keys)
                            .map(|(&stream, key)| Target {
                                stream,
                                key: key.as_deref(),
                            })
                            .collect();
                        batch.route(&entry.id, &to, data);
                        continue;
                    }
                    // Without an id of its own, an entry is known by where
                    // it sits: a repeated copy of it is still dropped.
                    let known_as = routing
                        .id()
                        .unwrap_or_else(|| format!("{}/{}", queue.stream, entry.id));
                    for (&t, key) in targets.iter().zip(&keys) {
                        copies[t].copy(&entry.id, &known_as, data, key.as_deref());
                    }
                    batch.route(&entry.id, &[], b"");
                }
                Err(malformed) => {
                    let payload = dead(
                        "malformed",
                        format!("fan-out: cannot route entry: {malformed}"),
                    );
                    batch.dead_letter(&entry.id, payload);
                }
            }
        }
        copies.retain(|c| !c.is_empty());
        (batch, copies)
    }

    /// On a cluster: writes every copy, each subscriber's batch in one
    /// script call on its shard, all at once; waits for the replicas asked
    /// for; an entry Redis refused to copy is dead-lettered instead of
    /// acknowledged. Repeated until it works (a repeat copies nothing twice).
    async fn copy(
        &mut self,
        batch: &mut FanoutBatch,
        copies: &[CopyBatch],
        work: &[(StreamEntry, u32)],
    ) -> RedisResult<()> {
        let replicas = self.cluster.unwrap_or(Replicas::NONE);
        let window = self.bus.dedupe_window;
        let mut patience = Patience::new("fan-out", &self.shutdown);
        let copied = loop {
            let conn = self.group.commands().clone();
            let writes = copies.iter().map(|copy| {
                let mut conn = conn.clone();
                async move {
                    let copied = copy.apply(&mut conn, window).await?;
                    replicas.wait(&mut conn, copy.stream()).await?;
                    Ok::<_, redis::RedisError>((copy.stream(), copied))
                }
            });
            match futures_util::future::try_join_all(writes).await {
                Ok(copied) => break copied,
                Err(err) => patience.failed(err).await?,
            }
        };
        let now = crate::handler::unix_now();
        for (
            stream,
            Copied {
                dropped,
                reused,
                refused,
            },
        ) in copied
        {
            if dropped > 0 {
                metrics::fanout_copies_dropped(dropped);
                tracing::info!(
                    stream,
                    "fan-out dropped {dropped} copies {stream} already had (a batch routed again)"
                );
            }
            if reused > 0 {
                metrics::fanout_ids_reused(reused);
                tracing::warn!(
                    stream,
                    "fan-out copied {reused} events to {stream} whose id it copied lately with \
                     other content: a producer reuses or forges event ids"
                );
            }
            let what = format!("fan-out: Redis refused to copy the entry to {stream}");
            for q in self.quarantine(&refused, &what, work, now) {
                tracing::error!(stream_id = %q.id, "{}; dead-lettered", q.reason);
                batch.dead_letter_instead(q.id, q.payload);
            }
        }
        Ok(())
    }

    /// How the fan-out dead-letters: no subscriber, its size limit.
    fn letters(&self) -> DeadLetterer<'static> {
        DeadLetterer::fanout(self.bus.max_payload_bytes)
    }

    /// The dead letters of the entries of `work` Redis `refused` to write
    /// (`what` it refused), counted.
    fn quarantine<'r>(
        &self,
        refused: &'r [(String, String)],
        what: &str,
        work: &[(StreamEntry, u32)],
        now: f64,
    ) -> Vec<leanmq::Quarantined<'r>> {
        let find = |id: &str| work.iter().find(|(e, _)| e.id == id).map(|(e, d)| (e, *d));
        let quarantined = self.letters().quarantine(refused, what, now, find);
        for _ in &quarantined {
            metrics::fanout_dead_lettered();
        }
        quarantined
    }

    /// Applies a batch, with the loops' give-up policy. An entry whose
    /// record Redis refuses on its own, for a reason that will not change,
    /// is quarantined: acknowledged and dead-lettered with Redis's reason,
    /// so it cannot hold back the entries after it.
    async fn apply(
        &mut self,
        batch: &FanoutBatch,
        keys: &FanoutKeys<'_>,
        work: &[(StreamEntry, u32)],
    ) -> RedisResult<()> {
        let routed = self.apply_once(batch, keys).await?;
        if routed.skipped > 0 {
            tracing::info!(
                "fan-out skipped {} entries another consumer had already routed",
                routed.skipped
            );
        }
        if routed.refused.is_empty() {
            return Ok(());
        }
        let queue = self.group.queue().clone();
        let mut quarantine = FanoutBatch::new(&queue.group);
        let what = "fan-out: Redis refused to route the entry";
        let now = crate::handler::unix_now();
        for q in self.quarantine(&routed.refused, what, work, now) {
            tracing::error!(stream_id = %q.id, "{}; quarantined in {}", q.reason, queue.dlq);
            quarantine.dead_letter(q.id, q.payload);
        }
        let routed = self.apply_once(&quarantine, keys).await?;
        for (id, err) in routed.refused {
            tracing::error!(
                stream_id = %id,
                "Redis refused its quarantine too ({err}); it stays pending"
            );
        }
        Ok(())
    }

    async fn apply_once(
        &mut self,
        batch: &FanoutBatch,
        keys: &FanoutKeys<'_>,
    ) -> RedisResult<Routed> {
        let mut patience = Patience::new("fan-out", &self.shutdown);
        loop {
            let commands = self.group.commands();
            match batch.apply(commands, keys).await {
                Ok(routed) => return Ok(routed),
                Err(err) => patience.failed(err).await?,
            }
        }
    }
}

#[async_trait]
impl Worker for Fanout {
    fn name(&self) -> &str {
        "fan-out"
    }

    fn group(&mut self) -> &mut GroupConsumer {
        &mut self.group
    }

    async fn step(&mut self, stopping: bool) -> RedisResult<Round> {
        if stopping && self.prefetched.is_empty() {
            return Ok(Round::Done);
        }
        self.route_batch(stopping).await?;
        Ok(Round::Continue)
    }
}
