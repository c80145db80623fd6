//! Heartbeats: each running host says in Redis who it is and what it runs,
//! every few seconds, so `eventhost status` can tell from Redis alone which
//! hosts are alive, which build of each plugin they run, and how fast they
//! handle events (rates summed over hosts).
//!
//! A heartbeat is one JSON string per host, `events:host:<consumer>`, that
//! expires after [`EXPIRES_AFTER`] unless refreshed; the sorted set
//! `events:hosts` scores every consumer name by when it was last seen, so
//! `status` lists the hosts without scanning keys and can name those that
//! went away lately.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::RedisResult;
use serde::{Deserialize, Serialize};

use super::connection::RedisConn;
use super::keys::Keys;
use crate::config::{OnDeadLetter, OrderBy};
use crate::telemetry::LATENCY_BUCKETS;

/// How often a host refreshes its heartbeat.
pub const EVERY: Duration = Duration::from_secs(2);

/// A heartbeat not refreshed for this long is gone: the host stopped, or
/// cannot reach Redis.
pub const EXPIRES_AFTER: Duration = Duration::from_secs(10);

/// How long a host that went away is still named by `status`.
pub const REMEMBERED: Duration = Duration::from_secs(3600);

/// What one host says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its consumer name in every group.
    pub consumer: String,
    pub hostname: String,
    pub pid: u32,
    /// eventhost's version.
    pub version: String,
    /// Seconds since the epoch.
    pub started_at: f64,
    /// When this record was written, seconds since the epoch.
    pub seen_at: f64,
    /// Where its HTTP listener is, if it has one.
    pub listen: Option<String>,
    /// Entries of `events:all` it routed, and dead-lettered.
    pub fanout: Rates,
    pub subscribers: BTreeMap<String, SubscriberRecord>,
    /// Its last reloads and refusals, oldest first.
    #[serde(default)]
    pub reloads: Vec<ReloadNote>,
}

/// One reload of a plugin or of the config, applied or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadNote {
    /// Seconds since the epoch.
    pub at: f64,
    /// `plugin` or `config`.
    pub what: String,
    /// The plugin's file, or the config's.
    pub subject: String,
    /// The subscribers it concerns.
    pub subscribers: Vec<String>,
    /// `loaded` or `refused`.
    pub outcome: String,
    /// What was loaded, or why it was refused.
    pub detail: String,
}

/// One subscriber as a host runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberRecord {
    /// The plugin's file name, as in the config.
    pub plugin: String,
    /// The digest (SHA-256, hex) of the build it runs.
    pub build: Option<String>,
    /// Its event types; `["*"]` for every type.
    pub events: Vec<String>,
    pub rates: Rates,
    /// Its requests sent after the commit (`handled`) and dead-lettered.
    #[serde(default)]
    pub after_commit: Rates,
    /// Its `order_by`, if it keeps the events of a key in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderSetting>,
}

/// How a subscriber keeps order per key, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSetting {
    /// The field that holds an event's key (`order_by`).
    pub by: String,
    /// What a dead letter does to its key: `skip` or `park`.
    pub on_dead_letter: String,
}

impl From<&OrderBy> for OrderSetting {
    fn from(order: &OrderBy) -> Self {
        OrderSetting {
            by: order.field.clone(),
            on_dead_letter: match order.on_dead_letter {
                OnDeadLetter::Skip => "skip",
                OnDeadLetter::Park => "park",
            }
            .to_string(),
        }
    }
}

/// Counts since the host started, and per second over the last beat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub handled: u64,
    pub dead_lettered: u64,
    pub handled_per_s: f64,
    pub dead_lettered_per_s: f64,
    /// Latencies since the last beat, by bucket of
    /// [`LATENCY_BUCKETS`], the last for what is over every bound:
    /// `status` merges them over hosts before taking quantiles.
    #[serde(default)]
    pub latency: Vec<u64>,
}

/// The `q` quantile (0 to 1) in milliseconds of latencies counted by bucket
/// (see [`Rates::latency`]), interpolated within its bucket; `None`
/// without any.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let mut seen = 0.0;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if seen + n as f64 >= rank {
            let low = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            // Past the last bound nothing says how far: report the bound.
            let high = LATENCY_BUCKETS.get(i).copied().unwrap_or(low);
            let within = (rank - seen) / n as f64;
            return Some((low + (high - low) * within) * 1000.0);
        }
        seen += n as f64;
    }
    None
}

/// Adds `more` into `into`, bucket by bucket.
pub fn merge(into: &mut Vec<u64>, more: &[u64]) {
    if into.len() < more.len() {
        into.resize(more.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(more) {
        *a += b;
    }
}

/// Writes `record` as this host's heartbeat.
pub async fn beat(conn: &mut RedisConn, keys: &Keys, record: &HostRecord) -> RedisResult<()> {
    let json = serde_json::to_string(record).expect("a heartbeat serializes");
    let seen_ms = (record.seen_at * 1000.0) as u64;
    let forgotten = seen_ms.saturating_sub(REMEMBERED.as_millis() as u64);
    redis::pipe()
        .cmd("SET")
        .arg(keys.host(&record.consumer))
        .arg(json)
        .arg("PX")
        .arg(EXPIRES_AFTER.as_millis() as u64)
        .ignore()
        .cmd("ZADD")
        .arg(keys.hosts())
        .arg(seen_ms)
        .arg(&record.consumer)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.hosts())
        .arg("-inf")
        .arg(format!("({forgotten}"))
        .ignore()
        .query_async(conn)
        .await
}

/// Removes this host's heartbeat when it stops cleanly: it is gone at once,
/// not after [`EXPIRES_AFTER`]. It stays named among the hosts gone lately.
pub async fn leave(conn: &mut RedisConn, keys: &Keys, consumer: &str) -> RedisResult<()> {
    redis::cmd("DEL")
        .arg(keys.host(consumer))
        .query_async(conn)
        .await
}

/// A host `status` knows of.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// Its heartbeat is fresh.
    Alive(Box<HostRecord>),
    /// Its heartbeat expired (or it stopped); last seen at this time,
    /// seconds since the epoch.
    Gone { consumer: String, seen_at: f64 },
}

/// Every host seen within [`REMEMBERED`], alive or gone.
pub async fn hosts(conn: &mut RedisConn, keys: &Keys) -> RedisResult<Vec<Known>> {
    let seen: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys.hosts())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    if seen.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<Option<String>> = redis::cmd("MGET")
        .arg(
            seen.iter()
                .map(|(consumer, _)| keys.host(consumer))
                .collect::<Vec<_>>(),
        )
        .query_async(conn)
        .await?;
    Ok(seen
        .into_iter()
        .zip(records)
        .map(|((consumer, seen_ms), record)| {
            match record.and_then(|json| serde_json::from_str::<HostRecord>(&json).ok()) {
                Some(record) => Known::Alive(Box::new(record)),
                None => Known::Gone {
                    consumer,
                    seen_at: seen_ms / 1000.0,
                },
            }
        })
        .collect())
}

/// Turns running totals into rates between two beats.
#[derive(Debug, Default)]
pub struct RateMeter {
    last: BTreeMap<String, Reading>,
}

/// Totals at one beat.
#[derive(Debug, Clone)]
struct Reading {
    handled: u64,
    dead_lettered: u64,
    latency: Vec<u64>,
    at: f64,
}

impl RateMeter {
    /// The rates of `name` whose totals are (`handled`, `dead_lettered`)
    /// and `latency` (by bucket) at `now` (seconds); zero per second on its
    /// first reading.
    pub fn rates(
        &mut self,
        name: &str,
        (handled, dead_lettered): (u64, u64),
        latency: Vec<u64>,
        now: f64,
    ) -> Rates {
        let reading = Reading {
            handled,
            dead_lettered,
            latency,
            at: now,
        };
        let mut rates = Rates {
            handled,
            dead_lettered,
            ..Rates::default()
        };
        if let Some(last) = self.last.get(name).filter(|last| now > last.at) {
            let seconds = now - last.at;
            rates.handled_per_s = handled.saturating_sub(last.handled) as f64 / seconds;
            rates.dead_lettered_per_s =
                dead_lettered.saturating_sub(last.dead_lettered) as f64 / seconds;
            rates.latency = reading
                .latency
                .iter()
                .zip(last.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect();
        }
        self.last.insert(name.to_string(), reading);
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_change_between_two_beats() {
        let mut meter = RateMeter::default();
        let first = meter.rates("pay", (100, 4), vec![5, 0], 10.0);
        assert_eq!((first.handled, first.handled_per_s), (100, 0.0));
        assert!(first.latency.is_empty(), "no interval yet");
        let next = meter.rates("pay", (300, 5), vec![7, 3], 12.0);
        assert_eq!(next.handled_per_s, 100.0);
        assert_eq!(next.dead_lettered_per_s, 0.5);
        assert_eq!(next.handled, 300);
        assert_eq!(next.latency, [2, 3], "only what the interval added");
        let other = meter.rates("ship", (7, 0), vec![], 12.0);
        assert_eq!(other.handled_per_s, 0.0, "each name has its own history");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // LATENCY_BUCKETS starts 0.25 ms, 0.5 ms, 0.75 ms, 1 ms...
        let mut buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        buckets[1] = 50; // 0.25–0.5 ms
        buckets[3] = 50; // 0.75–1 ms
        assert_eq!(quantile_ms(&buckets, 0.5), Some(0.5));
        let p99 = quantile_ms(&buckets, 0.99).unwrap();
        assert!((p99 - 0.995).abs() < 1e-9, "{p99}");
        assert_eq!(quantile_ms(&[0, 0], 0.5), None);
        let mut slow = vec![0; LATENCY_BUCKETS.len() + 1];
        *slow.last_mut().unwrap() = 1;
        assert_eq!(
            quantile_ms(&slow, 0.5),
            Some(30_000.0),
            "past every bound: the last bound"
        );
        let mut merged = vec![1, 2];
        merge(&mut merged, &[3, 4, 5]);
        assert_eq!(merged, [4, 6, 5]);
    }
}
