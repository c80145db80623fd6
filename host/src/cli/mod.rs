//! The command line: `run`, `check`, `publish`; for operators `status`
//! and `dlq`; for plugin authors `new`, `build` and `invoke`. Thin: each
//! command parses its arguments, calls into the library, and prints.

mod dlq;
mod status;

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::connection::{Connector, Replicas};
use crate::bus::{self, keys::Keys};
use crate::config::Endpoint;
use crate::config::{self, ConfigError};
use crate::daemon::{self, WasmPlugins};
use crate::http::{self, Readiness};
use crate::invoke::{self, Invocation, LogCollector, Report};
use crate::plugin::{PluginRuntime, RuntimeSettings};
use crate::{preflight, private_redis, signals, telemetry};

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

/// Where an operator's command finds the bus: the config's Redis (its
/// private one when it sets no URL, while `eventhost run` runs), or --url.
#[derive(clap::Args)]
struct RedisArgs {
    /// The config file (for the Redis URL and prefix).
    #[arg(
        long,
        short,
        default_value = "eventhost.toml",
        env = "EVENTHOST_CONFIG"
    )]
    config: PathBuf,
    /// This Redis instead of the config's.
    #[arg(long)]
    url: Option<String>,
}

#[derive(clap::Args)]
struct InvokeArgs {
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
                redis,
            } => publish(&redis.config, redis.url, &event_type, &json)
                .await
                .map(|()| true),
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
    let (ready, readiness) = watch::channel(Readiness::starting());
    // The listener answers until the daemon has finished, SIGTERM or not.
    let listener = CancellationToken::new();
    let _stop_listener = listener.clone().drop_guard();
    if let Some(addr) = config.http.listen {
        let admin_token = std::env::var("EVENTHOST_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| config.http.admin_token.as_ref().map(|t| t.0.clone()));
        let site = http::Site {
            metrics: telemetry::install_metrics()?,
            ready: readiness,
            console: http::console::Console {
                keys: bus::keys_for(
                    config.redis.endpoint.as_ref(),
                    &config.redis.prefix,
                    config.bus.partitions,
                ),
                subscribers: config.subscribers.iter().map(|s| s.name.clone()).collect(),
                admin_token,
            },
        };
        http::serve(addr, site, listener).await?;
    }
    let runtime = PluginRuntime::new(runtime_settings(&config.plugins)?)?;
    let plugins = Arc::new(WasmPlugins::new(runtime));
    daemon::run_observed(config, plugins, shutdown.cancelled_owned(), ready).await
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

/// `eventhost invoke`: prints the report; the exit status says the outcome.
async fn invoke(args: InvokeArgs, logs: &LogCollector) -> anyhow::Result<u8> {
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
}

fn json_object(text: &str, what: &str) -> anyhow::Result<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(data)) => Ok(data),
        Ok(_) => anyhow::bail!("{what} must be a JSON object, e.g. '{{\"order_id\": \"o-1\"}}'"),
        Err(err) => anyhow::bail!("{what} is not valid JSON: {err}"),
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
    for warning in &config.warnings {
        say(format_args!("warning: {warning}"));
    }
    let ok = loaded.refused.is_empty();
    if ok {
        say(format_args!(
            "{}: ok, {} subscriber{}",
            config.path.display(),
            config.subscribers.len(),
            if config.subscribers.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
    Ok(ok)
}

async fn publish(
    path: &Path,
    url: Option<String>,
    event_type: &str,
    json: &str,
) -> anyhow::Result<()> {
    let data = json_object(json, "the event")?;
    let mut bus = connect(&RedisArgs {
        config: path.to_path_buf(),
        url,
    })
    .await?;
    let (stream, stream_id, event_id) =
        bus::publish(&mut bus.conn, &bus.keys, bus.replicas, event_type, data).await?;
    say(format_args!(
        "published {event_type} {event_id} as {stream} {stream_id}"
    ));
    Ok(())
}

/// A bus as an operator's command reaches it.
struct BusAccess {
    conn: crate::bus::connection::RedisConn,
    keys: Keys,
    /// What a write waits for, as the config says.
    replicas: Replicas,
    /// The config, when there is one.
    config: Option<config::Config>,
}

/// Connects to the bus `args` name: --url, else the config's Redis, else
/// the private one a running `eventhost run` started for that config.
async fn connect(args: &RedisArgs) -> anyhow::Result<BusAccess> {
    let (endpoint, config) = match &args.url {
        Some(url) => {
            let config = args
                .config
                .exists()
                .then(|| config::load(&args.config))
                .transpose()?;
            (Endpoint::Server(url.clone()), config)
        }
        None => {
            let config = config::load(&args.config)?;
            let endpoint = match &config.redis.endpoint {
                Some(endpoint) => endpoint.clone(),
                None => private_redis::running_url(&config.state_dir.join("redis"))
                    .await
                    .with_context(|| {
                        format!(
                            "{} sets no [redis] url and no `eventhost run` is running with it; \
                             start it first, or pass --url",
                            config.path.display()
                        )
                    })
                    .map(Endpoint::Server)?,
            };
            (endpoint, Some(config))
        }
    };
    let (prefix, partitions, replicas) = match &config {
        Some(c) => (
            c.redis.prefix.as_str(),
            c.bus.partitions,
            Replicas {
                min: c.redis.min_replicas_ack,
                timeout: c.redis.replicas_timeout,
            },
        ),
        None => ("events:", 1, Replicas::NONE),
    };
    let keys = bus::keys_for(Some(&endpoint), prefix, partitions);
    let connector = Connector::new(&endpoint)?;
    let conn = connector
        .commands()
        .await
        .with_context(|| format!("cannot connect to {}", connector.display()))?;
    Ok(BusAccess {
        conn,
        keys,
        replicas,
        config,
    })
}

/// `text` with control characters escaped: what a producer or a plugin
/// wrote cannot move the cursor or colour an operator's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
