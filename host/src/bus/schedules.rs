//! The schedules a host runs: one ticker per schedule, each publishing its
//! schedule's ticks through `scripts/tick.lua`, so that every host may run
//! every schedule and each tick is published once.
//!
//! A ticker sleeps until its schedule's next tick ([`crate::schedule`]
//! says when) and calls the script for it: the first host to call publishes
//! the tick's event, the others find it done. A tick is *on time* when a
//! running ticker waited for it; a tick that passed before the ticker
//! started, while Redis could not be reached, or while the ticker was held
//! up past a later tick, is *missed*: only the newest missed tick is
//! considered, published once late or left out as the schedule's `missed`
//! says, never a burst of old ones. A schedule that never ran (with its
//! timing) starts from its next tick.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::connection::{RedisConn, Replicas};
use super::keys::{Keys, ScheduleKeys};
use super::leanmq;
use super::scripts::tick::{self, Arrival, Ticked};
use crate::backoff::Backoff;
use crate::config::{Missed, ScheduleConfig};
use crate::schedule::{self, now_ms, rfc3339};
use crate::telemetry::metrics;

/// A ticker woken this long after its tick (a suspended machine, a
/// starved process) takes the tick for missed, not on time.
const LATE: i64 = 5_000;

/// The tickers running in this process, by schedule name.
pub struct Schedules {
    conn: RedisConn,
    keys: Keys,
    replicas: Replicas,
    stop: CancellationToken,
    running: BTreeMap<String, Running>,
}

/// One schedule's ticker and what stops it.
struct Running {
    config: ScheduleConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Schedules {
    /// None yet; tickers publish through `conn` to the bus with `keys`,
    /// and all stop with `stop`.
    pub fn new(conn: RedisConn, keys: Keys, replicas: Replicas, stop: CancellationToken) -> Self {
        Schedules {
            conn,
            keys,
            replicas,
            stop,
            running: BTreeMap::new(),
        }
    }

    /// Runs exactly `schedules`: starts the new ones, restarts the changed
    /// ones and stops the others.
    pub async fn apply(&mut self, schedules: &[ScheduleConfig]) {
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(_, running)| !schedules.contains(&running.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                running.stop.cancel();
                let _ = running.task.await;
            }
        }
        for config in schedules {
            if !self.running.contains_key(&config.name) {
                self.start(config.clone());
            }
        }
    }

    /// The schedules running, with their settings.
    pub fn settings(&self) -> impl Iterator<Item = &ScheduleConfig> {
        self.running.values().map(|r| &r.config)
    }

    /// Stops every ticker and waits for them.
    pub async fn stop(self) {
        for running in self.running.into_values() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    fn start(&mut self, config: ScheduleConfig) {
        let stop = self.stop.child_token();
        let ticker = Ticker {
            keys: self.keys.schedule(&config.name),
            timing: timing(&config),
            config: config.clone(),
            conn: self.conn.clone(),
            replicas: self.replicas,
            stop: stop.clone(),
        };
        let task = tokio::spawn(ticker.run());
        self.running
            .insert(config.name.clone(), Running { config, stop, task });
    }
}

/// A schedule's timing as the script compares it: its cron and its every.
fn timing(config: &ScheduleConfig) -> String {
    format!(
        "cron={};every={}",
        config.ticks.cron().unwrap_or(""),
        config.ticks.every().map_or(0, |d| d.as_secs())
    )
}

/// One schedule's loop.
struct Ticker {
    config: ScheduleConfig,
    keys: ScheduleKeys,
    timing: String,
    conn: RedisConn,
    replicas: Replicas,
    stop: CancellationToken,
}

impl Ticker {
    async fn run(mut self) {
        let name = self.config.name.clone();
        let ticks = self.config.ticks.clone();
        let now = now_ms();
        tracing::info!(
            schedule = %name,
            event_type = %self.config.event_type,
            next = %ticks.after(now).map_or_else(|| "never".into(), rfc3339),
            "schedule started"
        );
        // What passed before this host started is missed.
        let mut from = now;
        if let Some(due) = ticks.at_or_before(now) {
            match self.publish(due, self.missed()).await {
                Some(done) => from = from.max(done),
                None => return self.stopped(),
            }
        }
        loop {
            let Some(next) = ticks.after(from) else {
                tracing::info!(schedule = %name, "schedule has no tick left");
                self.stop.cancelled().await;
                return self.stopped();
            };
            if !self.sleep_until(next).await {
                return self.stopped();
            }
            let now = now_ms();
            let newest = ticks.at_or_before(now).unwrap_or(next).max(next);
            let (tick, arrival) = if newest > next || now - next > LATE {
                (newest, self.missed())
            } else {
                (next, Arrival::OnTime)
            };
            match self.publish(tick, arrival).await {
                Some(done) => from = done,
                None => return self.stopped(),
            }
        }
    }

    fn stopped(&self) {
        tracing::info!(schedule = %self.config.name, "schedule stopped");
    }

    /// How this schedule takes a missed tick.
    fn missed(&self) -> Arrival {
        match self.config.missed {
            Missed::Once => Arrival::MissedOnce,
            Missed::Skip => Arrival::MissedSkip,
        }
    }

    /// Sleeps until the wall clock reaches `tick`; `false` if stopped first.
    async fn sleep_until(&self, tick: i64) -> bool {
        loop {
            let left = tick - now_ms();
            if left <= 0 {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    /// Publishes `tick` (or, if Redis keeps failing past a later tick, the
    /// newest due one, as missed), retrying with backoff; the tick it came
    /// to, or `None` if stopped first.
    async fn publish(&mut self, mut tick: i64, mut arrival: Arrival) -> Option<i64> {
        let mut backoff = Backoff::default();
        loop {
            let event_id = schedule::event_id(&self.config.name, tick);
            let event = leanmq::envelope(
                self.config.data.clone(),
                &self.config.event_type,
                &event_id,
                tick as f64 / 1000.0,
                None,
            );
            let call = tick::tick(
                &mut self.conn,
                &self.keys,
                &self.timing,
                tick,
                arrival,
                &event,
            );
            let result = tokio::select! {
                result = call => result,
                _ = self.stop.cancelled() => return None,
            };
            match result {
                Ok(ticked) => {
                    self.report(tick, arrival, &event_id, ticked).await;
                    return Some(tick);
                }
                Err(err) => {
                    metrics::schedule_tick(&self.config.name, "error");
                    tracing::warn!(
                        schedule = %self.config.name,
                        tick = %rfc3339(tick),
                        "cannot publish the tick to {} (retrying in {:?}): {err}",
                        self.keys.ingress.stream,
                        backoff.peek()
                    );
                    if !backoff.wait(&self.stop).await {
                        return None;
                    }
                    // Past a later tick, this one is missed.
                    if let Some(newest) = self.config.ticks.at_or_before(now_ms()) {
                        if newest > tick {
                            (tick, arrival) = (newest, self.missed());
                        }
                    }
                }
            }
        }
    }

    /// Logs what became of a tick, and waits for replicas of a published
    /// one.
    async fn report(&mut self, tick: i64, arrival: Arrival, event_id: &str, ticked: Ticked) {
        let name = &self.config.name;
        let at = rfc3339(tick);
        match (ticked, arrival) {
            (Ticked::Published(id), Arrival::OnTime) => {
                metrics::schedule_tick(name, "published");
                tracing::debug!(schedule = %name, tick = %at, event_id, stream_id = %id, "published a tick");
            }
            (Ticked::Published(id), _) => {
                metrics::schedule_tick(name, "published_late");
                tracing::info!(
                    schedule = %name, tick = %at, event_id, stream_id = %id,
                    "published a missed tick, once (missed = \"once\")"
                );
            }
            (Ticked::Skipped, _) => {
                metrics::schedule_tick(name, "skipped");
                tracing::info!(
                    schedule = %name, tick = %at,
                    "left a missed tick unpublished (missed = \"skip\", or the schedule never \
                     ran with this timing)"
                );
            }
            (Ticked::Done, _) => return,
        }
        if let Err(err) = self
            .replicas
            .wait(&mut self.conn, &self.keys.ingress.stream)
            .await
        {
            tracing::warn!(
                schedule = %name, tick = %at,
                "the tick was published, but may not survive a failover: {err}"
            );
        }
    }
}
