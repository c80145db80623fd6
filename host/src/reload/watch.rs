//! Noticing that a plugin or the config changed on disk.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_quiet_file_is_settled_and_a_missing_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        assert_eq!(settled(&path, PLUGIN_QUIET).await, None);
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(settled(&path, PLUGIN_QUIET).await.map(|s| s.len), Some(3));
    }
}
