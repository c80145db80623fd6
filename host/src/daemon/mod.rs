//! `eventhost run`: a config and a handler factory → a running bus, until
//! the shutdown future resolves.
//!
//! The [`Daemon`] is wiring: per subscriber a [`Runner`], plus the fan-out.
//! Handlers are loaded (plugins compiled) before anything connects, so a bad
//! plugin stops the start with a clear message instead of dead-lettering
//! every event. While it serves, changes on disk and SIGHUP are handed to
//! [`reload`](crate::reload), which applies them through the runners.

mod heartbeat;
mod plugins;
pub mod runner;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::heartbeat::ReloadNote;
use crate::bus::routes::Routes;
use crate::bus::{self, Bus};
use crate::config::{Config, Endpoint, SubscriberConfig};
use crate::handler::HandlerFactory;
use crate::http::Readiness;
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
    let (ready, _) = watch::channel(Readiness::starting());
    run_observed(config, handlers, shutdown, ready).await
}

/// [`run`], telling `ready` how ready it is as it goes (for `/readyz`).
pub async fn run_observed(
    config: Config,
    handlers: Arc<dyn HandlerFactory>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: watch::Sender<Readiness>,
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
    ready.send_replace(Readiness {
        redis: None,
        waiting: vec!["connecting to Redis".into()],
    });

    let private = match &config.redis.endpoint {
        Some(_) => None,
        None => Some(PrivateRedis::start(&config.state_dir.join("redis")).await?),
    };
    let endpoint = match (&config.redis.endpoint, &private) {
        (Some(endpoint), _) => endpoint.clone(),
        (_, Some(private)) => Endpoint::Server(private.url().to_string()),
        (None, None) => unreachable!("a private server runs when no endpoint is set"),
    };
    let result = async {
        let bus = Bus::connect(&endpoint, &config.redis, config.bus.clone(), &stop).await?;
        let Some(bus) = bus else { return Ok(()) };
        let mut daemon = Daemon::start(config, handlers, bus, stop, ready).await?;
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
    /// Where this host's HTTP listener is, for its heartbeat.
    pub listen: Option<String>,
    /// Behind a lock only so that it can read the daemon while it
    /// remembers the last readings; only the serve loop touches it.
    heartbeat: std::sync::Mutex<heartbeat::Heartbeat>,
    ready: watch::Sender<Readiness>,
    /// The last reloads and refusals, oldest first, for operators.
    pub reloads: VecDeque<ReloadNote>,
}

/// Reloads kept for operators.
const RELOADS_KEPT: usize = 20;

impl Daemon {
    async fn start(
        config: Config,
        handlers: Arc<dyn HandlerFactory>,
        bus: Bus,
        stop: CancellationToken,
        ready: watch::Sender<Readiness>,
    ) -> anyhow::Result<Self> {
        let config_listen = config.http.listen.map(|addr| addr.to_string());
        let mut daemon = Daemon {
            config,
            handlers,
            bus,
            stop,
            runners: BTreeMap::new(),
            fanout: None,
            listen: config_listen,
            heartbeat: std::sync::Mutex::new(heartbeat::Heartbeat::new()),
            ready,
            reloads: VecDeque::new(),
        };
        for settings in daemon.config.subscribers.clone() {
            daemon.start_subscriber(settings).await?;
        }
        daemon.route().await;
        daemon.fanout = Some(daemon.bus.spawn_fanout(daemon.stop.clone()).await?);
        daemon.report_readiness();
        tracing::info!(
            config = %daemon.config.path.display(),
            "eventhost running: {} subscribers ({}); publish to {}{}",
            daemon.runners.len(),
            daemon.runners.keys().cloned().collect::<Vec<_>>().join(", "),
            match daemon.bus.keys().ingress().as_slice() {
                [one] => one.stream.clone(),
                many => format!("{} partitions (eventhost publish picks one)", many.len()),
            },
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
        let mut beats = tokio::time::interval(bus::heartbeat::EVERY);
        // A config change that loads a slow plugin is cut short by
        // shutdown: what it did not apply is read again on the next start.
        let stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = beats.tick() => {
                    self.beat();
                    self.report_readiness();
                }
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

    /// Writes this host's heartbeat, off the loop: an outage must not hold
    /// up reloads.
    fn beat(&mut self) {
        let record = self
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(self);
        let write = self.bus.beat(record);
        tokio::spawn(async move {
            if let Err(err) = write.await {
                tracing::debug!("cannot write the heartbeat: {err}");
            }
        });
    }

    /// Remembers a reload or a refusal, for `status` and the console.
    pub fn note_reload(&mut self, note: ReloadNote) {
        if self.reloads.len() == RELOADS_KEPT {
            self.reloads.pop_front();
        }
        self.reloads.push_back(note);
    }

    /// Tells the HTTP listener what is not running.
    fn report_readiness(&self) {
        let mut waiting = Vec::new();
        if self.fanout.as_ref().is_none_or(|f| f.is_finished()) {
            waiting.push("fan-out: its loop is not running".to_string());
        }
        for settings in &self.config.subscribers {
            match self.runners.get(&settings.name) {
                None => waiting.push(format!(
                    "subscriber {}: not started (see the log)",
                    settings.name
                )),
                Some(runner) if !runner.is_running() => waiting.push(format!(
                    "subscriber {}: its loop is not running",
                    settings.name
                )),
                Some(_) => {}
            }
        }
        self.ready.send_replace(Readiness {
            redis: Some(self.bus.connection()),
            waiting,
        });
    }

    /// Waits for every loop to finish and commit what it holds.
    async fn stop(self) {
        tracing::info!("finishing in-flight events");
        self.ready.send_replace(Readiness {
            redis: None,
            waiting: vec!["stopping".into()],
        });
        if let Some(fanout) = self.fanout {
            let _ = fanout.await;
        }
        for (_, runner) in self.runners {
            runner.stop().await;
        }
        // Gone at once for `status`, not when the heartbeat expires.
        let leave = tokio::time::timeout(std::time::Duration::from_secs(1), self.bus.leave());
        if let Ok(Err(err)) = leave.await {
            tracing::debug!("cannot remove the heartbeat: {err}");
        }
        tracing::info!("stopped");
    }
}
