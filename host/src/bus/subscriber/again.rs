//! Events to run again after a conflict: which of them go in the next
//! batch, and their leases while they wait.
//!
//! Under contention for one key, re-runs side by side would only conflict
//! again (one commits per round, the rest re-run): they take turns, one per
//! batch, while the events beside them (new ones, and conflicts over other
//! keys) go on at full concurrency, so one hot key holds neither the batch
//! nor a shutdown. The oldest commits first (a batch commits in its own
//! order), so no event of this host loses to newer ones for ever.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::Work;
use crate::bus::group::GroupConsumer;
use crate::handler::Reads;

/// The events a subscriber loop holds to run again, without a new delivery.
pub(super) struct AgainQueue {
    waiting: Vec<Again>,
    /// When their leases were last renewed.
    renewed: Instant,
}

/// An entry to run again, with the state keys it read when it conflicted:
/// entries that read none of the same keys run again side by side, the
/// others one after another.
struct Again {
    work: Work,
    keys: Vec<String>,
}

impl AgainQueue {
    pub(super) fn new() -> Self {
        AgainQueue {
            waiting: Vec::new(),
            renewed: Instant::now(),
        }
    }

    /// Holds `work`, which read `reads` in the run that conflicted, to run
    /// again.
    pub(super) fn push(&mut self, work: Work, reads: &Reads) {
        let keys = reads.iter().map(|(key, _)| key.clone()).collect();
        self.waiting.push(Again { work, keys });
    }

    /// How many wait their turn.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Forgets them all (their group is gone).
    pub(super) fn clear(&mut self) {
        self.waiting.clear();
    }

    /// The entry ids held.
    pub(super) fn ids(&self) -> impl Iterator<Item = String> + '_ {
        self.waiting.iter().map(|a| a.work.entry.id.clone())
    }

    /// Takes those that go in the next batch, oldest first: each that read
    /// none of the keys an older one taken read, at most `most`. At
    /// concurrency 1, every one of them, in stream order.
    pub(super) fn lane(&mut self, concurrency: usize, most: usize) -> Vec<Work> {
        self.waiting.sort_by_key(|a| stream_order(&a.work.entry.id));
        if concurrency <= 1 {
            return self.waiting.drain(..).map(|a| a.work).collect();
        }
        let mut read: HashSet<String> = HashSet::new();
        let mut lane = Vec::new();
        let mut waiting = Vec::new();
        for again in self.waiting.drain(..) {
            let clear = !again.keys.iter().any(|key| read.contains(key));
            if clear && lane.len() < most {
                read.extend(again.keys);
                lane.push(again.work);
            } else {
                waiting.push(again);
            }
        }
        self.waiting = waiting;
        lane
    }

    /// Renews their leases at a third of `claim_idle`: they are in hand
    /// (conflicting round after round, or waiting their turn), not
    /// abandoned, and no consumer may reclaim them (which would count a
    /// delivery, and run them twice at once).
    pub(super) async fn keep_leases(
        &mut self,
        group: &GroupConsumer,
        claim_idle: Duration,
    ) -> RedisResult<()> {
        if self.waiting.is_empty() || self.renewed.elapsed() < claim_idle / 3 {
            return Ok(());
        }
        let ids: Vec<String> = self.ids().collect();
        group.renew(&ids).await?;
        self.renewed = Instant::now();
        Ok(())
    }
}

/// A stream id's place in its stream: `<ms>-<seq>`, compared as numbers.
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
