//! A subscriber loop: its stream → its handler → one commit per batch.
//!
//! Per batch: events to run again after a conflict ([`again`]), then due
//! retries, else entries left by a dead consumer, else new entries; run
//! them through the handler ([`batch`]); decide the fate of each that
//! failed ([`verdict`]); then commit every result in one script call:
//! acknowledgements with their effects, and dead letters; then carry out
//! what was decided ([`settle`]). A `retry` failure leaves the stream in
//! its commit, for the stream's schedule (see `scripts/later.lua`), and
//! comes back when due with its attempt number in the entry: nothing of it
//! waits in this host, and any host runs it. Only what runs again on the
//! same attempt (no capacity, Redis unavailable, a conflict backing off)
//! waits here, briefly, pending. The commit and what Redis refuses of
//! it are in [`commit`]; what the daemon holds to change or stop the loop
//! is a [`Subscription`].

mod again;
mod batch;
mod commit;
mod settle;
mod subscription;
pub mod verdict;

pub use subscription::Subscription;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::RedisResult;

use super::connection::Replicas;
use super::entry::StreamEntry;
use super::group::GroupConsumer;
use super::keys::OrderKeys;
use super::leanmq::{self, DeadLetterer};
use super::scripts::CommitBatch;
use super::worker::{self, Round, Worker};
use super::BLOCK;
use crate::config::{BusConfig, OnDeadLetter, SubscriberConfig, WithoutKey};
use crate::handler::{FailureKind, Outcome, Reads, StateReader};
use crate::telemetry::metrics::SubscriberMetrics;
use again::AgainQueue;
use verdict::Verdict;

/// How often to look for new entries while a pause is about to end.
const PAUSE_POLL: Duration = Duration::from_millis(5);

/// A pending event waiting here to run again on the same attempt.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Paused {
    due: Instant,
    id: String,
    attempt: u32,
    /// Conflicts so far on this attempt (see [`Work::conflicts`]).
    conflicts: u32,
}

/// Where a subscriber loop's commits write, besides its stream and DLQ.
pub(in crate::bus) struct LoopKeys {
    /// Its state hash.
    pub state: String,
    /// Where its commits put what its handlers publish: `events:all`, or
    /// on a cluster its outbox.
    pub publish_to: String,
    /// Where it keeps order per key.
    pub order: OrderKeys,
    /// Its stream's schedule (retries due later).
    pub schedule: String,
    /// The schedule of `publish_to` (what handlers publish for later).
    pub publish_later: String,
}

/// The loop of one subscriber in this process.
pub struct SubscriberLoop {
    subscription: Arc<Subscription>,
    group: GroupConsumer,
    state: Arc<dyn StateReader>,
    state_key: String,
    /// Where its commits put what its handlers publish: `events:all`, or
    /// on a cluster its outbox.
    publish_to: String,
    order: OrderKeys,
    schedule: String,
    publish_later: String,
    /// Where its commits queue requests to send after them.
    requests_to: String,
    replicas: Replicas,
    bus: BusConfig,
    metrics: SubscriberMetrics,
    paused: BinaryHeap<Reverse<Paused>>,
    /// Entries to run again after a conflict, without a new delivery.
    again: AgainQueue,
}

/// One entry in hand, with the attempt it is on.
struct Work {
    entry: StreamEntry,
    attempt: u32,
    /// How many times it ran again after a conflict on this attempt, on
    /// this host: every [`verdict::CONFLICTS_IN_A_ROW`] it backs off.
    conflicts: u32,
}

/// An entry whose fate is decided, to carry out once its commit landed.
struct Decided {
    work: Work,
    event_id: String,
    fate: Fate,
    /// What its run read, if it ran: moved here, not copied, since only
    /// an entry that conflicts needs it (to schedule its re-run).
    reads: Reads,
}

/// What becomes of an entry once its batch is committed.
enum Fate {
    /// Committed; when it was published, if known.
    Handled(Option<f64>),
    Retry {
        next: u32,
        delay: Duration,
    },
    RunAgain,
    /// No capacity: runs again after `delay`, on the same attempt.
    Wait {
        delay: Duration,
    },
    DeadLettered {
        kind: &'static str,
        reason: String,
    },
    /// Redis refused its commit and its quarantine: it stays pending.
    Stuck,
    /// Taken into the order of `key` (see [`Verdict::Adopt`]).
    Adopted {
        key: String,
    },
}

impl SubscriberLoop {
    /// A loop for `subscription`, reading through `group`; its commits
    /// write to `keys` and wait for `replicas`.
    pub(in crate::bus) fn new(
        subscription: Arc<Subscription>,
        group: GroupConsumer,
        state: Arc<dyn StateReader>,
        keys: LoopKeys,
        replicas: Replicas,
        bus: BusConfig,
    ) -> Self {
        // `Keys::requests`: the subscriber's stream and `:http`, in its slot.
        let requests_to = format!("{}:http", group.queue().stream);
        let metrics = SubscriberMetrics::new(&subscription.name);
        SubscriberLoop {
            subscription,
            group,
            state,
            state_key: keys.state,
            publish_to: keys.publish_to,
            order: keys.order,
            schedule: keys.schedule,
            publish_later: keys.publish_later,
            requests_to,
            replicas,
            bus,
            metrics,
            paused: BinaryHeap::new(),
            again: AgainQueue::new(),
        }
    }

    /// Handles events until the subscription stops; Redis errors are
    /// retried with backoff.
    pub async fn run(self) {
        let name = self.subscription.name.clone();
        tracing::info!(subscriber = %name, stream = %self.group.queue().stream, "subscriber started");
        let stop = self.subscription.stop.clone();
        let waiting = worker::run(self, stop).await.paused.len();
        if waiting > 0 {
            tracing::info!(
                subscriber = %name,
                "stopping with {waiting} events waiting to run again; they stay pending and are reclaimed on the next start"
            );
        }
        tracing::info!(subscriber = %name, "subscriber stopped");
    }

    /// One batch; returns whether there was any work. A `finishing` loop
    /// does not wait for new entries; a `stopping` one only runs again what
    /// conflicted.
    async fn handle_batch(&mut self, finishing: bool, stopping: bool) -> RedisResult<bool> {
        let settings = self.subscription.settings();
        let work = self.next_work(&settings, finishing, stopping).await?;
        let worked = !work.is_empty();
        if worked {
            let (batch, decided) = self.process(&settings, work).await;
            let committed = self.commit(&batch).await?;
            let decided = self
                .quarantine(&settings, decided, &committed.refused)
                .await?;
            self.settle(&settings, decided, committed.conflicts);
        }
        self.group
            .tidy(self.bus.stream_maxlen, self.bus.claim_idle)
            .await?;
        Ok(worked)
    }

    /// The next batch: events to run again after a conflict first (see
    /// [`again`]), then, in the room left, paused ones now due, else
    /// abandoned entries, else new ones. A subscriber at concurrency 1 runs
    /// what conflicted alone and in order; a `stopping` loop runs nothing
    /// else.
    async fn next_work(
        &mut self,
        settings: &SubscriberConfig,
        finishing: bool,
        stopping: bool,
    ) -> RedisResult<Vec<Work>> {
        self.again
            .keep_leases(&self.group, self.bus.claim_idle)
            .await?;
        let mut work = self.again.lane(settings.concurrency, self.bus.read_batch);
        if stopping || (settings.concurrency <= 1 && !work.is_empty()) {
            return Ok(work);
        }
        // What waits its turn counts too: a flood of events on one hot key
        // holds at most a batch's worth in the host, not all of them.
        let room = self
            .bus
            .read_batch
            .saturating_sub(work.len() + self.again.len());
        if room > 0 {
            let wait = !finishing && work.is_empty();
            work.extend(self.next_fresh(room, wait).await?);
        }
        Ok(work)
    }

    /// Up to `room` entries: paused ones now due, else abandoned entries,
    /// else new ones, blocking for new ones only if `wait`.
    async fn next_fresh(&mut self, room: usize, wait: bool) -> RedisResult<Vec<Work>> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse(paused)) = self.paused.peek() {
            if paused.due > now || due.len() >= room {
                break;
            }
            let Reverse(paused) = self.paused.pop().expect("peeked");
            due.push(paused);
        }
        if !due.is_empty() {
            let ids: Vec<String> = due.iter().map(|r| r.id.clone()).collect();
            let entries = self.group.claim(&ids).await?;
            return Ok(entries
                .into_iter()
                .filter_map(|entry| {
                    let paused = due.iter().find(|r| r.id == entry.id)?;
                    Some(Work {
                        attempt: paused.attempt,
                        conflicts: paused.conflicts,
                        entry,
                    })
                })
                .collect());
        }

        let claimed = self.group.reclaim_due(self.bus.claim_idle, room).await?;
        if !claimed.is_empty() {
            return Ok(claimed
                .into_iter()
                .map(|c| Work {
                    attempt: c.entry.attempt(c.deliveries),
                    entry: c.entry,
                    conflicts: 0,
                })
                .collect());
        }

        let block = BLOCK.min(self.group.until_reclaim());
        let pause_ends = self
            .paused
            .peek()
            .map(|Reverse(paused)| paused.due.saturating_duration_since(now));
        // Redis times out a blocked read only on its cron tick (100 ms), so
        // a read blocking until a pause ends would wake up to 100 ms late:
        // poll instead while one is close.
        let entries = match pause_ends {
            Some(due) if due < block => {
                let entries = self.group.read_new(room, None).await?;
                if entries.is_empty() && wait {
                    tokio::time::sleep(due.min(PAUSE_POLL)).await;
                }
                entries
            }
            _ => {
                let block = wait.then(|| block.max(Duration::from_millis(1)));
                self.group.read_new(room, block).await?
            }
        };
        self.group.shed(&entries).await;
        Ok(entries
            .into_iter()
            .map(|entry| Work {
                attempt: entry.first_attempt(),
                entry,
                conflicts: 0,
            })
            .collect())
    }

    /// Runs the batch through the handler and decides each entry's fate;
    /// returns the commit, and the decisions to carry out once it landed.
    async fn process(
        &mut self,
        settings: &SubscriberConfig,
        work: Vec<Work>,
    ) -> (CommitBatch, Vec<Decided>) {
        let concurrency = settings.concurrency;
        let mut batch = self.commit_batch(settings, concurrency <= 1);
        let mut jobs = Vec::with_capacity(work.len());
        let mut published = vec![None; work.len()];
        let mut decided = Vec::with_capacity(work.len());
        // The entries that run, by index; the others are decided already.
        let mut held: Vec<Option<Work>> = Vec::with_capacity(work.len());
        for (index, item) in work.into_iter().enumerate() {
            let verdict = match verdict::before_running(item.attempt, settings) {
                Some(verdict) => Some(verdict),
                None => {
                    match leanmq::decode_event(
                        &item.entry,
                        item.attempt,
                        self.bus.max_payload_bytes,
                    ) {
                        Ok(event) => match self.without_key(settings, &item.entry) {
                            Some(verdict) => Some(verdict),
                            None => {
                                published[index] = event.timestamp;
                                jobs.push((index, event));
                                None
                            }
                        },
                        Err(malformed) => Some(verdict::malformed(settings, malformed)),
                    }
                }
            };
            match verdict {
                Some(verdict) => {
                    decided.push(self.decide(
                        &mut batch,
                        settings,
                        item,
                        String::new(),
                        verdict,
                        Reads::new(),
                    ));
                    held.push(None);
                }
                None => held.push(Some(item)),
            }
        }

        // The lease covers the batch and the events waiting their turn to
        // run again.
        let ids: Vec<String> = held
            .iter()
            .flatten()
            .map(|w| w.entry.id.clone())
            .chain(self.again.ids())
            .collect();
        let mut outcomes = batch::run(
            &self.subscription,
            self.state.clone(),
            jobs,
            concurrency,
            &mut self.group,
            &ids,
            self.bus.claim_idle / 3,
        )
        .await;
        // Committed in batch order, not as they finished: of two events that
        // read one key, the older commits and the newer conflicts, so an
        // event run again after a conflict (first in its batch) cannot lose
        // to newer ones for ever. An event that read another's write started
        // after it finished, so after it in the batch too.
        outcomes.sort_by_key(|(index, ..)| *index);

        let now = crate::handler::unix_now();
        for (index, event_id, outcome) in outcomes {
            let item = held[index].take().expect("one outcome per job");
            match outcome {
                Outcome::Ok(mut effects) => {
                    batch.ok(&item.entry.id, item.entry.key(), &effects, now);
                    decided.push(Decided {
                        work: item,
                        event_id,
                        fate: Fate::Handled(published[index]),
                        reads: effects.take_reads(),
                    });
                }
                Outcome::Failed(failure) => {
                    let verdict = verdict::after_failure(
                        item.attempt,
                        &failure,
                        settings,
                        self.bus.claim_idle / 2,
                        fastrand::f64(),
                    );
                    match &verdict {
                        Verdict::Retry { next, delay } => tracing::info!(
                            subscriber = %settings.name,
                            event_id,
                            attempt = item.attempt,
                            "{}: {}; attempt {next} of {} in {delay:?}",
                            failure.kind,
                            failure.message,
                            settings.max_attempts
                        ),
                        Verdict::Wait { delay } if failure.kind == FailureKind::Unavailable => {
                            tracing::warn!(
                                subscriber = %settings.name,
                                event_id,
                                attempt = item.attempt,
                                "Redis unavailable during the call ({}); the event runs again in \
                                 {delay:?}, on the same attempt",
                                failure.message
                            )
                        }
                        _ => {}
                    }
                    decided.push(self.decide(
                        &mut batch,
                        settings,
                        item,
                        event_id,
                        verdict,
                        failure.reads,
                    ));
                }
            }
        }
        (batch, decided)
    }

    /// An empty commit for this subscriber; `ordered` if its events ran one
    /// at a time, in stream order.
    fn commit_batch(&self, settings: &SubscriberConfig, ordered: bool) -> CommitBatch {
        let park = settings
            .order
            .as_ref()
            .is_some_and(|o| o.on_dead_letter == OnDeadLetter::Park);
        CommitBatch::new(&self.group.queue().group, ordered).parking(park)
    }

    /// What becomes of `entry` if it holds no key though its subscriber
    /// orders by one (`None`: it runs). An event with the field (requeued
    /// by LeanMQ, added by hand, routed before `order_by` was set) is
    /// adopted into its key's order rather than run beside it; one
    /// without runs unordered, or is refused if `without_key = "refuse"`.
    fn without_key(&self, settings: &SubscriberConfig, entry: &StreamEntry) -> Option<Verdict> {
        let order = settings.order.as_ref()?;
        if entry.key().is_some() {
            return None;
        }
        match leanmq::order_key(entry, order, self.bus.max_payload_bytes) {
            Some(key) => Some(Verdict::Adopt { key }),
            None if order.without_key == WithoutKey::Refuse => Some(verdict::malformed(
                settings,
                leanmq::Malformed::NoKey(order.field.clone()),
            )),
            None => None,
        }
    }

    /// Adds what a verdict writes (a dead letter, or the check of a retry's
    /// reads) to the commit; the rest waits for the commit to land.
    fn decide(
        &self,
        batch: &mut CommitBatch,
        settings: &SubscriberConfig,
        work: Work,
        event_id: String,
        verdict: Verdict,
        reads: Reads,
    ) -> Decided {
        let fate = match verdict {
            Verdict::Retry { next, delay } => {
                batch.retry(&work.entry.id, work.entry.key(), &reads, delay, next);
                Fate::Retry { next, delay }
            }
            Verdict::RunAgain => Fate::RunAgain,
            Verdict::Adopt { key } => {
                let data = work.entry.data().unwrap_or_default();
                batch.adopt(&work.entry.id, &key, data);
                Fate::Adopted { key }
            }
            Verdict::Wait { delay } => Fate::Wait { delay },
            Verdict::DeadLetter { kind, reason } => {
                let letters = DeadLetterer::subscriber(&settings.name, self.bus.max_payload_bytes);
                let now = crate::handler::unix_now();
                let payload = letters.letter(&work.entry, kind, &reason, work.attempt, now);
                batch.dead_letter(&work.entry.id, work.entry.key(), payload, &reads);
                Fate::DeadLettered { kind, reason }
            }
        };
        Decided {
            work,
            event_id,
            fate,
            reads,
        }
    }
}

#[async_trait]
impl Worker for SubscriberLoop {
    fn name(&self) -> &str {
        &self.subscription.name
    }

    fn group(&mut self) -> &mut GroupConsumer {
        &mut self.group
    }

    async fn step(&mut self, stopping: bool) -> RedisResult<Round> {
        // Stopping runs again what conflicted, so it is committed rather
        // than abandoned to a reclaim (which would count a delivery), but
        // only within the grace: past it, what waits stays pending.
        if stopping && (self.again.is_empty() || self.subscription.grace_is_over()) {
            return Ok(Round::Done);
        }
        let finishing = stopping || self.subscription.is_finishing();
        let worked = self.handle_batch(finishing, stopping).await?;
        Ok(if finishing && !worked {
            Round::Done
        } else {
            Round::Continue
        })
    }

    fn group_lost(&mut self) {
        self.paused.clear();
        self.again.clear();
    }
}
