//! How an operator's command reaches the bus (the config's Redis or
//! cluster, a running host's private server, or --url), and `publish`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use super::{json_object, say};
use crate::bus::connection::{Connector, Replicas};
use crate::bus::dlq::{millis, time_text};
use crate::bus::{self, keys::Keys};
use crate::config::{self, Endpoint};
use crate::handler::Due;
use crate::private_redis;

/// Where an operator's command finds the bus: the config's Redis (its
/// private one when it sets no URL, while `eventhost run` runs), or --url.
#[derive(clap::Args)]
pub(super) struct RedisArgs {
    /// The config file (for the Redis URL and prefix).
    #[arg(
        long,
        short,
        default_value = "eventhost.toml",
        env = "EVENTHOST_CONFIG"
    )]
    pub(super) config: PathBuf,
    /// This Redis instead of the config's.
    #[arg(long)]
    pub(super) url: Option<String>,
}

/// `eventhost publish`: one event, now or (`due`) later.
pub(super) async fn publish(
    path: &Path,
    url: Option<String>,
    event_type: &str,
    json: &str,
    due: Option<Due>,
) -> anyhow::Result<()> {
    let data = json_object(json, "the event")?;
    let mut bus = connect(&RedisArgs {
        config: path.to_path_buf(),
        url,
    })
    .await?;
    let to = bus::publish(
        &mut bus.conn,
        &bus.keys,
        bus.replicas,
        event_type,
        data,
        due,
    )
    .await?;
    let (event_id, stream) = (&to.event_id, &to.stream);
    match (&to.stream_id, to.due_ms) {
        (Some(stream_id), _) => say(format_args!(
            "published {event_type} {event_id} as {stream} {stream_id}"
        )),
        (None, due_ms) => say(format_args!(
            "scheduled {event_type} {event_id} for {stream} at {}",
            time_text(due_ms.unwrap_or_default() as f64 / 1000.0)
        )),
    }
    Ok(())
}

/// When `eventhost publish` routes its event: `--delay` from now, or
/// `--at` a time (RFC 3339 or seconds since the epoch); `None`: at once.
pub(super) fn due(delay: Option<&str>, at: Option<&str>) -> anyhow::Result<Option<Due>> {
    if let Some(delay) = delay {
        let delay = humantime::parse_duration(delay.trim())
            .map_err(|err| anyhow::anyhow!("--delay {delay:?}: {err} (write 90s, 10m, 2h)"))?;
        anyhow::ensure!(
            delay <= Due::MAX_WAIT,
            "--delay: at most a year ahead ({})",
            humantime::format_duration(Due::MAX_WAIT)
        );
        return Ok(Some(Due::After(delay)));
    }
    let Some(at) = at else { return Ok(None) };
    let text = at.trim();
    let time = match text.parse::<f64>() {
        Ok(seconds) if seconds >= 0.0 => UNIX_EPOCH + Duration::from_secs_f64(seconds),
        _ => humantime::parse_rfc3339_weak(text).map_err(|_| {
            anyhow::anyhow!(
                "--at {text:?} is not a time: write a UTC time (2026-12-08T02:00:00Z) or \
                 seconds since the epoch"
            )
        })?,
    };
    anyhow::ensure!(
        time <= SystemTime::now() + Due::MAX_WAIT,
        "--at: at most a year ahead"
    );
    Ok(Some(Due::At(millis(time))))
}

/// A bus as an operator's command reaches it.
pub(super) struct BusAccess {
    pub(super) conn: crate::bus::connection::RedisConn,
    pub(super) keys: Keys,
    /// What a write waits for, as the config says.
    pub(super) replicas: Replicas,
    /// The config, when there is one.
    pub(super) config: Option<config::Config>,
}

/// Connects to the bus `args` name: --url, else the config's Redis, else
/// the private one a running `eventhost run` started for that config.
pub(super) async fn connect(args: &RedisArgs) -> anyhow::Result<BusAccess> {
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
