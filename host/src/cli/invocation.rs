//! `eventhost invoke`: one event through a plugin, no Redis, a report.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use super::{json_object, say};
use crate::config;
use crate::invoke::{self, Invocation, LogCollector, Report};
use crate::plugin::{PluginRuntime, RuntimeSettings};

#[derive(clap::Args)]
pub(super) struct InvokeArgs {
    /// The plugin, a `.wasm` component.
    plugin: PathBuf,
    /// The event type (else the `event_type` of --event).
    #[arg(long = "type", short = 't')]
    event_type: Option<String>,
    /// The event's fields, a JSON object.
    #[arg(long, conflicts_with = "event")]
    data: Option<String>,
    /// A file holding the event's fields as a JSON object; `-` reads stdin.
    #[arg(long)]
    event: Option<PathBuf>,
    /// A committed state value the plugin reads, `key=value`; repeatable.
    #[arg(long = "state", value_name = "KEY=VALUE")]
    state: Vec<String>,
    /// A value the plugin reads with `config-get`, `key=value`; repeatable.
    #[arg(long = "plugin-config", value_name = "KEY=VALUE")]
    plugin_config: Vec<String>,
    /// The delivery attempt the plugin sees.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: u32,
    /// The time limit, as a subscriber's `timeout_ms`.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// The memory limit, as a subscriber's `memory_mb`.
    #[arg(long, default_value_t = 64)]
    memory_mb: usize,
    /// Where the plugin may send HTTP requests, as in `grants.http`
    /// (repeat for more), e.g. `--grant-http http://127.0.0.1:8080`.
    #[arg(long = "grant-http", value_name = "URL")]
    grant_http: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The config file, for its compiled-plugin cache (optional).
    #[arg(
        long,
        short,
        default_value = "eventhost.toml",
        env = "EVENTHOST_CONFIG"
    )]
    config: PathBuf,
}

/// `eventhost invoke`: prints the report; the exit status says the outcome.
pub(super) async fn invoke(args: InvokeArgs, logs: &LogCollector) -> anyhow::Result<u8> {
    let mut data = match (&args.data, &args.event) {
        (Some(json), _) => json_object(json, "--data")?,
        (None, Some(file)) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the event from stdin")?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the event file {}", file.display()))?
            };
            json_object(&text, "the event")?
        }
        (None, None) => serde_json::Map::new(),
    };
    let event_type = match args.event_type {
        Some(event_type) => event_type,
        None => match data.remove("event_type") {
            Some(Value::String(event_type)) if !event_type.is_empty() => event_type,
            _ => anyhow::bail!("say the event type with --type, e.g. --type OrderCreatedEvent"),
        },
    };
    let cache_dir = match config::load(&args.config) {
        Ok(config) => config.plugins.cache_dir,
        Err(_) => user_cache_dir(),
    };
    let invocation = Invocation {
        plugin: std::path::absolute(&args.plugin).unwrap_or(args.plugin),
        event_type,
        data,
        state: invoke::pairs("--state", &args.state)?,
        config: invoke::pairs("--plugin-config", &args.plugin_config)?,
        attempt: args.attempt,
        timeout: std::time::Duration::from_millis(args.timeout_ms),
        memory_bytes: args.memory_mb << 20,
        http: args
            .grant_http
            .iter()
            .map(|grant| {
                crate::outbound::HttpGrant::parse(grant)
                    .map_err(|message| anyhow::anyhow!("--grant-http {message}"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let runtime = PluginRuntime::new(RuntimeSettings::with_cache(&cache_dir).compiling_in_child(
        std::time::Duration::from_secs(config::DEFAULT_COMPILE_TIMEOUT_S),
        config::DEFAULT_COMPILE_MEMORY_MB << 20,
    )?)?;
    let report = invoke::invoke(runtime, invocation, logs).await?;
    if args.json {
        say(serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report.exit_code())
}

/// The report for a person.
fn print_report(report: &Report) {
    say(format_args!(
        "outcome: {} ({:.2} ms)",
        report.outcome, report.duration_ms
    ));
    if let Some(reason) = &report.reason {
        say(format_args!("reason: {reason}"));
    }
    for line in &report.logs {
        say(format_args!("log {}: {}", line.level, line.message));
    }
    for (key, value) in &report.state.set {
        say(format_args!("state set: {key} = {value:?}"));
    }
    for key in &report.state.deleted {
        say(format_args!("state deleted: {key}"));
    }
    for event in &report.published {
        say(format_args!(
            "published: {} {}",
            event.event_type, event.data
        ));
    }
    for request in &report.requests {
        let came = match (request.status, &request.error) {
            (Some(status), _) => status.to_string(),
            (None, Some(error)) => format!("no response: {error}"),
            (None, None) => "no response".into(),
        };
        say(format_args!(
            "http: {} {} -> {came} ({:.1} ms)",
            request.method,
            super::text::shown(&request.url, 200),
            request.duration_ms
        ));
    }
    for queued in &report.queued {
        say(format_args!(
            "queued after commit (not sent): {} {} (idempotency-key {}, {} attempts)",
            queued.method,
            super::text::shown(&queued.url, 200),
            queued.key,
            queued.attempts
        ));
    }
}

/// Where `invoke` caches compiled plugins when no config says: the user's
/// cache folder.
fn user_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("eventhost").join("compiled")
}
