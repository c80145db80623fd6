//! This host's heartbeat: who it is and what it runs, written to Redis
//! every few seconds (see [`crate::bus::heartbeat`]), so `eventhost
//! status` sees every host from Redis alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::bus::heartbeat::{HostRecord, RateMeter, SubscriberRecord};
use crate::config::EventFilter;
use crate::handler::unix_now;
use crate::subscribers::Subscribers;
use crate::telemetry::metrics;

/// What the next heartbeat is made from, beside the subscribers it runs.
pub struct Heartbeat {
    started_at: f64,
    hostname: String,
    meter: RateMeter,
}

impl Heartbeat {
    /// The heartbeat of a host starting now.
    pub fn new() -> Self {
        Heartbeat {
            started_at: unix_now(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            meter: RateMeter::default(),
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
}
