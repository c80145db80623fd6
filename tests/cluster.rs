//! eventhost on a Redis Cluster (3 masters, 3 replicas, on free loopback
//! ports): every event reaches every subscriber of its type, effects are
//! committed once, publishes leave a subscriber's shard through its outbox,
//! a `kill -9` between a copy and its acknowledgement neither loses nor
//! doubles a delivery, and a master killed mid-run is replaced while the
//! hosts carry on.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::cluster::ClusterConnection;
use redis::Commands;
use serde_json::{json, Value};

use support::cluster::{Cluster, ClusterWorld};
use support::eventually;

/// The ingress partitions, in order, as a producer finds them: the names
/// the hosts registered (`events:all:{p<i>.<k>}`), sorted by `i`.
fn partitions(conn: &mut ClusterConnection) -> Vec<String> {
    let registry: Vec<String> = conn.smembers("events:registry").unwrap();
    let mut parts: Vec<(usize, String)> = registry
        .into_iter()
        .filter(|s| s.starts_with("events:all:{p") && !s.ends_with(":dlq"))
        .map(|s| {
            let i = s["events:all:{p".len()..]
                .split('.')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (i, s)
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, s)| s).collect()
}

/// Publishes as the README tells any Redis client to: the event id picks
/// the partition by its CRC-32 (zlib's). Returns the event id.
fn publish(
    conn: &mut ClusterConnection,
    parts: &[String],
    event_type: &str,
    data: Value,
) -> String {
    let Value::Object(mut object) = data else {
        panic!("an object")
    };
    let id = uuid::Uuid::new_v4().to_string();
    object.insert("event_type".into(), event_type.into());
    object.insert("event_id".into(), id.clone().into());
    let partition = &parts[crc32fast::hash(id.as_bytes()) as usize % parts.len()];
    let _: String = conn
        .xadd(
            partition,
            "*",
            &[("data", Value::Object(object).to_string())],
        )
        .unwrap();
    id
}

/// A subscriber's state hash, at its cluster key.
fn state(conn: &mut ClusterConnection, subscriber: &str) -> HashMap<String, String> {
    conn.hgetall(format!("events:state:{{{subscriber}}}"))
        .unwrap()
}

fn count(conn: &mut ClusterConnection, subscriber: &str) -> usize {
    state(conn, subscriber)
        .get("count")
        .map_or(0, |c| c.parse().unwrap())
}

fn xlen(conn: &mut ClusterConnection, stream: &str) -> usize {
    conn.xlen(stream).unwrap()
}

/// Entries read and not acknowledged in `stream`'s `group`.
fn pending(conn: &mut ClusterConnection, stream: &str, group: &str) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(conn)
        .unwrap();
    match reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

const PROBE_AND_TALLY: &str = "[subscribers.probe]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n\
[subscribers.probe.config]\nfollow_up = \"Pong\"\n\n\
[subscribers.tally]\nplugin = \"probe.wasm\"\nevents = [\"Pong\"]\n";

#[test]
fn events_reach_every_subscriber_once_across_shards() {
    let world = ClusterWorld::new(Cluster::start(3, 1), &["probe.wasm"], "", PROBE_AND_TALLY);
    let first = world.host();
    let second = world.host();
    let mut conn = world.cluster.conn();
    let parts = partitions(&mut conn);
    assert_eq!(
        parts.len(),
        6,
        "the default number of partitions: {parts:?}"
    );

    // `eventhost publish` keeps an event id the caller gives.
    let out = world.eventhost(&["publish", "Ping", r#"{"event_id": "given-1"}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("given-1"), "{said}");
    let mut ok = vec!["given-1".to_string()];
    for n in 0..300 {
        ok.push(publish(&mut conn, &parts, "Ping", json!({"n": n})));
    }
    let rejected: Vec<String> = (0..3)
        .map(|_| publish(&mut conn, &parts, "Ping", json!({"act": "reject"})))
        .collect();

    eventually("every Pong is counted", Duration::from_secs(120), || {
        count(&mut conn, "tally") >= ok.len()
    });
    eventually(
        "the rejected are dead-lettered",
        Duration::from_secs(30),
        || xlen(&mut conn, "events:sub:{probe}:dlq") >= rejected.len(),
    );
    // Settle: nothing pending anywhere, outboxes relayed.
    eventually("the bus is settled", Duration::from_secs(30), || {
        parts
            .iter()
            .all(|p| pending(&mut conn, p, "all-group") == 0)
            && pending(&mut conn, "events:sub:{probe}", "sub:probe-group") == 0
            && pending(&mut conn, "events:sub:{tally}", "sub:tally-group") == 0
            && xlen(&mut conn, "events:outbox:{probe}") == 0
    });

    let probe = state(&mut conn, "probe");
    for id in &ok {
        assert_eq!(
            probe.get(&format!("seen:{id}")).map(String::as_str),
            Some("1"),
            "{id}"
        );
    }
    for id in &rejected {
        assert!(
            !probe.contains_key(&format!("seen:{id}")),
            "a rejected event's effects are discarded"
        );
    }
    assert_eq!(
        count(&mut conn, "probe"),
        ok.len(),
        "each Ping's effects committed once"
    );
    assert_eq!(
        count(&mut conn, "tally"),
        ok.len(),
        "each Pong delivered and committed once"
    );
    assert_eq!(
        xlen(&mut conn, "events:sub:{probe}"),
        ok.len() + rejected.len()
    );
    assert_eq!(
        xlen(&mut conn, "events:sub:{tally}"),
        ok.len(),
        "no Pong copied twice"
    );
    assert_eq!(xlen(&mut conn, "events:sub:{probe}:dlq"), rejected.len());

    // Every partition got some of the 300, and they sit on all three shards.
    let mut shards: Vec<u16> = parts.iter().map(|p| world.cluster.master_of(p)).collect();
    for p in &parts {
        assert!(xlen(&mut conn, p) > 0, "{p} got no event");
    }
    shards.sort();
    shards.dedup();
    assert_eq!(shards.len(), 3, "partitions spread over every shard");

    let status = world.eventhost(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("probe") && status.contains("tally"),
        "{status}"
    );
    drop((first, second));
}
