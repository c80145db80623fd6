//! `eventhost run`: a config and a handler factory → a running bus, until
//! the shutdown future resolves.
//!
//! The [`Daemon`] is wiring: per subscriber a [`Runner`], plus the fan-out.
//! Handlers are loaded (plugins compiled) before anything connects, so a bad
//! plugin stops the start with a clear message instead of dead-lettering
//! every event. While it serves, changes on disk and SIGHUP are handed to
//! [`reload`](crate::reload), which applies them through the runners.

mod plugins;
pub mod runner;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::routes::Routes;
use crate::bus::Bus;
use crate::config::{Config, SubscriberConfig};
use crate::handler::HandlerFactory;
use crate::private_redis::PrivateRedis;
use crate::reload::{self, Watcher};
use crate::signals;
pub use plugins::WasmPlugins;
pub use runner::Runner;

/// Runs the bus for `config` with handlers from `handlers` until `shutdown`
/// resolves; then stops reading, commits what it holds and returns.
///
/// Await it on the main thread, not in a spawned task: a private
/// redis-server started here lives as long as the thread that started it.
pub async fn run(
    config: Config,
    handlers: Arc<dyn HandlerFactory>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    let hangups = signals::on_hangup().context("cannot listen for SIGHUP")?;
    // Watch before loading: a file changed while the host starts is then
    // reloaded once it serves, never missed.
    let watcher = config.plugins.watch.then(|| {
        Watcher::start(&config.path, &config.plugins.dir)
            .inspect_err(|err| tracing::warn!("hot reload is off: {err:#}; SIGHUP still reloads"))
            .ok()
    });
    handlers.load(&config, &config.subscribers).await?;

    let private = match &config.redis.url {
        Some(_) => None,
        None => Some(PrivateRedis::start(&config.state_dir.join("redis")).await?),
    };
    let url = match (&config.redis.url, &private) {
        (Some(url), _) => url.clone(),
        (_, Some(private)) => private.url().to_string(),
        (None, None) => unreachable!("a private server runs when no URL is set"),
    };
    let result = async {
        let bus = Bus::connect(&url, &config.redis.prefix, config.bus.clone(), &stop).await?;
        let Some(bus) = bus else { return Ok(()) };
        let mut daemon = Daemon::start(config, handlers, bus, stop).await?;
        daemon.serve(hangups, watcher.flatten()).await;
        daemon.stop().await;
        Ok(())
    }
    .await;
    if let Some(private) = private {
        private.stop().await;
    }
    result
}

/// Everything `eventhost run` runs.
pub struct Daemon {
    /// The config in force: the file's, but for settings that apply only
    /// after a restart, which keep the values the daemon started with.
    pub config: Config,
    pub handlers: Arc<dyn HandlerFactory>,
    pub bus: Bus,
    pub stop: CancellationToken,
    pub runners: BTreeMap<String, Runner>,
    fanout: Option<JoinHandle<()>>,
}

impl Daemon {
    async fn start(
        config: Config,
        handlers: Arc<dyn HandlerFactory>,
        bus: Bus,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut daemon = Daemon {
            config,
            handlers,
            bus,
            stop,
            runners: BTreeMap::new(),
            fanout: None,
        };
        for settings in daemon.config.subscribers.clone() {
            daemon.start_subscriber(settings).await?;
        }
        daemon.route().await;
        daemon.fanout = Some(daemon.bus.spawn_fanout(daemon.stop.clone()).await?);
        tracing::info!(
            config = %daemon.config.path.display(),
            "eventhost running: {} subscribers ({}); publish to {}{}",
            daemon.runners.len(),
            daemon.runners.keys().cloned().collect::<Vec<_>>().join(", "),
            daemon.bus.keys().all().stream,
            if daemon.config.plugins.watch {
                "; watching for changes"
            } else {
                "; SIGHUP reloads"
            }
        );
        Ok(daemon)
    }

    /// Serves until shutdown, applying changes as they come.
    async fn serve(&mut self, mut hangups: mpsc::Receiver<()>, mut watcher: Option<Watcher>) {
        let mut reloads = reload::PluginReloads::default();
        // A config change that loads a slow plugin is cut short by
        // shutdown: what it did not apply is read again on the next start.
        let stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = hangups.recv() => tokio::select! {
                    _ = reload::everything(self, &mut reloads) => {}
                    _ = stop.cancelled() => return,
                },
                Some(changes) = reload::next_changes(&mut watcher) => tokio::select! {
                    _ = reload::apply(self, changes, &mut reloads) => {}
                    _ = stop.cancelled() => return,
                },
                Some((path, reload)) = reloads.next() => reloads.finished(self, path, reload),
            }
        }
    }

    /// Starts a subscriber with a handler for its settings (loaded before).
    pub async fn start_subscriber(&mut self, settings: SubscriberConfig) -> anyhow::Result<()> {
        let handler = self.handlers.handler(&settings);
        let name = settings.name.clone();
        let runner = Runner::start(&self.bus, settings, handler, self.stop.child_token()).await?;
        self.runners.insert(name, runner);
        Ok(())
    }

    /// Points the fan-out at the running subscribers; returns once nothing
    /// is routed by the old table any more.
    pub async fn route(&self) {
        let settings: Vec<Arc<SubscriberConfig>> =
            self.runners.values().map(Runner::settings).collect();
        let routes = Routes::new(
            self.bus.keys(),
            settings.iter().map(|s| (s.name.as_str(), &s.events)),
        );
        self.bus.set_routes(routes).await;
    }

    /// Waits for every loop to finish and commit what it holds.
    async fn stop(self) {
        tracing::info!("finishing in-flight events");
        if let Some(fanout) = self.fanout {
            let _ = fanout.await;
        }
        for (_, runner) in self.runners {
            runner.stop().await;
        }
        tracing::info!("stopped");
    }
}
