//! How eventhost does on a Redis Cluster, on this machine: the same bus
//! over 1 shard and over 3 (masters only, on free loopback ports), one
//! host, 3 subscribers of a trivial plugin, events published pipelined to
//! the partitions as fast as Redis takes them.
//!
//!     cargo bench --bench cluster            # 60,000 events per run
//!     cargo bench --bench cluster -- quick   # 15,000
//!
//! Prints deliveries/s, Redis CPU per delivery (all shards, and per shard),
//! how keys and load spread over the shards, and host CPU per delivery.
//! Everything shares 2 cores here: more shards add Redis processes, not
//! cores, so this shows what a delivery costs and how evenly it spreads,
//! not how far more machines go (see BENCHMARKS.md for that model).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;
use support::cluster::{event, partition_for, partition_index, partitions, Cluster, ClusterWorld};
use support::{counter, cpu_seconds, free_port, scrape, wait_on_host};

const SUBSCRIBERS: [&str; 3] = ["s1", "s2", "s3"];

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let events = if quick { 15_000 } else { 60_000 };
    println!(
        "eventhost on Redis Cluster, {events} events x {} subscribers, 1 host, 6 partitions",
        SUBSCRIBERS.len()
    );
    println!(
        "(the host, every redis-server and the publisher share {} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for shards in [1, 3] {
        run(shards, events);
    }
}

fn run(shards: usize, events: usize) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut subscribers = format!("[http]\nlisten = \"{metrics}\"\n\n");
    for name in SUBSCRIBERS {
        subscribers +=
            &format!("[subscribers.{name}]\nplugin = \"noop.wasm\"\nevents = [\"Ping\"]\n\n");
    }
    let world = ClusterWorld::new(
        Cluster::start(shards, 0),
        &["noop.wasm"],
        "stream_maxlen = 10000\n",
        &subscribers,
    );
    let host = world.host();
    let mut conn = world.cluster.conn();
    let parts = partitions(&mut conn);
    let redis_before = world.cluster.cpu_seconds();
    let host_before = cpu_seconds(host.pid());
    let started = Instant::now();
    let publisher = {
        // A pipeline goes to one node: each partition's master, directly.
        let masters: Vec<u16> = parts.iter().map(|p| world.cluster.master_of(p)).collect();
        let parts = parts.clone();
        std::thread::spawn(move || publish(&masters, &parts, events))
    };
    let expected = (events * SUBSCRIBERS.len()) as u64;
    wait_on_host(&host, started, || handled(&metrics) >= expected);
    publisher.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let host_cpu = cpu_seconds(host.pid()) - host_before;
    let redis_after = world.cluster.cpu_seconds();
    let per_shard: Vec<(u16, f64)> = redis_after
        .iter()
        .map(|(port, after)| {
            let before = redis_before
                .iter()
                .find(|(p, _)| p == port)
                .map_or(0.0, |(_, b)| *b);
            (*port, after - before)
        })
        .collect();
    let redis_cpu: f64 = per_shard.iter().map(|(_, c)| c).sum();
    let deliveries = expected as f64;
    println!();
    println!(
        "{shards} shard(s): {:.0} deliveries/s ({:.1} s)",
        deliveries / elapsed,
        elapsed
    );
    println!(
        "  Redis CPU {:.2} µs per delivery over all shards; host CPU {:.2} µs per delivery",
        redis_cpu * 1e6 / deliveries,
        host_cpu * 1e6 / deliveries
    );
    // Which master holds what: partitions, subscriber keys, and its CPU.
    let mut keys_on: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for p in &parts {
        keys_on
            .entry(world.cluster.master_of(p))
            .or_default()
            .push(format!("p{}", partition_index(p)));
    }
    for s in SUBSCRIBERS {
        let stream = format!("events:sub:{{{s}}}");
        keys_on
            .entry(world.cluster.master_of(&stream))
            .or_default()
            .push(stream);
    }
    for (port, cpu) in &per_shard {
        println!(
            "  shard :{port}: {:>4.1}% of Redis CPU ({:.2} µs per delivery) — {}",
            100.0 * cpu / redis_cpu.max(1e-9),
            cpu * 1e6 / deliveries,
            keys_on.get(port).map_or(String::new(), |k| k.join(", "))
        );
    }
    host.stop();
}

/// Publishes `events` Pings, each to the partition its id picks, in
/// pipelines of 500 per partition, each sent to the partition's master.
fn publish(masters: &[u16], parts: &[String], events: usize) {
    let mut conns: Vec<redis::Connection> = masters
        .iter()
        .map(|port| {
            redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .get_connection()
                .unwrap()
        })
        .collect();
    let mut batches: Vec<redis::Pipeline> = parts.iter().map(|_| redis::pipe()).collect();
    let mut sizes = vec![0; parts.len()];
    for n in 0..events {
        let (id, data) = event("Ping", json!({"n": n}));
        let partition = partition_for(parts, &id);
        let i = partition_index(partition);
        batches[i].xadd(partition, "*", &[("data", data)]).ignore();
        sizes[i] += 1;
        if sizes[i] == 500 {
            let full = std::mem::replace(&mut batches[i], redis::pipe());
            full.query::<()>(&mut conns[i]).unwrap();
            sizes[i] = 0;
        }
    }
    for (i, (batch, size)) in batches.into_iter().zip(sizes).enumerate() {
        if size > 0 {
            batch.query::<()>(&mut conns[i]).unwrap();
        }
    }
}

/// Events handled by the subscribers, from one scrape.
fn handled(metrics: &str) -> u64 {
    let text = scrape(metrics);
    SUBSCRIBERS
        .iter()
        .map(|s| {
            counter(
                &text,
                &format!("eventhost_handled_total{{subscriber=\"{s}\"}}"),
            )
        })
        .sum()
}
