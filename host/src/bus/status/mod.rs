//! The state of a bus as Redis alone tells it, for `eventhost status`: the
//! hosts (from their heartbeats), the fan-out, and per subscriber its
//! plugin build on each host, stream length, lag, pending entries by
//! consumer, DLQ depth and rates summed over hosts; and, for a subscriber
//! with `order_by`, its parked keys and the age of its oldest held event.
//!
//! Subscribers are those LeanMQ's registry names (`events:sub:<name>`),
//! those a live host runs, and any the caller adds (its config's): a
//! subscriber no host runs any more still shows, with its backlog.
//!
//! Anyone who can write Redis can add members to the registry, and each
//! one read costs a queue's worth of commands and a row, so at most
//! [`REGISTRY_READ`] members are read (SSCAN, never SMEMBERS) and the rest
//! are counted, not shown.

use std::collections::BTreeSet;

use redis::streams::{StreamPendingCountReply, StreamPendingReply};
use redis::RedisResult;
use serde::Serialize;

use super::connection::RedisConn;
use super::dlq::id_millis;
use super::group::group_info;
use super::heartbeat::{self, HostRecord, Known, OrderSetting, ReloadNote};
use super::keys::{Keys, QueueKeys};
use crate::config::SubscriberConfig;

mod later;
mod order;
mod schedules;

pub use schedules::{schedules_status, ScheduleStatus};

pub use later::{schedule_counts, ScheduleCounts};
pub use order::{
    order_counts, order_status, OrderCounts, OrderStatus, ParkedKey, KEY_SHOWN, PARKED_SHOWN,
};

/// Most members of LeanMQ's registry one status reads: enough for any real
/// bus, few enough that a registry flooded with junk costs a status (and
/// every console refresh) at most this many queues' commands and rows.
pub const REGISTRY_READ: usize = 1_000;

/// Members asked for per SSCAN: a few round trips reach the cap.
const SSCAN_COUNT: usize = 250;

/// A subscriber the caller knows of (its config's): shown even if Redis
/// has never heard of it, its order per key read even if no host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub name: String,
    pub order: Option<OrderSetting>,
}

impl From<&SubscriberConfig> for Configured {
    fn from(settings: &SubscriberConfig) -> Self {
        Configured {
            name: settings.name.clone(),
            order: settings.order.as_ref().map(Into::into),
        }
    }
}

/// The whole bus.
#[derive(Debug, Serialize)]
pub struct Status {
    /// When this was read, seconds since the epoch.
    pub at: f64,
    pub hosts: Vec<HostStatus>,
    pub fanout: QueueStatus,
    pub subscribers: Vec<SubscriberStatus>,
    /// Members of the registry past [`REGISTRY_READ`], neither read nor
    /// shown (subscribers of the config and of live hosts always are).
    pub registry_not_read: u64,
    /// The config's schedules, when the caller read them
    /// ([`schedules_status`]).
    pub schedules: Vec<ScheduleStatus>,
}

/// One host, alive or gone lately.
#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub consumer: String,
    pub alive: bool,
    /// Seconds since the epoch.
    pub last_seen: f64,
    pub hostname: Option<String>,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub started_at: Option<f64>,
    /// Its HTTP listener.
    pub listen: Option<String>,
    /// Its last reloads and refusals, oldest first.
    pub reloads: Vec<ReloadNote>,
}

/// A stream, its group and its DLQ.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    pub stream: String,
    pub group: String,
    /// Entries in the stream (acknowledged history included, up to
    /// `stream_maxlen`).
    pub length: u64,
    /// Entries not yet read by the group; `None` when Redis cannot tell
    /// (entries deleted in the middle of the stream).
    pub lag: Option<u64>,
    /// Entries read and not yet acknowledged.
    pub pending: u64,
    pub pending_by_consumer: Vec<ConsumerPending>,
    pub dlq: String,
    pub dlq_depth: u64,
    /// Summed over the hosts alive.
    pub handled_per_s: f64,
    pub dead_lettered_per_s: f64,
    /// Whether the group exists: a host has set this queue up.
    pub group_exists: bool,
    /// What waits in its schedule: a subscriber's retries, the ingress's
    /// events published for later.
    pub schedule: ScheduleCounts,
}

impl QueueStatus {
    /// The ingress partitions of a cluster as one queue: counts summed,
    /// named by the first (`events:all:{p0.1} +5`).
    fn sum(parts: Vec<QueueStatus>) -> QueueStatus {
        let count = parts.len();
        let mut parts = parts.into_iter();
        let mut total = parts.next().expect("the bus has an ingress stream");
        for part in parts {
            total.length += part.length;
            total.lag = total.lag.zip(part.lag).map(|(a, b)| a + b);
            total.pending += part.pending;
            total.dlq_depth += part.dlq_depth;
            total.group_exists &= part.group_exists;
            total.schedule = total.schedule.and(part.schedule);
            for held in part.pending_by_consumer {
                match total
                    .pending_by_consumer
                    .iter_mut()
                    .find(|c| c.consumer == held.consumer)
                {
                    Some(c) => {
                        c.pending += held.pending;
                        c.oldest_ms = c.oldest_ms.max(held.oldest_ms);
                    }
                    None => total.pending_by_consumer.push(held),
                }
            }
        }
        if count > 1 {
            total.stream = format!("{} +{}", total.stream, count - 1);
            total.dlq = format!("{} +{}", total.dlq, count - 1);
        }
        total
    }
}

/// What one consumer holds.
#[derive(Debug, Serialize)]
pub struct ConsumerPending {
    pub consumer: String,
    pub pending: u64,
    /// Age of its oldest pending entry (since it entered the stream), ms.
    pub oldest_ms: Option<u64>,
}

/// One subscriber.
#[derive(Debug, Serialize)]
pub struct SubscriberStatus {
    pub name: String,
    /// The plugin file, as the hosts running it say.
    pub plugin: Option<String>,
    /// Its event types as the hosts running it say; `["*"]`: every type.
    pub events: Vec<String>,
    /// The build each live host runs.
    pub builds: Vec<HostBuild>,
    /// Publication-to-commit latency over the last few seconds, all hosts
    /// together.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The latest reload or refusal that concerned it, on any live host.
    pub last_reload: Option<ReloadNote>,
    /// Its requests queued with `send-after-commit`, not sent yet.
    pub after_commit: AfterCommitStatus,
    /// With `order_by` (as a live host runs it, else as the config says):
    /// its parked keys and held events. Absent without `order_by`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderStatus>,
    #[serde(flatten)]
    pub queue: QueueStatus,
}

/// A subscriber's `:http` stream: committed requests waiting to be sent
/// (`queued`, all of them) and those a sender holds now (`sending`: being
/// sent, or waiting out a backoff). Sent ones are deleted; failed ones are
/// in its DLQ with kind `http`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AfterCommitStatus {
    pub queued: u64,
    pub sending: u64,
    /// Over the last beat, every live host together.
    pub sent_per_s: f64,
    pub dead_lettered_per_s: f64,
}

/// The build of a plugin one host runs.
#[derive(Debug, Serialize)]
pub struct HostBuild {
    pub consumer: String,
    pub build: Option<String>,
}

/// Reads the status of the bus under `keys`; `also` names subscribers to
/// include even if Redis has never heard of them (the config's).
pub async fn read(conn: &mut RedisConn, keys: &Keys, also: &[Configured]) -> RedisResult<Status> {
    let now = crate::handler::unix_now();
    let known = heartbeat::hosts(conn, keys).await?;
    let alive: Vec<&HostRecord> = known
        .iter()
        .filter_map(|k| match k {
            Known::Alive(record) => Some(record.as_ref()),
            Known::Gone { .. } => None,
        })
        .collect();

    let mut names: BTreeSet<String> = also.iter().map(|c| c.name.clone()).collect();
    let (registry, registry_not_read) =
        registry_members(conn, &keys.registry(), REGISTRY_READ).await?;
    names.extend(
        registry
            .iter()
            .filter_map(|stream| keys.subscriber_of(stream))
            .filter(|name| !name.is_empty() && !name.contains(':')),
    );
    for host in &alive {
        names.extend(host.subscribers.keys().cloned());
    }

    let mut partitions = Vec::new();
    for queue in keys.ingress() {
        partitions.push(queue_status(conn, &queue, now).await?);
    }
    let mut fanout = QueueStatus::sum(partitions);
    fanout.handled_per_s = alive.iter().map(|h| h.fanout.handled_per_s).sum();
    fanout.dead_lettered_per_s = alive.iter().map(|h| h.fanout.dead_lettered_per_s).sum();

    let mut subscribers = Vec::with_capacity(names.len());
    for name in names {
        let mut queue = queue_status(conn, &keys.subscriber(&name), now).await?;
        let mut after_commit = after_commit_status(conn, &keys.requests(&name)).await?;
        let running: Vec<(&str, &heartbeat::SubscriberRecord)> = alive
            .iter()
            .filter_map(|h| Some((h.consumer.as_str(), h.subscribers.get(&name)?)))
            .collect();
        queue.handled_per_s = running.iter().map(|(_, r)| r.rates.handled_per_s).sum();
        after_commit.sent_per_s = running
            .iter()
            .map(|(_, r)| r.after_commit.handled_per_s)
            .sum();
        after_commit.dead_lettered_per_s = running
            .iter()
            .map(|(_, r)| r.after_commit.dead_lettered_per_s)
            .sum();
        queue.dead_lettered_per_s = running
            .iter()
            .map(|(_, r)| r.rates.dead_lettered_per_s)
            .sum();
        let mut latency = Vec::new();
        for (_, r) in &running {
            heartbeat::merge(&mut latency, &r.rates.latency);
        }
        let last_reload = alive
            .iter()
            .flat_map(|h| &h.reloads)
            .filter(|note| note.subscribers.contains(&name))
            .max_by(|a, b| a.at.total_cmp(&b.at))
            .cloned();
        // As a live host runs it, else as the caller's config says.
        let ordered = running
            .iter()
            .find_map(|(_, r)| r.order.as_ref())
            .or_else(|| {
                also.iter()
                    .find(|c| c.name == name)
                    .and_then(|c| c.order.as_ref())
            });
        let order = match ordered {
            Some(setting) => Some(order_status(conn, &keys.order(&name), setting, now).await?),
            None => None,
        };
        subscribers.push(SubscriberStatus {
            p50_ms: heartbeat::quantile_ms(&latency, 0.5),
            p99_ms: heartbeat::quantile_ms(&latency, 0.99),
            last_reload,
            plugin: running.first().map(|(_, r)| r.plugin.clone()),
            events: running
                .first()
                .map(|(_, r)| r.events.clone())
                .unwrap_or_default(),
            builds: running
                .iter()
                .map(|(consumer, r)| HostBuild {
                    consumer: consumer.to_string(),
                    build: r.build.clone(),
                })
                .collect(),
            name,
            after_commit,
            order,
            queue,
        });
    }

    let hosts = known
        .into_iter()
        .map(|k| match k {
            Known::Alive(record) => HostStatus {
                consumer: record.consumer,
                alive: true,
                last_seen: record.seen_at,
                hostname: Some(record.hostname),
                pid: Some(record.pid),
                version: Some(record.version),
                started_at: Some(record.started_at),
                listen: record.listen,
                reloads: record.reloads,
            },
            Known::Gone { consumer, seen_at } => HostStatus {
                consumer,
                alive: false,
                last_seen: seen_at,
                hostname: None,
                pid: None,
                version: None,
                started_at: None,
                listen: None,
                reloads: Vec::new(),
            },
        })
        .collect();
    Ok(Status {
        at: now,
        hosts,
        fanout,
        subscribers,
        registry_not_read,
        schedules: Vec::new(),
    })
}

/// At most `cap` distinct members of the set `key`, and how many more it
/// holds. SSCAN may return a member twice and more than it was asked
/// for; both are absorbed here.
async fn registry_members(
    conn: &mut RedisConn,
    key: &str,
    cap: usize,
) -> RedisResult<(BTreeSet<String>, u64)> {
    let total: u64 = redis::cmd("SCARD").arg(key).query_async(conn).await?;
    let mut members = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(SSCAN_COUNT)
            .query_async(conn)
            .await?;
        for member in batch {
            if members.len() == cap {
                break;
            }
            members.insert(member);
        }
        if next == 0 || members.len() == cap {
            break;
        }
        cursor = next;
    }
    let not_read = total.saturating_sub(members.len() as u64);
    Ok((members, not_read))
}

/// How many committed requests a subscriber's `:http` stream holds, and
/// how many of them a sender holds.
async fn after_commit_status(
    conn: &mut RedisConn,
    queue: &QueueKeys,
) -> RedisResult<AfterCommitStatus> {
    let queued: u64 = redis::cmd("XLEN")
        .arg(&queue.stream)
        .query_async(conn)
        .await?;
    if queued == 0 {
        return Ok(AfterCommitStatus::default());
    }
    let info = group_info(conn, &queue.stream, &queue.group).await?;
    Ok(AfterCommitStatus {
        queued,
        sending: info.map_or(0, |g| g.pending as u64),
        ..AfterCommitStatus::default()
    })
}

/// Length, lag, pending and DLQ depth of one queue.
async fn queue_status(
    conn: &mut RedisConn,
    queue: &QueueKeys,
    now: f64,
) -> RedisResult<QueueStatus> {
    let (length, dlq_depth): (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(&queue.stream)
        .cmd("XLEN")
        .arg(&queue.dlq)
        .query_async(conn)
        .await?;
    let info = group_info(conn, &queue.stream, &queue.group).await?;
    let schedule = schedule_counts(conn, &queue.stream).await?;
    let mut by_consumer = Vec::new();
    if info.as_ref().is_some_and(|g| g.pending > 0) {
        let summary: StreamPendingReply = redis::cmd("XPENDING")
            .arg(&queue.stream)
            .arg(&queue.group)
            .query_async(conn)
            .await?;
        if let StreamPendingReply::Data(data) = summary {
            for consumer in data.consumers {
                // Pending entries come in id order: the first is the oldest.
                let oldest: StreamPendingCountReply = redis::cmd("XPENDING")
                    .arg(&queue.stream)
                    .arg(&queue.group)
                    .arg("-")
                    .arg("+")
                    .arg(1)
                    .arg(&consumer.name)
                    .query_async(conn)
                    .await?;
                let oldest_ms = oldest
                    .ids
                    .first()
                    .and_then(|p| id_millis(&p.id))
                    .map(|ms| ((now * 1000.0) as u64).saturating_sub(ms));
                by_consumer.push(ConsumerPending {
                    consumer: consumer.name,
                    pending: consumer.pending as u64,
                    oldest_ms,
                });
            }
        }
    }
    Ok(QueueStatus {
        stream: queue.stream.clone(),
        group: queue.group.clone(),
        length,
        lag: info.as_ref().and_then(|g| g.lag.map(|l| l as u64)),
        pending: info.as_ref().map_or(0, |g| g.pending as u64),
        pending_by_consumer: by_consumer,
        dlq: queue.dlq.clone(),
        dlq_depth,
        handled_per_s: 0.0,
        dead_lettered_per_s: 0.0,
        group_exists: info.is_some(),
        schedule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_without_order_by_shows_nothing_new() {
        let status = SubscriberStatus {
            name: "pay".into(),
            plugin: None,
            events: Vec::new(),
            builds: Vec::new(),
            p50_ms: None,
            p99_ms: None,
            last_reload: None,
            after_commit: AfterCommitStatus::default(),
            order: None,
            queue: QueueStatus {
                stream: "events:sub:pay".into(),
                group: "sub:pay-group".into(),
                length: 0,
                lag: None,
                pending: 0,
                pending_by_consumer: Vec::new(),
                dlq: "events:sub:pay:dlq".into(),
                dlq_depth: 0,
                handled_per_s: 0.0,
                dead_lettered_per_s: 0.0,
                group_exists: false,
                schedule: ScheduleCounts::default(),
            },
        };
        let json = serde_json::to_value(&status).unwrap();
        assert!(json.get("order").is_none(), "{json}");
        let ordered = OrderStatus {
            order_by: "order_id".into(),
            on_dead_letter: "park".into(),
            parked: 0,
            oldest_parked: Vec::new(),
            held: 0,
            oldest_held_s: None,
        };
        let json = serde_json::to_value(SubscriberStatus {
            order: Some(ordered),
            ..status
        })
        .unwrap();
        assert_eq!(
            json["order"],
            serde_json::json!({"order_by": "order_id", "on_dead_letter": "park", "parked": 0,
                               "oldest_parked": [], "held": 0, "oldest_held_s": null})
        );
    }
}
