//! `eventhost run`: config → plugins → bus, until a signal stops it.
//!
//! The daemon owns what runs: one [`Subscription`] and [`WasmHandler`] per
//! subscriber, the loops that serve them, and the fan-out. Plugins are
//! compiled before anything connects, so a bad plugin stops the start with a
//! clear message instead of dead-lettering every event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::fanout::Routes;
use crate::bus::private_redis::PrivateRedis;
use crate::bus::subscriber::Subscription;
use crate::bus::Bus;
use crate::config::{self, Config, SubscriberConfig};
use crate::plugin::{CompiledPlugin, Limits, PluginRuntime, WasmHandler};
use crate::{shutdown, telemetry};

/// One subscriber as it runs.
struct Running {
    subscription: Arc<Subscription>,
    task: JoinHandle<()>,
}

/// Runs the host for the config at `path` until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    shutdown::on_signals(shutdown.clone()).context("cannot listen for signals")?;

    let config = config::load(path)?;
    if let Some(addr) = config.telemetry.metrics {
        telemetry::serve_metrics(addr)?;
    }
    let runtime = PluginRuntime::new(&config.plugins.cache_dir)?;
    let plugins = load_plugins(&runtime, &config).await?;

    // Started here, on the main thread, so it lives as long as we do.
    let private = match &config.redis.url {
        Some(_) => None,
        None => Some(PrivateRedis::start(&config.state_dir.join("redis")).await?),
    };
    let url = config.redis.url.clone().unwrap_or_else(|| {
        private
            .as_ref()
            .map(|p| p.url().to_string())
            .unwrap_or_default()
    });

    let result = serve(&config, &runtime, plugins, &url, &shutdown).await;
    if let Some(private) = private {
        private.stop().await;
    }
    result
}

async fn serve(
    config: &Config,
    runtime: &Arc<PluginRuntime>,
    plugins: BTreeMap<PathBuf, Arc<CompiledPlugin>>,
    url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(bus) = Bus::connect(url, &config.redis.prefix, config.bus.clone(), shutdown).await?
    else {
        return Ok(());
    };
    let mut running = BTreeMap::new();
    for settings in &config.subscribers {
        let plugin = plugins[&settings.plugin].clone();
        let sub = start_subscriber(&bus, runtime, settings, plugin, shutdown).await?;
        running.insert(settings.name.clone(), sub);
    }
    bus.set_routes(routes(&bus, config));
    let fanout = bus.spawn_fanout(shutdown.clone()).await?;
    tracing::info!(
        config = %config.path.display(),
        "eventhost running: {} subscribers ({}); publish to {}",
        running.len(),
        running.keys().cloned().collect::<Vec<_>>().join(", "),
        bus.keys().all().stream
    );

    shutdown.cancelled().await;
    tracing::info!("finishing in-flight events");
    let _ = fanout.await;
    for (_, sub) in running {
        sub.subscription.stop();
        let _ = sub.task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn routes(bus: &Bus, config: &Config) -> Routes {
    Routes::new(
        bus.keys(),
        config
            .subscribers
            .iter()
            .map(|s| (s.name.as_str(), &s.events)),
    )
}

async fn start_subscriber(
    bus: &Bus,
    runtime: &Arc<PluginRuntime>,
    settings: &SubscriberConfig,
    plugin: Arc<CompiledPlugin>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Running> {
    bus.prepare_subscriber(&settings.name).await?;
    let handler = Arc::new(WasmHandler::new(
        runtime.clone(),
        &settings.name,
        &settings.plugin_file,
        plugin,
        limits(settings),
        settings.config.clone(),
    ));
    let subscription = Arc::new(Subscription::new(
        settings.clone(),
        handler,
        shutdown.child_token(),
    ));
    let task = bus.spawn_subscriber(subscription.clone()).await?;
    Ok(Running { subscription, task })
}

/// The limits a subscriber's instances run under.
pub fn limits(settings: &SubscriberConfig) -> Limits {
    Limits {
        timeout: settings.timeout,
        memory_bytes: settings.memory_bytes,
        concurrency: settings.concurrency,
    }
}

/// Compiles (or loads from the cache) every plugin the config names, each
/// file once; every refusal is reported, not just the first.
pub async fn load_plugins(
    runtime: &Arc<PluginRuntime>,
    config: &Config,
) -> anyhow::Result<BTreeMap<PathBuf, Arc<CompiledPlugin>>> {
    let mut paths: Vec<PathBuf> = config
        .subscribers
        .iter()
        .map(|s| s.plugin.clone())
        .collect();
    paths.sort();
    paths.dedup();
    let mut loaded = BTreeMap::new();
    let mut refused = Vec::new();
    for path in paths {
        let rt = runtime.clone();
        let file = path.clone();
        let result = tokio::task::spawn_blocking(move || rt.load(&file))
            .await
            .context("plugin loader crashed")?;
        match result {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %path.display(),
                    build = plugin.short_digest(),
                    "loaded in {:?}{}",
                    plugin.load_time,
                    if plugin.cached { " (compiled cache)" } else { "" }
                );
                loaded.insert(path, Arc::new(plugin));
            }
            Err(err) => refused.push(err.to_string()),
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
