//! The subscribers running in this process, and the one owner of each:
//! its loop, and the settings and handler it runs with.
//!
//! The daemon starts them and [`reload`](crate::reload) changes them, both
//! through [`Subscribers`], so neither reaches into the other. A
//! subscriber's settings and the handler made for them are one value in its
//! [`Subscription`], replaced as one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::heartbeat::ReloadNote;
use crate::bus::routes::Routes;
use crate::bus::subscriber::Subscription;
use crate::bus::Bus;
use crate::config::SubscriberConfig;
use crate::handler::HandlerFactory;

/// How long a subscriber removed from the config may take to handle what
/// was routed to it before it is stopped.
pub const FINISH_LIMIT: Duration = Duration::from_secs(10);

/// Reloads kept for operators.
const NOTES_KEPT: usize = 20;

/// The subscribers running on one bus, by name, with the handlers they
/// are made with and the last reloads operators may want to see.
pub struct Subscribers {
    bus: Arc<Bus>,
    handlers: Arc<dyn HandlerFactory>,
    stop: CancellationToken,
    running: BTreeMap<String, Running>,
    notes: VecDeque<ReloadNote>,
}

/// One subscriber's loop and the handle that steers it.
struct Running {
    subscription: Arc<Subscription>,
    task: JoinHandle<()>,
}

impl Subscribers {
    /// None yet, on `bus`, with handlers from `handlers`; `stop` stops
    /// every loop.
    pub fn new(bus: Arc<Bus>, handlers: Arc<dyn HandlerFactory>, stop: CancellationToken) -> Self {
        Subscribers {
            bus,
            handlers,
            stop,
            running: BTreeMap::new(),
            notes: VecDeque::new(),
        }
    }

    /// What makes their handlers (and loads plugins before they change).
    pub fn handlers(&self) -> &Arc<dyn HandlerFactory> {
        &self.handlers
    }

    /// Creates the streams of a subscriber with `settings` (its plugin
    /// loaded before) and starts its loop.
    pub async fn start(&mut self, settings: SubscriberConfig) -> anyhow::Result<()> {
        self.bus.prepare_subscriber(&settings.name).await?;
        let handler = self.handlers.handler(&settings);
        let name = settings.name.clone();
        let subscription = Arc::new(Subscription::new(
            settings,
            handler,
            self.stop.child_token(),
        ));
        let task = self.bus.spawn_subscriber(subscription.clone()).await?;
        self.running.insert(name, Running { subscription, task });
        Ok(())
    }

    /// New settings for a running subscriber, with the handler made for
    /// them, from its next event on; `false` if it does not run.
    pub fn apply(&self, settings: SubscriberConfig) -> bool {
        let Some(running) = self.running.get(&settings.name) else {
            return false;
        };
        let handler = self.handlers.handler(&settings);
        running.subscription.update(settings, handler);
        true
    }

    /// The subscribers that run the plugin at `path`.
    pub fn using(&self, path: &Path) -> Vec<String> {
        self.running
            .iter()
            .filter(|(_, r)| r.subscription.settings().plugin == path)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Gives every subscriber of the plugin at `path` a handler of its
    /// newly loaded build, from its next event on.
    pub fn swap(&self, path: &Path) {
        for running in self.running.values() {
            let settings = running.subscription.settings();
            if settings.plugin == path {
                running
                    .subscription
                    .swap_handler(self.handlers.handler(&settings));
            }
        }
    }

    /// The plugin files in use.
    pub fn plugins(&self) -> BTreeSet<PathBuf> {
        self.running
            .values()
            .map(|r| r.subscription.settings().plugin.clone())
            .collect()
    }

    /// Each running subscriber's name and settings, by name.
    pub fn settings(&self) -> impl Iterator<Item = (&str, Arc<SubscriberConfig>)> {
        self.running
            .iter()
            .map(|(name, r)| (name.as_str(), r.subscription.settings()))
    }

    /// Of the `configured` subscribers, each that is not running, said for
    /// a person (for `/readyz`): never started, or its loop ended (it ends
    /// only when stopped, or if it crashed).
    pub fn not_running(&self, configured: &[SubscriberConfig]) -> Vec<String> {
        configured
            .iter()
            .filter_map(|settings| {
                let name = &settings.name;
                match self.running.get(name) {
                    None => Some(format!("subscriber {name}: not started (see the log)")),
                    Some(r) if r.task.is_finished() => {
                        Some(format!("subscriber {name}: its loop is not running"))
                    }
                    Some(_) => None,
                }
            })
            .collect()
    }

    /// Points the fan-out at the running subscribers; returns once nothing
    /// is routed by the old table any more.
    pub async fn route(&self) {
        let settings: Vec<Arc<SubscriberConfig>> = self
            .running
            .values()
            .map(|r| r.subscription.settings())
            .collect();
        let routes = Routes::new(
            self.bus.keys(),
            settings
                .iter()
                .map(|s| (s.name.as_str(), &s.events, s.order.as_ref())),
        );
        self.bus.set_routes(routes).await;
    }

    /// Stops routing to the subscribers `names`, then lets them handle
    /// what was routed to them for up to [`FINISH_LIMIT`]: a longer backlog
    /// stays in the stream, handled if the subscriber is added back.
    pub async fn remove(&mut self, names: &[String]) {
        let removed: Vec<(String, Running)> = names
            .iter()
            .filter_map(|name| self.running.remove_entry(name))
            .collect();
        self.route().await;
        for (_, running) in &removed {
            running.subscription.finish();
        }
        let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
        for (name, mut running) in removed {
            if tokio::time::timeout_at(deadline, &mut running.task)
                .await
                .is_ok()
            {
                tracing::info!(
                    subscriber = %name,
                    "subscriber removed after handling what was routed to it; its stream and DLQ stay in Redis"
                );
            } else {
                running.stop().await;
                tracing::warn!(
                    subscriber = %name,
                    "subscriber removed with events left in its stream (more than {FINISH_LIMIT:?} of work); \
                     they are handled if it is added back"
                );
            }
        }
    }

    /// Remembers a reload or a refusal, for `status` and the console.
    pub fn note(&mut self, note: ReloadNote) {
        if self.notes.len() == NOTES_KEPT {
            self.notes.pop_front();
        }
        self.notes.push_back(note);
    }

    /// The last reloads and refusals, oldest first.
    pub fn notes(&self) -> impl Iterator<Item = &ReloadNote> {
        self.notes.iter()
    }

    /// How many run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every loop after its batch is committed, and waits for them.
    pub async fn stop(self) {
        for running in self.running.into_values() {
            running.stop().await;
        }
    }
}

impl Running {
    /// Stops the loop after its batch is committed, and waits for it.
    async fn stop(self) {
        self.subscription.stop();
        let _ = self.task.await;
    }
}
