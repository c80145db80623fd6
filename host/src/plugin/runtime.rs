//! The wasmtime engine, the linker, and loading plugins into them.
//!
//! One engine serves every plugin: a pooling allocator makes a fresh instance
//! cost tens of microseconds, epoch interruption bounds each call's time, and
//! compiled components are cached on disk by content so a restart or a
//! reload of a known build does not compile again.

use std::io::Seek as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{types::ComponentItem, Component, Linker};
use wasmtime::Engine;

use super::cache::{self, CompiledCache};
use super::capacity::InstanceCapacity;
use super::compiler::{self, CompileLimits};
use super::engine::{engine_config, engine_fingerprint, start_epoch_clock};
use super::files::FileBudget;
use super::host_api::{StoreData, Subscriber, SubscriberPre};
use super::threads::PluginThreads;
use crate::config::PluginsConfig;

/// Code compiled just now, to cache once the build is accepted.
enum Compiled {
    /// Compiled in this process.
    Bytes(Vec<u8>),
    /// Compiled by a child into this file, which the component maps.
    File(tempfile::NamedTempFile),
}

/// The wasmtime engine and linker shared by every plugin.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<StoreData>,
    /// `None` when the cache folder cannot be made private: every load
    /// compiles.
    cache: Option<CompiledCache>,
    settings: RuntimeSettings,
    capacity: Arc<InstanceCapacity>,
    files: Arc<FileBudget>,
    /// Descriptors each subscriber's instances hold, by subscriber: shared
    /// by the handlers a reload makes.
    files_by_subscriber:
        std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicUsize>>>,
    /// The threads each subscriber's calls run on, while a handler uses
    /// them: shared by the handlers a reload makes.
    threads_by_subscriber: std::sync::Mutex<std::collections::HashMap<String, Weak<PluginThreads>>>,
}

/// What a runtime is built with: the `[plugins]` settings it uses.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Largest plugin file read (`[plugins] max_file_mb`).
    pub max_file_bytes: u64,
    /// Instances alive at once, all plugins together (`[plugins]
    /// instances`): the slots of the pooling allocator.
    pub instances: usize,
    /// Size limit of the compiled cache (`[plugins] cache_mb`).
    pub cache_max_bytes: u64,
    /// Compile in a child process with these limits; `None`: in this
    /// process, without limits (tests of the library, benchmarks).
    pub compile_limits: Option<CompileLimits>,
}

impl RuntimeSettings {
    /// The settings of a config's `[plugins]` table.
    pub fn from_config(plugins: &PluginsConfig) -> Self {
        RuntimeSettings {
            cache_dir: plugins.cache_dir.clone(),
            max_file_bytes: plugins.max_file_bytes,
            instances: plugins.instances,
            cache_max_bytes: plugins.cache_max_bytes,
            compile_limits: None,
        }
    }

    /// The same, compiling in a child process: this binary run again, with
    /// `timeout` and `memory_bytes` as its limits. What `eventhost` itself
    /// does; a library user without the `compile-plugin` subcommand cannot.
    pub fn compiling_in_child(
        mut self,
        timeout: Duration,
        memory_bytes: u64,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program to compile with")?;
        self.compile_limits = Some(CompileLimits {
            exe,
            timeout,
            memory_bytes,
        });
        Ok(self)
    }

    /// The defaults, with compiled components cached in `cache_dir`: for
    /// commands that run without a config (`eventhost invoke`).
    pub fn with_cache(cache_dir: &Path) -> Self {
        RuntimeSettings {
            cache_dir: cache_dir.to_path_buf(),
            max_file_bytes: crate::config::DEFAULT_MAX_FILE_MB << 20,
            instances: crate::config::DEFAULT_INSTANCES,
            cache_max_bytes: crate::config::DEFAULT_CACHE_MB << 20,
            compile_limits: None,
        }
    }
}

/// Why a plugin file was refused; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

/// A compiled component that implements the `subscriber` world, ready to
/// instantiate.
pub struct CompiledPlugin {
    /// The file it came from.
    pub path: PathBuf,
    /// SHA-256 of the file, hex: which build this is.
    pub digest: String,
    pub(super) pre: SubscriberPre<StoreData>,
    /// Whether it came from the compiled cache.
    pub cached: bool,
    /// Time to compile or to load from the cache.
    pub load_time: Duration,
}

/// A plugin file's bytes as read once, with their digest: a reload checks
/// the digest against the running build and compiles the same bytes.
pub struct PluginFile {
    pub path: PathBuf,
    /// SHA-256 of `bytes`, hex.
    pub digest: String,
    bytes: Vec<u8>,
}

impl PluginFile {
    /// Reads the file at `path`, if it is a regular file (a symlink to one
    /// is fine) of at most `max_bytes`: a plugin is read whole, so a device
    /// (`/dev/zero`), a FIFO or a huge file is refused before. Blocking.
    pub fn read(path: &Path, max_bytes: u64) -> Result<Self, LoadError> {
        use std::io::Read as _;
        let refuse = |reason: String| LoadError {
            path: path.to_path_buf(),
            reason,
        };
        // Opened without blocking, so a FIFO cannot hold the loader; the
        // checks are made on what was opened, not on the name again.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|err| refuse(format!("cannot read: {err}")))?;
        let meta = file
            .metadata()
            .map_err(|err| refuse(format!("cannot read: {err}")))?;
        check_plugin_file(&meta, max_bytes).map_err(refuse)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // A file that grows while it is read stops at the limit.
        file.take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| refuse(format!("cannot read: {err}")))?;
        if bytes.len() as u64 > max_bytes {
            return Err(refuse(too_big(bytes.len() as u64, max_bytes)));
        }
        Ok(PluginFile {
            path: path.to_path_buf(),
            digest: hex::encode(Sha256::digest(&bytes)),
            bytes,
        })
    }
}

/// Whether a file with `meta` may be read as a plugin: a regular file of at
/// most `max_bytes`.
pub fn check_plugin_file(meta: &std::fs::Metadata, max_bytes: u64) -> Result<(), String> {
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "a device, FIFO or socket"
        };
        return Err(format!(
            "is not a regular file (it is {what}); a plugin must be a .wasm file"
        ));
    }
    if meta.len() > max_bytes {
        return Err(too_big(meta.len(), max_bytes));
    }
    Ok(())
}

fn too_big(len: u64, max_bytes: u64) -> String {
    format!(
        "is {:.1} MiB, over the limit of {} MiB for a plugin file; raise [plugins] max_file_mb \
         if it really is a plugin",
        len as f64 / (1u64 << 20) as f64,
        max_bytes >> 20
    )
}

impl CompiledPlugin {
    /// The first 12 hex digits of the digest, for logs.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

impl PluginRuntime {
    /// Builds the engine and starts its epoch clock, with `settings`.
    pub fn new(settings: RuntimeSettings) -> anyhow::Result<Arc<Self>> {
        let engine = match Engine::new(&engine_config(Some(settings.instances))) {
            Ok(engine) => engine,
            // A restricted address space (ulimit -v) cannot hold the pool's
            // reservations; on-demand allocation is slower but works.
            Err(err) => {
                tracing::warn!(
                    "pooling allocator unavailable ({err}); instances will be allocated on demand"
                );
                Engine::new(&engine_config(None)).map_err(anyhow::Error::from)?
            }
        };
        start_epoch_clock(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        super::host_api::limit_open_files(&mut linker).context("limiting open files")?;
        Subscriber::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |data| data)
            .map_err(anyhow::Error::from)
            .context("linking the eventhost host interface")?;
        super::world_v2::add_to_linker(&mut linker)
            .context("linking the eventhost host interface 0.2.0")?;
        super::world_v3::add_to_linker(&mut linker)
            .context("linking the eventhost host interface 0.3.0")?;

        let cache = match CompiledCache::open(
            &settings.cache_dir,
            &engine_fingerprint(&engine),
            settings.cache_max_bytes,
        ) {
            Ok(cache) => Some(cache),
            Err(err) => {
                tracing::warn!("compiled plugins will not be cached: {err:#}");
                None
            }
        };
        let files = FileBudget::new();
        tracing::debug!("plugins may hold {} open files together", files.limit());
        Ok(Arc::new(PluginRuntime {
            engine,
            linker,
            cache,
            capacity: InstanceCapacity::new(settings.instances),
            files,
            files_by_subscriber: Default::default(),
            threads_by_subscriber: Default::default(),
            settings,
        }))
    }

    /// The largest plugin file this runtime reads, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.settings.max_file_bytes
    }

    /// How many instances may be alive at once.
    pub fn instances(&self) -> usize {
        self.settings.instances
    }

    /// The descriptors plugins may hold, and a new instance's part of them
    /// as one of `subscriber`'s.
    pub(super) fn files_for(&self, subscriber: &str) -> super::files::InstanceFiles {
        let counter = self
            .files_by_subscriber
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(subscriber.to_string())
            .or_default()
            .clone();
        super::files::InstanceFiles::new(self.files.clone(), counter)
    }

    /// The threads `subscriber`'s heavy calls run on: as many as it may
    /// run at once (`concurrency`), up to one fewer than the CPUs there
    /// are, so one subscriber never spins on them all. `None` if they
    /// cannot be started; its calls then run on the caller's threads.
    pub(super) fn threads_for(
        &self,
        subscriber: &str,
        concurrency: usize,
    ) -> Option<Arc<PluginThreads>> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = concurrency.clamp(1, (cpus - 1).max(1));
        let mut by_subscriber = self
            .threads_by_subscriber
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        by_subscriber.retain(|_, threads| threads.strong_count() > 0);
        if let Some(threads) = by_subscriber.get(subscriber).and_then(Weak::upgrade) {
            if threads.threads() == wanted {
                return Some(threads);
            }
        }
        match PluginThreads::start(subscriber, wanted) {
            Ok(threads) => {
                let threads = Arc::new(threads);
                by_subscriber.insert(subscriber.to_string(), Arc::downgrade(&threads));
                Some(threads)
            }
            Err(err) => {
                tracing::warn!(
                    subscriber,
                    "its plugin runs on the host's threads: cannot start its own ({err})"
                );
                None
            }
        }
    }

    /// The instance slots every handler draws on.
    pub(super) fn capacity(&self) -> &Arc<InstanceCapacity> {
        &self.capacity
    }

    /// The engine, for creating stores.
    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles (or loads from the cache) and validates the plugin at
    /// `path`. Blocking: call it off the async runtime.
    pub fn load(&self, path: &Path) -> Result<CompiledPlugin, LoadError> {
        self.compile(PluginFile::read(path, self.settings.max_file_bytes)?)
    }

    /// Compiles (or loads from the cache) and validates a plugin file that
    /// was read already. Blocking: call it off the async runtime.
    pub fn compile(&self, file: PluginFile) -> Result<CompiledPlugin, LoadError> {
        let refuse = |reason: String| LoadError {
            path: file.path.clone(),
            reason,
        };
        let started = Instant::now();
        check_header(&file.bytes).map_err(refuse)?;
        super::exports::refuse_without_handle(&file.bytes).map_err(refuse)?;
        let from_cache = self.cache.as_ref().and_then(|cache| {
            let code = cache.load(&file.digest)?;
            // SAFETY: the code is what this host's engine compiled from these
            // very bytes: the entry's MAC, under a key only this user can
            // read, proves it (see `cache`), read through the descriptor it
            // is mapped from. Mapped, not read into our memory.
            match unsafe { Component::deserialize_file(&self.engine, cache::mappable(&code)) } {
                Ok(component) => Some(component),
                Err(err) => {
                    tracing::warn!(plugin = %file.path.display(), "ignoring an unusable compiled cache entry: {err:#}");
                    None
                }
            }
        });
        let cannot_load = |err: wasmtime::Error| format!("cannot load its compiled code: {err:#}");
        let (component, compiled) = match from_cache {
            Some(component) => (component, None),
            None => match &self.settings.compile_limits {
                Some(limits) => {
                    let out = self.compile_output().map_err(|err| {
                        refuse(format!("cannot make a file for its compiled code: {err}"))
                    })?;
                    compiler::compile(limits, &file.bytes, out.as_file()).map_err(refuse)?;
                    // SAFETY: this very program, with the same engine
                    // settings, compiled the code just now into this file,
                    // which only we can write; `deserialize_file` checks the
                    // settings are compatible. It maps the file: the code is
                    // not read into our memory.
                    let component =
                        unsafe { Component::deserialize_file(&self.engine, out.path()) }
                            .map_err(|err| refuse(cannot_load(err)))?;
                    (component, Some(Compiled::File(out)))
                }
                None => {
                    let code = self
                        .engine
                        .precompile_component(&file.bytes)
                        .map_err(|err| refuse(format!("not a valid component: {err:#}")))?;
                    // SAFETY: this engine compiled the code just now.
                    let component = unsafe { Component::deserialize(&self.engine, &code) }
                        .map_err(|err| refuse(cannot_load(err)))?;
                    (component, Some(Compiled::Bytes(code)))
                }
            },
        };
        let cached = compiled.is_none();
        let pre = self.validate(&component).map_err(refuse)?;
        // Only an accepted build is worth keeping.
        if let (Some(cache), Some(code)) = (&self.cache, compiled) {
            match code {
                Compiled::Bytes(code) => cache.store(&file.digest, &code),
                Compiled::File(out) => {
                    // The child wrote through a copy of our descriptor, which
                    // shares its offset: read from the start.
                    let mut code = out.as_file();
                    match code
                        .seek(std::io::SeekFrom::Start(0))
                        .and_then(|_| code.metadata())
                    {
                        Ok(meta) => cache.store_from(&file.digest, &mut code, meta.len()),
                        Err(err) => {
                            tracing::warn!(plugin = %file.path.display(), "cannot cache its compiled code: {err}")
                        }
                    }
                }
            }
        }
        Ok(CompiledPlugin {
            path: file.path,
            digest: file.digest,
            pre,
            cached,
            load_time: started.elapsed(),
        })
    }

    /// An empty file for a child's compiled code, removed when dropped (a
    /// component mapped from it keeps its pages): in the compiled cache's
    /// folder, private and on the cache's disk, else in the temporary
    /// folder. Its name is no entry's, so the cache never loads it.
    fn compile_output(&self) -> std::io::Result<tempfile::NamedTempFile> {
        let dir = self
            .cache
            .as_ref()
            .map_or_else(std::env::temp_dir, |cache| cache.dir().to_path_buf());
        tempfile::Builder::new()
            .prefix(".compiling-")
            .suffix(".part")
            .tempfile_in(dir)
    }

    /// Checks the component against the `subscriber` world and explains a
    /// mismatch in terms of what is missing.
    fn validate(&self, component: &Component) -> Result<SubscriberPre<StoreData>, String> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let handle_is_func = ty.exports(&self.engine).any(|(name, item)| {
            name == "handle" && matches!(item.ty, ComponentItem::ComponentFunc(_))
        });
        if !handle_is_func {
            return Err(super::exports::no_handle(&exports));
        }
        let pre = self.linker.instantiate_pre(component).map_err(|err| {
            let foreign: Vec<String> = ty
                .imports(&self.engine)
                .map(|(name, _)| name.to_string())
                .filter(|name| !name.starts_with("wasi:") && !name.starts_with("eventhost:plugin/"))
                .collect();
            let what = if foreign.is_empty() {
                "imports something eventhost does not provide".to_string()
            } else {
                format!(
                    "imports {}, which eventhost does not provide",
                    foreign.join(", ")
                )
            };
            format!(
                "{what}: a plugin may import only eventhost:plugin/host and WASI 0.2 (no HTTP, no \
                 custom interfaces) [wasmtime: {err:#}]"
            )
        })?;
        SubscriberPre::new(pre).map_err(|err| {
            format!(
                "does not implement the eventhost:plugin/subscriber world: {err:#}; rebuild it \
                 against wit/eventhost.wit"
            )
        })
    }
}

/// Tells apart the files people actually drop into the folder by mistake.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(format!(
            "not a WebAssembly file ({} bytes, no \\0asm header); build the plugin with \
             `cargo build --target wasm32-wasip2`",
            bytes.len()
        ));
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "is a core WebAssembly module, not a component; build it for wasm32-wasip2 or wrap \
             it with `wasm-tools component new`"
                .into(),
        ),
        _ => Err("is a WebAssembly binary of an unknown version".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(check_header(b"hello world")
            .unwrap_err()
            .contains("not a WebAssembly file"));
        assert!(check_header(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .contains("core WebAssembly module"));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_component() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = PluginRuntime::new(RuntimeSettings {
            max_file_bytes: 1 << 20,
            ..RuntimeSettings::with_cache(&dir.path().join("cache"))
        })
        .unwrap();
        let text = dir.path().join("notes.wasm");
        std::fs::write(&text, "just text").unwrap();
        let err = runtime.load(&text).err().unwrap();
        assert!(err.to_string().contains("not a WebAssembly file"), "{err}");

        // The smallest valid component: it exports nothing.
        let empty = dir.path().join("empty.wasm");
        std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
        let err = runtime.load(&empty).err().unwrap();
        assert!(
            err.to_string().contains("no exported function `handle`"),
            "{err}"
        );
        assert!(err.to_string().contains("exports: nothing"), "{err}");
    }

    #[test]
    fn devices_folders_and_big_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = PluginRuntime::new(RuntimeSettings {
            max_file_bytes: 1 << 20,
            ..RuntimeSettings::with_cache(&dir.path().join("cache"))
        })
        .unwrap();
        let zero = dir.path().join("zero.wasm");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = runtime.load(&zero).err().unwrap().to_string();
        assert!(err.contains("is not a regular file"), "{err}");
        let folder = dir.path().join("folder.wasm");
        std::fs::create_dir(&folder).unwrap();
        let err = runtime.load(&folder).err().unwrap().to_string();
        assert!(err.contains("it is a folder"), "{err}");
        // Sparse: 3 GiB that take no disk.
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        let err = runtime.load(&big).err().unwrap().to_string();
        assert!(
            err.contains("is 3072.0 MiB, over the limit of 1 MiB"),
            "{err}"
        );
        // A symlink to a regular file is followed (mounted config maps).
        let real = dir.path().join("real.wasm");
        std::fs::write(&real, "just text").unwrap();
        let link = dir.path().join("link.wasm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = runtime.load(&link).err().unwrap().to_string();
        assert!(err.contains("not a WebAssembly file"), "{err}");
    }
}
