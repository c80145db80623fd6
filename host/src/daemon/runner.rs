//! One subscriber as it runs: the one owner of its settings and its loop.
//!
//! Its settings live once, in its [`Subscription`], next to the handler
//! made for them; a change of either replaces both together, so the loop,
//! the limits of its instances and the config its plugin reads never
//! disagree.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::subscriber::Subscription;
use crate::bus::Bus;
use crate::config::SubscriberConfig;
use crate::handler::Handler;

/// A running subscriber.
pub struct Runner {
    subscription: Arc<Subscription>,
    task: JoinHandle<()>,
}

impl Runner {
    /// Creates the subscriber's streams and starts its loop, with `handler`;
    /// `stop` stops it.
    pub async fn start(
        bus: &Bus,
        settings: SubscriberConfig,
        handler: Arc<dyn Handler>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        bus.prepare_subscriber(&settings.name).await?;
        let subscription = Arc::new(Subscription::new(settings, handler, stop));
        let task = bus.spawn_subscriber(subscription.clone()).await?;
        Ok(Runner { subscription, task })
    }

    /// Whether its loop still runs (it ends only when stopped, or if it
    /// crashed).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// The settings it runs with.
    pub fn settings(&self) -> Arc<SubscriberConfig> {
        self.subscription.settings()
    }

    /// New settings and the handler made for them, from the next event on.
    pub fn apply(&self, settings: SubscriberConfig, handler: Arc<dyn Handler>) {
        self.subscription.update(settings, handler);
    }

    /// A new handler for the same settings (a new build of its plugin),
    /// from the next event on.
    pub fn swap(&self, handler: Arc<dyn Handler>) {
        let settings = (*self.subscription.settings()).clone();
        self.subscription.update(settings, handler);
    }

    /// Asks the loop to handle what its stream holds, then stop: for a
    /// subscriber no longer routed to.
    pub fn finish(&self) {
        self.subscription.finish();
    }

    /// Waits up to `limit` for a [`finish`](Self::finish)ed loop to end;
    /// past it, stops the loop after its batch. Whether it finished in time.
    pub async fn finished_within(mut self, limit: tokio::time::Instant) -> bool {
        if tokio::time::timeout_at(limit, &mut self.task).await.is_ok() {
            return true;
        }
        self.stop().await;
        false
    }

    /// Stops the loop after its batch is committed, and waits for it.
    pub async fn stop(self) {
        self.subscription.stop();
        let _ = self.task.await;
    }
}

/// How long a subscriber removed from the config may take to handle what
/// was routed to it before it is stopped.
pub const FINISH_LIMIT: Duration = Duration::from_secs(10);
