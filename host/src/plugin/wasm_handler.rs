//! Runs one subscriber's events in instances of its plugin.
//!
//! A [`WasmHandler`] is one build of a plugin under one subscriber's
//! settings. Instances are reused across events (a fresh one costs ten times
//! a call) and thrown away after any trap, so a crashed plugin never sees its
//! broken memory again. A reload or a settings change makes a new handler:
//! calls in flight finish on the old one, whose instances go with it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wasmtime::{PoolConcurrencyLimitError, Store};

use super::capacity::{is_host_shortage, CapacityError, Evict, Share, Slot};
use super::failure::{log_output, plugin_reason, CallFailures};
use super::host_api::{Call, StateRead, StoreData, Subscriber, WitEvent, WitFailure};
use super::logs::LogGate;
use super::runtime::{CompiledPlugin, PluginRuntime};
use super::threads::PluginThreads;
use crate::config::{Grants, PublishLimits, SubscriberConfig};
use crate::handler::{
    Effects, Event, Failure, FailureKind, Handler, Outcome, RequestSender, StateReader,
};
use crate::outbound;

/// How long past its limit a call blocked in a host function may take before
/// it is abandoned (guest code is stopped by the epoch right at the limit).
const BLOCKED_GRACE: Duration = Duration::from_millis(50);

/// Longest an event waits for an instance before it is put back to run
/// later (not as an attempt): short enough that a batch never holds its
/// loop for long, long enough that a busy pool is a wait, not a failure.
const CAPACITY_WAIT: Duration = Duration::from_secs(1);

/// How long to wait before instantiating again after the pooling
/// allocator ran out of something the permits do not count (core
/// instances, memories, tables of large components).
const POOL_RETRY: Duration = Duration::from_millis(5);

/// The limits and grants an instance is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Bytes of effects one call may buffer on the host.
    pub effects_bytes: usize,
    /// What one publish may be (size, hops).
    pub publish: PublishLimits,
    /// Instances kept for reuse; more than this are dropped on return.
    pub concurrency: usize,
    pub grants: Grants,
}

impl From<&SubscriberConfig> for Limits {
    fn from(settings: &SubscriberConfig) -> Self {
        Limits {
            timeout: settings.timeout,
            memory_bytes: settings.memory_bytes,
            effects_bytes: settings.effects_bytes,
            publish: settings.publish,
            concurrency: settings.concurrency,
            grants: settings.grants.clone(),
        }
    }
}

struct Instance {
    store: Store<StoreData>,
    bindings: Subscriber,
    /// Dropped after the store: the slot is free once the instance is gone.
    _slot: Slot,
}

/// A handler's idle instances, which others short of capacity may take
/// away.
#[derive(Default)]
struct IdlePool(Mutex<Vec<Instance>>);

impl IdlePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Evict for IdlePool {
    fn evict_one(&self) -> usize {
        let mut idle = self.lock();
        let n = idle.len();
        let evicted = idle.pop();
        drop(idle);
        drop(evicted);
        n
    }

    fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A [`Handler`] backed by one build of a wasm component, whose calls run
/// on its subscriber's own threads (see [`super::threads`]).
pub struct WasmHandler {
    calls: Arc<PluginCalls>,
    /// `None` if they could not be started: calls then run on the caller's.
    threads: Option<Arc<PluginThreads>>,
    /// Sends what its calls queued with `send-after-commit`, under the
    /// same grants, with a send's own time limit.
    sender: Arc<outbound::AfterCommitSender>,
}

impl WasmHandler {
    /// A handler running `plugin` for the subscriber with `settings`.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        settings: &SubscriberConfig,
        plugin: Arc<CompiledPlugin>,
    ) -> Self {
        let policy = outbound_policy(&runtime, settings, outbound::SEND_TIMEOUT);
        WasmHandler {
            sender: Arc::new(outbound::AfterCommitSender::new(Arc::new(policy))),
            threads: runtime.threads_for(&settings.name, settings.concurrency),
            calls: Arc::new(PluginCalls::new(runtime, settings, plugin)),
        }
    }

    /// The build this handler runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.calls.plugin
    }

    /// The subscriber's outbound HTTP policy: `eventhost invoke` records
    /// through it what requests a call made.
    pub fn outbound(&self) -> &Arc<outbound::Policy> {
        &self.calls.outbound
    }
}

#[async_trait]
impl Handler for WasmHandler {
    async fn handle(&self, event: Event, state: Arc<dyn StateReader>) -> Outcome {
        let Some(threads) = &self.threads else {
            return self.calls.handle(event, state).await;
        };
        // A new instance, its start functions and first call, is paid on
        // the subscriber's threads; a reused one starts here.
        let start_here = self.calls.idle.idle() > 0;
        let calls = self.calls.clone();
        match threads
            .run(async move { calls.handle(event, state).await }, start_here)
            .await
        {
            Ok(outcome) => outcome,
            Err(lost) => Outcome::Failed(Failure::new(
                FailureKind::Host,
                format!("{}: {lost}", self.calls.plugin_file),
            )),
        }
    }

    fn request_sender(&self) -> Option<Arc<dyn RequestSender>> {
        Some(self.sender.clone())
    }
}

/// Calls of one build under one subscriber's settings, in instances kept
/// for reuse.
struct PluginCalls {
    runtime: Arc<PluginRuntime>,
    subscriber: Arc<str>,
    /// Shown in failure messages: the plugin file as configured.
    plugin_file: String,
    plugin: Arc<CompiledPlugin>,
    limits: Limits,
    config: Arc<BTreeMap<String, String>>,
    idle: Arc<IdlePool>,
    /// This subscriber's part of the instance pool.
    share: Share,
    /// The log rate of this subscriber's instances.
    log_gate: LogGate,
    /// Where its instances' HTTP requests may go, and their bounds.
    outbound: Arc<outbound::Policy>,
}

impl PluginCalls {
    fn new(
        runtime: Arc<PluginRuntime>,
        settings: &SubscriberConfig,
        plugin: Arc<CompiledPlugin>,
    ) -> Self {
        let idle = Arc::new(IdlePool::default());
        let capacity = runtime.capacity();
        capacity.register(Arc::downgrade(&idle) as std::sync::Weak<dyn Evict>);
        let share = capacity.share_for(settings.concurrency);
        let outbound = Arc::new(outbound_policy(&runtime, settings, settings.timeout));
        PluginCalls {
            runtime,
            subscriber: settings.name.as_str().into(),
            plugin_file: settings.plugin_file.clone(),
            plugin,
            limits: Limits::from(settings),
            config: Arc::new(settings.config.clone()),
            idle,
            share,
            log_gate: LogGate::default(),
            outbound,
        }
    }

    /// An idle instance, or a new one, and when it was had: the event's
    /// time limit counts from then. A new instance needs a slot of the pool
    /// (see [`super::capacity`]); waiting for one is not the event's time.
    /// Its start functions (a component's core `start`, a reactor's
    /// `_initialize`) are plugin code like `handle`: they run under the
    /// event's time limit and yield to other tasks every epoch tick.
    async fn instance(&self) -> Result<(Instance, Instant), Failure> {
        if let Some(instance) = self.idle.lock().pop() {
            return Ok((instance, Instant::now()));
        }
        // Boxed: instantiating is a large future, and every call's future
        // (moved a few times on its way to a thread) would carry its size.
        Box::pin(self.new_instance()).await
    }

    /// A new instance, once one may be had.
    async fn new_instance(&self) -> Result<(Instance, Instant), Failure> {
        let waited = Instant::now();
        let capacity = self.runtime.capacity();
        loop {
            let slot = capacity
                .acquire(&self.share, CAPACITY_WAIT.saturating_sub(waited.elapsed()))
                .await
                .map_err(|err| self.no_capacity(err))?;
            let started = Instant::now();
            match self.instantiate(slot, started).await {
                Ok(instance) => return Ok((instance, started)),
                // The pool ran out of something the permits do not count:
                // make room and try again while the wait lasts.
                Err(Start::PoolFull) if waited.elapsed() < CAPACITY_WAIT => {
                    capacity.evict_idle();
                    tokio::time::sleep(POOL_RETRY).await;
                }
                Err(Start::PoolFull) => {
                    return Err(self.no_capacity(CapacityError {
                        waited: waited.elapsed(),
                        held: self.share.held(),
                        share: capacity.share(),
                        total: self.runtime.instances(),
                    }))
                }
                Err(Start::Failed(failure)) => return Err(failure),
            }
        }
    }

    /// A new instance in `slot`, its start functions run under the time
    /// limit counted from `started`.
    async fn instantiate(&self, slot: Slot, started: Instant) -> Result<Instance, Start> {
        // Its granted folders are descriptors of the host: counted before
        // they are opened. Out of descriptors is a shortage, like slots.
        let mut files = self.runtime.files_for(&self.subscriber);
        if let Err(refused) = files.hold(self.limits.grants.dirs.len()) {
            return Err(Start::Failed(Failure::new(
                FailureKind::Capacity,
                format!(
                    "{}: cannot open its granted folders now: {refused}",
                    self.plugin_file
                ),
            )));
        }
        let data = StoreData::new(
            self.subscriber.clone(),
            self.config.clone(),
            self.limits.memory_bytes,
            &self.limits.grants,
            self.log_gate.clone(),
            files,
            self.outbound.clone(),
        )
        .map_err(|err| {
            if is_host_shortage(&err) {
                Start::PoolFull
            } else {
                Start::Failed(Failure::new(FailureKind::Host, format!("{err:#}")))
            }
        })?;
        let mut store = Store::new(self.runtime.engine(), data);
        store.set_max_component_handles(super::host_api::MAX_HANDLES);
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().on_epoch()));
        let timeout = self.limits.timeout;
        store.data_mut().start_deadline = Some(started + timeout);
        store.set_epoch_deadline(1);
        // Epochs stop start functions at the limit; one blocked in a host
        // call is stopped by this deadline instead.
        let remaining = timeout.saturating_sub(started.elapsed()) + BLOCKED_GRACE;
        let instantiated =
            tokio::time::timeout(remaining, self.plugin.pre.instantiate_async(&mut store)).await;
        let bindings = match instantiated {
            Err(_) => return Err(Start::Failed(self.failures().timed_out_starting(timeout))),
            Ok(Ok(bindings)) => bindings,
            Ok(Err(err)) => {
                let data = store.data_mut();
                if data.start_timed_out {
                    return Err(Start::Failed(self.failures().timed_out_starting(timeout)));
                }
                // Every pooled slot in use, or the process out of
                // descriptors or memory, is the host's shortage, not the
                // plugin's fault: waited out, never a dead letter.
                if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
                    return Err(Start::PoolFull);
                }
                let err = anyhow::Error::from(err);
                if is_host_shortage(&err) {
                    return Err(Start::PoolFull);
                }
                let kind = if data.limiter.hit {
                    FailureKind::OutOfMemory
                } else {
                    FailureKind::Trap
                };
                return Err(Start::Failed(Failure::new(
                    kind,
                    format!("{} failed to start: {err:#}", self.plugin_file),
                )));
            }
        };
        // No deadline between calls: each call sets its own.
        store.data_mut().start_deadline = None;
        store.set_epoch_deadline(u64::MAX / 2);
        Ok(Instance {
            store,
            bindings,
            _slot: slot,
        })
    }

    fn no_capacity(&self, err: CapacityError) -> Failure {
        Failure::new(
            FailureKind::Capacity,
            format!("{}: {err}", self.plugin_file),
        )
    }

    /// Keeps `instance` for the next event, unless others wait for a slot:
    /// then it is dropped and its slot goes to the first in line.
    fn give_back(&self, instance: Instance) {
        if self.runtime.capacity().contended() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.limits.concurrency {
            idle.push(instance);
        }
    }

    /// What a failed call of this build is reported as.
    fn failures(&self) -> CallFailures<'_> {
        CallFailures {
            plugin_file: &self.plugin_file,
            effects_bytes: self.limits.effects_bytes,
        }
    }
}

impl PluginCalls {
    /// Runs one call in an instance, on the caller's thread.
    async fn handle(&self, event: Event, state: Arc<dyn StateReader>) -> Outcome {
        let (mut instance, started) = match self.instance().await {
            Ok(had) => had,
            Err(failure) => {
                if failure.kind == FailureKind::Capacity {
                    tracing::debug!(subscriber = %self.subscriber, event_id = %event.id, "{}", failure.message);
                }
                return Outcome::Failed(failure);
            }
        };
        let timeout = self.limits.timeout;
        let data = instance.store.data_mut();
        data.limiter.hit = false;
        data.call = Some(Call {
            effects: Effects::for_event(event.hops, self.limits.publish),
            state,
            id_seed: format!("{}/{}", self.subscriber, event.stream_id),
            event_id: event.id.clone(),
            traceparent: event.traceparent.clone(),
            started,
            timeout,
            timed_out: false,
            host_error: None,
            state_read: StateRead::Idle,
            state_wait: Duration::ZERO,
            longest_read: Duration::ZERO,
            effects_budget: self.limits.effects_bytes,
            over_budget: None,
            hop_limited: None,
            retry_after: None,
        });
        instance.store.set_epoch_deadline(1);
        let wit_event = WitEvent {
            id: event.id,
            event_type: event.event_type,
            stream_id: event.stream_id,
            timestamp: event.timestamp,
            attempt: event.attempt,
            data: event.data,
        };
        // Epochs stop guest code at the limit; a guest blocked in a host
        // call (a WASI sleep, a state read on a stalled Redis) is stopped by
        // this deadline instead. Either way the instance is thrown away.
        let result = {
            let mut call = std::pin::pin!(instance
                .bindings
                .call_handle(&mut instance.store, &wit_event));
            // Most calls finish in their first poll: those arm no timer.
            match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => {
                    let remaining = timeout.saturating_sub(started.elapsed()) + BLOCKED_GRACE;
                    tokio::time::timeout(remaining, call).await
                }
            }
        };
        let Ok(result) = result else {
            let waiting = instance.store.data().call.as_ref().map(|c| &c.state_read);
            if waiting == Some(&StateRead::Waiting) {
                return Outcome::Failed(Failure::new(
                    FailureKind::Unavailable,
                    format!(
                        "Redis did not answer a state read within the time limit ({timeout:?})"
                    ),
                ));
            }
            let mut failure = self.failures().timed_out(timeout);
            failure.message += ", blocked in a host call";
            return Outcome::Failed(failure);
        };
        instance.store.set_epoch_deadline(u64::MAX / 2);

        let data = instance.store.data_mut();
        if result.is_ok() {
            log_output(data);
        }
        data.settle_files();
        data.finish_log();
        let mut call = data.call.take().expect("the call state is set above");
        let denied = data
            .http_denied_in(call.started)
            .map(|why| format!("denied a request of this call: {why}"));
        let outcome = match result {
            // A publish past the hop limit fails the call, whatever the
            // plugin made of the refusal: a cycle must end in the DLQ.
            Ok(_) if call.hop_limited.is_some() => {
                let reason = call.hop_limited.take().unwrap_or_default();
                tracing::warn!(subscriber = %self.subscriber, event_id = %call.event_id, "{reason}");
                Outcome::Failed(
                    Failure::new(FailureKind::Reject, reason).with_reads(call.effects.take_reads()),
                )
            }
            Ok(Ok(())) => Outcome::Ok(call.effects),
            Ok(Err(WitFailure::Retry(message))) => Outcome::Failed(Failure {
                retry_after: call.retry_after,
                ..Failure::new(FailureKind::Retry, plugin_reason(&message))
                    .with_reads(call.effects.take_reads())
                    .with_host_note(denied)
            }),
            Ok(Err(WitFailure::Reject(message))) => Outcome::Failed(
                Failure::new(FailureKind::Reject, plugin_reason(&message))
                    .with_reads(call.effects.take_reads())
                    .with_host_note(denied),
            ),
            Err(err) => {
                let failure = self
                    .failures()
                    .classify_trap(data, &call, err)
                    .with_host_note(denied);
                // The instance is dropped here: its memory may be corrupt.
                return Outcome::Failed(failure);
            }
        };
        self.give_back(instance);
        outcome
    }
}

/// The outbound HTTP policy of the subscriber with `settings`. A CA file
/// that cannot be read was refused at start (preflight); one broken since
/// leaves the public roots only, said once.
fn outbound_policy(
    runtime: &Arc<PluginRuntime>,
    settings: &SubscriberConfig,
    limit: std::time::Duration,
) -> outbound::Policy {
    let grants = &settings.grants;
    let tls = outbound::tls_config(grants.http_ca.as_deref()).unwrap_or_else(|err| {
        tracing::warn!(
            subscriber = %settings.name,
            "HTTPS requests trust the public roots only: {err:#}"
        );
        outbound::tls_config(None).expect("the public roots load")
    });
    outbound::Policy::new(
        settings.name.as_str().into(),
        grants.http.clone(),
        tls,
        limit,
        Arc::new(SubscriberSockets {
            runtime: runtime.clone(),
            subscriber: settings.name.clone(),
        }),
    )
}

/// A subscriber's outbound connections, one descriptor each from its share
/// of what plugins may hold (see [`super::files`]).
struct SubscriberSockets {
    runtime: Arc<PluginRuntime>,
    subscriber: String,
}

impl outbound::Sockets for SubscriberSockets {
    fn hold_one(&self) -> Result<Box<dyn Send + Sync>, String> {
        let mut files = self.runtime.files_for(&self.subscriber);
        files.hold(1).map_err(|refused| refused.to_string())?;
        Ok(Box::new(files))
    }
}

/// Why a new instance did not start.
enum Start {
    /// The pooling allocator is out of slots, or the process out of
    /// descriptors or memory: wait and try again.
    PoolFull,
    /// The event fails with this.
    Failed(Failure),
}
