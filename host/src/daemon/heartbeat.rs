//! This host's heartbeat: who it is and what it runs, written to Redis
//! every few seconds (see [`crate::bus::heartbeat`]), so `eventhost
//! status` sees every host from Redis alone.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;

use crate::bus::connection::RedisConn;
use crate::bus::heartbeat::{HostRecord, RateMeter, SubscriberRecord};
use crate::bus::keys::Keys;
use crate::bus::status;
use crate::config::EventFilter;
use crate::handler::unix_now;
use crate::subscribers::Subscribers;
use crate::telemetry::metrics;

/// What the next heartbeat is made from, beside the subscribers it runs.
pub struct Heartbeat {
    started_at: f64,
    hostname: String,
    meter: RateMeter,
    /// The subscribers whose order gauges were set at the last beat.
    ordered: BTreeSet<String>,
}

impl Heartbeat {
    /// The heartbeat of a host starting now.
    pub fn new() -> Self {
        Heartbeat {
            started_at: unix_now(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            meter: RateMeter::default(),
            ordered: BTreeSet::new(),
        }
    }

    /// The record to write now for a host known as `consumer` in the
    /// groups, with its listener at `listen`, running `running`.
    pub fn record(
        &mut self,
        consumer: &str,
        listen: Option<SocketAddr>,
        running: &Subscribers,
    ) -> HostRecord {
        let now = unix_now();
        let mut subscribers = BTreeMap::new();
        for (name, settings) in running.settings() {
            let events = match &settings.events {
                EventFilter::All => vec!["*".to_string()],
                EventFilter::Types(types) => types.iter().cloned().collect(),
            };
            let tally = metrics::tally(name);
            let rates = self.meter.rates(name, tally.read(), tally.latency(), now);
            let http = metrics::after_commit_tally(name);
            let after_commit =
                self.meter
                    .rates(&format!("{name}:http"), http.read(), Vec::new(), now);
            subscribers.insert(
                name.to_string(),
                SubscriberRecord {
                    plugin: settings.plugin_file.clone(),
                    build: running.handlers().build(&settings),
                    events,
                    rates,
                    after_commit,
                    order: settings.order.as_ref().map(Into::into),
                },
            );
        }
        // A name no subscriber can have: the fan-out's own history.
        let fanout = self
            .meter
            .rates(":fanout", metrics::fanout_tally().read(), Vec::new(), now);
        HostRecord {
            consumer: consumer.to_string(),
            hostname: self.hostname.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            seen_at: now,
            listen: listen.map(|addr| addr.to_string()),
            fanout,
            subscribers,
            reloads: running.notes().cloned().collect(),
        }
    }

    /// Reads what waits in each running subscriber's schedule, and in the
    /// ingress's, and the order per key of each running subscriber with
    /// `order_by`, into their gauges (a few cheap reads each: ZCARD and
    /// one member). A
    /// subscriber that no longer keeps an order here (removed, or its
    /// `order_by` taken out) has its gauges zeroed at once.
    pub fn bus_gauges(
        &mut self,
        conn: RedisConn,
        keys: Keys,
        running: &Subscribers,
    ) -> impl Future<Output = redis::RedisResult<()>> + Send + 'static {
        let ordered: BTreeSet<String> = running
            .settings()
            .filter(|(_, settings)| settings.order.is_some())
            .map(|(name, _)| name.to_string())
            .collect();
        for gone in self.ordered.difference(&ordered) {
            metrics::order(gone, 0, 0, 0.0);
        }
        self.ordered = ordered.clone();
        let running: Vec<String> = running.settings().map(|(n, _)| n.to_string()).collect();
        async move {
            let mut conn = conn;
            let now = unix_now();
            for name in running {
                let stream = keys.subscriber(&name).stream;
                let counts = status::schedule_counts(&mut conn, &stream).await?;
                metrics::scheduled(&name, counts.scheduled, counts.next_due, now);
            }
            let mut publishes = status::ScheduleCounts::default();
            for queue in keys.ingress() {
                publishes = publishes.and(status::schedule_counts(&mut conn, &queue.stream).await?);
            }
            metrics::scheduled(":publish", publishes.scheduled, publishes.next_due, now);
            for name in ordered {
                let counts = status::order_counts(&mut conn, &keys.order(&name), now).await?;
                metrics::order(
                    &name,
                    counts.parked,
                    counts.held,
                    counts.oldest_held_s.unwrap_or(0.0),
                );
            }
            Ok(())
        }
    }
}
