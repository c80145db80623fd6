//! End-to-end tests of hostile plugins against what the host shares among
//! them (issue 10, classes 4, 6, 8 and 9): the instance pool, file
//! descriptors, compilation, and the compiled cache.
//!
//! Each attack runs beside a bystander subscriber (the probe, on `Ping`);
//! the test prints the host's peak RSS (VmHWM), the bystander's throughput
//! and p99 latency without and during the attack, and how long the host
//! took to exit on SIGTERM during it.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The bystander: the probe as subscriber `bystander`, on `Ping`.
const BYSTANDER: &str = "[subscribers.bystander]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n";

/// A field of `/proc/<pid>/status` in KiB, e.g. `VmHWM` (peak RSS).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The host's peak RSS so far, in MiB.
fn peak_mib(host: &Host) -> u64 {
    status_kib(host.pid(), "VmHWM") >> 10
}

/// How many events the probe running as `subscriber` has handled.
fn handled(conn: &mut redis::Connection, subscriber: &str) -> usize {
    conn.hget::<_, _, Option<String>>(format!("events:state:{subscriber}"), "count")
        .unwrap()
        .map_or(0, |c| c.parse().unwrap())
}

/// Publishes `n` `Ping`s and waits until the bystander has handled them
/// all; returns its rate in events per second.
fn bystander_rate(world: &World, n: usize) -> f64 {
    let mut conn = world.conn();
    let before = handled(&mut conn, "bystander");
    let started = Instant::now();
    for _ in 0..n {
        publish(&mut conn, "Ping", json!({}));
    }
    eventually("the bystander handles its events", WAIT, || {
        handled(&mut conn, "bystander") >= before + n
    });
    n as f64 / started.elapsed().as_secs_f64()
}

/// Publishes `n` `Ping`s one at a time, each once the one before was
/// handled; returns the 99th percentile of publish → handled.
fn bystander_p99(world: &World, n: usize) -> Duration {
    let mut conn = world.conn();
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let before = handled(&mut conn, "bystander");
        let started = Instant::now();
        publish(&mut conn, "Ping", json!({}));
        while handled(&mut conn, "bystander") <= before {
            assert!(started.elapsed() < WAIT, "a Ping was never handled");
            std::thread::sleep(Duration::from_micros(500));
        }
        took.push(started.elapsed());
    }
    took.sort();
    took[(n * 99).div_ceil(100) - 1]
}

/// SIGTERM, and how long the host took to exit (it must exit 0).
fn stop_timed(host: Host) -> Duration {
    let started = Instant::now();
    let status = host.stop();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "the host exits cleanly on SIGTERM");
    took
}

/// Publishes `n` events of `event_type` with `data` in one pipeline.
fn publish_many(conn: &mut redis::Connection, event_type: &str, data: serde_json::Value, n: usize) {
    let mut pipe = redis::pipe();
    for _ in 0..n {
        let mut object = data.as_object().unwrap().clone();
        object.insert("event_type".into(), event_type.into());
        object.insert("event_id".into(), uuid::Uuid::new_v4().to_string().into());
        pipe.cmd("XADD")
            .arg("events:all")
            .arg("*")
            .arg("data")
            .arg(serde_json::Value::Object(object).to_string())
            .ignore();
    }
    pipe.query::<()>(conn).unwrap();
}

// ----- 6. the instance pool -----------------------------------------------

/// A subscriber with `concurrency = 1024` whose events each hold an
/// instance for 800 ms cannot take the pool (1000 instances): it holds at
/// most its share (a quarter) and waits for the rest. The bystander's
/// events are never dead-lettered (on main they were, as "maximum
/// concurrent limit"), neither are the hog's own: running out of capacity
/// is a wait, not a failure.
#[test]
fn one_subscriber_cannot_take_every_instance() {
    let world = World::new(&["probe.wasm", "hostile.wasm"], "");
    let hog = "[subscribers.hog]\nplugin = \"hostile.wasm\"\nevents = [\"Hog\"]\nconcurrency = 1024\ntimeout_ms = 1000\nmax_attempts = 2\n\n";
    world.configure_bus("read_batch = 1024\n", &format!("{hog}{BYSTANDER}"));
    let host = world.host();
    let mut conn = world.conn();
    let baseline = bystander_rate(&world, 300);
    let baseline_p99 = bystander_p99(&world, 100);

    let sleep = json!({"act": "sleep", "n": 800});
    publish_many(&mut conn, "Hog", sleep.clone(), 2500);
    std::thread::sleep(Duration::from_millis(300));
    let during = bystander_rate(&world, 300);
    let during_p99 = bystander_p99(&world, 100);
    let peak = peak_mib(&host);

    // The hostile plugin stores `done:<event id>` per event.
    eventually("the hog handles every event", WAIT, || {
        state(&mut conn, "hog").len() >= 2500
    });
    assert_eq!(
        dlq_reasons(&mut conn, "events:sub:bystander:dlq"),
        Vec::<String>::new(),
        "no bystander event is dead-lettered"
    );
    assert_eq!(
        dlq_reasons(&mut conn, "events:sub:hog:dlq"),
        Vec::<String>::new(),
        "a busy pool is a wait, not a failure, for the hog too"
    );
    assert!(
        !host.log().contains("maximum concurrent"),
        "the pool never ran out"
    );

    // SIGTERM while the hog fills its share and waits for more.
    publish_many(&mut conn, "Hog", sleep, 2000);
    std::thread::sleep(Duration::from_millis(500));
    let took = stop_timed(host);
    println!(
        "instance pool: peak RSS {peak} MiB; bystander {baseline:.0} events/s (p99 \
         {baseline_p99:?}) alone, {during:.0} events/s (p99 {during_p99:?}) during the attack; \
         SIGTERM → exit in {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(during > baseline / 2.0, "{during} vs {baseline}");
    assert!(during_p99 < Duration::from_millis(100), "{during_p99:?}");
}
