//! What waiting costs, on this machine: one host, its own redis-server, the
//! provider plugin at `concurrency = 8`.
//!
//!     cargo bench -p eventhost --bench time            # 50,000 events a run, 100,000 scheduled
//!     cargo bench -p eventhost --bench time -- quick   # 20,000, 50,000
//!
//! Prints, in one run: the throughput of events that fail once then
//! succeed (each retry through the schedule in Redis, `retry_backoff_ms =
//! 0`) against events that succeed at once, alternating, three rounds;
//! then, with N events scheduled an hour ahead, the host's RSS against the
//! same host after handling N events at once, and Redis's memory per
//! scheduled event; then how many due events per second the schedule moves
//! to their stream when all N fall due at once. Figures, not assertions:
//! see BENCHMARKS.md.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;
use support::attack::status_kib;
use support::*;

const ROUNDS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (events, waiting) = if quick {
        (20_000, 50_000)
    } else {
        (50_000, 100_000)
    };
    println!("time: provider plugin, concurrency 8, one host");
    println!("{events} events that succeed at once, and that fail once then succeed:");
    let (mut at_once, mut once_failed) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = throughput(0, events);
        let f = throughput(1, events);
        println!(
            "  round {round}: at once {a:>7.0}/s, failing once {f:>7.0}/s ({:.2})",
            f / a
        );
        at_once.push(a);
        once_failed.push(f);
    }
    let (a, f) = (median(&mut at_once), median(&mut once_failed));
    println!(
        "  median: at once {a:.0}/s, failing once {f:.0}/s: {:.2} of it\n",
        f / a
    );
    scheduled(waiting);
}

fn median(figures: &mut [f64]) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// A world with the provider plugin as `pay`, its retries due at once.
fn pay_world(retry_backoff_ms: u64) -> World {
    World::new(
        &["provider.wasm"],
        &format!(
            "[subscribers.pay]\nplugin = \"provider.wasm\"\nevents = [\"Pay\"]\nconcurrency = 8\n\
             max_attempts = 3\nretry_backoff_ms = {retry_backoff_ms}\nretry_jitter = 0\n"
        ),
    )
}

/// Events/s of `n` events that each fail `fails` times then succeed, from
/// the first publish to the last success.
fn throughput(fails: u32, n: usize) -> f64 {
    let world = pay_world(0);
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let started = Instant::now();
    let ids = publish_burst(&mut conn, "Pay", json!({ "fails": fails }), n);
    wait_on_host(&host, started, || ok_count(&mut conn) >= ids.len());
    let took = started.elapsed();
    assert_eq!(len(&mut conn, "events:sub:pay:dlq"), 0, "{}", host.log());
    host.stop();
    n as f64 / took.as_secs_f64()
}

/// Events counted ok by the plugin.
fn ok_count(conn: &mut redis::Connection) -> usize {
    let keys: usize = redis::cmd("HLEN")
        .arg("events:state:pay")
        .query(conn)
        .unwrap();
    keys
}

/// `n` events scheduled an hour ahead: the host's and Redis's memory, then
/// the rate the schedule moves them once all fall due.
fn scheduled(n: usize) {
    // The baseline: the same host after handling n events at once.
    let world = pay_world(3_600_000);
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let started = Instant::now();
    publish_burst(&mut conn, "Pay", json!({ "fails": 0 }), n);
    wait_on_host(&host, started, || ok_count(&mut conn) >= n);
    std::thread::sleep(Duration::from_secs(2));
    let none_rss = status_kib(host.pid(), "VmRSS");
    host.stop();

    let world = pay_world(3_600_000);
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let before_rss = status_kib(host.pid(), "VmRSS");
    let started = Instant::now();
    publish_burst(&mut conn, "Pay", json!({ "fails": 1 }), n);
    let schedule = "events:sub:pay:schedule";
    wait_on_host(&host, started, || {
        conn.zcard::<_, usize>(schedule).unwrap() >= n
    });
    std::thread::sleep(Duration::from_secs(2));
    let waiting_rss = status_kib(host.pid(), "VmRSS");
    let used = |conn: &mut redis::Connection| -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let with = used(&mut conn);
    let first: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(schedule)
        .arg(0)
        .arg(0)
        .query(&mut conn)
        .unwrap();
    let member = first.first().map_or(0, Vec::len);
    let dump: Vec<u8> = redis::cmd("DUMP").arg(schedule).query(&mut conn).unwrap();
    let () = conn.del(schedule).unwrap();
    let without = used(&mut conn);
    let () = redis::cmd("RESTORE")
        .arg(schedule)
        .arg(0)
        .arg(dump)
        .query(&mut conn)
        .unwrap();
    println!("{n} events scheduled an hour ahead (their retries):");
    println!(
        "  host RSS: {:.1} MiB with them waiting ({:.1} MiB before they came), {:.1} MiB after \
         handling {n} at once",
        waiting_rss as f64 / 1024.0,
        before_rss as f64 / 1024.0,
        none_rss as f64 / 1024.0
    );
    println!(
        "  Redis: {:.0} bytes per scheduled event ({:.1} MiB for {n}; each member, the entry to \
         add, is {member} bytes)",
        (with - without) as f64 / n as f64,
        (with - without) as f64 / (1 << 20) as f64
    );

    // All fall due at once: scores to 0.
    let moving = Instant::now();
    let _: usize = redis::cmd("ZUNIONSTORE")
        .arg(schedule)
        .arg(1)
        .arg(schedule)
        .arg("WEIGHTS")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    wait_on_host(&host, moving, || {
        conn.zcard::<_, usize>(schedule).unwrap() == 0
    });
    let moved = moving.elapsed();
    wait_on_host(&host, moving, || ok_count(&mut conn) >= n);
    let handled = moving.elapsed();
    println!(
        "  all due at once: moved to the stream at {:.0}/s ({n} in {:.2} s), all handled in {:.2} s",
        n as f64 / moved.as_secs_f64(),
        moved.as_secs_f64(),
        handled.as_secs_f64()
    );
    host.stop();
}
