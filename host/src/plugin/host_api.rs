//! The host side of the WIT contract: what a plugin's imports do.
//!
//! Each instance's store holds a [`StoreData`]; during a call it also holds
//! the [`Call`]: the buffered effects, the state reader and the clock of the
//! time limit. Everything a plugin does through the host API lands in the
//! call's [`Effects`] and is committed by the bus only if `handle` returns ok.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::output::OutputTail;
use crate::handler::{Effects, StateReader};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "subscriber",
    imports: {
        // Reads committed state from the bus, which takes I/O.
        "eventhost:plugin/host.state-get": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use self::eventhost::plugin::types::{Event as WitEvent, Failure as WitFailure, Level};

/// Largest key or value a plugin may write to its state, so one bad plugin
/// cannot fill Redis in one call.
const MAX_STATE_VALUE: usize = 1 << 20;
/// Most events one call may publish.
const MAX_PUBLISHES: usize = 10_000;

/// What a plugin may see beyond the bare sandbox, from its `grants` table.
///
/// Only what cannot duplicate an effect: environment variables and folders
/// to read. Writes and sockets would be effects outside the commit that
/// makes a handler's effects happen once, so they are not grantable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Environment variables, name and value, in order.
    pub env: Vec<(String, String)>,
    /// Host folders the plugin may read.
    pub dirs: Vec<DirGrant>,
}

/// A host folder visible, read-only, at a path inside the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct DirGrant {
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
    /// The folder on the host.
    pub host: PathBuf,
}

/// Everything one instance's store owns.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub output: OutputTail,
    /// Who this instance serves, for logs.
    subscriber: Arc<str>,
    /// The subscriber's `config` table, for `config-get`.
    config: Arc<BTreeMap<String, String>>,
    /// Set for the duration of one `handle` call.
    pub call: Option<Call>,
}

/// The state of one `handle` call.
pub struct Call {
    pub effects: Effects,
    pub state: Arc<dyn StateReader>,
    /// Seed of the ids of published events: stable across re-runs.
    pub id_seed: String,
    pub event_id: String,
    pub started: Instant,
    pub timeout: Duration,
    /// Set when the epoch callback interrupted the call.
    pub timed_out: bool,
    /// Set when the host, not the plugin, failed the call.
    pub host_error: Option<String>,
}

impl StoreData {
    /// A sandbox with no files, sockets, environment or arguments but what
    /// `grants` gives; stdout and stderr go to `output`. Fails when a granted
    /// folder cannot be opened.
    pub fn new(
        subscriber: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        memory_limit: usize,
        grants: &Grants,
    ) -> anyhow::Result<Self> {
        let output = OutputTail::default();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .envs(&grants.env);
        for dir in &grants.dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot open granted folder {}", dir.host.display()))?;
        }
        let wasi = wasi.build();
        Ok(StoreData {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            output,
            subscriber,
            config,
            call: None,
        })
    }

    fn call(&mut self) -> wasmtime::Result<&mut Call> {
        self.call
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("host function called outside of handle"))
    }

    /// The epoch callback: yield to other tasks every tick, and stop the
    /// call once it has run past its time limit.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        match &mut self.call {
            Some(call) if call.started.elapsed() >= call.timeout => {
                call.timed_out = true;
                UpdateDeadline::Interrupt
            }
            _ => UpdateDeadline::Yield(1),
        }
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::eventhost::plugin::types::Host for StoreData {}

impl self::eventhost::plugin::host::Host for StoreData {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let event_id = self.call.as_ref().map_or("", |c| c.event_id.as_str());
        let subscriber = &*self.subscriber;
        match level {
            Level::Trace => tracing::trace!(subscriber, event_id, "{message}"),
            Level::Debug => tracing::debug!(subscriber, event_id, "{message}"),
            Level::Info => tracing::info!(subscriber, event_id, "{message}"),
            Level::Warn => tracing::warn!(subscriber, event_id, "{message}"),
            Level::Error => tracing::error!(subscriber, event_id, "{message}"),
        }
        Ok(())
    }

    fn publish(
        &mut self,
        event_type: String,
        data: String,
    ) -> wasmtime::Result<Result<String, String>> {
        let call = self.call()?;
        if call.effects.published().len() >= MAX_PUBLISHES {
            return Ok(Err(format!(
                "one call may publish at most {MAX_PUBLISHES} events"
            )));
        }
        let now = crate::handler::unix_now();
        Ok(call.effects.publish(&call.id_seed, &event_type, &data, now))
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let call = self.call()?;
        if let Some(pending) = call.effects.pending(&key) {
            return Ok(pending.map(str::to_owned));
        }
        let state = call.state.clone();
        match state.get(&key).await {
            Ok(value) => Ok(value),
            Err(err) => {
                let message = format!("state-get {key:?} failed: {err:#}");
                self.call()?.host_error = Some(message.clone());
                Err(wasmtime::format_err!(message))
            }
        }
    }

    fn state_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_VALUE || value.len() > MAX_STATE_VALUE {
            wasmtime::bail!("state-set: keys and values are limited to {MAX_STATE_VALUE} bytes");
        }
        self.call()?.effects.set(key, value);
        Ok(())
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.call()?.effects.delete(key);
        Ok(())
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

/// Enforces `memory_mb` on everything an instance can grow, all its linear
/// memories and tables together, and remembers that it did, so a trap that
/// follows is reported as running out of memory rather than as a crash.
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes granted so far: memories, and tables at 8 bytes an element.
    used: usize,
    /// A growth was refused since the last reset.
    pub hit: bool,
}

/// What a table element costs against the budget.
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            used: 0,
            hit: false,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Grants growing something from `current` to `desired` bytes if the
    /// instance stays within its budget.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let used = self.used - current.min(self.used) + desired;
        if used > self.limit {
            self.hit = true;
            return false;
        }
        self.used = used;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_covers_every_memory_and_table_together() {
        let mut limiter = MemoryLimiter::new(100 << 20);
        // Two memories of 40 MiB fit; a third does not.
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 40 << 20, None).unwrap());
        assert!(limiter.hit);
        // Growing one of them counts only the difference.
        assert!(limiter.memory_growing(40 << 20, 50 << 20, None).unwrap());
        // Tables draw on the same budget (90 MiB used): 2M elements are 16 MB.
        assert!(!limiter.table_growing(0, 2_000_000, None).unwrap());
        assert!(limiter.table_growing(0, 1000, None).unwrap());
    }
}
