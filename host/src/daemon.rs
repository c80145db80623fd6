//! `eventhost run`: config → plugins → bus, until a signal stops it.
//!
//! The [`Daemon`] owns what runs: per subscriber a [`Subscription`], the
//! [`WasmHandler`] that runs its plugin and the loop that serves it, plus the
//! fan-out. Plugins are compiled before anything connects, so a bad plugin
//! stops the start with a clear message instead of dead-lettering every
//! event. While running, it applies changed plugins and configs (see
//! [`reload`]): a new build is compiled off the event path and swapped in
//! between two events; anything refused leaves what runs untouched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::fanout::Routes;
use crate::bus::private_redis::PrivateRedis;
use crate::bus::subscriber::Subscription;
use crate::bus::Bus;
use crate::config::{self, Config, SubscriberConfig};
use crate::plugin::{CompiledPlugin, Limits, LoadError, PluginFile, PluginRuntime, WasmHandler};
use crate::reload::{self, Change, Stamp, Watcher};
use crate::shutdown;
use crate::telemetry::{self, metrics};

/// How long a subscriber removed from the config may take to handle what
/// was routed to it before it is stopped.
const FINISH_LIMIT: Duration = Duration::from_secs(10);

/// Runs the host for the config at `path` until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    shutdown::on_signals(shutdown.clone()).context("cannot listen for signals")?;
    let hangups = shutdown::on_hangup().context("cannot listen for SIGHUP")?;

    let config = config::load(path)?;
    if let Some(addr) = config.telemetry.metrics {
        telemetry::serve_metrics(addr)?;
    }
    // Watch before loading: a file changed while the host starts is then
    // reloaded once it serves, never missed.
    let watcher = if config.plugins.watch {
        Watcher::start(&config.path, &config.plugins.dir)
            .inspect_err(|err| tracing::warn!("hot reload is off: {err:#}; SIGHUP still reloads"))
            .ok()
    } else {
        None
    };
    let runtime = PluginRuntime::new(&config.plugins.cache_dir)?;
    let plugins = load_plugins(&runtime, &config.subscribers).await?;

    // Started here, on the main thread, so it lives as long as we do.
    let private = match &config.redis.url {
        Some(_) => None,
        None => Some(PrivateRedis::start(&config.state_dir.join("redis")).await?),
    };
    let url = match (&config.redis.url, &private) {
        (Some(url), _) => url.clone(),
        (None, Some(private)) => private.url().to_string(),
        (None, None) => unreachable!("a private server runs when no URL is set"),
    };

    let result = async {
        let bus = Bus::connect(&url, &config.redis.prefix, config.bus.clone(), &shutdown).await?;
        let Some(bus) = bus else { return Ok(()) };
        let mut daemon = Daemon::start(config, runtime, bus, plugins, shutdown).await?;
        daemon.serve(hangups, watcher).await;
        daemon.stop().await;
        Ok(())
    }
    .await;
    if let Some(private) = private {
        private.stop().await;
    }
    result
}

/// One subscriber as it runs.
struct Running {
    settings: SubscriberConfig,
    handler: Arc<WasmHandler>,
    subscription: Arc<Subscription>,
    task: JoinHandle<()>,
}

/// Everything `eventhost run` runs.
struct Daemon {
    config: Config,
    runtime: Arc<PluginRuntime>,
    bus: Bus,
    shutdown: CancellationToken,
    subscribers: BTreeMap<String, Running>,
    fanout: Option<JoinHandle<()>>,
    /// Plugin files refused as they are now, so a refusal is reported once.
    refused: HashMap<PathBuf, Stamp>,
}

impl Daemon {
    async fn start(
        config: Config,
        runtime: Arc<PluginRuntime>,
        bus: Bus,
        plugins: BTreeMap<PathBuf, Arc<CompiledPlugin>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut daemon = Daemon {
            config,
            runtime,
            bus,
            shutdown,
            subscribers: BTreeMap::new(),
            fanout: None,
            refused: HashMap::new(),
        };
        for settings in daemon.config.subscribers.clone() {
            let plugin = plugins[&settings.plugin].clone();
            daemon.start_subscriber(settings, plugin).await?;
        }
        daemon.route().await;
        daemon.fanout = Some(daemon.bus.spawn_fanout(daemon.shutdown.clone()).await?);
        tracing::info!(
            config = %daemon.config.path.display(),
            "eventhost running: {} subscribers ({}); publish to {}{}",
            daemon.subscribers.len(),
            daemon.subscribers.keys().cloned().collect::<Vec<_>>().join(", "),
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
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                Some(()) = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the config and every plugin");
                    self.reload_config().await;
                    self.reload_all_plugins().await;
                }
                Some(changes) = next_changes(&mut watcher) => self.apply_changes(changes).await,
            }
        }
    }

    async fn apply_changes(&mut self, changes: BTreeSet<Change>) {
        for change in changes {
            match change {
                Change::Config => self.reload_config().await,
                Change::Plugin(path) => self.reload_plugin(&path).await,
            }
        }
    }

    async fn start_subscriber(
        &mut self,
        settings: SubscriberConfig,
        plugin: Arc<CompiledPlugin>,
    ) -> anyhow::Result<()> {
        self.bus.prepare_subscriber(&settings.name).await?;
        let handler = Arc::new(WasmHandler::new(
            self.runtime.clone(),
            &settings.name,
            &settings.plugin_file,
            plugin,
            limits(&settings),
            settings.config.clone(),
        ));
        let subscription = Arc::new(Subscription::new(
            settings.clone(),
            handler.clone(),
            self.shutdown.child_token(),
        ));
        let task = self.bus.spawn_subscriber(subscription.clone()).await?;
        self.subscribers.insert(
            settings.name.clone(),
            Running {
                settings,
                handler,
                subscription,
                task,
            },
        );
        Ok(())
    }

    /// Points the fan-out at the running subscribers; returns once nothing
    /// is routed by the old table any more.
    async fn route(&self) {
        let routes = Routes::new(
            self.bus.keys(),
            self.subscribers
                .values()
                .map(|r| (r.settings.name.as_str(), &r.settings.events)),
        );
        self.bus.set_routes(routes).await;
    }

    /// Loads a changed plugin file and swaps it in for every subscriber
    /// that runs it.
    async fn reload_plugin(&mut self, path: &Path) {
        let users: Vec<String> = self
            .subscribers
            .values()
            .filter(|r| r.settings.plugin == path)
            .map(|r| r.settings.name.clone())
            .collect();
        if users.is_empty() {
            return;
        }
        let file = path.display();
        let gone = || {
            tracing::warn!(
                plugin = %file,
                "plugin file removed or still changing; {} keep running the loaded build",
                users.join(", ")
            );
        };
        let Some(before) = reload::stamp(path) else {
            return gone();
        };
        let file_path = path.to_path_buf();
        let read = off_thread(move || PluginFile::read(&file_path)).await;
        // Editors and copies raise several events for one write; compile a
        // file only if it holds a build that is not running already.
        if let Ok(file) = &read {
            let running_it = |name: &String| {
                self.subscribers[name].handler.current().plugin().digest == file.digest
            };
            if users.iter().all(running_it) {
                return;
            }
        }
        // Compile while making sure the file stays as it was read: a file
        // still being written changes its stamp, and its next change notice
        // reloads it once it is done.
        let started = Instant::now();
        let runtime = self.runtime.clone();
        let compile = async move {
            let file = read?;
            off_thread(move || runtime.compile(file))
                .await
                .map(Arc::new)
        };
        let (stamp, loaded) = tokio::join!(reload::settled(path, reload::PLUGIN_QUIET), compile);
        let Some(stamp) = stamp else {
            return gone();
        };
        if stamp != before {
            tracing::debug!(plugin = %file, "changed while it was read; waiting for the next change notice");
            return;
        }
        match loaded {
            Ok(plugin) => {
                self.refused.remove(path);
                let mut swapped = Vec::new();
                let mut previous = String::new();
                for name in &users {
                    let running = &self.subscribers[name];
                    let current = running.handler.current();
                    if current.plugin().digest == plugin.digest {
                        continue;
                    }
                    previous = current.plugin().short_digest().to_string();
                    running.handler.swap(
                        plugin.clone(),
                        limits(&running.settings),
                        running.settings.config.clone(),
                    );
                    swapped.push(name.as_str());
                }
                if swapped.is_empty() {
                    return;
                }
                metrics::reloaded("plugin");
                tracing::info!(
                    plugin = %file,
                    "reloaded: build {previous} → {} ({}) in {:?}; {} run it from the next event",
                    plugin.short_digest(),
                    if plugin.cached { "compiled cache" } else { "compiled" },
                    started.elapsed(),
                    swapped.join(", ")
                );
            }
            Err(reason) => {
                // A writer may still be adding to the file: report only a
                // file that stays as it is.
                tokio::time::sleep(reload::REFUSAL_GRACE).await;
                if reload::stamp(path) != Some(stamp) || self.refused.get(path) == Some(&stamp) {
                    return;
                }
                self.refused.insert(path.to_path_buf(), stamp);
                metrics::reload_refused("plugin");
                tracing::error!(
                    plugin = %file,
                    "refused the new build: {reason:#}; {} keep running the loaded build",
                    users.join(", ")
                );
            }
        }
    }

    async fn reload_all_plugins(&mut self) {
        let paths: BTreeSet<PathBuf> = self
            .subscribers
            .values()
            .map(|r| r.settings.plugin.clone())
            .collect();
        for path in paths {
            self.reload_plugin(&path).await;
        }
    }

    /// Reads the config again and applies what changed, all or nothing.
    async fn reload_config(&mut self) {
        if reload::settled(&self.config.path, reload::CONFIG_QUIET)
            .await
            .is_none()
        {
            tracing::warn!(
                config = %self.config.path.display(),
                "config file removed or still changing; the running config stays"
            );
            return;
        }
        let new = match config::load(&self.config.path) {
            Ok(new) => new,
            Err(err) => {
                metrics::reload_refused("config");
                tracing::error!("config change refused, the running config stays:\n{err:#}");
                return;
            }
        };
        let plan = reload::plan(&self.config, &new);
        if !plan.needs_restart.is_empty() {
            tracing::warn!(
                "{} changed; those settings apply after a restart",
                plan.needs_restart.join(", ")
            );
        }
        if plan.is_empty() {
            return;
        }
        // Every new plugin must load before anything changes.
        let mut needed: Vec<SubscriberConfig> = plan.added.clone();
        needed.extend(
            plan.changed
                .iter()
                .filter(|s| {
                    self.subscribers
                        .get(&s.name)
                        .is_none_or(|r| r.settings.plugin != s.plugin)
                })
                .cloned(),
        );
        let plugins = match load_plugins(&self.runtime, &needed).await {
            Ok(plugins) => plugins,
            Err(err) => {
                metrics::reload_refused("config");
                tracing::error!("config change refused, the running config stays: {err:#}");
                return;
            }
        };

        for settings in &plan.added {
            let plugin = plugins[&settings.plugin].clone();
            if let Err(err) = self.start_subscriber(settings.clone(), plugin).await {
                tracing::error!(subscriber = %settings.name, "cannot start: {err:#}");
            } else {
                tracing::info!(subscriber = %settings.name, "subscriber added");
            }
        }
        for settings in &plan.changed {
            let Some(running) = self.subscribers.get_mut(&settings.name) else {
                continue;
            };
            let plugin = plugins
                .get(&settings.plugin)
                .cloned()
                .unwrap_or_else(|| running.handler.current().plugin().clone());
            running
                .handler
                .swap(plugin, limits(settings), settings.config.clone());
            running.subscription.update(settings.clone());
            running.settings = settings.clone();
            tracing::info!(subscriber = %settings.name, "settings changed; they apply from the next event");
        }
        // Stop routing to removed subscribers, then let them handle what
        // was routed to them (for a while: a long backlog stays in the
        // stream, handled if the subscriber is added back).
        let removed: Vec<Running> = plan
            .removed
            .iter()
            .filter_map(|name| self.subscribers.remove(name))
            .collect();
        self.route().await;
        for running in &removed {
            running.subscription.finish();
        }
        let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
        for mut running in removed {
            let name = running.settings.name;
            if tokio::time::timeout_at(deadline, &mut running.task)
                .await
                .is_ok()
            {
                tracing::info!(
                    subscriber = %name,
                    "subscriber removed after handling what was routed to it; its stream and DLQ stay in Redis"
                );
            } else {
                running.subscription.stop();
                let _ = running.task.await;
                tracing::warn!(
                    subscriber = %name,
                    "subscriber removed with events left in its stream (more than {FINISH_LIMIT:?} of work); \
                     they are handled if it is added back"
                );
            }
        }

        // Settings that need a restart keep their running values.
        let mut applied = new;
        applied.redis = self.config.redis.clone();
        applied.plugins = self.config.plugins.clone();
        applied.bus = self.config.bus.clone();
        applied.telemetry = self.config.telemetry.clone();
        self.config = applied;
        metrics::reloaded("config");
        tracing::info!(
            "config reloaded: {} added, {} removed, {} changed",
            plan.added.len(),
            plan.removed.len(),
            plan.changed.len()
        );
    }

    /// Waits for every loop to finish and commit what it holds.
    async fn stop(self) {
        tracing::info!("finishing in-flight events");
        if let Some(fanout) = self.fanout {
            let _ = fanout.await;
        }
        for (_, running) in self.subscribers {
            running.subscription.stop();
            let _ = running.task.await;
        }
        tracing::info!("stopped");
    }
}

async fn next_changes(watcher: &mut Option<Watcher>) -> Option<BTreeSet<Change>> {
    match watcher {
        Some(watcher) => watcher.next().await,
        None => std::future::pending().await,
    }
}

/// The limits a subscriber's instances run under.
pub fn limits(settings: &SubscriberConfig) -> Limits {
    Limits {
        timeout: settings.timeout,
        memory_bytes: settings.memory_bytes,
        concurrency: settings.concurrency,
        grants: settings.grants.clone(),
    }
}

/// Compiles (or loads from the cache) one plugin, off the async threads.
async fn load(runtime: &Arc<PluginRuntime>, path: &Path) -> anyhow::Result<Arc<CompiledPlugin>> {
    let runtime = runtime.clone();
    let path = path.to_path_buf();
    off_thread(move || runtime.load(&path)).await.map(Arc::new)
}

/// Runs blocking plugin file work (reading, compiling) on tokio's blocking
/// threads.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .context("plugin loader crashed")??)
}

/// Loads every plugin `subscribers` use, each file once; every refusal is
/// reported, not just the first.
pub async fn load_plugins(
    runtime: &Arc<PluginRuntime>,
    subscribers: &[SubscriberConfig],
) -> anyhow::Result<BTreeMap<PathBuf, Arc<CompiledPlugin>>> {
    let paths: BTreeSet<PathBuf> = subscribers.iter().map(|s| s.plugin.clone()).collect();
    let mut loaded = BTreeMap::new();
    let mut refused = Vec::new();
    for path in paths {
        match load(runtime, &path).await {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %path.display(),
                    build = plugin.short_digest(),
                    "loaded in {:?}{}",
                    plugin.load_time,
                    if plugin.cached { " (compiled cache)" } else { "" }
                );
                loaded.insert(path, plugin);
            }
            Err(err) => refused.push(format!("{err:#}")),
        }
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "{} plugin{} refused:\n  {}",
            refused.len(),
            if refused.len() == 1 { " was" } else { "s were" },
            refused.join("\n  ")
        );
    }
    Ok(loaded)
}
