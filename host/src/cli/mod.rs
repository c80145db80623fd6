//! The command line: `run`, `check`, `publish`; for operators `status`
//! and `dlq`; for plugin authors `new`, `build` and `invoke`. Thin: each
//! command parses its arguments, calls into the library, and prints.
//! [`access`] is how operator commands reach the bus (and `publish`),
//! [`invocation`] runs `invoke`; [`dlq`] and [`status`] are for operators.

mod access;
mod dlq;
mod invocation;
mod status;
mod text;

use access::{connect, publish, RedisArgs};
use invocation::{invoke, InvokeArgs};

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::daemon::{self, WasmPlugins};
use crate::invoke::LogCollector;
use crate::plugin::{PluginRuntime, RuntimeSettings};
use crate::{preflight, signals, telemetry};

/// Runs event handlers as sandboxed WebAssembly components on Redis Streams.
#[derive(Parser)]
#[command(name = "eventhost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: compile a component read on stdin, for the host that runs
    /// this as a child with limits.
    #[command(name = "compile-plugin", hide = true)]
    CompilePlugin,
    /// Run the bus and every subscriber until SIGINT/SIGTERM.
    Run {
        /// The config file.
        #[arg(
            long,
            short,
            default_value = "eventhost.toml",
            env = "EVENTHOST_CONFIG"
        )]
        config: PathBuf,
    },
    /// Validate the config and load every plugin; print every problem.
    Check {
        /// The config file.
        #[arg(
            long,
            short,
            default_value = "eventhost.toml",
            env = "EVENTHOST_CONFIG"
        )]
        config: PathBuf,
    },
    /// Publish one event to the bus, as a LeanMQ producer would.
    Publish {
        /// The event type, e.g. OrderCreatedEvent.
        event_type: String,
        /// The event's fields, a JSON object, e.g. '{"order_id": "o-1"}'.
        #[arg(default_value = "{}")]
        json: String,
        /// Route it this long from now (90s, 10m, 2h) instead of at once.
        #[arg(long, conflicts_with = "at")]
        delay: Option<String>,
        /// Route it at this time: UTC (2026-12-08T02:00:00Z) or seconds
        /// since the epoch.
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show the bus from Redis alone: hosts, the fan-out, and per
    /// subscriber its build, backlog, lag, pending entries, DLQ and rates.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// List, inspect, replay and purge dead letters, from Redis alone.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Run one event through a plugin, in the sandbox `run` uses, with state
    /// in memory and no Redis; print what the bus would commit.
    ///
    /// Exit status: 0 ok, 3 retry, 4 reject, 5 trap, 6 timeout,
    /// 7 out-of-memory, 8 host-error; 1 if the event could not run (a bad
    /// argument, a plugin refused).
    Invoke(InvokeArgs),
    /// Write a new plugin project: a handler, a test, a README, and the
    /// table to paste into eventhost.toml.
    New {
        /// The plugin's name (letters, digits, `-`, `_`); also the folder.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: crate::author::Lang,
        /// The event types it subscribes to, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Where to create the project folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a plugin project (Rust, Python or JavaScript) with its own
    /// toolchain at pinned versions; the last line printed is the
    /// component's path.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Parses the command line, runs the command, and maps failure to exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A compiling child does one thing: no logs, no async runtime.
    if matches!(cli.command, Command::CompilePlugin) {
        return crate::plugin::serve_compile_child();
    }
    let logs = LogCollector::default();
    match &cli.command {
        Command::Invoke(_) => telemetry::init_invoke_logging(logs.clone()),
        // Its config may ask for JSON logs; a config that does not parse
        // is reported by `run` itself, in text.
        Command::Run { config } => telemetry::init_logging(
            config::load(config)
                .map(|c| c.telemetry.log_format)
                .unwrap_or_default(),
        ),
        _ => telemetry::init_logging(config::LogFormat::Text),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::CompilePlugin => unreachable!("served before the runtime starts"),
            Command::Invoke(args) => return invoke(args, &logs).await.map(Some),
            Command::New {
                name,
                lang,
                events,
                dir,
            } => new(&dir, &name, lang, &events).map(|()| true),
            Command::Build { dir } => build(dir).await.map(|()| true),
            Command::Dlq { command } => dlq::run(command).await.map(|()| true),
            Command::Status { json, redis } => status::run(&redis, json).await.map(|()| true),
            Command::Run { config } => run(&config).await.map(|()| true),
            Command::Check { config } => check(&config).await,
            Command::Publish {
                event_type,
                json,
                delay,
                at,
                redis,
            } => match access::due(delay.as_deref(), at.as_deref()) {
                Ok(due) => publish(&redis.config, redis.url, &event_type, &json, due)
                    .await
                    .map(|()| true),
                Err(err) => Err(err),
            },
        }
        .map(|ok| if ok { None } else { Some(1) })
    });
    // Do not wait for tasks still blocked on Redis at exit.
    runtime.shutdown_background();
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(code)) => ExitCode::from(code),
        Err(err) => {
            match err.downcast_ref::<ConfigError>() {
                Some(config_error) => eprintln!("{config_error}"),
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints a line of a command's output; a closed pipe (`| head`) is not an
/// error worth a panic.
fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// `eventhost run`: the daemon with wasm plugins, until SIGINT/SIGTERM.
async fn run(path: &Path) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    signals::on_signals(shutdown.clone()).context("cannot listen for signals")?;
    let config = preflight::config(path)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = PluginRuntime::new(runtime_settings(&config.plugins)?)?;
    let plugins = Arc::new(WasmPlugins::new(runtime));
    daemon::run(config, plugins, shutdown.cancelled_owned()).await
}

/// The plugin runtime's settings for a config: its `[plugins]` table,
/// compiling in a child process under its limits.
fn runtime_settings(plugins: &config::PluginsConfig) -> anyhow::Result<RuntimeSettings> {
    RuntimeSettings::from_config(plugins)
        .compiling_in_child(plugins.compile_timeout, plugins.compile_memory_bytes)
}

/// `eventhost new`: writes the project and says what to do next.
fn new(dir: &Path, name: &str, lang: crate::author::Lang, events: &[String]) -> anyhow::Result<()> {
    let project = crate::author::new_project(dir, name, lang, events)?;
    say(format_args!("created {}", project.display()));
    say(format_args!(
        "next: eventhost build {0}, then eventhost invoke <the path it prints> --type Demo --data '{{}}' (see {0}/README.md)",
        project.display()
    ));
    Ok(())
}

/// `eventhost build`: the component's path is the last line printed.
async fn build(dir: PathBuf) -> anyhow::Result<()> {
    let component = tokio::task::spawn_blocking(move || crate::author::build_project(&dir))
        .await
        .context("the build crashed")??;
    say(component.display());
    Ok(())
}

fn json_object(text: &str, what: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(data)) => Ok(data),
        Ok(_) => anyhow::bail!("{what} must be a JSON object, e.g. '{{\"order_id\": \"o-1\"}}'"),
        Err(err) => anyhow::bail!("{what} is not valid JSON: {err}"),
    }
}

/// Prints every problem in the config and its plugins; `false` if any.
async fn check(path: &Path) -> anyhow::Result<bool> {
    let config = match preflight::config(path) {
        Ok(config) => config,
        Err(err) => {
            match err.downcast_ref::<ConfigError>() {
                Some(config_error) => say(config_error),
                None => say(format_args!("error: {err:#}")),
            }
            return Ok(false);
        }
    };
    let runtime = PluginRuntime::new(runtime_settings(&config.plugins)?)?;
    let loaded = preflight::load_plugins(&runtime, &config.subscribers).await;
    for sub in &config.subscribers {
        match (
            loaded.plugins.get(&sub.plugin),
            loaded.refused.get(&sub.plugin),
        ) {
            (Some(plugin), _) => say(format_args!(
                "ok: subscribers.{}: {} (build {}, {:?}{})",
                sub.name,
                sub.plugin_file,
                plugin.short_digest(),
                plugin.load_time,
                if plugin.cached { ", cached" } else { "" }
            )),
            (None, Some(err)) => {
                say(config.problem(&["subscribers", &sub.name, "plugin"], err.to_string()))
            }
            (None, None) => unreachable!("every subscriber's plugin is loaded or refused"),
        }
    }
    let now = crate::schedule::now_ms();
    for schedule in &config.schedules {
        say(format_args!(
            "ok: schedules.{}: {} {}, next tick {}",
            schedule.name,
            schedule.event_type,
            schedule.ticks,
            schedule
                .ticks
                .after(now)
                .map_or_else(|| "never".into(), crate::schedule::rfc3339)
        ));
    }
    for warning in &config.warnings {
        say(format_args!("warning: {warning}"));
    }
    let ok = loaded.refused.is_empty();
    if ok {
        say(format_args!(
            "{}: ok, {} subscriber{}{}",
            config.path.display(),
            config.subscribers.len(),
            if config.subscribers.len() == 1 {
                ""
            } else {
                "s"
            },
            match config.schedules.len() {
                0 => String::new(),
                1 => ", 1 schedule".into(),
                n => format!(", {n} schedules"),
            }
        ));
    }
    Ok(ok)
}
