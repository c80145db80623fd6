//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`, filtered by `EVENTHOST_LOG` (same
//! syntax as `RUST_LOG`, default `info`). Metrics are `metrics` counters,
//! served in the Prometheus format by the HTTP listener when `[http]
//! listen` is set.

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;
use crate::invoke::LogCollector;

/// Sets up logging for the process; call once, first. The format is
/// `EVENTHOST_LOG_FORMAT` (`text` or `json`) if set, else `configured`.
pub fn init_logging(configured: LogFormat) {
    let asked = std::env::var("EVENTHOST_LOG_FORMAT").ok();
    let format = asked
        .as_deref()
        .and_then(LogFormat::parse)
        .unwrap_or(configured);
    match format {
        LogFormat::Text => stderr_logs("info").init(),
        LogFormat::Json => json_logs("info").init(),
    }
    if let Some(asked) = asked.filter(|a| LogFormat::parse(a).is_none()) {
        tracing::warn!(
            "EVENTHOST_LOG_FORMAT={asked:?} is neither text nor json; logging as {format:?}"
        );
    }
}

/// Logging for `eventhost invoke`: what plugins log goes to `collector`
/// (into the report), the host's own warnings to stderr.
pub fn init_invoke_logging(collector: LogCollector) {
    stderr_logs("warn,eventhost::plugin=off")
        .with(collector)
        .init();
}

/// Logs to stderr, filtered by `EVENTHOST_LOG` (or `RUST_LOG`, else
/// `default`).
fn stderr_logs(default: &str) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(filter(default)),
    )
}

/// One JSON object per line on stderr, the event's fields (subscriber,
/// event_id, stream_id, kind...) at the top level beside `timestamp`,
/// `level` and `message`, for a log shipper to index.
fn json_logs(default: &str) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter(default)),
    )
}

/// `EVENTHOST_LOG` (or `RUST_LOG`), else `default`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("EVENTHOST_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default))
}

/// Upper bounds (seconds) of the latency histogram's buckets: fine around
/// the millisecond, where a healthy host is, coarse up to a backlog's seconds.
pub const LATENCY_BUCKETS: [f64; 22] = [
    0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005, 0.007_5, 0.01, 0.015,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the recorder every counter goes to; the handle renders them
/// for `/metrics` (see [`crate::http`]).
///
/// Distributions are Prometheus histograms, not summaries: they aggregate
/// across hosts, and the exporter's rolling summaries drop samples that
/// reach it out of order, which skewed their quantiles.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // The recorder keeps histogram samples until upkeep folds them in.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The counters eventhost keeps, in one place so their names stay consistent.
/// Text from outside (a plugin, a remote server) made safe for one log
/// line: `text` with every control character escaped (`\n`, `\r`, `\t`, `\e`
/// as `\u{1b}`, …) and cut to about `max` bytes, saying how much was cut.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for (at, c) in text.char_indices() {
        if out.len() >= max {
            out.push_str(&format!("… ({} more bytes cut)", text.len() - at));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub mod metrics {
    use metrics::{counter, gauge, histogram, Counter, Histogram};

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, LazyLock, Mutex};

    /// Running totals of one subscriber (or of the fan-out) in this
    /// process, beside its Prometheus counters: those cannot be read back,
    /// and the heartbeat reports these so `eventhost status` can sum rates
    /// over every host from Redis alone.
    #[derive(Debug, Default)]
    pub struct Tally {
        /// Events handled (fan-out: entries routed).
        pub handled: AtomicU64,
        /// Events dead-lettered.
        pub dead_lettered: AtomicU64,
        /// Latencies counted by bucket of [`LATENCY_BUCKETS`](super::LATENCY_BUCKETS),
        /// the last one for what is over every bound.
        latency: [AtomicU64; super::LATENCY_BUCKETS.len() + 1],
    }

    impl Tally {
        /// (handled, dead-lettered) so far.
        pub fn read(&self) -> (u64, u64) {
            (
                self.handled.load(Ordering::Relaxed),
                self.dead_lettered.load(Ordering::Relaxed),
            )
        }

        /// Latencies so far, by bucket.
        pub fn latency(&self) -> Vec<u64> {
            self.latency
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect()
        }

        fn record_latency(&self, seconds: f64) {
            let bucket = super::LATENCY_BUCKETS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(super::LATENCY_BUCKETS.len());
            self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    static TALLIES: LazyLock<Mutex<BTreeMap<String, Arc<Tally>>>> = LazyLock::new(Mutex::default);
    static FANOUT: LazyLock<Arc<Tally>> = LazyLock::new(Arc::default);

    /// The tally of subscriber `name`: one per name for the life of the
    /// process, so a subscriber restarted by a reload keeps counting.
    pub fn tally(name: &str) -> Arc<Tally> {
        TALLIES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The tally of subscriber `name`'s after-commit requests: `handled`
    /// counts those sent, `dead_lettered` those dead-lettered.
    pub fn after_commit_tally(name: &str) -> Arc<Tally> {
        // ':' is in no subscriber's name: a key of its own.
        tally(&format!("{name}:http"))
    }

    /// The fan-out's tally.
    pub fn fanout_tally() -> Arc<Tally> {
        FANOUT.clone()
    }

    /// Entries of `events:all` copied to at least one subscriber.
    pub fn fanout_routed(targets: usize) {
        FANOUT.handled.fetch_add(1, Ordering::Relaxed);
        counter!("eventhost_fanout_routed_total").increment(1);
        counter!("eventhost_deliveries_total").increment(targets as u64);
    }

    /// Entries of a type nobody subscribes to: acknowledged, not copied.
    pub fn fanout_unrouted() {
        counter!("eventhost_fanout_unrouted_total").increment(1);
    }

    /// Entries of `events:all` that could not be routed.
    pub fn fanout_dead_lettered() {
        FANOUT.dead_lettered.fetch_add(1, Ordering::Relaxed);
        counter!("eventhost_fanout_dead_lettered_total").increment(1);
    }

    /// On a cluster, copies a subscriber already had (a batch routed again
    /// after a crash, or by two hosts): dropped, not delivered twice.
    pub fn fanout_copies_dropped(copies: u64) {
        counter!("eventhost_fanout_copies_dropped_total").increment(copies);
    }

    /// A plugin's outbound HTTP request: `sent` (a response came),
    /// `denied` (no grant names it, or its name resolves to an internal
    /// address only), `failed` (no response: refused, timed out, TLS...).
    pub fn outbound_request(subscriber: &str, outcome: &'static str) {
        counter!(
            "eventhost_http_requests_total",
            "subscriber" => subscriber.to_string(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// A request queued with `send-after-commit`: `denied` (at the call:
    /// no grant names it), `sent` (a response under 400), `retried` (a
    /// send that will be tried again), `dead_lettered` (in the DLQ).
    pub fn after_commit(subscriber: &str, outcome: &'static str) {
        match outcome {
            "sent" => after_commit_tally(subscriber)
                .handled
                .fetch_add(1, Ordering::Relaxed),
            "dead_lettered" => after_commit_tally(subscriber)
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        counter!(
            "eventhost_http_after_commit_total",
            "subscriber" => subscriber.to_string(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// On a cluster, events copied though their id was copied lately with
    /// other content: delivered (an id alone never decides that two events
    /// are one), and counted, since a producer forges or reuses ids.
    pub fn fanout_ids_reused(copies: u64) {
        counter!("eventhost_fanout_ids_reused_total").increment(copies);
    }

    /// Entries in a DLQ (`events:all:dlq`, `events:sub:<name>:dlq`), read
    /// every few seconds: DLQs are never trimmed (operators replay them),
    /// so their depth is what to watch.
    pub fn dlq_depth(dlq: &str, entries: u64) {
        gauge!("eventhost_dlq_depth", "dlq" => dlq.to_string()).set(entries as f64);
    }

    /// A subscriber's order per key (`order_by`), read every heartbeat:
    /// keys parked by a dead letter (each waits for an operator), keys
    /// with events held behind their holder, and the seconds since the
    /// oldest held event was routed (0 when none is). Redis's figures,
    /// the same on every host: take the max over hosts, not the sum.
    pub fn order(subscriber: &str, parked: u64, held: u64, oldest_held_s: f64) {
        let label = [("subscriber", subscriber.to_string())];
        gauge!("eventhost_order_parked_keys", &label).set(parked as f64);
        gauge!("eventhost_order_held_keys", &label).set(held as f64);
        gauge!("eventhost_order_oldest_held_seconds", &label).set(oldest_held_s);
    }

    /// What waits in a schedule, read every heartbeat: a subscriber's
    /// retries (`subscriber` its name), or the events published for later
    /// (`subscriber=":publish"`); and the seconds until the next is due
    /// (negative: late; 0 when none waits). Redis's figures, the same on
    /// every host: take the max over hosts, not the sum.
    pub fn scheduled(subscriber: &str, scheduled: u64, next_due: Option<f64>, now: f64) {
        let label = [("subscriber", subscriber.to_string())];
        gauge!("eventhost_scheduled_events", &label).set(scheduled as f64);
        gauge!("eventhost_scheduled_next_due_seconds", &label)
            .set(next_due.map_or(0.0, |due| due - now));
    }

    /// What this host did with a schedule's tick: `published` (on time),
    /// `published_late` (a missed tick, `missed = "once"`), `skipped` (a
    /// missed tick left out), `error` (Redis refused; retried). A tick
    /// another host published is not counted: summed over hosts,
    /// `published` counts each tick once.
    pub fn schedule_tick(schedule: &str, outcome: &'static str) {
        counter!(
            "eventhost_schedule_ticks_total",
            "schedule" => schedule.to_string(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// A plugin file or config change that was refused.
    pub fn reload_refused(what: &'static str) {
        counter!("eventhost_reload_refused_total", "what" => what).increment(1);
    }

    /// A plugin file or config change that was applied.
    pub fn reloaded(what: &'static str) {
        counter!("eventhost_reloads_total", "what" => what).increment(1);
    }

    /// One subscriber's counters, registered once so the hot path does not
    /// build labels per event.
    #[derive(Clone)]
    pub struct SubscriberMetrics {
        name: String,
        tally: Arc<Tally>,
        handled: Counter,
        pub retried: Counter,
        /// Results discarded because another consumer committed first.
        pub duplicates: Counter,
        /// Results not committed because state they read changed first;
        /// their events ran again.
        pub conflicts: Counter,
        /// Seconds from an event's publication (its `timestamp`) to the
        /// commit of its result.
        latency: Histogram,
    }

    impl SubscriberMetrics {
        /// Registers the counters of subscriber `name`.
        pub fn new(name: &str) -> Self {
            let label = [("subscriber", name.to_string())];
            SubscriberMetrics {
                name: name.to_string(),
                tally: tally(name),
                handled: counter!("eventhost_handled_total", &label),
                retried: counter!("eventhost_retried_total", &label),
                duplicates: counter!("eventhost_duplicate_results_total", &label),
                conflicts: counter!("eventhost_state_conflicts_total", &label),
                latency: histogram!("eventhost_event_latency_seconds", &label),
            }
        }

        /// Records the seconds from an event's publication to the commit
        /// of its result.
        pub fn latency(&self, seconds: f64) {
            self.tally.record_latency(seconds);
            self.latency.record(seconds);
        }

        /// Counts an event handled.
        pub fn handled(&self) {
            self.tally.handled.fetch_add(1, Ordering::Relaxed);
            self.handled.increment(1);
        }

        /// Counts an event sent to the DLQ, by kind of failure.
        pub fn dead_lettered(&self, kind: &str) {
            self.tally.dead_lettered.fetch_add(1, Ordering::Relaxed);
            counter!(
                "eventhost_dead_lettered_total",
                "subscriber" => self.name.clone(),
                "kind" => kind.to_string()
            )
            .increment(1);
        }
    }
}
