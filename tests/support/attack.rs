//! Measuring an attack: the host's peak RSS, a bystander subscriber's
//! throughput, and how fast the host stops on SIGTERM.

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;

use super::{publish, Host, World};

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

/// Publishes `n` `Ping`s and waits (up to `wait`) until the bystander has
/// handled them all; returns its rate in events per second.
pub fn bystander_rate(world: &World, n: usize, wait: Duration) -> f64 {
    let mut conn = world.conn();
    let before = bystander_count(&mut conn);
    let started = Instant::now();
    for _ in 0..n {
        publish(&mut conn, "Ping", json!({}));
    }
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
pub fn bystander_best_rate(world: &World, n: usize, wait: Duration) -> f64 {
    (0..3)
        .map(|_| bystander_rate(world, n, wait))
        .fold(0.0, f64::max)
}

/// SIGTERM, and how long the host took to exit (it must exit 0).
pub fn stop_timed(host: Host) -> Duration {
    let started = Instant::now();
    let status = host.stop();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "the host exits cleanly on SIGTERM");
    took
}
