//! Connections to Redis that survive outages.
//!
//! Every loop gets its own connection for blocking reads (a blocked
//! `XREADGROUP` holds its connection), and shares one multiplexed connection
//! for everything else. Both reconnect by themselves; callers only back off
//! and retry a failed command. The bus talks to Redis only through
//! [`RedisConn`], so whether one server or a Redis Cluster stands behind it
//! is this module's business: a cluster connection routes each command by
//! its key's slot and follows failovers.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub use crate::config::Endpoint;

/// How long a non-blocking command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the cluster client retries a request itself (through a
/// failover, slots moving), at most 1 s apart, before the loop sees the
/// error.
const CLUSTER_RETRIES: u32 = 5;

/// Opens connections to the bus's Redis.
#[derive(Clone)]
pub struct Connector {
    client: Client,
    /// The URL(s) without passwords, for messages.
    display: String,
}

#[derive(Clone)]
enum Client {
    Server(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// Small commands go out at once: with Nagle's algorithm (redis-rs's
/// default) a pipelined write waits for the previous one's ACK, adding
/// milliseconds to every event.
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

impl Connector {
    /// A connector for `endpoint`; nothing is connected yet.
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        match endpoint {
            Endpoint::Server(url) => {
                let invalid = |err| anyhow::anyhow!("invalid Redis URL {}: {err}", redact(url));
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(invalid)?
                    .set_tcp_settings(tcp());
                let client = redis::Client::open(info).map_err(invalid)?;
                Ok(Connector {
                    client: Client::Server(client),
                    display: redact(url),
                })
            }
            Endpoint::Cluster(seeds) => {
                let display = format!(
                    "cluster {}",
                    seeds
                        .iter()
                        .map(|s| redact(s))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                // redis-rs retries a request 16 times, up to 655 s apart, by
                // default: one command to a dead master could then hold a
                // loop (and a shutdown) for minutes. The loops retry on their
                // own, checking for a stop between tries.
                let client = ClusterClient::builder(seeds.iter().map(String::as_str))
                    .tcp_settings(tcp())
                    .connection_timeout(Duration::from_secs(2))
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(100)
                    .max_retry_wait(1_000)
                    .build()
                    .map_err(|err| {
                        anyhow::anyhow!("invalid Redis Cluster seeds {display}: {err}")
                    })?;
                Ok(Connector {
                    client: Client::Cluster(Box::new(client)),
                    display,
                })
            }
        }
    }

    /// The server's URL (or the cluster's seeds), safe to log.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// A connection for ordinary commands.
    pub async fn commands(&self) -> redis::RedisResult<RedisConn> {
        self.open(COMMAND_TIMEOUT).await
    }

    /// A connection for reads that block up to `block`: its own, never
    /// shared, since a blocked read holds its connection (on a cluster: the
    /// connection to that node).
    pub async fn reader(&self, block: Duration) -> redis::RedisResult<RedisConn> {
        self.open(block + COMMAND_TIMEOUT).await
    }

    async fn open(&self, response_timeout: Duration) -> redis::RedisResult<RedisConn> {
        match &self.client {
            Client::Server(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(|c| RedisConn(Inner::Server(c)))
            }
            Client::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(response_timeout);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(|c| RedisConn(Inner::Cluster(c)))
            }
        }
    }

    /// Connects for commands, retrying with backoff until it works or
    /// `shutdown` fires (then `None`).
    pub async fn commands_when_up(&self, shutdown: &CancellationToken) -> Option<RedisConn> {
        let mut backoff = Backoff::default();
        loop {
            match self.commands().await {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    tracing::warn!(
                        redis = %self.display,
                        "cannot reach Redis ({err}); retrying in {:?}",
                        backoff.peek()
                    );
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// A connection the bus sends commands on: cheap to clone (clones share
/// one multiplexed connection), reconnecting by itself.
#[derive(Clone)]
pub struct RedisConn(Inner);

#[derive(Clone)]
enum Inner {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Waits until `replicas` replicas of the master that holds `key` have
    /// every write this connection sent it, or `timeout` passes; returns
    /// how many did. What a master acknowledged but no replica has yet is
    /// lost if it fails over (Redis replicates asynchronously): this
    /// narrows that window for the writes that matter.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match &mut self.0 {
            Inner::Server(conn) => wait.query_async(conn).await,
            Inner::Cluster(conn) => {
                // Not where redis-rs sends a WAIT (every master): only the
                // master that took the write knows whether it replicated.
                let node = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                let reply = conn.route_command(wait, routing).await?;
                Ok(redis::FromRedisValue::from_redis_value(reply)?)
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Server(conn) => conn.req_packed_command(cmd),
            Inner::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Server(conn) => conn.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}

/// How many replicas must hold a write before the bus builds on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// 0: do not wait.
    pub min: u32,
    /// Longest wait.
    pub timeout: Duration,
}

impl Replicas {
    /// Do not wait for replicas.
    pub const NONE: Replicas = Replicas {
        min: 0,
        timeout: Duration::ZERO,
    };

    /// Waits (if asked to) until enough replicas of the master holding
    /// `key` have what `conn` wrote to it; an error if too few do in time,
    /// so that the caller does not build on the write yet (and tries again:
    /// every write it waits for is safe to repeat).
    pub async fn wait(&self, conn: &mut RedisConn, key: &str) -> redis::RedisResult<()> {
        if self.min == 0 {
            return Ok(());
        }
        let acked = conn.wait_for_replicas(key, self.min, self.timeout).await?;
        if acked < self.min {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "too few replicas acknowledged a write",
                format!(
                    "{acked} of {} replicas of the master of {key} within {:?}",
                    self.min, self.timeout
                ),
            )));
        }
        Ok(())
    }
}

/// Whether the error means the consumer group (or its stream) is gone,
/// e.g. Redis restarted without persistence.
pub fn is_nogroup(err: &redis::RedisError) -> bool {
    err.code() == Some("NOGROUP") || err.to_string().contains("NOGROUP")
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact(url: &str) -> String {
    let url = redact_query(url);
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url,
    }
}

/// `url` with the values of `pass` and `password` in its query hidden: a
/// unix socket URL (`unix:///path?pass=...`) carries its password there.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key == "pass" || key == "password" => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://app:s3cret@db:6379"),
            "redis://app:***@db:6379"
        );
        assert_eq!(redact("redis://:s3cret@db"), "redis://:***@db");
        assert_eq!(redact("rediss://token@db"), "rediss://***@db");
        assert_eq!(
            redact("unix:///run/r.sock?db=0&user=default&pass=s3cret"),
            "unix:///run/r.sock?db=0&user=default&pass=***"
        );
        assert_eq!(
            redact("redis+unix:///r.sock?password=s3cret&db=1"),
            "redis+unix:///r.sock?password=***&db=1"
        );
    }
}
