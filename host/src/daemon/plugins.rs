//! The handler factory of `eventhost run`: wasm plugins, one build in use
//! per plugin file, loaded before anything runs and reloaded when the file
//! changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use crate::config::{Config, SubscriberConfig};
use crate::handler::{Handler, HandlerFactory, Reload};
use crate::plugin::{CompiledPlugin, PluginFile, PluginRuntime, WasmHandler};
use crate::preflight;
use crate::reload::watch::{self, Stamp};

/// The wasm plugins in use, by file.
pub struct WasmPlugins {
    runtime: Arc<PluginRuntime>,
    builds: Mutex<BTreeMap<PathBuf, Arc<CompiledPlugin>>>,
    /// Files refused as they are now, so a refusal is reported once.
    refused: Mutex<HashMap<PathBuf, Stamp>>,
}

impl WasmPlugins {
    /// Plugins run by `runtime`; none loaded yet.
    pub fn new(runtime: Arc<PluginRuntime>) -> Self {
        WasmPlugins {
            runtime,
            builds: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    fn loaded(&self, path: &Path) -> Option<Arc<CompiledPlugin>> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// Reports a refusal unless the file is still changing or was refused
    /// as it is already.
    async fn refusal(&self, path: &Path, stamp: Stamp, reason: String) -> Reload {
        // A writer may still be adding to the file: report only a file
        // that stays as it is.
        tokio::time::sleep(watch::REFUSAL_GRACE).await;
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if watch::stamp(path) != Some(stamp) || refused.get(path) == Some(&stamp) {
            return Reload::Unchanged;
        }
        refused.insert(path.to_path_buf(), stamp);
        Reload::Refused { reason }
    }
}

#[async_trait]
impl HandlerFactory for WasmPlugins {
    async fn load(&self, config: &Config, subscribers: &[SubscriberConfig]) -> anyhow::Result<()> {
        // A file in use keeps its build: one build per file, changed only
        // by reloading the file.
        let new: Vec<SubscriberConfig> = subscribers
            .iter()
            .filter(|s| self.loaded(&s.plugin).is_none())
            .cloned()
            .collect();
        let loaded = preflight::load_plugins(&self.runtime, &new).await;
        let plugins = loaded.all(config)?;
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(plugins);
        Ok(())
    }

    fn handler(&self, settings: &SubscriberConfig) -> Arc<dyn Handler> {
        let plugin = self
            .loaded(&settings.plugin)
            .expect("a subscriber's plugin is loaded before its handler is made");
        Arc::new(WasmHandler::new(self.runtime.clone(), settings, plugin))
    }

    fn build(&self, settings: &SubscriberConfig) -> Option<String> {
        self.loaded(&settings.plugin)
            .map(|plugin| plugin.digest.clone())
    }

    async fn reload(&self, path: &Path) -> Reload {
        let Some(running) = self.loaded(path) else {
            return Reload::Unchanged;
        };
        let Some(before) = watch::stamp(path) else {
            return Reload::Unsettled;
        };
        let file_path = path.to_path_buf();
        let max_bytes = self.runtime.max_file_bytes();
        let read =
            tokio::task::spawn_blocking(move || PluginFile::read(&file_path, max_bytes)).await;
        let read = match read {
            Ok(read) => read,
            Err(err) => {
                return Reload::Refused {
                    reason: format!("plugin loader crashed: {err}"),
                }
            }
        };
        // Editors and copies raise several events for one write; compile a
        // file only if it holds a build that is not running already.
        if matches!(&read, Ok(file) if file.digest == running.digest) {
            return Reload::Unchanged;
        }
        // Compile while making sure the file stays as it was read: a file
        // still being written changes its stamp, and its next change notice
        // reloads it once it is done.
        let started = Instant::now();
        let runtime = self.runtime.clone();
        let compile = async move {
            let file = read?;
            tokio::task::spawn_blocking(move || runtime.compile(file))
                .await
                .map_err(|err| crate::plugin::LoadError {
                    path: PathBuf::new(),
                    reason: format!("plugin loader crashed: {err}"),
                })?
                .map(Arc::new)
        };
        let (stamp, compiled) = tokio::join!(watch::settled(path, watch::PLUGIN_QUIET), compile);
        let Some(stamp) = stamp else {
            return Reload::Unsettled;
        };
        if stamp != before {
            tracing::debug!(plugin = %path.display(), "changed while it was read; waiting for the next change notice");
            return Reload::Unchanged;
        }
        match compiled {
            Ok(plugin) => {
                self.refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(path);
                let what = format!(
                    "build {} → {} ({}) in {:?}",
                    running.short_digest(),
                    plugin.short_digest(),
                    if plugin.cached {
                        "compiled cache"
                    } else {
                        "compiled"
                    },
                    started.elapsed()
                );
                self.builds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_path_buf(), plugin);
                Reload::Loaded { what }
            }
            Err(err) => self.refusal(path, stamp, format!("{err:#}")).await,
        }
    }
}
