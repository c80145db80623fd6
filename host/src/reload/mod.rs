//! Hot reload: noticing a change on disk ([`watch`]), working out what it
//! means ([`plan`]), and applying it to the running daemon, all or nothing.
//!
//! A new plugin build is loaded off the event path and swapped in between
//! two events; a config change starts, changes and stops subscribers. What
//! is refused is logged and counted, and leaves what runs untouched.

pub mod plan;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::bus::heartbeat::ReloadNote;
use crate::config::SubscriberConfig;
use crate::daemon::runner::FINISH_LIMIT;
use crate::daemon::{Daemon, Runner};
use crate::handler::Reload;
use crate::preflight;
use crate::telemetry::metrics;
pub use watch::{Change, Watcher};

/// The next changes the watcher saw; never, without a watcher.
pub async fn next_changes(watcher: &mut Option<Watcher>) -> Option<BTreeSet<Change>> {
    match watcher {
        Some(watcher) => watcher.next().await,
        None => std::future::pending().await,
    }
}

/// Applies what changed on disk: a config change now, a plugin's in the
/// background (see [`PluginReloads`]).
pub async fn apply(daemon: &mut Daemon, changes: BTreeSet<Change>, reloads: &mut PluginReloads) {
    for change in changes {
        match change {
            Change::Config => config_changed(daemon).await,
            Change::Plugin(path) => reloads.start(daemon, path),
        }
    }
}

/// SIGHUP: the config and every plugin in use, read again.
pub async fn everything(daemon: &mut Daemon, reloads: &mut PluginReloads) {
    tracing::info!("SIGHUP: reloading the config and every plugin");
    config_changed(daemon).await;
    let paths: BTreeSet<PathBuf> = daemon
        .runners
        .values()
        .map(|r| r.settings().plugin.clone())
        .collect();
    for path in paths {
        reloads.start(daemon, path);
    }
}

/// Plugin files being loaded again, each in a task of its own: a compile
/// may take long (a large component, or a hostile one up to its time limit)
/// and must delay neither another plugin's reload, nor a config change, nor
/// shutdown. One file is loaded once at a time; a change while it loads
/// loads it again after.
#[derive(Default)]
pub struct PluginReloads {
    running: tokio::task::JoinSet<(PathBuf, Reload)>,
    /// Files loading now; `true`: changed again meanwhile.
    loading: HashMap<PathBuf, bool>,
}

impl PluginReloads {
    /// Starts loading `path` again, or notes that it changed while it loads.
    pub fn start(&mut self, daemon: &Daemon, path: PathBuf) {
        if let Some(again) = self.loading.get_mut(&path) {
            *again = true;
            return;
        }
        self.loading.insert(path.clone(), false);
        let handlers = daemon.handlers.clone();
        self.running.spawn(async move {
            let reload = handlers.reload(&path).await;
            (path, reload)
        });
    }

    /// The next file done loading; never, while none loads.
    pub async fn next(&mut self) -> Option<(PathBuf, Reload)> {
        loop {
            match self.running.join_next().await {
                None => return std::future::pending().await,
                Some(Ok(done)) => return Some(done),
                // A panic in the loader: the build in use stays.
                Some(Err(err)) => tracing::error!("a plugin reload crashed: {err}"),
            }
        }
    }

    /// Applies what loading `path` came to, and loads it again if it
    /// changed meanwhile.
    pub fn finished(&mut self, daemon: &mut Daemon, path: PathBuf, reload: Reload) {
        plugin_reloaded(daemon, &path, reload);
        if self.loading.remove(&path) == Some(true) {
            self.start(daemon, path);
        }
    }
}

/// Swaps the handlers of the subscribers running the plugin at `path` to
/// its new build, or reports why not.
fn plugin_reloaded(daemon: &mut Daemon, path: &Path, reload: Reload) {
    let users: Vec<&Runner> = daemon
        .runners
        .values()
        .filter(|r| r.settings().plugin == path)
        .collect();
    if users.is_empty() {
        return;
    }
    let subscribers: Vec<String> = users.iter().map(|r| r.settings().name.clone()).collect();
    let names = subscribers.join(", ");
    let file = path.display();
    match reload {
        Reload::Unchanged => {}
        Reload::Loaded { what } => {
            for runner in &users {
                runner.swap(daemon.handlers.handler(&runner.settings()));
            }
            metrics::reloaded("plugin");
            tracing::info!(plugin = %file, "reloaded: {what}; {names} run it from the next event");
            let note = note("plugin", path, &subscribers, "loaded", what);
            daemon.note_reload(note);
        }
        Reload::Refused { reason } => {
            metrics::reload_refused("plugin");
            tracing::error!(
                plugin = %file,
                "refused the new build: {reason}; {names} keep running the loaded build"
            );
            let note = note("plugin", path, &subscribers, "refused", reason);
            daemon.note_reload(note);
        }
        Reload::Unsettled => tracing::warn!(
            plugin = %file,
            "plugin file removed or still changing; {names} keep running the loaded build"
        ),
    }
}

/// Reads the config again and applies what changed, all or nothing.
async fn config_changed(daemon: &mut Daemon) {
    let path = daemon.config.path.clone();
    if watch::settled(&path, watch::CONFIG_QUIET).await.is_none() {
        tracing::warn!(
            config = %path.display(),
            "config file removed or still changing; the running config stays"
        );
        return;
    }
    let refused = |daemon: &mut Daemon, err: anyhow::Error| {
        metrics::reload_refused("config");
        tracing::error!("config change refused, the running config stays:\n{err:#}");
        daemon.note_reload(note("config", &path, &[], "refused", format!("{err:#}")));
    };
    let new = match preflight::config(&path) {
        Ok(new) => new,
        Err(err) => return refused(daemon, err),
    };
    let plan = plan::plan(&daemon.config, &new);
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
    let needed: Vec<SubscriberConfig> = plan.added.iter().chain(&plan.changed).cloned().collect();
    if let Err(err) = daemon.handlers.load(&new, &needed).await {
        return refused(daemon, err);
    }

    for settings in &plan.added {
        match daemon.start_subscriber(settings.clone()).await {
            Ok(()) => tracing::info!(subscriber = %settings.name, "subscriber added"),
            Err(err) => tracing::error!(subscriber = %settings.name, "cannot start: {err:#}"),
        }
    }
    for settings in &plan.changed {
        if let Some(runner) = daemon.runners.get(&settings.name) {
            runner.apply(settings.clone(), daemon.handlers.handler(settings));
            tracing::info!(subscriber = %settings.name, "settings changed; they apply from the next event");
        }
    }
    remove(daemon, &plan.removed).await;

    // Settings that need a restart keep their running values.
    let mut applied = new;
    applied.redis = daemon.config.redis.clone();
    applied.plugins = daemon.config.plugins.clone();
    applied.bus = daemon.config.bus.clone();
    applied.telemetry = daemon.config.telemetry.clone();
    applied.http = daemon.config.http.clone();
    daemon.config = applied;
    metrics::reloaded("config");
    let what = format!(
        "{} added, {} removed, {} changed",
        plan.added.len(),
        plan.removed.len(),
        plan.changed.len()
    );
    tracing::info!("config reloaded: {what}");
    let concerned: Vec<String> = plan
        .added
        .iter()
        .chain(&plan.changed)
        .map(|s| s.name.clone())
        .chain(plan.removed.iter().cloned())
        .collect();
    daemon.note_reload(note("config", &path, &concerned, "loaded", what));
}

/// A reload as operators see it in `status` and the console.
fn note(
    what: &str,
    subject: &Path,
    subscribers: &[String],
    outcome: &str,
    detail: String,
) -> ReloadNote {
    ReloadNote {
        at: crate::handler::unix_now(),
        what: what.to_string(),
        subject: subject.file_name().map_or_else(
            || subject.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
        subscribers: subscribers.to_vec(),
        outcome: outcome.to_string(),
        detail,
    }
}

/// Stops routing to the subscribers `names`, then lets them handle what
/// was routed to them, for a while: a longer backlog stays in the stream,
/// handled if the subscriber is added back.
async fn remove(daemon: &mut Daemon, names: &[String]) {
    let removed: Vec<(String, Runner)> = names
        .iter()
        .filter_map(|name| daemon.runners.remove_entry(name))
        .collect();
    daemon.route().await;
    for (_, runner) in &removed {
        runner.finish();
    }
    let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
    for (name, runner) in removed {
        if runner.finished_within(deadline).await {
            tracing::info!(
                subscriber = %name,
                "subscriber removed after handling what was routed to it; its stream and DLQ stay in Redis"
            );
        } else {
            tracing::warn!(
                subscriber = %name,
                "subscriber removed with events left in its stream (more than {FINISH_LIMIT:?} of work); \
                 they are handled if it is added back"
            );
        }
    }
}
