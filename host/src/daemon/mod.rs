//! `eventhost run`: a config and a handler factory → a running bus, until
//! the shutdown future resolves.
//!
//! The daemon is wiring. The HTTP listener starts first, so a supervisor
//! sees a live but not yet ready host while plugins compile; handlers are
//! loaded before anything connects, so a bad plugin stops the start with a
//! clear message instead of dead-lettering every event; then the
//! [`Subscribers`] and the fan-out run on the [`Bus`]. While it serves,
//! changes on disk and SIGHUP go to [`reload`], which applies them to the
//! subscribers.

mod heartbeat;
mod plugins;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::schedules::Schedules;
use crate::bus::{self, Bus};
use crate::config::Config;
use crate::handler::HandlerFactory;
use crate::http::{self, Readiness};
use crate::private_redis::PrivateRedis;
use crate::reload::{self, PluginReloads, Watcher};
use crate::signals;
use crate::subscribers::Subscribers;
pub use plugins::WasmPlugins;

/// Runs the bus for `config` with handlers from `handlers` until `shutdown`
/// resolves; then stops reading, commits what it holds and returns. The
/// HTTP listener, if configured, answers until then.
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
    let (ready, readiness) = watch::channel(Readiness::starting());
    // The listener answers until the daemon has finished, SIGTERM or not.
    let listener = CancellationToken::new();
    let _stop_listener = listener.clone().drop_guard();
    let listen = match config.http.listen {
        Some(addr) => {
            Some(http::serve(addr, http::Site::new(&config, readiness)?, listener).await?)
        }
        None => None,
    };
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

    let (endpoint, private) = PrivateRedis::unless_configured(&config).await?;
    let result = async {
        let bus = Bus::connect(&endpoint, &config.redis, config.bus.clone(), &stop).await?;
        let Some(bus) = bus else { return Ok(()) };
        let wiring = Wiring {
            handlers,
            stop,
            ready,
            listen,
        };
        let mut daemon = Daemon::start(config, Arc::new(bus), wiring).await?;
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

/// The longest a stop waits for the loops: handlers get
/// `STOP_GRACE`, a commit through a lost
/// connection [`SHUTDOWN_PATIENCE`](crate::bus::worker::SHUTDOWN_PATIENCE) more;
/// past this, a command stuck on an unreachable Redis must not keep the
/// process from exiting (nothing is lost: what is not committed stays
/// pending).
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// What [`run`] hands the daemon beside the config and the bus.
struct Wiring {
    handlers: Arc<dyn HandlerFactory>,
    stop: CancellationToken,
    ready: watch::Sender<Readiness>,
    /// Where the HTTP listener is, for the heartbeat.
    listen: Option<SocketAddr>,
}

/// Everything `eventhost run` runs once connected.
struct Daemon {
    /// The config in force: the file's, but for settings that apply only
    /// after a restart, which keep the values the daemon started with.
    config: Config,
    bus: Arc<Bus>,
    subscribers: Subscribers,
    schedules: Schedules,
    fanout: Option<JoinHandle<()>>,
    stop: CancellationToken,
    ready: watch::Sender<Readiness>,
    listen: Option<SocketAddr>,
    heartbeat: heartbeat::Heartbeat,
}

impl Daemon {
    async fn start(config: Config, bus: Arc<Bus>, wiring: Wiring) -> anyhow::Result<Self> {
        let subscribers = Subscribers::new(bus.clone(), wiring.handlers, wiring.stop.clone());
        let schedules = bus.schedules(wiring.stop.clone());
        let mut daemon = Daemon {
            config,
            bus,
            subscribers,
            schedules,
            fanout: None,
            stop: wiring.stop,
            ready: wiring.ready,
            listen: wiring.listen,
            heartbeat: heartbeat::Heartbeat::new(),
        };
        for settings in daemon.config.subscribers.clone() {
            daemon.subscribers.start(settings).await?;
        }
        daemon.subscribers.route().await;
        daemon.fanout = Some(daemon.bus.spawn_fanout(daemon.stop.clone()).await?);
        daemon.schedules.apply(&daemon.config.schedules).await;
        daemon.report_readiness();
        let names: Vec<&str> = daemon.subscribers.settings().map(|(n, _)| n).collect();
        tracing::info!(
            config = %daemon.config.path.display(),
            "eventhost running: {} subscribers ({}){}; publish to {}{}",
            names.len(),
            names.join(", "),
            match daemon.config.schedules.len() {
                0 => String::new(),
                n => format!(", {n} schedules"),
            },
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
        let mut reloads = PluginReloads::default();
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
                    _ = reload::everything(&mut self.config, &mut self.subscribers, &mut self.schedules, &mut reloads) => {}
                    _ = stop.cancelled() => return,
                },
                Some(changes) = reload::next_changes(&mut watcher) => tokio::select! {
                    _ = reload::apply(&mut self.config, &mut self.subscribers, &mut self.schedules, changes, &mut reloads) => {}
                    _ = stop.cancelled() => return,
                },
                Some((path, reload)) = reloads.next() => {
                    reloads.finished(&mut self.subscribers, path, reload)
                }
            }
        }
    }

    /// Writes this host's heartbeat, off the loop: an outage must not hold
    /// up reloads.
    fn beat(&mut self) {
        let record =
            self.heartbeat
                .record(&self.config.bus.consumer, self.listen, &self.subscribers);
        let write = self.bus.beat(record);
        // The schedule and order gauges are read from Redis: only for a listener's /metrics.
        let gauges = self.listen.is_some().then(|| {
            self.heartbeat.bus_gauges(
                self.bus.connection(),
                self.bus.keys().clone(),
                &self.subscribers,
            )
        });
        tokio::spawn(async move {
            if let Err(err) = write.await {
                tracing::debug!("cannot write the heartbeat: {err}");
            }
            if let Some(gauges) = gauges {
                if let Err(err) = gauges.await {
                    tracing::debug!("cannot read the order of keys for the metrics: {err}");
                }
            }
        });
    }

    /// Tells the HTTP listener what is not running.
    fn report_readiness(&self) {
        let mut waiting = Vec::new();
        if self.fanout.as_ref().is_none_or(|f| f.is_finished()) {
            waiting.push("fan-out: its loop is not running".to_string());
        }
        waiting.extend(self.subscribers.not_running(&self.config.subscribers));
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
        let loops = async {
            if let Some(fanout) = self.fanout {
                let _ = fanout.await;
            }
            self.subscribers.stop().await;
            self.schedules.stop().await;
        };
        if tokio::time::timeout(STOP_DEADLINE, loops).await.is_err() {
            tracing::warn!(
                "a loop did not stop within {STOP_DEADLINE:?} (Redis unreachable?); exiting: \
                 what it did not commit stays pending and is reclaimed on the next start"
            );
        }
        // Gone at once for `status`, not when the heartbeat expires.
        let leave = tokio::time::timeout(std::time::Duration::from_secs(1), self.bus.leave());
        if let Ok(Err(err)) = leave.await {
            tracing::debug!("cannot remove the heartbeat: {err}");
        }
        tracing::info!("stopped");
    }
}
