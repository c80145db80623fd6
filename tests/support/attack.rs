//! Measuring an attack: the host's peak RSS, a bystander subscriber's
//! pace, and how fast the host stops on SIGTERM.
//!
//! [`Pace`] is the one yardstick of the bystander: every test that
//! measures it beside an attack takes a `Pace` without and during the
//! attack, and [`Pace::holds_against`] is what it asserts of them.

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;

use super::{publish, publish_burst, Host, World};

/// The bystander: the probe as subscriber `bystander`, on `Ping`.
pub const BYSTANDER: &str =
    "[subscribers.bystander]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n";

/// A field of `/proc/<pid>/status` in KiB, e.g. `VmHWM` (peak RSS).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The host's peak RSS so far, in MiB.
pub fn peak_mib(host: &Host) -> u64 {
    status_kib(host.pid(), "VmHWM") >> 10
}

/// How many events the bystander has handled.
pub fn bystander_count(conn: &mut redis::Connection) -> usize {
    conn.hget::<_, _, Option<String>>("events:state:bystander", "count")
        .unwrap()
        .map_or(0, |c| c.parse().unwrap())
}

/// Publishes `n` `Ping`s in one burst and waits (up to `wait`) until the
/// bystander has handled them all; returns its rate in events per second.
/// The burst is one pipeline: published one round trip at a time, the rate
/// would be the test client's, which competes for the same 2 cores.
pub fn bystander_rate(world: &World, n: usize, wait: Duration) -> f64 {
    let mut conn = world.conn();
    let before = bystander_count(&mut conn);
    let started = Instant::now();
    publish_burst(&mut conn, "Ping", json!({}), n);
    // Polled every millisecond: at a few thousand events/s, a coarser poll
    // would be a large part of what is measured.
    while bystander_count(&mut conn) < before + n {
        assert!(
            started.elapsed() < wait,
            "the bystander did not handle its events within {wait:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The best of three [`bystander_rate`]s: for an attack that lasts through
/// all three, with and without it alike, since on a busy 2-core machine one
/// round can lose half its time to other processes.
fn bystander_best_rate(world: &World, n: usize, wait: Duration) -> f64 {
    (0..3)
        .map(|_| bystander_rate(world, n, wait))
        .fold(0.0, f64::max)
}

/// Publishes `n` `Ping`s one at a time, each once the one before was
/// handled, and returns the 99th percentile of publish → handled (polled
/// every half millisecond): the bystander's latency when it is not
/// saturated, which an attack must not push past 100 ms.
fn bystander_p99(world: &World, n: usize, wait: Duration) -> Duration {
    let mut conn = world.conn();
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let before = bystander_count(&mut conn);
        let started = Instant::now();
        publish(&mut conn, "Ping", json!({}));
        while bystander_count(&mut conn) <= before {
            assert!(started.elapsed() < wait, "a Ping was never handled");
            std::thread::sleep(Duration::from_micros(500));
        }
        took.push(started.elapsed());
    }
    took.sort();
    took[(n * 99).div_ceil(100) - 1]
}

/// The bystander's pace: its rate when saturated and its latency when not.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Events per second over a burst.
    pub rate: f64,
    /// 99th percentile of publish → handled, one event at a time.
    pub p99: Duration,
}

impl Pace {
    /// The best rate of three bursts of `n`, then the p99 of 100 events one
    /// at a time. The same yardstick with and without an attack (attacks
    /// are kept up through all three): on a busy 2-core machine one round
    /// can lose half its time to other processes.
    pub fn measure(world: &World, n: usize, wait: Duration) -> Pace {
        Pace {
            rate: bystander_best_rate(world, n, wait),
            p99: bystander_p99(world, 100, wait),
        }
    }

    /// Asserts what an attack must leave the bystander: at least half its
    /// rate without it, and a p99 under 100 ms.
    pub fn holds_against(&self, alone: &Pace) {
        assert!(
            self.rate > alone.rate / 2.0,
            "the bystander lost more than half its rate: {self} during, {alone} alone"
        );
        assert!(
            self.p99 < Duration::from_millis(100),
            "the bystander's p99 went past 100 ms: {self} during, {alone} alone"
        );
    }
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} events/s (p99 {:.1?})", self.rate, self.p99)
    }
}

/// An attack kept up in the background: `send` publishes one attack event
/// every `every` until [`Attack::stop`], so it lasts as long as the
/// bystander is measured beside it.
pub struct Attack {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Attack {
    /// Starts sending; `send` returns the id of what it published.
    pub fn start(
        world: &World,
        every: Duration,
        mut send: impl FnMut(&mut redis::Connection) -> String + Send + 'static,
    ) -> Attack {
        let mut conn = world.conn();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let started = Instant::now();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                sent.push(send(&mut conn));
                let next = every * sent.len() as u32;
                std::thread::sleep(next.saturating_sub(started.elapsed()));
            }
            sent
        });
        // The first events are on their way before anything is measured.
        std::thread::sleep(every.max(Duration::from_millis(20)));
        Attack { stop, thread }
    }

    /// Stops sending; returns the ids of everything sent.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the attack thread")
    }
}

/// SIGTERM, and how long the host took to exit (it must exit 0).
pub fn stop_timed(host: Host) -> Duration {
    let started = Instant::now();
    let status = host.stop();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "the host exits cleanly on SIGTERM");
    took
}
