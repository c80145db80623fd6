//! Hot reload: noticing that a plugin or the config changed, and working out
//! what the change means.
//!
//! The folder of plugins and the folder of the config file are watched (not
//! the files: editors and deploy tools replace files by renaming, which a
//! watch on the file itself would miss). Events are debounced, and a file is
//! read only once its size and modification time have stopped moving, so a
//! file still being written is not read half-way; one that is read too early
//! anyway fails to compile and is tried again when it changes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer_opt, DebounceEventResult, Debouncer};
use tokio::sync::mpsc;

use crate::config::{Config, SubscriberConfig};

/// How long a path must be quiet before its change is reported.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How long a plugin file must keep its size and mtime to count as fully
/// written.
pub const PLUGIN_QUIET: Duration = Duration::from_millis(25);
/// The same for the config: edits are rare and a truncated config can be
/// valid TOML that drops subscribers, so wait longer.
pub const CONFIG_QUIET: Duration = Duration::from_millis(150);
/// Give up waiting for a file that never stops changing.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How long a refused file must stay unchanged before the refusal is
/// reported: a slow writer may still be adding to it.
pub const REFUSAL_GRACE: Duration = Duration::from_millis(300);

/// Something on disk that changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// The config file.
    Config,
    /// A file in the plugins folder (maybe not one in use).
    Plugin(PathBuf),
}

/// Watches the config file's folder and the plugins folder.
pub struct Watcher {
    config: PathBuf,
    plugins: PathBuf,
    events: mpsc::UnboundedReceiver<DebounceEventResult>,
    _debouncer: Debouncer<RecommendedWatcher>,
}

impl Watcher {
    /// Starts watching for changes of `config` and of files in `plugins`.
    pub fn start(config: &Path, plugins: &Path) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let settings = notify_debouncer_mini::Config::default()
            .with_timeout(DEBOUNCE)
            .with_batch_mode(false);
        let mut debouncer = new_debouncer_opt::<_, RecommendedWatcher>(settings, move |result| {
            let _ = tx.send(result);
        })
        .context("cannot watch for file changes")?;
        let config_dir = config.parent().unwrap_or(Path::new("."));
        for dir in [config_dir, plugins] {
            debouncer
                .watcher()
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", dir.display()))?;
        }
        Ok(Watcher {
            config: config.to_path_buf(),
            plugins: plugins.to_path_buf(),
            events,
            _debouncer: debouncer,
        })
    }

    /// The next changes, deduplicated; `None` once the watcher has stopped.
    pub async fn next(&mut self) -> Option<BTreeSet<Change>> {
        loop {
            let batch = self.events.recv().await?;
            let events = match batch {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!("file watcher error: {err}");
                    continue;
                }
            };
            let changes: BTreeSet<Change> = events
                .into_iter()
                .filter_map(|event| self.classify(&event.path))
                .collect();
            if !changes.is_empty() {
                return Some(changes);
            }
        }
    }

    fn classify(&self, path: &Path) -> Option<Change> {
        if path == self.config {
            Some(Change::Config)
        } else if path.parent() == Some(self.plugins.as_path()) {
            Some(Change::Plugin(path.to_path_buf()))
        } else {
            None
        }
    }
}

/// A file's size and modification time: what changes while it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// The file's current stamp; `None` if it does not exist.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Waits until the file at `path` has kept its size and mtime for `quiet`
/// and returns its stamp; `None` if it disappeared or never settles.
pub async fn settled(path: &Path, quiet: Duration) -> Option<Stamp> {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    let mut last = stamp(path)?;
    loop {
        tokio::time::sleep(quiet).await;
        let now = stamp(path)?;
        if now == last {
            return Some(now);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        last = now;
    }
}

/// What applying a new config to a running one takes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Subscribers to start.
    pub added: Vec<SubscriberConfig>,
    /// Subscribers to stop (their streams and DLQs stay).
    pub removed: Vec<String>,
    /// Subscribers whose settings changed.
    pub changed: Vec<SubscriberConfig>,
    /// Settings that changed but apply only after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Plan {
    /// Whether the new config changes nothing that can apply live.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares the running config with a new one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for sub in &new.subscribers {
        match old.subscribers.iter().find(|s| s.name == sub.name) {
            None => plan.added.push(sub.clone()),
            Some(running) if running != sub => plan.changed.push(sub.clone()),
            Some(_) => {}
        }
    }
    for sub in &old.subscribers {
        if !new.subscribers.iter().any(|s| s.name == sub.name) {
            plan.removed.push(sub.name.clone());
        }
    }
    let fixed = [
        ("redis", old.redis != new.redis),
        ("plugins.dir", old.plugins.dir != new.plugins.dir),
        (
            "plugins.cache_dir",
            old.plugins.cache_dir != new.plugins.cache_dir,
        ),
        ("plugins.watch", old.plugins.watch != new.plugins.watch),
        ("bus", old.bus != new.bus),
        ("telemetry", old.telemetry != new.telemetry),
    ];
    plan.needs_restart = fixed
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, text: &str) -> Config {
        crate::config::parse(&dir.join("eventhost.toml"), text).unwrap()
    }

    #[test]
    fn a_plan_lists_what_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for p in ["a.wasm", "b.wasm", "c.wasm"] {
            std::fs::write(dir.path().join("plugins").join(p), b"").unwrap();
        }
        let old = config(
            dir.path(),
            "[subscribers.a]\nplugin = \"a.wasm\"\n[subscribers.b]\nplugin = \"b.wasm\"\n",
        );
        let new = config(
            dir.path(),
            "[bus]\nread_batch = 10\n[subscribers.b]\nplugin = \"b.wasm\"\nconcurrency = 2\n[subscribers.c]\nplugin = \"c.wasm\"\n",
        );
        let plan = plan(&old, &new);
        assert_eq!(
            plan.added
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(plan.removed, ["a"]);
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.changed[0].concurrency, 2);
        assert_eq!(plan.needs_restart, ["bus"]);
        assert!(super::plan(&old, &old).is_empty());
    }

    #[tokio::test]
    async fn a_quiet_file_is_settled_and_a_missing_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        assert_eq!(settled(&path, PLUGIN_QUIET).await, None);
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(settled(&path, PLUGIN_QUIET).await.map(|s| s.len), Some(3));
    }
}
