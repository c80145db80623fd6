//! Runs one subscriber's events in instances of its plugin.
//!
//! A [`WasmHandler`] is one build of a plugin under one subscriber's
//! settings. Instances are reused across events (a fresh one costs ten times
//! a call) and thrown away after any trap, so a crashed plugin never sees its
//! broken memory again. A reload or a settings change makes a new handler:
//! calls in flight finish on the old one, whose instances go with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wasmtime::{PoolConcurrencyLimitError, Store};

use super::host_api::{Call, StoreData, Subscriber, WitEvent, WitFailure};
use super::runtime::{CompiledPlugin, PluginRuntime};
use crate::config::{Grants, SubscriberConfig};
use crate::handler::{Effects, Event, Failure, FailureKind, Handler, Outcome, StateReader};

/// How long past its limit a call blocked in a host function may take before
/// it is abandoned (guest code is stopped by the epoch right at the limit).
const BLOCKED_GRACE: Duration = Duration::from_millis(50);

/// The limits and grants an instance is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Instances kept for reuse; more than this are dropped on return.
    pub concurrency: usize,
    pub grants: Grants,
}

impl From<&SubscriberConfig> for Limits {
    fn from(settings: &SubscriberConfig) -> Self {
        Limits {
            timeout: settings.timeout,
            memory_bytes: settings.memory_bytes,
            concurrency: settings.concurrency,
            grants: settings.grants.clone(),
        }
    }
}

struct Instance {
    store: Store<StoreData>,
    bindings: Subscriber,
}

/// A [`Handler`] backed by one build of a wasm component.
pub struct WasmHandler {
    runtime: Arc<PluginRuntime>,
    subscriber: Arc<str>,
    /// Shown in failure messages: the plugin file as configured.
    plugin_file: String,
    plugin: Arc<CompiledPlugin>,
    limits: Limits,
    config: Arc<BTreeMap<String, String>>,
    idle: Mutex<Vec<Instance>>,
}

impl WasmHandler {
    /// A handler running `plugin` for the subscriber with `settings`.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        settings: &SubscriberConfig,
        plugin: Arc<CompiledPlugin>,
    ) -> Self {
        WasmHandler {
            runtime,
            subscriber: settings.name.as_str().into(),
            plugin_file: settings.plugin_file.clone(),
            plugin,
            limits: Limits::from(settings),
            config: Arc::new(settings.config.clone()),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The build this handler runs.
    pub fn plugin(&self) -> &Arc<CompiledPlugin> {
        &self.plugin
    }

    async fn instance(&self) -> Result<Instance, Failure> {
        if let Some(instance) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(instance);
        }
        let data = StoreData::new(
            self.subscriber.clone(),
            self.config.clone(),
            self.limits.memory_bytes,
            &self.limits.grants,
        )
        .map_err(|err| Failure::new(FailureKind::Host, format!("{err:#}")))?;
        let mut store = Store::new(self.runtime.engine(), data);
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().on_epoch()));
        // No deadline outside calls: instantiation runs start functions,
        // which get the call's limit below.
        store.set_epoch_deadline(u64::MAX / 2);
        let bindings = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|err| {
                // Every pooled slot in use is the host's shortage, not the
                // plugin's fault.
                let kind = if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
                    FailureKind::Host
                } else {
                    FailureKind::Trap
                };
                let err = anyhow::Error::from(err);
                Failure::new(
                    kind,
                    format!("{} failed to start: {err:#}", self.plugin_file),
                )
            })?;
        Ok(Instance { store, bindings })
    }

    fn give_back(&self, instance: Instance) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.limits.concurrency {
            idle.push(instance);
        }
    }

    fn timed_out(&self, limit: Duration) -> Failure {
        Failure::new(
            FailureKind::Timeout,
            format!(
                "{} ran past its time limit of {} ms",
                self.plugin_file,
                limit.as_millis()
            ),
        )
    }

    /// Turns a trap into a failure that says what happened and why.
    fn classify_trap(&self, data: &mut StoreData, call: &Call, err: wasmtime::Error) -> Failure {
        let output = data.output.drain();
        if let Some(message) = &call.host_error {
            return Failure::new(FailureKind::Host, format!("host error: {message}"));
        }
        if call.timed_out {
            return self.timed_out(call.timeout);
        }
        let trap = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{:#}", anyhow::Error::from(err)),
        };
        let said = output_summary(&output);
        let said = if said.is_empty() {
            String::new()
        } else {
            format!("; it printed: {said}")
        };
        if data.limiter.hit {
            return Failure::new(
                FailureKind::OutOfMemory,
                format!(
                    "{} ran past its memory limit of {} MiB ({trap}){said}",
                    self.plugin_file,
                    data.limiter.limit() >> 20
                ),
            );
        }
        Failure::new(
            FailureKind::Trap,
            format!("{} trapped: {trap}{said}", self.plugin_file),
        )
    }
}

#[async_trait]
impl Handler for WasmHandler {
    async fn handle(&self, event: Event, state: Arc<dyn StateReader>) -> Outcome {
        let mut instance = match self.instance().await {
            Ok(instance) => instance,
            Err(failure) => return Outcome::Failed(failure),
        };
        let timeout = self.limits.timeout;
        let data = instance.store.data_mut();
        data.limiter.hit = false;
        data.call = Some(Call {
            effects: Effects::default(),
            state,
            id_seed: format!("{}/{}", self.subscriber, event.stream_id),
            event_id: event.id.clone(),
            started: Instant::now(),
            timeout,
            timed_out: false,
            host_error: None,
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
        let call = instance
            .bindings
            .call_handle(&mut instance.store, &wit_event);
        let Ok(result) = tokio::time::timeout(timeout + BLOCKED_GRACE, call).await else {
            return Outcome::Failed(self.timed_out(timeout));
        };
        instance.store.set_epoch_deadline(u64::MAX / 2);

        let data = instance.store.data_mut();
        let mut call = data.call.take().expect("the call state is set above");
        let outcome = match result {
            Ok(Ok(())) => Outcome::Ok(call.effects),
            Ok(Err(WitFailure::Retry(message))) => Outcome::Failed(
                Failure::new(FailureKind::Retry, message).with_reads(call.effects.take_reads()),
            ),
            Ok(Err(WitFailure::Reject(message))) => Outcome::Failed(
                Failure::new(FailureKind::Reject, message).with_reads(call.effects.take_reads()),
            ),
            Err(err) => {
                let failure = self.classify_trap(data, &call, err);
                // The instance is dropped here: its memory may be corrupt.
                return Outcome::Failed(failure);
            }
        };
        log_output(&self.subscriber, &wit_event.id, &data.output.drain());
        self.give_back(instance);
        outcome
    }
}

/// Forwards what a healthy call printed to the log, one line per line.
fn log_output(subscriber: &str, event_id: &str, output: &str) {
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(subscriber, event_id, "plugin output: {line}");
    }
}

/// What a crashed plugin printed, in a few hundred characters: its first
/// and last lines, where runtimes put the error (JavaScript prints it first,
/// a Rust panic last).
fn output_summary(text: &str) -> String {
    // Rust's panic hook adds advice about RUST_BACKTRACE that only adds noise.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let picked: Vec<&str> = if lines.len() <= 4 {
        lines
    } else {
        let mut picked = lines[..2].to_vec();
        picked.push("…");
        picked.extend_from_slice(&lines[lines.len() - 2..]);
        picked
    };
    shorten(&picked.join(" | "), 600)
}

/// `text` cut in the middle to at most about `max` bytes.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let head = text.floor_char_boundary(max / 2);
    let tail = text.ceil_char_boundary(text.len() - max / 2);
    format!("{} … {}", &text[..head], &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_summaries_keep_the_first_and_last_lines() {
        assert_eq!(output_summary("a\n\nb\nc\nd\n"), "a | b | c | d");
        assert_eq!(
            output_summary("e1\ne2\nx\ny\nz\nl1\nl2"),
            "e1 | e2 | … | l1 | l2"
        );
        assert_eq!(
            output_summary("panicked at x\nnote: run with `RUST_BACKTRACE=1` for a backtrace"),
            "panicked at x"
        );
        assert_eq!(output_summary(""), "");
        let long = format!("{}{}", "é".repeat(400), "end");
        let short = output_summary(&long);
        assert!(
            short.len() <= 610 && short.ends_with("end") && short.contains(" … "),
            "{short}"
        );
    }
}
