//! What order per key (`order_by`) costs, on this machine: one host, its own
//! redis-server, a plugin at `concurrency = 8`, events spread over 500 keys.
//!
//!     cargo bench -p eventhost --bench order            # 60,000 events a run
//!     cargo bench -p eventhost --bench order -- quick   # 20,000
//!
//! Prints, in one run, alternating: events/s without `order_by` and with
//! it (the issue's aim: at least 80%), for the trivial plugin and for a
//! stateful one (the hotkey plugin: each event adds one to its key's
//! counter in state); then, with `order_by`, the rate of
//! the other keys' events when one key carries half of all events, against
//! their rate with no hot key (aim: at least half). Figures, not
//! assertions: see BENCHMARKS.md.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::*;

/// Keys the events are spread over.
const KEYS: usize = 500;
/// Alternating rounds of the plain and the ordered run.
const ROUNDS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let events = if quick { 20_000 } else { 60_000 };
    println!(
        "order per key: {events} events over {KEYS} keys, trivial plugin, concurrency 8, one host"
    );
    for workload in [Workload::Trivial, Workload::Stateful] {
        println!("{}:", workload.name());
        let mut plain = Vec::new();
        let mut ordered = Vec::new();
        for round in 1..=ROUNDS {
            let p = run(workload, false, events, 0);
            let o = run(workload, true, events, 0);
            println!(
                "  round {round}: without order_by {:>7.0}/s, with {:>7.0}/s ({:.2}); CPU per \
                 event: host {:.1} → {:.1} µs, redis {:.1} → {:.1} µs",
                p.all,
                o.all,
                o.all / p.all,
                p.host_us,
                o.host_us,
                p.redis_us,
                o.redis_us
            );
            plain.push(p.all);
            ordered.push(o.all);
        }
        let (p, o) = (median(&mut plain), median(&mut ordered));
        println!(
            "  median: without order_by {p:.0}/s, with {o:.0}/s: {:.2} of it\n",
            o / p
        );
    }

    let cold = events / 2;
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    println!("trivial, with order_by:");
    for round in 1..=ROUNDS {
        let a = run(Workload::Trivial, true, cold, 0);
        let b = run(Workload::Trivial, true, cold, cold);
        println!(
            "  round {round}: {cold} events on {} keys alone {:>7.0}/s; beside {cold} on one hot key \
             {:>7.0}/s ({:.2}; the hot key: {:.0}/s)",
            KEYS - 1,
            a.cold,
            b.cold,
            b.cold / a.cold,
            b.hot
        );
        alone.push(a.cold);
        beside.push(b.cold);
    }
    let (a, b) = (median(&mut alone), median(&mut beside));
    println!(
        "  median: the other keys' rate beside a hot key is {:.2} of their rate alone ({b:.0} vs {a:.0}/s)",
        b / a
    );
}

/// What each event costs the plugin.
#[derive(Clone, Copy)]
enum Workload {
    /// Nothing (the noop plugin).
    Trivial,
    /// A read-modify-write of the event's key's counter in state (the
    /// hotkey plugin): an account's balance, say.
    Stateful,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Trivial => "trivial (noop plugin)",
            Workload::Stateful => {
                "stateful (hotkey plugin: JSON, read and write of the key's counter)"
            }
        }
    }

    /// Its plugin, and its table's extra lines.
    fn plugin(self) -> (&'static str, &'static str) {
        match self {
            Workload::Trivial => ("noop.wasm", ""),
            Workload::Stateful => ("hotkey.wasm", ""),
        }
    }
}

fn median(figures: &mut [f64]) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// One run's rates (events/s from the first publish): of every event, of
/// the events of the ordinary keys until the last of them was handled,
/// and of the hot key's.
struct Run {
    all: f64,
    cold: f64,
    hot: f64,
    /// CPU per event, µs: the host's and redis-server's.
    host_us: f64,
    redis_us: f64,
}

/// Publishes `cold` events over `KEYS - 1` keys (and as many over `KEYS`
/// keys when `hot` is 0) interleaved with `hot` events of one key, and
/// waits for all of them; with `ordered`, the subscriber orders by key.
fn run(workload: Workload, ordered: bool, cold: usize, hot: usize) -> Run {
    let (plugin, extra) = workload.plugin();
    let world = World::new(&[plugin], "");
    let metrics = format!("127.0.0.1:{}", free_port());
    let order = if ordered { "order_by = \"key\"\n" } else { "" };
    world.configure(&format!(
        "[http]\nlisten = \"{metrics}\"\n\n[subscribers.keyed]\nplugin = \"{plugin}\"\n\
         events = [\"Ping\"]\nconcurrency = 8\n{order}{extra}"
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let total = cold + hot;
    let cold_keys = if hot > 0 { KEYS - 1 } else { KEYS };

    let (host_cpu, redis_cpu) = (cpu_seconds(host.pid()), cpu_seconds(world.redis.pid()));
    let started = Instant::now();
    let mut pipe = redis::pipe();
    let (mut sent_cold, mut sent_hot) = (0, 0);
    for n in 0..total {
        // Evenly interleaved: hot events take their share of every stretch.
        let is_hot = sent_hot < hot && (sent_cold >= cold || sent_hot * cold <= sent_cold * hot);
        let key = if is_hot {
            sent_hot += 1;
            "hot".to_string()
        } else {
            sent_cold += 1;
            format!("k{}", n % cold_keys)
        };
        let data = format!(
            r#"{{"event_type":"Ping","event_id":"{n}","key":"{key}","_metadata":{{"id":"{n}","timestamp":1.0,"ttl":null}}}}"#
        );
        pipe.cmd("XADD")
            .arg("events:all")
            .arg("*")
            .arg("data")
            .arg(data)
            .ignore();
        if (n + 1) % 500 == 0 || n + 1 == total {
            let () = pipe.query(&mut conn).unwrap();
            pipe = redis::pipe();
        }
    }

    let limit = Duration::from_secs(600);
    let mut cold_done = None;
    loop {
        let handled = counter(
            &scrape(&metrics),
            "eventhost_handled_total{subscriber=\"keyed\"}",
        ) as usize;
        if cold_done.is_none() && hot > 0 && handled >= cold && cold_keys_done(&mut conn, total) {
            cold_done = Some(started.elapsed());
        }
        if handled >= total {
            break;
        }
        assert!(started.elapsed() < limit, "stuck:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = started.elapsed();
    let per_event = |seconds: f64| seconds * 1e6 / total as f64;
    let host_us = per_event(cpu_seconds(host.pid()) - host_cpu);
    let redis_us = per_event(cpu_seconds(world.redis.pid()) - redis_cpu);
    host.stop();
    let cold_took = cold_done.unwrap_or(took);
    Run {
        all: total as f64 / took.as_secs_f64(),
        cold: cold as f64 / cold_took.as_secs_f64(),
        hot: hot as f64 / took.as_secs_f64(),
        host_us,
        redis_us,
    }
}

/// Whether every event but the hot key's is handled: all `total` routed,
/// and no key but `hot` still held (a key is held from the moment its
/// oldest unhandled event is routed until its last one is handled).
fn cold_keys_done(conn: &mut redis::Connection, total: usize) -> bool {
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg(&["GROUPS", "events:all"])
        .query(conn)
        .unwrap();
    let read = groups.first().map_or(0, |g| {
        let fields: std::collections::HashMap<String, redis::Value> =
            redis::from_redis_value(g.clone()).unwrap();
        let pending: usize = redis::from_redis_value(fields["pending"].clone()).unwrap();
        let read: usize = redis::from_redis_value(fields["entries-read"].clone()).unwrap_or(0);
        read - pending
    });
    if read < total {
        return false;
    }
    let held: usize = conn.hlen("events:order:keyed").unwrap();
    let hot: bool = conn.hexists("events:order:keyed", "hot").unwrap();
    held == usize::from(hot)
}
