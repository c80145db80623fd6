//! The fan-out loop: `events:all` → one stream per subscriber, by type.
//!
//! Each batch read from `events:all` becomes one script call that copies
//! every entry to the streams of its subscribers and acknowledges it, or
//! moves it to `events:all:dlq` when it cannot be routed. A type nobody
//! subscribes to is acknowledged and counted, never left pending.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use super::connection::{is_nogroup, Backoff};
use super::entry::{self, FailureRecord, StreamEntry};
use super::group::GroupConsumer;
use super::keys::Keys;
use super::scripts::FanoutBatch;
use super::BLOCK;
use crate::config::{BusConfig, EventFilter};
use crate::telemetry::metrics;

/// An entry of `events:all` delivered this often without being routed is
/// dead-lettered: something keeps failing the batch it is in.
const MAX_FANOUT_DELIVERIES: u32 = 5;

/// Which subscriber streams each event type goes to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Routes {
    /// The subscriber streams; targets are indexes into this list.
    pub streams: Vec<String>,
    by_type: HashMap<String, Vec<usize>>,
    /// Subscribers of every type: the targets of a type nobody names.
    everything: Vec<usize>,
}

impl Routes {
    /// Routes for `subscribers` (name and filter) under `keys`.
    pub fn new<'a>(
        keys: &Keys,
        subscribers: impl IntoIterator<Item = (&'a str, &'a EventFilter)>,
    ) -> Self {
        let mut routes = Routes::default();
        let mut named: Vec<(&str, usize)> = Vec::new();
        for (i, (name, filter)) in subscribers.into_iter().enumerate() {
            routes.streams.push(keys.subscriber(name).stream);
            match filter {
                EventFilter::All => routes.everything.push(i),
                EventFilter::Types(types) => named.extend(types.iter().map(|t| (t.as_str(), i))),
            }
        }
        for (event_type, i) in named {
            routes
                .by_type
                .entry(event_type.to_string())
                .or_insert_with(|| routes.everything.clone())
                .push(i);
        }
        for targets in routes.by_type.values_mut() {
            targets.sort_unstable();
            targets.dedup();
        }
        routes
    }

    /// The streams (as indexes) an event of `event_type` is copied to.
    pub fn targets(&self, event_type: &str) -> &[usize] {
        self.by_type.get(event_type).unwrap_or(&self.everything)
    }
}

/// The routing table the fan-out reads, shared with whoever changes it.
#[derive(Clone, Default)]
pub struct RouteTable {
    current: Arc<ArcSwap<Routes>>,
    /// Read-held by the fan-out from planning a batch until it is written.
    in_use: Arc<RwLock<()>>,
}

impl RouteTable {
    /// Replaces the table; returns once no batch routed by the old one is
    /// still being written, so a subscriber no longer routed to receives
    /// nothing more from this process.
    pub async fn replace(&self, routes: Routes) {
        self.current.store(Arc::new(routes));
        drop(self.in_use.write().await);
    }

    /// The current table, held for one batch. Held before it is read, so a
    /// [`replace`](Self::replace) either waits for this batch or is seen
    /// by it.
    async fn hold(&self) -> HeldRoutes {
        let in_use = self.in_use.clone().read_owned().await;
        HeldRoutes {
            routes: self.current.load_full(),
            _in_use: in_use,
        }
    }
}

/// A routing table in use by one batch, until the batch is written.
struct HeldRoutes {
    routes: Arc<Routes>,
    _in_use: OwnedRwLockReadGuard<()>,
}

/// The fan-out loop of one process.
pub struct Fanout {
    group: GroupConsumer,
    /// New entries read while the last batch was being applied.
    prefetched: Vec<StreamEntry>,
    routes: RouteTable,
    bus: BusConfig,
    shutdown: CancellationToken,
}

impl Fanout {
    /// A fan-out reading `events:all` through `group`, routing by `routes`.
    pub(super) fn new(
        group: GroupConsumer,
        routes: RouteTable,
        bus: BusConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Fanout {
            group,
            prefetched: Vec::new(),
            routes,
            bus,
            shutdown,
        }
    }

    /// Routes until shutdown; Redis errors are retried with backoff.
    pub async fn run(mut self) {
        tracing::info!(stream = %self.group.queue().stream, "fan-out started");
        let mut backoff = Backoff::default();
        loop {
            let stopping = self.shutdown.is_cancelled();
            if stopping && self.prefetched.is_empty() {
                break;
            }
            match self.step(stopping).await {
                Ok(()) => backoff.reset(),
                Err(err) if stopping => {
                    tracing::warn!(
                        "fan-out: stopping before the last entries read were routed ({err}); \
                         they stay pending and are reclaimed on the next start"
                    );
                    break;
                }
                Err(err) if is_nogroup(&err) => {
                    tracing::warn!(
                        "the group of {} is gone; recreating it",
                        self.group.queue().stream
                    );
                    if let Err(err) = self.group.recreate().await {
                        tracing::warn!("cannot recreate it yet: {err}");
                        backoff.wait(&self.shutdown).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        "fan-out: Redis error ({err}); retrying in {:?}",
                        backoff.peek()
                    );
                    backoff.wait(&self.shutdown).await;
                }
            }
        }
        tracing::info!("fan-out stopped");
    }

    /// One batch: reclaimed entries first, else new ones. While stopping,
    /// only what was already read is routed.
    async fn step(&mut self, stopping: bool) -> redis::RedisResult<()> {
        let mut work: Vec<(StreamEntry, u32)> = Vec::new();
        if !stopping {
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
            }
            work.extend(entries.into_iter().map(|e| (e, 1)));
        }
        if !work.is_empty() {
            let held = self.routes.hold().await;
            let batch = self.plan(&work, &held.routes);
            let streams = &held.routes.streams;
            if stopping || work.len() < self.bus.read_batch {
                self.apply(&batch, streams).await?;
            } else {
                // A full batch: there is a backlog. Read the next batch while
                // this one is applied, so Redis and the host work at the same
                // time instead of taking turns. What is read here is applied
                // strictly after this batch, so order is kept; if anything
                // fails it stays pending and is reclaimed.
                let next = self.group.read_new(self.bus.read_batch, None);
                let (applied, next) = tokio::join!(self.apply(&batch, streams), next);
                self.prefetched = next.unwrap_or_default();
                applied?;
            }
        }
        self.group
            .tidy(self.bus.stream_maxlen, self.bus.claim_idle)
            .await
    }

    /// Decides where each entry goes.
    fn plan(&self, work: &[(StreamEntry, u32)], routes: &Routes) -> FanoutBatch {
        let queue = self.group.queue();
        let mut batch = FanoutBatch::new(&queue.group);
        let now = crate::handler::unix_now();
        for (entry, deliveries) in work {
            let dead = |reason: String| {
                metrics::fanout_dead_lettered();
                tracing::warn!(stream_id = %entry.id, "{reason}; moved to {}", queue.dlq);
                let record = FailureRecord {
                    timestamp: now,
                    reason: &reason,
                    kind: "malformed",
                    subscriber: None,
                    attempt: Some(*deliveries),
                };
                entry::dead_letter(entry, &record)
            };
            if *deliveries > MAX_FANOUT_DELIVERIES {
                let payload = dead(format!(
                    "fan-out: could not be routed after {deliveries} deliveries"
                ));
                batch.dead_letter(&entry.id, payload);
                continue;
            }
            match entry::event_type(entry, self.bus.max_payload_bytes) {
                Ok(event_type) => {
                    let targets = routes.targets(&event_type);
                    if targets.is_empty() {
                        metrics::fanout_unrouted();
                        tracing::debug!(stream_id = %entry.id, event_type, "no subscriber for this type");
                    } else {
                        metrics::fanout_routed(targets.len());
                    }
                    batch.route(&entry.id, targets, entry.data().unwrap_or_default());
                }
                Err(malformed) => {
                    let payload = dead(format!("fan-out: cannot route entry: {malformed}"));
                    batch.dead_letter(&entry.id, payload);
                }
            }
        }
        batch
    }

    /// Applies a batch; a lost connection is retried (the script is
    /// idempotent), anything else leaves the entries pending for reclaim.
    async fn apply(&mut self, batch: &FanoutBatch, streams: &[String]) -> redis::RedisResult<()> {
        let queue = self.group.queue().clone();
        let mut backoff = Backoff::default();
        loop {
            match batch
                .apply(self.group.commands(), &queue.stream, &queue.dlq, streams)
                .await
            {
                Ok(applied) => {
                    if applied.skipped > 0 {
                        tracing::info!(
                            "fan-out skipped {} entries another consumer had already routed",
                            applied.skipped
                        );
                    }
                    return Ok(());
                }
                Err(err)
                    if (err.is_io_error() || err.is_timeout() || err.is_connection_dropped())
                        && !self.shutdown.is_cancelled() =>
                {
                    tracing::warn!(
                        "fan-out: cannot commit a batch of {} ({err}); retrying",
                        batch.len()
                    );
                    backoff.wait(&self.shutdown).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> EventFilter {
        EventFilter::Types(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn routes_by_type_and_wildcard() {
        let keys = Keys::new("events:");
        let pay = types(&["OrderCreatedEvent"]);
        let ship = types(&["PaymentProcessedEvent"]);
        let order = types(&["PaymentProcessedEvent", "OrderShippedEvent"]);
        let notify = EventFilter::All;
        let routes = Routes::new(
            &keys,
            [
                ("pay", &pay),
                ("ship", &ship),
                ("order", &order),
                ("notify", &notify),
            ],
        );
        assert_eq!(routes.streams[0], "events:sub:pay");
        assert_eq!(routes.targets("OrderCreatedEvent"), &[0, 3]);
        assert_eq!(routes.targets("PaymentProcessedEvent"), &[1, 2, 3]);
        assert_eq!(routes.targets("OrderShippedEvent"), &[2, 3]);
        assert_eq!(routes.targets("SomethingElse"), &[3]);
        let none = Routes::new(&keys, [("pay", &pay)]);
        assert!(none.targets("Other").is_empty());
    }
}
