//! A subscriber loop: its stream → its handler → one commit per batch.
//!
//! Per batch: take due retries, else entries left by a dead consumer, else
//! new entries; run them through the handler, at most `concurrency` at once;
//! then commit every result in one script call: acknowledgements with their
//! effects, and dead letters. A `retry` failure stays pending and is claimed
//! again after its backoff, which bumps its delivery count: the attempt
//! number survives a crash.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::{is_nogroup, Backoff};
use super::entry::{self, FailureRecord, StreamEntry};
use super::group::GroupConsumer;
use super::scripts::{CommitBatch, CommitKeys};
use super::BLOCK;
use crate::config::{BusConfig, SubscriberConfig};
use crate::handler::{Failure, FailureKind, Handler, Outcome, StateReader};
use crate::telemetry::metrics::SubscriberMetrics;

/// How often to look for new entries while a retry is about to be due.
const RETRY_POLL: Duration = Duration::from_millis(5);

/// A subscriber as the bus runs it: settings that may change live, and the
/// handler that runs its events.
pub struct Subscription {
    pub name: String,
    settings: ArcSwap<SubscriberConfig>,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
    /// Set when the subscriber is removed: handle what the stream holds,
    /// then stop.
    finishing: AtomicBool,
}

impl Subscription {
    /// A subscription whose loop stops when `stop` fires.
    pub fn new(
        settings: SubscriberConfig,
        handler: Arc<dyn Handler>,
        stop: CancellationToken,
    ) -> Self {
        Subscription {
            name: settings.name.clone(),
            settings: ArcSwap::from_pointee(settings),
            handler,
            stop,
            finishing: AtomicBool::new(false),
        }
    }

    /// The settings the next batch uses.
    pub fn settings(&self) -> Arc<SubscriberConfig> {
        self.settings.load_full()
    }

    /// Applies new settings from the next batch on.
    pub fn update(&self, settings: SubscriberConfig) {
        self.settings.store(Arc::new(settings));
    }

    /// Makes the loop finish its batch and stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Makes the loop handle every entry its stream holds, then stop: for
    /// a subscriber removed from the config, once nothing is routed to it.
    /// Events waiting for a retry stay pending, as with [`Self::stop`].
    pub fn finish(&self) {
        self.finishing.store(true, Ordering::Relaxed);
    }

    fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::Relaxed)
    }
}

/// An event waiting for its next attempt.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Retry {
    due: Instant,
    id: String,
    attempt: u32,
}

/// The loop of one subscriber in this process.
pub struct SubscriberLoop {
    subscription: Arc<Subscription>,
    group: GroupConsumer,
    state: Arc<dyn StateReader>,
    state_key: String,
    all_stream: String,
    bus: BusConfig,
    metrics: SubscriberMetrics,
    retries: BinaryHeap<Reverse<Retry>>,
}

/// One entry in hand, with the attempt it is on.
struct Work {
    entry: StreamEntry,
    attempt: u32,
}

impl SubscriberLoop {
    /// A loop for `subscription`, reading through `group`; its state hash
    /// is `state_key` and it publishes to `all_stream`.
    pub(super) fn new(
        subscription: Arc<Subscription>,
        group: GroupConsumer,
        state: Arc<dyn StateReader>,
        state_key: String,
        all_stream: String,
        bus: BusConfig,
    ) -> Self {
        let metrics = SubscriberMetrics::new(&subscription.name);
        SubscriberLoop {
            subscription,
            group,
            state,
            state_key,
            all_stream,
            bus,
            metrics,
            retries: BinaryHeap::new(),
        }
    }

    /// Handles events until the subscription stops; Redis errors are
    /// retried with backoff.
    pub async fn run(mut self) {
        let name = self.subscription.name.clone();
        tracing::info!(subscriber = %name, stream = %self.group.queue().stream, "subscriber started");
        let stop = self.subscription.stop.clone();
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            let finishing = self.subscription.is_finishing();
            match self.step(finishing).await {
                Ok(worked) => {
                    backoff.reset();
                    if finishing && !worked {
                        break;
                    }
                }
                Err(err) if is_nogroup(&err) => {
                    tracing::warn!(subscriber = %name, "the group of {} is gone; recreating it", self.group.queue().stream);
                    self.retries.clear();
                    if let Err(err) = self.group.recreate().await {
                        tracing::warn!(subscriber = %name, "cannot recreate it yet: {err}");
                        backoff.wait(&stop).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(subscriber = %name, "Redis error ({err}); retrying in {:?}", backoff.peek());
                    backoff.wait(&stop).await;
                }
            }
        }
        if !self.retries.is_empty() {
            tracing::info!(
                subscriber = %name,
                "stopping with {} events waiting to be retried; they stay pending and are reclaimed on the next start",
                self.retries.len()
            );
        }
        tracing::info!(subscriber = %name, "subscriber stopped");
    }

    /// One batch; returns whether there was any work. A `finishing` loop
    /// does not wait for new entries.
    async fn step(&mut self, finishing: bool) -> redis::RedisResult<bool> {
        let settings = self.subscription.settings();
        let work = self.next_work(finishing).await?;
        let worked = !work.is_empty();
        if worked {
            let (batch, handled) = self.process(&settings, work).await?;
            self.commit(&batch).await?;
            self.metrics.handled.increment(handled.len() as u64);
            let now = crate::handler::unix_now();
            for published in handled.into_iter().flatten() {
                self.metrics.latency.record((now - published).max(0.0));
            }
        }
        self.group
            .tidy(self.bus.stream_maxlen, self.bus.claim_idle)
            .await?;
        Ok(worked)
    }

    /// Due retries first, then abandoned entries, then new ones.
    async fn next_work(&mut self, finishing: bool) -> redis::RedisResult<Vec<Work>> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse(retry)) = self.retries.peek() {
            if retry.due > now || due.len() >= self.bus.read_batch {
                break;
            }
            let Reverse(retry) = self.retries.pop().expect("peeked");
            due.push(retry);
        }
        if !due.is_empty() {
            let ids: Vec<String> = due.iter().map(|r| r.id.clone()).collect();
            let entries = self.group.claim(&ids).await?;
            return Ok(entries
                .into_iter()
                .filter_map(|entry| {
                    let attempt = due.iter().find(|r| r.id == entry.id)?.attempt;
                    Some(Work { entry, attempt })
                })
                .collect());
        }

        let claimed = self
            .group
            .reclaim_due(self.bus.claim_idle, self.bus.read_batch)
            .await?;
        if !claimed.is_empty() {
            return Ok(claimed
                .into_iter()
                .map(|c| Work {
                    entry: c.entry,
                    attempt: c.deliveries,
                })
                .collect());
        }

        let block = BLOCK.min(self.group.until_reclaim());
        let retry_due = self
            .retries
            .peek()
            .map(|Reverse(retry)| retry.due.saturating_duration_since(now));
        // Redis times out a blocked read only on its cron tick (100 ms), so
        // a read blocking until a retry is due would wake up to 100 ms late:
        // poll instead while a retry is close.
        let entries = match retry_due {
            Some(due) if due < block => {
                let entries = self.group.read_new(self.bus.read_batch, None).await?;
                if entries.is_empty() {
                    tokio::time::sleep(due.min(RETRY_POLL)).await;
                }
                entries
            }
            _ => {
                let block = (!finishing).then(|| block.max(Duration::from_millis(1)));
                self.group.read_new(self.bus.read_batch, block).await?
            }
        };
        Ok(entries
            .into_iter()
            .map(|entry| Work { entry, attempt: 1 })
            .collect())
    }

    /// Runs the batch through the handler and decides each entry's fate.
    /// Returns the commit, and the publication time of each event handled.
    async fn process(
        &mut self,
        settings: &SubscriberConfig,
        work: Vec<Work>,
    ) -> redis::RedisResult<(CommitBatch, Vec<Option<f64>>)> {
        let queue = self.group.queue().clone();
        let mut batch = CommitBatch::new(&queue.group);
        let mut jobs = Vec::with_capacity(work.len());
        let mut published = vec![None; work.len()];
        for (index, item) in work.iter().enumerate() {
            if item.attempt > settings.max_attempts {
                let reason = format!(
                    "{}: abandoned after {} deliveries without a result (the host stopped or crashed while handling it)",
                    settings.name, item.attempt
                );
                self.dead_letter(&mut batch, settings, item, "abandoned", &reason, None);
                continue;
            }
            match entry::decode_event(&item.entry, item.attempt, self.bus.max_payload_bytes) {
                Ok(event) => {
                    published[index] = event.timestamp;
                    jobs.push((index, event));
                }
                Err(malformed) => {
                    let reason = format!("{}: malformed entry: {malformed}", settings.name);
                    self.dead_letter(&mut batch, settings, item, "malformed", &reason, None);
                }
            }
        }

        let ids: Vec<String> = jobs
            .iter()
            .map(|(i, _)| work[*i].entry.id.clone())
            .collect();
        let outcomes = {
            let running = run_all(
                self.subscription.handler.clone(),
                Arc::new(BatchState::new(self.state.clone())),
                jobs,
                settings.concurrency,
            );
            tokio::pin!(running);
            // Renew the lease on the batch while it runs, so a long batch is
            // not mistaken for abandoned work and handled twice.
            // First renewal one period from now: awaiting an interval's
            // immediate first tick costs a trip through the timer wheel,
            // which rounds up to the next millisecond.
            let period = self.bus.claim_idle / 3;
            let mut lease = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    outcomes = &mut running => break outcomes,
                    _ = lease.tick() => {
                        if let Err(err) = self.group.renew(&ids).await {
                            tracing::warn!(subscriber = %settings.name, "cannot renew the lease on a batch: {err}");
                        }
                    }
                }
            }
        };

        let now = crate::handler::unix_now();
        let mut handled = Vec::with_capacity(outcomes.len());
        for (index, event_id, outcome) in outcomes {
            let item = &work[index];
            match outcome {
                Outcome::Ok(effects) => {
                    tracing::debug!(subscriber = %settings.name, event_id, "handled");
                    batch.ok(&item.entry.id, &effects, now);
                    handled.push(published[index]);
                }
                Outcome::Failed(failure) => {
                    self.failed(&mut batch, settings, item, &event_id, failure);
                }
            }
        }
        Ok((batch, handled))
    }

    fn failed(
        &mut self,
        batch: &mut CommitBatch,
        settings: &SubscriberConfig,
        item: &Work,
        event_id: &str,
        failure: Failure,
    ) {
        let kind = failure.kind;
        if kind.is_retryable() && item.attempt < settings.max_attempts {
            let next = item.attempt + 1;
            let delay = settings.backoff_before(next).min(self.bus.claim_idle / 2);
            tracing::info!(
                subscriber = %settings.name,
                event_id,
                attempt = item.attempt,
                "{kind}: {}; attempt {next} of {} in {delay:?}",
                failure.message,
                settings.max_attempts
            );
            self.metrics.retried.increment(1);
            self.retries.push(Reverse(Retry {
                due: Instant::now() + delay,
                id: item.entry.id.clone(),
                attempt: next,
            }));
            return;
        }
        let what = match kind {
            FailureKind::Retry => format!("retry exhausted after {} attempts", item.attempt),
            FailureKind::Host => format!("host error after {} attempts", item.attempt),
            FailureKind::Reject => "rejected".into(),
            FailureKind::Trap => "trap".into(),
            FailureKind::Timeout => "timeout".into(),
            FailureKind::OutOfMemory => "out of memory".into(),
        };
        let reason = format!("{}: {what}: {}", settings.name, failure.message);
        self.dead_letter(
            batch,
            settings,
            item,
            kind.as_str(),
            &reason,
            Some(event_id),
        );
    }

    fn dead_letter(
        &mut self,
        batch: &mut CommitBatch,
        settings: &SubscriberConfig,
        item: &Work,
        kind: &str,
        reason: &str,
        event_id: Option<&str>,
    ) {
        tracing::warn!(
            subscriber = %settings.name,
            event_id = event_id.unwrap_or(""),
            stream_id = %item.entry.id,
            attempt = item.attempt,
            "dead-lettered: {reason}"
        );
        self.metrics.dead_lettered(kind);
        let record = FailureRecord {
            timestamp: crate::handler::unix_now(),
            reason,
            kind,
            subscriber: Some(&settings.name),
            attempt: Some(item.attempt),
        };
        batch.dead_letter(&item.entry.id, entry::dead_letter(&item.entry, &record));
    }

    /// Commits a batch; a lost connection is retried (the script is
    /// idempotent), anything else leaves the entries pending for reclaim.
    async fn commit(&mut self, batch: &CommitBatch) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let queue = self.group.queue().clone();
        let keys = CommitKeys {
            stream: &queue.stream,
            dlq: &queue.dlq,
            state: &self.state_key,
            all: &self.all_stream,
        };
        let mut backoff = Backoff::default();
        // Keep trying through an outage even while stopping: the work is done.
        let give_up = CancellationToken::new();
        let mut tries = 0;
        loop {
            tries += 1;
            match batch.apply(self.group.commands(), &keys).await {
                Ok(applied) => {
                    if applied.skipped > 0 {
                        self.metrics.duplicates.increment(applied.skipped);
                        tracing::info!(
                            subscriber = %self.subscription.name,
                            "{} results discarded: another consumer committed those events first",
                            applied.skipped
                        );
                    }
                    return Ok(());
                }
                Err(err)
                    if (err.is_io_error() || err.is_timeout() || err.is_connection_dropped())
                        && tries < 20 =>
                {
                    tracing::warn!(
                        subscriber = %self.subscription.name,
                        "cannot commit a batch of {} ({err}); retrying in {:?}",
                        batch.len(),
                        backoff.peek()
                    );
                    backoff.wait(&give_up).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// The state a batch's events read: what is committed, plus the writes of
/// the batch's events that already succeeded. Their commit comes at the end
/// of the batch, but an event handled after another must see its writes, as
/// if each had been committed on its own.
struct BatchState {
    committed: Arc<dyn StateReader>,
    written: Mutex<HashMap<String, Option<String>>>,
}

impl BatchState {
    fn new(committed: Arc<dyn StateReader>) -> Self {
        BatchState {
            committed,
            written: Mutex::default(),
        }
    }

    /// Makes a successful event's writes visible to the events after it.
    fn absorb(&self, outcome: &Outcome) {
        if let Outcome::Ok(effects) = outcome {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            for (key, value) in effects.writes() {
                written.insert(key.clone(), value.clone());
            }
        }
    }
}

#[async_trait::async_trait]
impl StateReader for BatchState {
    async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        match written {
            Some(value) => Ok(value),
            None => self.committed.get(key).await,
        }
    }
}

/// Runs every job, at most `concurrency` at once; returns each job's index,
/// event id and outcome. With `concurrency` 1 the events run in stream order
/// and each sees the state the ones before it left.
async fn run_all(
    handler: Arc<dyn Handler>,
    state: Arc<BatchState>,
    jobs: Vec<(usize, crate::handler::Event)>,
    concurrency: usize,
) -> Vec<(usize, String, Outcome)> {
    let mut results = Vec::with_capacity(jobs.len());
    if concurrency <= 1 || jobs.len() <= 1 {
        for (index, event) in jobs {
            let id = event.id.clone();
            let outcome = handler.handle(event, state.clone()).await;
            state.absorb(&outcome);
            results.push((index, id, outcome));
        }
        return results;
    }
    let mut running = JoinSet::new();
    let mut collect =
        |joined: Result<(usize, String, Outcome), tokio::task::JoinError>| match joined {
            Ok(result) => {
                state.absorb(&result.2);
                results.push(result);
            }
            // A panic in the host's own code: the event stays pending and is
            // reclaimed, rather than being blamed on the plugin.
            Err(err) => tracing::error!("a handler task failed: {err}"),
        };
    for (index, event) in jobs {
        if running.len() >= concurrency {
            if let Some(joined) = running.join_next().await {
                collect(joined);
            }
        }
        let handler = handler.clone();
        let state = state.clone();
        running.spawn(async move {
            let id = event.id.clone();
            (index, id, handler.handle(event, state).await)
        });
    }
    while let Some(joined) = running.join_next().await {
        collect(joined);
    }
    results
}
