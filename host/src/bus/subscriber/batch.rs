//! Running one batch of a subscriber's events through its handler: at most
//! `concurrency` at once, each seeing the writes of those that succeeded
//! before it, with the lease on the batch renewed while it runs. Once the
//! host is stopping, the batch goes on until the subscriber's
//! [`STOP_GRACE`](super::subscription::STOP_GRACE) ends (a batch of quick
//! events ends whole, so a graceful restart repeats nothing); past it, no
//! event starts and those in flight are dropped. An event without an
//! outcome is not committed: it stays pending and is run again later
//! (reclaimed, here after a restart or by another host).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::Subscription;
use crate::bus::group::GroupConsumer;
use crate::handler::{Event, Outcome, Seen, StateReader, COMPARED_BYTES};

/// One event's outcome: its index in the batch, its event id, what the
/// handler returned.
pub type Ran = (usize, String, Outcome);

/// A [`Ran`] with the entry id it ran for.
type RanEntry = (String, Ran);

/// Runs `jobs` (index in the batch, event) and returns their outcomes.
/// Every `renew_every` the entries `ids` are claimed again without counting
/// a delivery, so a long batch is not mistaken for abandoned work and run
/// twice.
pub async fn run(
    subscription: &Arc<Subscription>,
    state: Arc<dyn StateReader>,
    jobs: Vec<(usize, Event)>,
    concurrency: usize,
    group: &mut GroupConsumer,
    ids: &[String],
    renew_every: Duration,
) -> Vec<Ran> {
    let running = run_all(
        subscription.clone(),
        Arc::new(BatchState::new(state, concurrency <= 1)),
        jobs,
        concurrency,
    );
    tokio::pin!(running);
    // First renewal one period from now: awaiting an interval's immediate
    // first tick costs a trip through the timer wheel, which rounds up to
    // the next millisecond.
    let mut lease =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    // A renewal runs beside the events, never in their way: awaited in a
    // select arm, one that Redis is slow to answer (an outage, a failover)
    // would stop polling the handlers, and their time limits would run out
    // while they were not even running.
    let mut renewal: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<()>> + Send>>,
    > = None;
    loop {
        tokio::select! {
            outcomes = &mut running => return outcomes,
            _ = lease.tick(), if renewal.is_none() => {
                renewal = Some(Box::pin(group.renew(ids)));
            }
            renewed = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                renewal = None;
                if let Err(err) = renewed {
                    tracing::warn!(subscriber = %subscription.name, "cannot renew the lease on a batch: {err}");
                }
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
    /// What the batch's successful events wrote, as a later read sees it:
    /// a large value stamped with the entry that wrote it, as its commit
    /// will stamp it.
    written: Mutex<HashMap<String, Seen>>,
    /// Events run one at a time and commit in that order.
    sequential: bool,
}

impl BatchState {
    fn new(committed: Arc<dyn StateReader>, sequential: bool) -> Self {
        BatchState {
            committed,
            written: Mutex::default(),
            sequential,
        }
    }

    /// Makes the writes of a successful event, of entry `stream_id`,
    /// visible to the events after it.
    fn absorb(&self, stream_id: &str, outcome: &Outcome) {
        if let Outcome::Ok(effects) = outcome {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            for (key, value) in effects.writes() {
                let large = value.as_ref().is_some_and(|v| v.len() > COMPARED_BYTES);
                let seen = Seen {
                    value: value.clone(),
                    stamp: large.then(|| stream_id.to_string()),
                    earlier_in_batch: self.sequential,
                };
                written.insert(key.clone(), seen);
            }
        }
    }
}

#[async_trait::async_trait]
impl StateReader for BatchState {
    async fn read(&self, key: &str) -> anyhow::Result<Seen> {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        match written {
            Some(seen) => Ok(seen),
            None => self.committed.read(key).await,
        }
    }
}

/// Runs every job, at most `concurrency` at once, each on the handler in
/// use when it starts (a reload applies from the next event). With
/// `concurrency` 1 the events run in stream order and each sees the state
/// the ones before it left.
async fn run_all(
    subscription: Arc<Subscription>,
    state: Arc<BatchState>,
    jobs: Vec<(usize, Event)>,
    concurrency: usize,
) -> Vec<Ran> {
    let mut results = Vec::with_capacity(jobs.len());
    let mut stopping = Stopping::new(subscription.clone());
    if concurrency <= 1 || jobs.len() <= 1 {
        for (index, event) in jobs {
            if stopping.is_stopping() {
                break;
            }
            let id = event.id.clone();
            let stream_id = event.stream_id.clone();
            let handler = subscription.handler();
            let Some(outcome) = stopping.bound(handler.handle(event, state.clone())).await else {
                break;
            };
            state.absorb(&stream_id, &outcome);
            results.push((index, id, outcome));
        }
        return results;
    }
    let mut running = JoinSet::new();
    let mut collect = |joined: Result<RanEntry, tokio::task::JoinError>| match joined {
        Ok((stream_id, result)) => {
            state.absorb(&stream_id, &result.2);
            results.push(result);
        }
        // A panic in the host's own code: the event stays pending and is
        // reclaimed, rather than being blamed on the plugin.
        Err(err) => tracing::error!("a handler task failed: {err}"),
    };
    for (index, event) in jobs {
        if running.len() >= concurrency {
            match stopping.bound(running.join_next()).await {
                Some(Some(joined)) => collect(joined),
                Some(None) => {}
                None => break,
            }
        }
        if stopping.is_stopping() {
            break;
        }
        let handler = subscription.handler();
        let state = state.clone();
        running.spawn(async move {
            let id = event.id.clone();
            let stream_id = event.stream_id.clone();
            (stream_id, (index, id, handler.handle(event, state).await))
        });
    }
    while let Some(Some(joined)) = stopping.bound(running.join_next()).await {
        collect(joined);
    }
    // Dropping the set aborts what still runs past the grace.
    results
}

/// Whether the subscriber is stopping, and when its grace ends.
struct Stopping {
    subscription: Arc<Subscription>,
}

impl Stopping {
    fn new(subscription: Arc<Subscription>) -> Self {
        Stopping { subscription }
    }

    /// Whether the grace is over: no more events start.
    fn is_stopping(&mut self) -> bool {
        self.subscription.grace_is_over()
    }

    /// `work`'s result; once the subscriber is stopping, only if it comes
    /// before its grace ends (`None` past it).
    async fn bound<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        let ends = match self.subscription.grace_ends() {
            Some(ends) => ends,
            None => {
                tokio::select! {
                    done = &mut work => return Some(done),
                    _ = self.subscription.stop.cancelled() => {}
                }
                self.subscription.grace_ends().expect("cancelled")
            }
        };
        tokio::time::timeout_at(ends, work).await.ok()
    }
}
