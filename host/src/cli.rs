//! The command line: `run`, `check`, `publish`. Thin: each command parses
//! its arguments, calls into the library, and prints.

use std::fmt::Display;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, connection::Connector, keys::Keys};
use crate::config::{self, ConfigError};
use crate::daemon::{self, WasmPlugins};
use crate::plugin::PluginRuntime;
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
        /// The config file (for the Redis URL and prefix).
        #[arg(
            long,
            short,
            default_value = "eventhost.toml",
            env = "EVENTHOST_CONFIG"
        )]
        config: PathBuf,
        /// Publish to this Redis instead of the config's.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Parses the command line, runs the command, and maps failure to exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
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
            Command::Run { config } => run(&config).await.map(|()| true),
            Command::Check { config } => check(&config).await,
            Command::Publish {
                event_type,
                json,
                config,
                url,
            } => publish(&config, url, &event_type, &json)
                .await
                .map(|()| true),
        }
    });
    // Do not wait for tasks still blocked on Redis at exit.
    runtime.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
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
    if let Some(addr) = config.telemetry.metrics {
        telemetry::serve_metrics(addr)?;
    }
    let runtime = PluginRuntime::new(&config.plugins.cache_dir)?;
    let plugins = Arc::new(WasmPlugins::new(runtime));
    daemon::run(config, plugins, shutdown.cancelled_owned()).await
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
    let runtime = PluginRuntime::new(&config.plugins.cache_dir)?;
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
    let data = match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(data)) => data,
        Ok(_) => anyhow::bail!("the event must be a JSON object, e.g. '{{\"order_id\": \"o-1\"}}'"),
        Err(err) => anyhow::bail!("the event is not valid JSON: {err}"),
    };
    let (url, prefix) = match url {
        Some(url) => (url, prefix_of(path)?),
        None => {
            let config = config::load(path)?;
            let url = match config.redis.url {
                Some(url) => url,
                None => private_redis::running_url(&config.state_dir.join("redis"))
                    .await
                    .with_context(|| {
                        format!(
                            "{} sets no [redis] url and no `eventhost run` is running with it; \
                             start it first, or pass --url",
                            config.path.display()
                        )
                    })?,
            };
            (url, config.redis.prefix)
        }
    };
    let connector = Connector::new(&url)?;
    let mut conn = connector
        .commands()
        .await
        .with_context(|| format!("cannot connect to {}", connector.display()))?;
    let keys = Keys::new(prefix);
    let (stream_id, event_id) = bus::publish(&mut conn, &keys, event_type, data).await?;
    say(format_args!(
        "published {event_type} {event_id} as {} {stream_id}",
        keys.all().stream
    ));
    Ok(())
}

/// The prefix from the config when it exists, else the default.
fn prefix_of(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        Ok(config::load(path)?.redis.prefix)
    } else {
        Ok("events:".into())
    }
}
