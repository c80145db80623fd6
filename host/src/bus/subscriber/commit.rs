//! A subscriber loop's commits: a batch's results written with the loops'
//! give-up policy, and what Redis refuses quarantined.

use redis::RedisResult;

use super::{Decided, Fate, SubscriberLoop};
use crate::bus::leanmq::{DeadLetterer, REFUSED};
use crate::bus::scripts::{CommitBatch, CommitKeys, Committed};
use crate::bus::worker::Patience;
use crate::config::SubscriberConfig;

impl SubscriberLoop {
    /// Commits a batch, with the loops' give-up policy.
    pub(super) async fn commit(&mut self, batch: &CommitBatch) -> RedisResult<Committed> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        let queue = self.group.queue().clone();
        let keys = CommitKeys {
            stream: &queue.stream,
            dlq: &queue.dlq,
            state: &self.state_key,
            all: &self.publish_to,
            http: &self.requests_to,
            lists: &self.order.lists,
            held: &self.order.held,
            parked: &self.order.parked,
            schedule: &self.schedule,
            later: &self.publish_later,
        };
        let name = &self.subscription.name;
        let mut patience = Patience::new(name, &self.subscription.stop);
        let committed = loop {
            match batch.apply(self.group.commands(), &keys).await {
                Ok(committed) => break committed,
                Err(err) => patience.failed(err).await?,
            }
        };
        if batch.requests() > 0 {
            crate::bus::crash::here(crate::bus::crash::Point::CommitQueued);
        }
        // Done is done: a commit that too few replicas have yet is not
        // undone (a failover may still lose it; then its entries are
        // delivered again), only reported.
        if let Err(err) = self
            .replicas
            .wait(self.group.commands(), &queue.stream)
            .await
        {
            tracing::warn!(subscriber = %name, "commit: {err}");
        }
        if committed.skipped > 0 {
            self.metrics.duplicates.increment(committed.skipped);
            tracing::info!(
                subscriber = %name,
                "{} results discarded: another consumer committed those events first",
                committed.skipped
            );
        }
        Ok(committed)
    }

    /// The entries whose result Redis refused, on its own and for a reason
    /// that will not change, are quarantined: acknowledged and
    /// dead-lettered with Redis's reason, so one cannot block the
    /// subscriber (or be retried forever). One refused even that stays
    /// pending, logged.
    pub(super) async fn quarantine(
        &mut self,
        settings: &SubscriberConfig,
        mut decided: Vec<Decided>,
        refused: &[(String, String)],
    ) -> RedisResult<Vec<Decided>> {
        if refused.is_empty() {
            return Ok(decided);
        }
        let mut batch = self.commit_batch(settings, false);
        let now = crate::handler::unix_now();
        let letters = DeadLetterer::subscriber(&settings.name, self.bus.max_payload_bytes);
        let what = format!("{}: Redis refused its commit", settings.name);
        let find = |id: &str| {
            let d = decided.iter().find(|d| d.work.entry.id == id)?;
            Some((&d.work.entry, d.work.attempt))
        };
        for q in letters.quarantine(refused, &what, now, find) {
            let key = decided
                .iter()
                .find(|d| d.work.entry.id == q.id)
                .and_then(|d| d.work.entry.key());
            batch.dead_letter(q.id, key, q.payload, &Vec::new());
            if let Some(d) = decided.iter_mut().find(|d| d.work.entry.id == q.id) {
                d.fate = Fate::DeadLettered {
                    kind: REFUSED,
                    reason: q.reason,
                };
            }
        }
        let committed = self.commit(&batch).await?;
        for (id, err) in committed.refused {
            if let Some(d) = decided.iter_mut().find(|d| d.work.entry.id == id) {
                tracing::error!(
                    subscriber = %settings.name,
                    event_id = %d.event_id,
                    stream_id = %id,
                    "Redis refused its commit and its quarantine ({err}); it stays pending"
                );
                d.fate = Fate::Stuck;
            }
        }
        Ok(decided)
    }
}
