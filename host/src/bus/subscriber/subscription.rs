//! A subscriber as the bus runs it: what the daemon holds to change or
//! stop it while its loop runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SubscriberConfig;
use crate::handler::Handler;

/// How long a subscriber goes on once the host is asked to stop: past it
/// the events in flight are dropped and the rest not started (all stay
/// pending), so the host exits within seconds whatever a batch holds.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A subscriber as the bus runs it: its settings and the handler made for
/// them, replaceable live as one value, and the means to stop it.
pub struct Subscription {
    pub name: String,
    live: ArcSwap<Live>,
    pub(super) stop: CancellationToken,
    /// Set when the subscriber is removed: handle what the stream holds,
    /// then stop.
    finishing: AtomicBool,
    /// When the grace ends, set when the stop is first seen.
    grace_ends: OnceLock<Instant>,
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
            live: ArcSwap::from_pointee(Live {
                settings: Arc::new(settings),
                handler,
            }),
            stop,
            finishing: AtomicBool::new(false),
            grace_ends: OnceLock::new(),
        }
    }

    /// The settings the next batch uses.
    pub fn settings(&self) -> Arc<SubscriberConfig> {
        self.live.load().settings.clone()
    }

    /// The handler the next event runs on.
    pub fn handler(&self) -> Arc<dyn Handler> {
        self.live.load().handler.clone()
    }

    /// New settings, and the handler made for them, in one step: the next
    /// batch uses the settings, the next event the handler. Events in
    /// flight finish on the handler they started with.
    pub fn update(&self, settings: SubscriberConfig, handler: Arc<dyn Handler>) {
        self.live.store(Arc::new(Live {
            settings: Arc::new(settings),
            handler,
        }));
    }

    /// A new handler for the same settings (a new build of its plugin),
    /// from the next event on.
    pub fn swap_handler(&self, handler: Arc<dyn Handler>) {
        self.live.rcu(|live| Live {
            settings: live.settings.clone(),
            handler: handler.clone(),
        });
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

    /// Once the loop is asked to stop: when what it still runs must end,
    /// [`STOP_GRACE`] after the stop was first seen. One deadline for every
    /// batch, so batches run while stopping cannot add up their graces.
    pub(super) fn grace_ends(&self) -> Option<Instant> {
        self.stop
            .is_cancelled()
            .then(|| *self.grace_ends.get_or_init(|| Instant::now() + STOP_GRACE))
    }

    /// Whether the loop was asked to stop more than [`STOP_GRACE`] ago.
    pub(super) fn grace_is_over(&self) -> bool {
        self.grace_ends().is_some_and(|end| Instant::now() >= end)
    }

    pub(super) fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::Relaxed)
    }
}

/// Settings and the handler made for them: never one without the other.
struct Live {
    settings: Arc<SubscriberConfig>,
    handler: Arc<dyn Handler>,
}
