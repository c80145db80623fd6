//! `eventhost invoke`: one event through a plugin, in the sandbox `run`
//! uses, with state in memory and no Redis.
//!
//! An author tries a plugin, and a plugin's own tests exercise it, without
//! a bus: the event goes through the same [`WasmHandler`] (same limits, same
//! instance setup, same host API) as on the bus, and the report says what
//! the bus would have committed: the outcome, the state written and
//! deleted, the events published, the logs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{EventFilter, Grants, SubscriberConfig};
use crate::handler::{Effects, Event, Handler, Outcome, QueuedRequest, Seen, StateReader};
use crate::outbound::{HttpGrant, RequestRecord};
use crate::plugin::{PluginRuntime, WasmHandler};

/// One event to run and how.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `.wasm` component.
    pub plugin: PathBuf,
    pub event_type: String,
    /// The event's fields, a JSON object, as a producer publishes them.
    pub data: Map<String, Value>,
    /// The committed state the plugin reads.
    pub state: BTreeMap<String, String>,
    /// What the plugin reads with `config-get`.
    pub config: BTreeMap<String, String>,
    /// 1 on a first delivery.
    pub attempt: u32,
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Where the plugin may send HTTP requests (as `grants.http`).
    pub http: Vec<HttpGrant>,
}

/// What one invocation came to: what the bus would commit, and why.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `ok`, `retry`, `reject`, `trap`, `timeout`, `out-of-memory` or
    /// `host-error`.
    pub outcome: &'static str,
    /// Why it did not succeed, with the plugin's last output; `null` on ok.
    pub reason: Option<String>,
    /// Events published (committed only on ok).
    pub published: Vec<PublishedEvent>,
    /// State written and deleted (committed only on ok).
    pub state: StateChanges,
    /// What the plugin logged, and printed.
    pub logs: Vec<LogLine>,
    /// The HTTP requests it made, sent or denied, in order.
    pub requests: Vec<RequestRecord>,
    /// The requests it queued with `send-after-commit`: listed, never sent
    /// (the bus sends them only once the event is committed).
    pub queued: Vec<QueuedRequest>,
    pub duration_ms: f64,
}

/// An event the plugin published: its type and the object it gave.
#[derive(Debug, Serialize)]
pub struct PublishedEvent {
    pub event_type: String,
    pub data: Value,
}

/// The state a call left: the last value of each key it set, and the keys
/// it deleted.
#[derive(Debug, Default, Serialize)]
pub struct StateChanges {
    pub set: BTreeMap<String, String>,
    pub deleted: Vec<String>,
}

/// One line the plugin logged (`trace` … `error`) or printed (`output`).
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

impl Report {
    /// The process exit status for this outcome: 0 on ok; see
    /// [`EXIT_CODES`].
    pub fn exit_code(&self) -> u8 {
        EXIT_CODES
            .iter()
            .find(|(outcome, _)| *outcome == self.outcome)
            .map_or(1, |(_, code)| *code)
    }
}

/// Exit status by outcome (1 is a failure before the event could run: a
/// bad argument, a plugin refused).
pub const EXIT_CODES: [(&str, u8); 7] = [
    ("ok", 0),
    ("retry", 3),
    ("reject", 4),
    ("trap", 5),
    ("timeout", 6),
    ("out-of-memory", 7),
    ("host-error", 8),
];

/// Runs the invocation; `logs` collects what the plugin logs meanwhile
/// (see [`LogCollector`]).
pub async fn invoke(
    runtime: Arc<PluginRuntime>,
    invocation: Invocation,
    logs: &LogCollector,
) -> anyhow::Result<Report> {
    let path = invocation.plugin.clone();
    let plugin = tokio::task::spawn_blocking({
        let runtime = runtime.clone();
        move || runtime.load(&path)
    })
    .await
    .context("plugin loader crashed")??;
    let settings = SubscriberConfig {
        name: subscriber_name(&invocation.plugin),
        plugin_file: invocation
            .plugin
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        plugin: invocation.plugin.clone(),
        events: EventFilter::All,
        concurrency: 1,
        max_attempts: invocation.attempt.max(1),
        timeout: invocation.timeout,
        memory_bytes: invocation.memory_bytes,
        effects_bytes: crate::config::DEFAULT_EFFECTS_MB << 20,
        publish: crate::config::PublishLimits::default(),
        retry: crate::config::RetryPolicy::default(),
        order: None,
        config: invocation.config.clone(),
        grants: Grants {
            http: invocation.http.clone(),
            ..Grants::default()
        },
    };
    let handler = WasmHandler::new(runtime, &settings, Arc::new(plugin));
    handler.outbound().record();
    let event = event(&invocation);
    let state = Arc::new(MemoryState(invocation.state.into_iter().collect()));
    logs.clear();
    let started = Instant::now();
    let outcome = handler.handle(event, state).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut report = Report {
        outcome: "ok",
        reason: None,
        published: Vec::new(),
        state: StateChanges::default(),
        logs: logs.take(),
        requests: handler.outbound().take_records(),
        queued: Vec::new(),
        duration_ms,
    };
    match outcome {
        Outcome::Ok(effects) => describe_effects(&mut report, &effects),
        Outcome::Failed(failure) => {
            report.outcome = failure.kind.as_str();
            report.reason = Some(failure.message);
        }
    }
    Ok(report)
}

/// The event as the bus would deliver it: the data with `event_type`,
/// `event_id` and `timestamp` filled in where the producer left them out.
fn event(invocation: &Invocation) -> Event {
    let mut data = invocation.data.clone();
    data.insert(
        "event_type".into(),
        Value::from(invocation.event_type.as_str()),
    );
    let id = match data.get("event_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            data.insert("event_id".into(), Value::from(id.as_str()));
            id
        }
    };
    let now = crate::handler::unix_now();
    let timestamp = data
        .entry("timestamp")
        .or_insert_with(|| Value::from(now))
        .as_f64();
    Event {
        id,
        event_type: invocation.event_type.clone(),
        stream_id: "0-1".into(),
        timestamp,
        attempt: invocation.attempt,
        data: Value::Object(data).to_string(),
        hops: 0,
        traceparent: None,
    }
}

fn describe_effects(report: &mut Report, effects: &Effects) {
    report.queued = effects.requests().to_vec();
    for published in effects.published() {
        report.published.push(PublishedEvent {
            event_type: published.event_type.clone(),
            data: Value::Object(published.data.clone()),
        });
    }
    let mut last: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for (key, value) in effects.writes() {
        last.insert(key, value.as_deref());
    }
    for (key, value) in last {
        match value {
            Some(value) => {
                report.state.set.insert(key.to_string(), value.to_string());
            }
            None => report.state.deleted.push(key.to_string()),
        }
    }
}

/// A subscriber name for the plugin's logs: its file name without `.wasm`.
fn subscriber_name(plugin: &Path) -> String {
    plugin
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
}

/// State in memory: what `--state` gave, read-only (writes are buffered in
/// the call's effects, as on the bus).
struct MemoryState(HashMap<String, String>);

#[async_trait]
impl StateReader for MemoryState {
    async fn read(&self, key: &str) -> anyhow::Result<Seen> {
        Ok(Seen::value(self.0.get(key).cloned()))
    }
}

/// A `tracing` layer that keeps what plugins log (`log` calls and printed
/// output), so `invoke` can report it instead of mixing it into its own
/// stderr.
#[derive(Clone, Default)]
pub struct LogCollector {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl LogCollector {
    fn clear(&self) {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Where a plugin's log calls and its printed output are logged from.
const PLUGIN_LOG_TARGETS: [&str; 2] = [
    "eventhost::plugin::host_api",
    "eventhost::plugin::wasm_handler",
];

/// Prefix of the log lines that carry what a plugin printed.
const OUTPUT_PREFIX: &str = "plugin output: ";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCollector {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if !PLUGIN_LOG_TARGETS.contains(&meta.target()) {
            return;
        }
        let mut message = MessageField(String::new());
        event.record(&mut message);
        let line = match message.0.strip_prefix(OUTPUT_PREFIX) {
            Some(output) => LogLine {
                level: "output".into(),
                message: output.to_string(),
            },
            None => LogLine {
                level: meta.level().as_str().to_ascii_lowercase(),
                message: message.0,
            },
        };
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
}

/// The `message` of a tracing event.
struct MessageField(String);

impl tracing::field::Visit for MessageField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

/// Parses `k=v` arguments into a map; the message names the flag.
pub fn pairs(flag: &str, args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("{flag} takes key=value, got {arg:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_are_split_at_the_first_equals() {
        let got = pairs("--state", &["count=41".into(), "k=a=b".into()]).unwrap();
        assert_eq!(got["count"], "41");
        assert_eq!(got["k"], "a=b");
        assert!(pairs("--state", &["nope".into()]).is_err());
        assert!(pairs("--state", &["=v".into()]).is_err());
    }

    #[test]
    fn the_last_write_of_each_key_is_reported() {
        let mut effects = Effects::default();
        effects.set("count".into(), "1".into());
        effects.set("count".into(), "2".into());
        effects.set("gone".into(), "x".into());
        effects.delete("gone".into());
        let mut report = Report {
            outcome: "ok",
            reason: None,
            published: Vec::new(),
            state: StateChanges::default(),
            logs: Vec::new(),
            requests: Vec::new(),
            queued: Vec::new(),
            duration_ms: 0.0,
        };
        describe_effects(&mut report, &effects);
        assert_eq!(report.state.set["count"], "2");
        assert_eq!(report.state.deleted, ["gone"]);
        assert_eq!(report.exit_code(), 0);
        report.outcome = "trap";
        assert_eq!(report.exit_code(), 5);
    }
}
