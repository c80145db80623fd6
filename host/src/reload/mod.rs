//! Hot reload: noticing a change on disk ([`watch`]), working out what it
//! means ([`plan`]), and applying it to the running [`Subscribers`].
//!
//! A new plugin build is loaded off the event path and swapped in between
//! two events; a config change starts, changes and stops subscribers. A
//! config or a plugin that does not load is refused whole: it is logged and
//! counted, and leaves what runs untouched. Once every plugin it needs has
//! loaded, a config change is applied subscriber by subscriber: one that
//! cannot start (Redis refused its streams) is logged, and the others
//! apply.

pub mod plan;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::bus::heartbeat::ReloadNote;
use crate::bus::schedules::Schedules;
use crate::config::{Config, SubscriberConfig};
use crate::handler::{HandlerFactory, Reload};
use crate::preflight;
use crate::subscribers::Subscribers;
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
/// `config` is the config in force, updated with what applies.
pub async fn apply(
    config: &mut Config,
    subscribers: &mut Subscribers,
    schedules: &mut Schedules,
    changes: BTreeSet<Change>,
    reloads: &mut PluginReloads,
) {
    for change in changes {
        match change {
            Change::Config => config_changed(config, subscribers, schedules).await,
            Change::Plugin(path) => reloads.start(subscribers.handlers(), path),
        }
    }
}

/// SIGHUP: the config and every plugin in use, read again.
pub async fn everything(
    config: &mut Config,
    subscribers: &mut Subscribers,
    schedules: &mut Schedules,
    reloads: &mut PluginReloads,
) {
    tracing::info!("SIGHUP: reloading the config and every plugin");
    config_changed(config, subscribers, schedules).await;
    for path in subscribers.plugins() {
        reloads.start(subscribers.handlers(), path);
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
    /// Starts loading `path` again with `handlers`, or notes that it
    /// changed while it loads.
    pub fn start(&mut self, handlers: &Arc<dyn HandlerFactory>, path: PathBuf) {
        if let Some(again) = self.loading.get_mut(&path) {
            *again = true;
            return;
        }
        self.loading.insert(path.clone(), false);
        let handlers = handlers.clone();
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
    pub fn finished(&mut self, subscribers: &mut Subscribers, path: PathBuf, reload: Reload) {
        plugin_reloaded(subscribers, &path, reload);
        if self.loading.remove(&path) == Some(true) {
            self.start(subscribers.handlers(), path);
        }
    }
}

/// Swaps the handlers of the subscribers running the plugin at `path` to
/// its new build, or reports why not.
fn plugin_reloaded(running: &mut Subscribers, path: &Path, reload: Reload) {
    let subscribers = running.using(path);
    if subscribers.is_empty() {
        return;
    }
    let names = subscribers.join(", ");
    let file = path.display();
    match reload {
        Reload::Unchanged => {}
        Reload::Loaded { what } => {
            running.swap(path);
            metrics::reloaded("plugin");
            tracing::info!(plugin = %file, "reloaded: {what}; {names} run it from the next event");
            let note = note("plugin", path, &subscribers, "loaded", what);
            running.note(note);
        }
        Reload::Refused { reason } => {
            metrics::reload_refused("plugin");
            tracing::error!(
                plugin = %file,
                "refused the new build: {reason}; {names} keep running the loaded build"
            );
            let note = note("plugin", path, &subscribers, "refused", reason);
            running.note(note);
        }
        Reload::Unsettled => tracing::warn!(
            plugin = %file,
            "plugin file removed or still changing; {names} keep running the loaded build"
        ),
    }
}

/// Reads the config again and applies what changed: nothing if it or a
/// plugin it needs does not load; settings that apply only at start are
/// reported at their lines and keep their running values. Schedules
/// apply with the rest: added, changed (restarted) or removed.
async fn config_changed(
    config: &mut Config,
    subscribers: &mut Subscribers,
    schedules: &mut Schedules,
) {
    let path = config.path.clone();
    if watch::settled(&path, watch::CONFIG_QUIET).await.is_none() {
        tracing::warn!(
            config = %path.display(),
            "config file removed or still changing; the running config stays"
        );
        return;
    }
    let refused = |subscribers: &mut Subscribers, err: anyhow::Error| {
        metrics::reload_refused("config");
        tracing::error!("config change refused, the running config stays:\n{err:#}");
        subscribers.note(note("config", &path, &[], "refused", format!("{err:#}")));
    };
    let new = match preflight::config(&path) {
        Ok(new) => new,
        Err(err) => return refused(subscribers, err),
    };
    for problem in config.restart_needed(&new) {
        tracing::warn!("{problem}");
    }
    let new = config.keeping_start_settings(new);
    let plan = plan::plan(config, &new);
    if plan.is_empty() {
        schedules.apply(&new.schedules).await;
        *config = new;
        return;
    }
    // Every new plugin must load before anything changes.
    let needed: Vec<SubscriberConfig> = plan.added.iter().chain(&plan.changed).cloned().collect();
    if let Err(err) = subscribers.handlers().load(&new, &needed).await {
        return refused(subscribers, err);
    }
    schedules.apply(&new.schedules).await;

    for settings in &plan.added {
        match subscribers.start(settings.clone()).await {
            Ok(()) => tracing::info!(subscriber = %settings.name, "subscriber added"),
            Err(err) => tracing::error!(subscriber = %settings.name, "cannot start: {err:#}"),
        }
    }
    for settings in &plan.changed {
        if subscribers.apply(settings.clone()) {
            tracing::info!(subscriber = %settings.name, "settings changed; they apply from the next event");
        }
    }
    subscribers.remove(&plan.removed).await;
    *config = new;
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
    subscribers.note(note("config", &path, &concerned, "loaded", what));
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
