//! Connections to Redis that survive outages.
//!
//! Every loop gets its own connection for blocking reads (a blocked
//! `XREADGROUP` holds its connection), and shares one multiplexed connection
//! for everything else. Both reconnect by themselves; callers only back off
//! and retry a failed command. The bus talks to Redis only through
//! [`RedisConn`], so what stands behind it (one server today) can change
//! without touching the loops.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// How long a non-blocking command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections to one Redis server.
#[derive(Clone)]
pub struct Connector {
    client: redis::Client,
    /// The URL without its password, for messages.
    display: String,
}

impl Connector {
    /// A connector for `url`; nothing is connected yet.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let invalid = |err| anyhow::anyhow!("invalid Redis URL {}: {err}", redact(url));
        // Small commands go out at once: with Nagle's algorithm (redis-rs's
        // default) a pipelined write waits for the previous one's ACK,
        // adding milliseconds to every event.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(invalid)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(invalid)?;
        Ok(Connector {
            client,
            display: redact(url),
        })
    }

    /// The server's URL, safe to log.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// A connection for ordinary commands.
    pub async fn commands(&self) -> redis::RedisResult<RedisConn> {
        self.open(COMMAND_TIMEOUT).await
    }

    /// A connection for reads that block up to `block`.
    pub async fn reader(&self, block: Duration) -> redis::RedisResult<RedisConn> {
        self.open(block + COMMAND_TIMEOUT).await
    }

    async fn open(&self, response_timeout: Duration) -> redis::RedisResult<RedisConn> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map(RedisConn)
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
pub struct RedisConn(ConnectionManager);

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Whether the error means the consumer group (or its stream) is gone,
/// e.g. Redis restarted without persistence.
pub fn is_nogroup(err: &redis::RedisError) -> bool {
    err.code() == Some("NOGROUP") || err.to_string().contains("NOGROUP")
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact(url: &str) -> String {
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
        _ => url.to_string(),
    }
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
    }
}
