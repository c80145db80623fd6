//! The event bus on Redis Streams, in LeanMQ's layout.
//!
//! Producers `XADD` to `events:all`; the [`fanout`] loop copies each entry to
//! the stream of every subscriber of its type ([`routes`]); one
//! [`subscriber`] loop per subscriber hands its entries to a
//! [`Handler`](crate::handler::Handler) and commits the results. Both loops
//! share one skeleton ([`worker`]): how they wait out outages, recreate lost
//! groups and give up. Below them: [`group`] (reads and claims in a consumer
//! group), [`scripts`] (the atomic writes), [`leanmq`] (the entries' wire
//! format), [`keys`] and [`layout`] (LeanMQ's names and bookkeeping),
//! [`connection`]. For operators: [`heartbeat`] (each host says in Redis
//! what it runs), [`status`] (the bus as Redis tells it), [`dlq`] (list,
//! replay and purge dead letters). This module knows Redis and nothing of
//! wasmtime.

pub mod connection;
pub mod dlq;
pub mod fanout;
pub mod group;
pub mod heartbeat;
pub mod keys;
pub mod layout;
pub mod leanmq;
pub mod routes;
pub mod scripts;
pub mod state;
pub mod status;
pub mod subscriber;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::BusConfig;
use crate::handler::StateReader;
use connection::{Connector, RedisConn};
use fanout::Fanout;
use group::GroupConsumer;
use keys::Keys;
use routes::{RouteTable, Routes};
use subscriber::{SubscriberLoop, Subscription};

/// Longest a read waits for new entries: also how quickly a loop notices
/// that it should stop.
pub(crate) const BLOCK: Duration = Duration::from_millis(500);

/// A connection to the bus and the means to run loops on it.
pub struct Bus {
    connector: Connector,
    commands: RedisConn,
    keys: Keys,
    config: BusConfig,
    routes: RouteTable,
}

impl Bus {
    /// Connects to the Redis at `url`, waiting for it to come up; `None` if
    /// `shutdown` fires first.
    pub async fn connect(
        url: &str,
        prefix: &str,
        config: BusConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let connector = Connector::new(url)?;
        let Some(mut commands) = connector.commands_when_up(shutdown).await else {
            return Ok(None);
        };
        let keys = Keys::new(prefix);
        layout::ensure_queue(&mut commands, &keys, &keys.all())
            .await
            .with_context(|| {
                format!(
                    "cannot set up {} on {}",
                    keys.all().stream,
                    connector.display()
                )
            })?;
        tracing::info!(redis = %connector.display(), consumer = %config.consumer, "connected to the bus");
        Ok(Some(Bus {
            connector,
            commands,
            keys,
            config,
            routes: RouteTable::default(),
        }))
    }

    /// A connection for checks from outside the loops (readiness).
    pub fn connection(&self) -> RedisConn {
        self.commands.clone()
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates a subscriber's streams and groups; from now on it receives
    /// every event routed to it, whether or not its loop runs.
    pub async fn prepare_subscriber(&self, name: &str) -> anyhow::Result<()> {
        let queue = self.keys.subscriber(name);
        layout::ensure_queue(&mut self.commands.clone(), &self.keys, &queue)
            .await
            .with_context(|| format!("cannot set up {}", queue.stream))
    }

    /// Replaces the routing table of the fan-out, from the next batch on;
    /// returns once the batch in flight, routed by the old one, is written.
    pub async fn set_routes(&self, routes: Routes) {
        self.routes.replace(routes).await;
    }

    /// Starts the fan-out loop.
    pub async fn spawn_fanout(
        &self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let group = self.consumer(self.keys.all()).await?;
        let fanout = Fanout::new(group, self.routes.clone(), self.config.clone(), shutdown);
        Ok(tokio::spawn(fanout.run()))
    }

    /// Starts the loop of one subscriber (prepared before).
    pub async fn spawn_subscriber(
        &self,
        subscription: Arc<Subscription>,
    ) -> anyhow::Result<JoinHandle<()>> {
        let name = subscription.name.clone();
        let group = self.consumer(self.keys.subscriber(&name)).await?;
        let state_key = self.keys.state(&name);
        let state: Arc<dyn StateReader> = Arc::new(state::RedisState::new(
            self.commands.clone(),
            state_key.clone(),
        ));
        let subscriber = SubscriberLoop::new(
            subscription,
            group,
            state,
            state_key,
            self.keys.all().stream,
            self.config.clone(),
        );
        Ok(tokio::spawn(subscriber.run()))
    }

    /// Writes this host's heartbeat (see [`heartbeat`]); the future owns
    /// what it needs, to be spawned.
    pub fn beat(
        &self,
        record: heartbeat::HostRecord,
    ) -> impl std::future::Future<Output = redis::RedisResult<()>> + Send + 'static {
        let mut conn = self.commands.clone();
        let keys = self.keys.clone();
        async move { heartbeat::beat(&mut conn, &keys, &record).await }
    }

    /// Removes this host's heartbeat: it stopped.
    pub async fn leave(&self) -> redis::RedisResult<()> {
        heartbeat::leave(
            &mut self.commands.clone(),
            &self.keys,
            &self.config.consumer,
        )
        .await
    }

    async fn consumer(&self, queue: keys::QueueKeys) -> anyhow::Result<GroupConsumer> {
        let reader = self
            .connector
            .reader(BLOCK)
            .await
            .with_context(|| format!("cannot connect to {}", self.connector.display()))?;
        Ok(GroupConsumer::new(
            self.keys.clone(),
            queue,
            self.config.consumer.clone(),
            reader,
            self.commands.clone(),
        )
        .reopens_with(self.connector.clone(), BLOCK))
    }
}

/// Publishes one event to `events:all` as a LeanMQ producer does: `data`
/// plus `event_type`, `event_id`, `timestamp` and `_metadata`. Returns the
/// stream id and the event id.
pub async fn publish(
    conn: &mut RedisConn,
    keys: &Keys,
    event_type: &str,
    data: Map<String, Value>,
) -> anyhow::Result<(String, String)> {
    let all = keys.all();
    layout::ensure_queue(conn, keys, &all).await?;
    let now = crate::handler::unix_now();
    let event_id = uuid::Uuid::new_v4().to_string();
    let payload = leanmq::envelope(data, event_type, &event_id, now, None);
    let stream_id: String = redis::cmd("XADD")
        .arg(&all.stream)
        .arg("*")
        .arg("data")
        .arg(payload)
        .query_async(conn)
        .await?;
    Ok((stream_id, event_id))
}
