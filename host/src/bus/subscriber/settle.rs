//! What becomes of a committed batch's entries: handled, retried later,
//! run again, waiting, or dead-lettered, each logged and counted.

use std::cmp::Reverse;
use std::time::Instant;

use super::{verdict, Decided, Fate, Paused, SubscriberLoop};
use crate::config::SubscriberConfig;

impl SubscriberLoop {
    /// Carries out the decisions of a committed batch. An entry in
    /// `conflicts` read state that changed before its commit: nothing of it
    /// was written, and it runs again at once, not as a new attempt.
    pub(super) fn settle(
        &mut self,
        settings: &SubscriberConfig,
        decided: Vec<Decided>,
        conflicts: Vec<String>,
    ) {
        let now = crate::handler::unix_now();
        for Decided {
            mut work,
            event_id,
            fate,
            reads,
        } in decided
        {
            if conflicts.contains(&work.entry.id) {
                self.metrics.conflicts.increment(1);
                work.conflicts += 1;
                let longest_wait = self.bus.claim_idle / 2;
                match verdict::after_conflict(work.conflicts, settings, longest_wait) {
                    None => {
                        tracing::debug!(
                            subscriber = %settings.name,
                            event_id,
                            stream_id = %work.entry.id,
                            "state it read changed before its commit; running it again"
                        );
                        self.again.push(work, &reads);
                    }
                    Some(delay) => {
                        tracing::info!(
                            subscriber = %settings.name,
                            event_id,
                            stream_id = %work.entry.id,
                            "state it read changed before its commit {} times in a row (other \
                             hosts commit to the same keys); running it again in {delay:?}, \
                             on the same attempt",
                            work.conflicts
                        );
                        self.paused.push(Reverse(Paused {
                            due: Instant::now() + delay,
                            id: work.entry.id,
                            attempt: work.attempt,
                            conflicts: work.conflicts,
                        }));
                    }
                }
                continue;
            }
            match fate {
                Fate::Handled(published) => {
                    tracing::debug!(subscriber = %settings.name, event_id, "handled");
                    self.metrics.handled();
                    if let Some(published) = published {
                        self.metrics.latency((now - published).max(0.0));
                    }
                }
                Fate::Retry { next, delay } => {
                    tracing::debug!(
                        subscriber = %settings.name,
                        event_id,
                        "scheduled attempt {next} in {delay:?}"
                    );
                    self.metrics.retried.increment(1);
                }
                Fate::RunAgain => self.again.push(work, &reads),
                Fate::Wait { delay } => self.paused.push(Reverse(Paused {
                    due: Instant::now() + delay,
                    id: work.entry.id,
                    attempt: work.attempt,
                    conflicts: work.conflicts,
                })),
                Fate::DeadLettered { kind, reason } => {
                    tracing::warn!(
                        subscriber = %settings.name,
                        event_id,
                        stream_id = %work.entry.id,
                        attempt = work.attempt,
                        kind,
                        "dead-lettered: {reason}"
                    );
                    self.metrics.dead_lettered(kind);
                }
                Fate::Stuck => {}
                Fate::Adopted { key } => tracing::info!(
                    subscriber = %settings.name,
                    event_id,
                    stream_id = %work.entry.id,
                    "an entry without a key (requeued or added by hand) joined the order of \
                     key {}",
                    crate::telemetry::escape(&key, 200)
                ),
            }
        }
    }
}
