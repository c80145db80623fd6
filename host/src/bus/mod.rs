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
//!
//! On a Redis Cluster the same loops run on hash-tagged keys ([`keys`]):
//! one fan-out per ingress partition, whose copies are idempotent
//! (`scripts/copy.lua`), and per subscriber a [`relay`] that moves what its
//! commits published from its outbox to the ingress.
//!
//! On both, per subscriber, an [`after_commit`] sender has the requests its
//! commits queued sent, through the subscriber's handler; per schedule, a
//! ticker of [`schedules`] publishes its ticks, once across hosts.

pub mod after_commit;
pub mod connection;
pub mod crash;
pub mod dlq;
pub mod entry;
pub mod fanout;
pub mod group;
pub mod heartbeat;
pub mod keys;
pub mod layout;
pub mod leanmq;
pub mod mover;
pub mod relay;
pub mod routes;
pub mod schedules;
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

use crate::config::{BusConfig, Endpoint, RedisConfig};
use crate::handler::StateReader;
use connection::{Connector, RedisConn, Replicas};
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
    replicas: Replicas,
    routes: RouteTable,
}

impl Bus {
    /// Connects to the Redis at `endpoint`, waiting for it to come up;
    /// `None` if `shutdown` fires first.
    pub async fn connect(
        endpoint: &Endpoint,
        redis: &RedisConfig,
        config: BusConfig,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let connector = Connector::new(endpoint)?;
        let Some(mut commands) = connector.commands_when_up(shutdown).await else {
            return Ok(None);
        };
        let keys = keys_for(Some(endpoint), &redis.prefix, config.partitions);
        if keys.is_cluster() {
            layout::agree_on_partitions(&mut commands, &keys, config.partitions)
                .await
                .with_context(|| format!("on {}", connector.display()))?;
        }
        for queue in keys.ingress() {
            layout::ensure_queue(&mut commands, &keys, &queue)
                .await
                .with_context(|| {
                    format!("cannot set up {} on {}", queue.stream, connector.display())
                })?;
        }
        tracing::info!(redis = %connector.display(), consumer = %config.consumer, "connected to the bus");
        Ok(Some(Bus {
            connector,
            commands,
            keys,
            config,
            replicas: Replicas {
                min: redis.min_replicas_ack,
                timeout: redis.replicas_timeout,
            },
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
            .with_context(|| format!("cannot set up {}", queue.stream))?;
        let requests = self.keys.requests(name);
        layout::ensure_group(
            &mut self.commands.clone(),
            &requests.stream,
            &requests.group,
        )
        .await
        .with_context(|| format!("cannot set up {}", requests.stream))?;
        if let Some(outbox) = self.keys.outbox(name) {
            layout::ensure_queue(&mut self.commands.clone(), &self.keys, &outbox)
                .await
                .with_context(|| format!("cannot set up {}", outbox.stream))?;
        }
        Ok(())
    }

    /// Replaces the routing table of the fan-out, from the next batch on;
    /// returns once the batch in flight, routed by the old one, is written.
    pub async fn set_routes(&self, routes: Routes) {
        self.routes.replace(routes).await;
    }

    /// Starts the fan-out: one loop per ingress stream, all ended by
    /// `shutdown`; the handle ends when they all have.
    pub async fn spawn_fanout(
        &self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let cluster = self.keys.is_cluster().then_some(self.replicas);
        let mut loops = tokio::task::JoinSet::new();
        for queue in self.keys.ingress() {
            let group = self.consumer(queue).await?;
            let fanout = Fanout::new(
                group,
                self.routes.clone(),
                self.config.clone(),
                cluster,
                shutdown.clone(),
            );
            loops.spawn(fanout.run());
        }
        // Events published for later, from `eventhost publish` or (on one
        // server) from handlers, are routed once due.
        let ingress: Vec<String> = self.keys.ingress().into_iter().map(|q| q.stream).collect();
        let mover = mover::Mover::new("publish", &ingress, self.commands.clone(), shutdown);
        loops.spawn(mover.run());
        Ok(tokio::spawn(async move {
            loops.join_all().await;
        }))
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
        let outbox = self.keys.outbox(&name);
        // On one server a commit publishes to events:all itself; on a
        // cluster to the outbox, which a relay empties.
        let publish_to = outbox
            .as_ref()
            .map_or_else(|| self.keys.all().stream, |o| o.stream.clone());
        // The sender outlives the loop: it stops once the loop has (after
        // its grace, on shutdown); what it has not sent stays in Redis.
        let stop_sender = CancellationToken::new();
        let sender = after_commit::Sender::new(
            subscription.clone(),
            self.consumer(self.keys.requests(&name)).await?.plain(),
            self.config.clone(),
            stop_sender.clone(),
        );
        let sender = tokio::spawn(sender.run());
        let stream = self.keys.subscriber(&name).stream;
        let keys = subscriber::LoopKeys {
            state: state_key,
            publish_later: scripts::later::schedule_of(&publish_to),
            schedule: scripts::later::schedule_of(&stream),
            order: self.keys.order(&name),
            publish_to: publish_to.clone(),
        };
        // Its retries come back when due; on a cluster, so do what its
        // handlers publish for later, into its outbox.
        let mut scheduled = vec![stream];
        if outbox.is_some() {
            scheduled.push(publish_to);
        }
        let stop_mover = CancellationToken::new();
        let mover = mover::Mover::new(&name, &scheduled, self.commands.clone(), stop_mover.clone());
        let mover = tokio::spawn(mover.run());
        let subscriber = SubscriberLoop::new(
            subscription,
            group,
            state,
            keys,
            self.replicas,
            self.config.clone(),
        );
        let Some(outbox) = outbox else {
            return Ok(tokio::spawn(async move {
                subscriber.run().await;
                stop_sender.cancel();
                stop_mover.cancel();
                let _ = tokio::join!(sender, mover);
            }));
        };
        // The relay outlives the loop: what the loop's last commits
        // published is relayed before the task ends.
        let stop_relay = CancellationToken::new();
        let relay = relay::Relay::new(
            &name,
            self.consumer(outbox).await?,
            self.keys.clone(),
            self.replicas,
            self.config.clone(),
            stop_relay.clone(),
        );
        let relay = tokio::spawn(relay.run());
        Ok(tokio::spawn(async move {
            subscriber.run().await;
            stop_relay.cancel();
            stop_sender.cancel();
            stop_mover.cancel();
            let _ = tokio::join!(relay, sender, mover);
        }))
    }

    /// The schedules' tickers, none running yet; `stop` stops them all.
    pub fn schedules(&self, stop: CancellationToken) -> schedules::Schedules {
        schedules::Schedules::new(
            self.commands.clone(),
            self.keys.clone(),
            self.replicas,
            stop,
        )
    }

    /// How many replicas a write waits for.
    pub fn replicas(&self) -> Replicas {
        self.replicas
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

/// The keys of the bus at `endpoint`: LeanMQ's on one server, hash-tagged
/// with `partitions` ingress streams on a cluster.
pub fn keys_for(endpoint: Option<&Endpoint>, prefix: &str, partitions: usize) -> Keys {
    match endpoint {
        Some(Endpoint::Cluster(_)) => Keys::cluster(prefix, partitions),
        _ => Keys::new(prefix),
    }
}

/// Where [`publish`] put an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTo {
    /// The ingress stream it is (or will be) in.
    pub stream: String,
    /// Its entry id there; `None` while it waits in the stream's schedule.
    pub stream_id: Option<String>,
    /// When it is due (Unix ms, Redis's clock), if it waits.
    pub due_ms: Option<u64>,
    pub event_id: String,
}

/// Publishes one event as a LeanMQ producer does: `data` plus
/// `event_type`, `event_id` (the caller's, if `data` has one: a producer
/// that publishes again after an error must not make a second event),
/// `timestamp` and `_metadata`; to `events:all`, or on a cluster to the
/// partition its id picks. With `due`, it waits in that stream's schedule
/// until then (see `scripts/later.lua`), then is routed as if published
/// at that time.
pub async fn publish(
    conn: &mut RedisConn,
    keys: &Keys,
    replicas: Replicas,
    event_type: &str,
    mut data: Map<String, Value>,
    due: Option<crate::handler::Due>,
) -> anyhow::Result<PublishedTo> {
    let event_id = match data.remove("event_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        Some(Value::Number(id)) => id.to_string(),
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(other) => anyhow::bail!(
            "event_id must be a non-empty string or a number, not {other}; leave it out to get \
             a new one"
        ),
    };
    let queue = keys.ingress_for(&event_id);
    // Once the ingress exists, a host or LeanMQ has set it up: a producer
    // whose Redis user may only append (docs/security.md) can publish.
    let exists: bool = redis::cmd("EXISTS")
        .arg(&queue.stream)
        .query_async(conn)
        .await
        .with_context(|| format!("cannot publish to {}", queue.stream))?;
    if !exists {
        layout::ensure_queue(conn, keys, &queue)
            .await
            .with_context(|| format!("cannot set up {} to publish to it", queue.stream))?;
    }
    let now = crate::handler::unix_now();
    let payload = leanmq::envelope(data, event_type, &event_id, now, None);
    if let Some(due) = due {
        let schedule = scripts::later::schedule_of(&queue.stream);
        let due_ms = scripts::later::publish_later(conn, &schedule, due, &event_id, &payload)
            .await
            .with_context(|| format!("cannot schedule the event in {schedule}"))?;
        replicas
            .wait(conn, &schedule)
            .await
            .context("the event was scheduled, but may not survive a failover")?;
        return Ok(PublishedTo {
            stream: queue.stream,
            stream_id: None,
            due_ms: Some(due_ms),
            event_id,
        });
    }
    let stream_id: String = redis::cmd("XADD")
        .arg(&queue.stream)
        .arg("*")
        .arg("data")
        .arg(payload)
        .query_async(conn)
        .await
        .with_context(|| format!("cannot publish to {}", queue.stream))?;
    replicas
        .wait(conn, &queue.stream)
        .await
        .context("the event was published, but may not survive a failover")?;
    Ok(PublishedTo {
        stream: queue.stream,
        stream_id: Some(stream_id),
        due_ms: None,
        event_id,
    })
}
