//! The host side of the WIT contract: what a plugin's imports do.
//!
//! Each instance's store holds a [`StoreData`]; during a call it also holds
//! the [`Call`]: the buffered effects, the state reader and the clock of the
//! time limit. Everything a plugin does through the host API lands in the
//! call's [`Effects`] and is committed by the bus only if `handle` returns ok.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::UpdateDeadline;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::files::{InstanceFiles, Refused};
use super::limiter::MemoryLimiter;
use super::logs::{self, CallLog, LogGate};
use super::output::OutputTail;
use crate::config::Grants;
use crate::handler::{Effects, PublishRefused, StateReader};
use crate::outbound;

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
/// Most WASI handles (files, streams, pollables, …) one instance may hold
/// at once: each costs the host memory, and a plugin can make them in a
/// loop. Past it, the call traps.
pub const MAX_HANDLES: usize = 10_000;

/// Everything one instance's store owns.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    /// `wasi:http`: where requests may go is the subscriber's policy.
    http: WasiHttpCtx,
    http_hooks: outbound::Hooks,
    pub limiter: MemoryLimiter,
    pub output: OutputTail,
    /// Who this instance serves, for logs.
    subscriber: Arc<str>,
    /// The subscriber's `config` table, for `config-get`.
    config: Arc<BTreeMap<String, String>>,
    /// Set for the duration of one `handle` call.
    pub call: Option<Call>,
    /// The subscriber's log rate, shared by its instances.
    pub log_gate: LogGate,
    /// What the current call logged.
    pub call_log: CallLog,
    /// While the instance starts (its start functions run): when it must
    /// be done, the event's time limit.
    pub start_deadline: Option<Instant>,
    /// Set when the epoch callback interrupted a start function.
    pub start_timed_out: bool,
    /// The host's file descriptors this instance holds.
    files: InstanceFiles,
    /// Descriptors of its granted folders, open as long as the instance.
    grant_fds: usize,
}

/// The state of one `handle` call.
/// Where a call stands with reading state from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateRead {
    #[default]
    Idle,
    /// A read is under way: a deadline passing now is Redis's delay.
    Waiting,
    /// A read failed, with this message.
    Failed(String),
}

pub struct Call {
    pub effects: Effects,
    pub state: Arc<dyn StateReader>,
    /// Seed of the ids of published events: stable across re-runs.
    pub id_seed: String,
    pub event_id: String,
    /// The event's trace context, sent on the call's HTTP requests.
    pub traceparent: Option<String>,
    pub started: Instant,
    pub timeout: Duration,
    /// Set when the epoch callback interrupted the call.
    pub timed_out: bool,
    /// Set when the host, not the plugin, failed the call.
    pub host_error: Option<String>,
    /// Set while the call waits for a state read from Redis, and with
    /// Redis's error if one failed: then Redis, not the plugin, failed it.
    pub state_read: StateRead,
    /// Time the call spent waiting for state reads: Redis's, not the
    /// plugin's, so a call past its limit only because of it is not a
    /// timeout.
    pub state_wait: Duration,
    /// The longest one state read took: a slow Redis shows in it, a
    /// plugin making many quick reads does not.
    pub longest_read: Duration,
    /// Bytes of effects the call may buffer (`effects_mb`).
    pub effects_budget: usize,
    /// Set, with what was asked, when the call went over `effects_budget`.
    pub over_budget: Option<String>,
    /// Set, with the reason, when a publish was refused for the hop limit:
    /// the call fails with it, whatever the plugin does next.
    pub hop_limited: Option<String>,
    /// What `retry-after` (0.3.0) asked: how long a `retry` should wait.
    pub retry_after: Option<Duration>,
}

impl Call {
    /// What the plugin is told of a refused publish; one refused for the
    /// hop limit also fails the call.
    fn refused(&mut self, refused: PublishRefused) -> String {
        let message = refused.to_string();
        if let PublishRefused::HopLimit { .. } = refused {
            self.hop_limited.get_or_insert_with(|| message.clone());
        }
        message
    }

    /// Stops the call if its buffered effects would reach `after` bytes,
    /// over its budget; `what` says what it asked for.
    pub(super) fn charge(
        &mut self,
        after: usize,
        what: impl FnOnce() -> String,
    ) -> wasmtime::Result<()> {
        if after <= self.effects_budget {
            return Ok(());
        }
        let what = format!(
            "{} with {} KiB buffered already",
            what(),
            self.effects.bytes() >> 10
        );
        self.over_budget = Some(what.clone());
        Err(wasmtime::format_err!(
            "over the budget of buffered effects: {what}"
        ))
    }
}

impl StoreData {
    /// A sandbox with no files, sockets, environment or arguments but what
    /// `grants` gives; stdout and stderr go to `output`; its granted folders
    /// are counted in `files`, which must hold them already. Fails when a
    /// granted folder cannot be opened.
    pub fn new(
        subscriber: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        memory_limit: usize,
        grants: &Grants,
        log_gate: LogGate,
        files: InstanceFiles,
        outbound: Arc<outbound::Policy>,
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
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        Ok(StoreData {
            wasi,
            table,
            http: WasiHttpCtx::new(),
            http_hooks: outbound::Hooks::new(outbound),
            limiter: MemoryLimiter::new(memory_limit),
            output,
            subscriber,
            config,
            call: None,
            log_gate,
            call_log: CallLog::default(),
            start_deadline: None,
            start_timed_out: false,
            files,
            grant_fds: grants.dirs.len(),
        })
    }

    /// Descriptors the instance holds now: its granted folders, and the
    /// files and folders it opened (a granted folder handed to it counts
    /// again: an upper bound).
    fn descriptors(&mut self) -> usize {
        self.grant_fds
            + self
                .table
                .iter_mut()
                .filter(|entry| {
                    (**entry)
                        .downcast_ref::<wasmtime_wasi::filesystem::Descriptor>()
                        .is_some()
                })
                .count()
    }

    /// Room for one more open file, or why not.
    pub fn admit_open(&mut self) -> Result<(), Refused> {
        let now = self.descriptors();
        self.files.hold(now + 1)
    }

    /// Counts what the instance really holds, after it closed files.
    pub fn settle_files(&mut self) {
        let now = self.descriptors();
        self.files.settle(now);
    }

    /// The subscriber this instance serves.
    pub fn subscriber(&self) -> &str {
        &self.subscriber
    }

    /// The id of the event being handled, if any.
    pub fn event_id(&self) -> &str {
        self.call.as_ref().map_or("", |c| c.event_id.as_str())
    }

    /// The first request the grants denied in the call that started at
    /// `started`, if any (see [`outbound::Hooks::denied_in`]).
    pub(super) fn http_denied_in(&mut self, started: Instant) -> Option<String> {
        self.http_hooks.denied_in(started)
    }

    /// The subscriber's outbound HTTP policy: what its grants admit.
    pub(super) fn http_policy(&self) -> &Arc<outbound::Policy> {
        self.http_hooks.policy()
    }

    /// `publish`, or (0.3.0's `publish-later`) routed when `due` says:
    /// checked and charged to the call's budget alike.
    pub(super) fn publish_at(
        &mut self,
        event_type: String,
        data: String,
        due: Option<crate::handler::Due>,
    ) -> wasmtime::Result<Result<String, String>> {
        let call = self.call()?;
        if call.effects.published().len() >= MAX_PUBLISHES {
            return Ok(Err(format!(
                "one call may publish at most {MAX_PUBLISHES} events"
            )));
        }
        // A refusal costs the call nothing: checked before the budget.
        if let Some(refused) = call.effects.refuse_early(&event_type, &data) {
            return Ok(Err(call.refused(refused)));
        }
        let after = call.effects.bytes_after_publish(&event_type, &data);
        call.charge(after, || format!("a publish of {} KiB", data.len() >> 10))?;
        match call
            .effects
            .publish_at(&call.id_seed, &event_type, &data, due)
        {
            Ok(id) => Ok(Ok(id)),
            Err(refused) => Ok(Err(call.refused(refused))),
        }
    }

    pub(super) fn call(&mut self) -> wasmtime::Result<&mut Call> {
        self.call
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("host function called outside of handle"))
    }

    /// The epoch callback: yield to other tasks every tick, and stop the
    /// call, or the start functions of a new instance, once they have run
    /// past the event's time limit.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        match (&mut self.call, self.start_deadline) {
            (Some(call), _) if call.started.elapsed() >= call.timeout => {
                call.timed_out = true;
                UpdateDeadline::Interrupt
            }
            (None, Some(deadline)) if Instant::now() >= deadline => {
                self.start_timed_out = true;
                UpdateDeadline::Interrupt
            }
            _ => UpdateDeadline::Yield(1),
        }
    }

    /// Writes a plugin's log line (a message or a printed line) to the
    /// host's log, escaped and within the call's and the subscriber's
    /// limits (see [`logs`]).
    pub fn log_line(&mut self, level: Level, message: &str) {
        // Lines the log filter drops cost nothing and take no one's budget.
        let enabled = match level {
            Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(tracing::Level::INFO),
            Level::Warn => tracing::enabled!(tracing::Level::WARN),
            Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        let event_id = self.call.as_ref().map_or("", |c| c.event_id.as_str());
        let subscriber = &*self.subscriber;
        let Some(admitted) = self.log_gate.admit(&mut self.call_log, message) else {
            return;
        };
        if let Some(dropped) = admitted.dropped_before {
            logs::say_rate_dropped(subscriber, event_id, dropped);
        }
        let line = admitted.line;
        match level {
            Level::Trace => tracing::trace!(subscriber, event_id, "{line}"),
            Level::Debug => tracing::debug!(subscriber, event_id, "{line}"),
            Level::Info => tracing::info!(subscriber, event_id, "{line}"),
            Level::Warn => tracing::warn!(subscriber, event_id, "{line}"),
            Level::Error => tracing::error!(subscriber, event_id, "{line}"),
        }
    }

    /// Says how much of the call's log was dropped, if any; the end of a
    /// call.
    pub fn finish_log(&mut self) {
        let mut call_log = std::mem::take(&mut self.call_log);
        if let Some(dropped) = call_log.take_dropped() {
            let event_id = self.call.as_ref().map_or("", |c| c.event_id.as_str());
            logs::say_call_dropped(&self.subscriber, event_id, dropped);
        }
    }
}

impl WasiHttpView for StoreData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // The requests belong to the call under way: their idempotency keys
        // derive from its subscriber and event, their waits end with it.
        let call = self.call.as_ref();
        self.http_hooks
            .enter_call(call.map(|c| (c.started, c.started + c.timeout)), || {
                outbound::CallContext {
                    seed: format!("{}/{}", self.subscriber, call.map_or("", |c| &c.event_id)),
                    traceparent: call.and_then(|c| c.traceparent.clone()),
                }
            });
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
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
        self.log_line(level, &message);
        Ok(())
    }

    fn publish(
        &mut self,
        event_type: String,
        data: String,
    ) -> wasmtime::Result<Result<String, String>> {
        self.publish_at(event_type, data, None)
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let call = self.call()?;
        if let Some(pending) = call.effects.pending(&key) {
            return Ok(pending.map(str::to_owned));
        }
        // Read again: the same answer, without Redis. A plugin looping on a
        // read spends its own time, not Redis's, and times out as itself.
        if let Some(seen) = call.effects.already_read(&key) {
            return Ok(seen.value.clone());
        }
        let state = call.state.clone();
        call.state_read = StateRead::Waiting;
        let asked = Instant::now();
        let read = state.read(&key).await;
        let call = self.call()?;
        call.state_read = StateRead::Idle;
        let took = asked.elapsed();
        call.state_wait += took;
        call.longest_read = call.longest_read.max(took);
        match read {
            Ok(seen) => {
                let call = self.call()?;
                // Only a key's first read is kept (see `Effects::read`).
                let value_len = seen.value.as_ref().map_or(0, String::len);
                let after = if call.effects.already_read(&key).is_some() {
                    call.effects.bytes()
                } else {
                    call.effects.bytes() + crate::handler::read_cost(&key, &seen)
                };
                call.charge(after, || format!("a state-get of {} KiB", value_len >> 10))?;
                call.effects.read(&key, &seen);
                Ok(seen.value)
            }
            Err(err) => {
                let message = format!("state-get {key:?} failed: {err:#}");
                self.call()?.state_read = StateRead::Failed(message.clone());
                Err(wasmtime::format_err!(message))
            }
        }
    }

    fn state_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_VALUE || value.len() > MAX_STATE_VALUE {
            wasmtime::bail!("state-set: keys and values are limited to {MAX_STATE_VALUE} bytes");
        }
        let call = self.call()?;
        let after = call.effects.bytes_after_write(&key, Some(value.len()));
        call.charge(after, || {
            format!("a state-set of {} KiB", (key.len() + value.len()) >> 10)
        })?;
        call.effects.set(key, value);
        Ok(())
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        if key.len() > MAX_STATE_VALUE {
            wasmtime::bail!("state-delete: keys are limited to {MAX_STATE_VALUE} bytes");
        }
        let call = self.call()?;
        let after = call.effects.bytes_after_write(&key, None);
        call.charge(after, || "a state-delete".to_string())?;
        call.effects.delete(key);
        Ok(())
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

/// The WASI filesystem interface as the linker defines it.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Puts the open-file limit in front of WASI's `open-at`: an instance asks
/// [`StoreData::admit_open`] before each open, and a refusal is the plugin's
/// `quota` error, logged once per call.
pub fn limit_open_files(linker: &mut wasmtime::component::Linker<StoreData>) -> anyhow::Result<()> {
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView as _};
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, Host as _, HostDescriptor as _, OpenFlags, PathFlags,
    };
    type OpenAt = (
        Resource<Descriptor>,
        PathFlags,
        String,
        OpenFlags,
        DescriptorFlags,
    );

    linker.allow_shadowing(true);
    let mut types = linker
        .instance(FILESYSTEM_TYPES)
        .map_err(anyhow::Error::from)?;
    types
        .func_wrap_async(
            "[method]descriptor.open-at",
            |mut store: wasmtime::StoreContextMut<'_, StoreData>,
             (dir, path_flags, path, open_flags, flags): OpenAt| {
                Box::new(async move {
                    let data = store.data_mut();
                    if let Err(refused) = data.admit_open() {
                        tracing::debug!(
                            subscriber = data.subscriber(),
                            event_id = data.event_id(),
                            "open of {path:?} refused: {refused}"
                        );
                        let result: Result<Resource<Descriptor>, ErrorCode> = Err(ErrorCode::Quota);
                        return Ok((result,));
                    }
                    let mut view = data.filesystem();
                    let opened = view.open_at(dir, path_flags, path, open_flags, flags).await;
                    let result = match opened {
                        Ok(file) => Ok(file),
                        Err(err) => Err(view.convert_error_code(err)?),
                    };
                    // A failed open holds nothing more.
                    data.settle_files();
                    Ok((result,))
                })
            },
        )
        .map_err(anyhow::Error::from)?;
    linker.allow_shadowing(false);
    Ok(())
}
