//! Work for later against a real redis-server: a retry leaves its stream
//! for the stream's schedule in its commit and comes back when due with its
//! attempt; an event published for later waits in a schedule; what is due
//! moves once, whoever moves it.

mod support;

use std::time::{Duration, Instant};

use eventhost::bus::connection::{Connector, Endpoint, RedisConn};
use eventhost::bus::scripts::later::{move_due, publish_later};
use eventhost::bus::scripts::{CommitBatch, CommitKeys};
use eventhost::handler::{Due, Effects};
use redis::AsyncCommands;
use support::Redis;

const KEYS: CommitKeys<'static> = CommitKeys {
    stream: "s",
    dlq: "s:dlq",
    state: "state",
    all: "all",
    http: "s:http",
    lists: "order",
    held: "order:held",
    parked: "order:parked",
    schedule: "s:schedule",
    later: "all:schedule",
};

async fn server() -> (Redis, RedisConn) {
    let redis = Redis::start();
    let conn = Connector::new(&Endpoint::Server(redis.url()))
        .unwrap()
        .commands()
        .await
        .unwrap();
    (redis, conn)
}

/// Adds entries with `fields` to `s` and delivers them to group `g`.
async fn delivered(conn: &mut RedisConn, entries: &[&[(&str, &str)]]) -> Vec<String> {
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "0", "MKSTREAM"])
        .query_async(conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for fields in entries {
        ids.push(conn.xadd("s", "*", fields).await.unwrap());
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "c", "STREAMS", "s", ">"])
        .query_async(conn)
        .await
        .unwrap();
    ids
}

async fn pending(conn: &mut RedisConn) -> u64 {
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query_async(conn)
        .await
        .unwrap();
    pending.0
}

/// The fields of the entries of `stream` after `after`.
async fn fields_after(
    conn: &mut RedisConn,
    stream: &str,
    after: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    conn.xrange(stream, format!("({after}"), "+").await.unwrap()
}

#[tokio::test]
async fn a_retry_leaves_the_stream_in_its_commit_and_comes_back_when_due_with_its_attempt() {
    let (_redis, mut conn) = server().await;
    let ids = delivered(
        &mut conn,
        &[
            &[("data", "{\"n\":1}")],
            &[("data", "{\"n\":2}"), ("key", "k")],
        ],
    )
    .await;
    let mut batch = CommitBatch::new("g", false);
    batch.retry(&ids[0], None, &Vec::new(), Duration::from_millis(300), 2);
    batch.retry(&ids[1], Some("k"), &Vec::new(), Duration::ZERO, 7);
    // The held key's list: its holder, untouched by the retry.
    let () = conn.rpush("order:q:k", "1 {\"n\":2}").await.unwrap();
    let committed = batch.apply(&mut conn, &KEYS).await.unwrap();
    assert_eq!(committed.skipped, 0);
    assert_eq!(pending(&mut conn).await, 0, "nothing pending, nothing held");
    let scheduled: usize = conn.zcard("s:schedule").await.unwrap();
    assert_eq!(scheduled, 2);

    // The same commit again (a second consumer's result): nothing doubles.
    assert_eq!(batch.apply(&mut conn, &KEYS).await.unwrap().skipped, 2);
    let scheduled: usize = conn.zcard("s:schedule").await.unwrap();
    assert_eq!(scheduled, 2);

    let moved = move_due(&mut conn, "s:schedule", "s", 100).await.unwrap();
    assert_eq!(moved.moved, 1, "only the one due now");
    let next = moved.next_due.expect("one left");
    assert!(next <= Duration::from_millis(300), "{next:?}");
    let back = fields_after(&mut conn, "s", &ids[1]).await;
    assert_eq!(
        back[0].1,
        [
            ("data".to_string(), "{\"n\":2}".to_string()),
            ("key".into(), "k".into()),
            ("attempt".into(), "7".into()),
        ],
        "its fields, its key, its next attempt"
    );
    let list: Vec<String> = conn.lrange("order:q:k", 0, -1).await.unwrap();
    assert_eq!(list, ["1 {\"n\":2}"], "the key stays held while it waits");

    tokio::time::sleep(next + Duration::from_millis(20)).await;
    let moved = move_due(&mut conn, "s:schedule", "s", 100).await.unwrap();
    assert_eq!((moved.moved, moved.next_due), (1, None));
    let back = fields_after(&mut conn, "s", &back[0].0).await;
    assert_eq!(
        back[0].1,
        [
            ("data".to_string(), "{\"n\":1}".to_string()),
            ("attempt".into(), "2".into()),
        ]
    );
}

#[tokio::test]
async fn events_published_for_later_wait_in_the_schedule_of_where_they_go() {
    let (_redis, mut conn) = server().await;
    let ids = delivered(&mut conn, &[&[("data", "{\"n\":1}")]]).await;
    let mut effects = Effects::default();
    effects.publish("seed", "Now", "{}").unwrap();
    effects
        .publish_at(
            "seed",
            "Soon",
            "{}",
            Some(Due::After(Duration::from_millis(200))),
        )
        .unwrap();
    effects
        .publish_at("seed", "Past", "{}", Some(Due::At(1)))
        .unwrap();
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &effects, 1.0);
    batch.apply(&mut conn, &KEYS).await.unwrap();
    let all: Vec<(String, Vec<(String, String)>)> = conn.xrange("all", "-", "+").await.unwrap();
    assert_eq!(all.len(), 1, "only the one published for now");
    assert!(all[0].1[0].1.contains("\"Now\""));
    let later: usize = conn.zcard("all:schedule").await.unwrap();
    assert_eq!(later, 2);

    // Two movers at once: each entry moves once.
    let mut other = conn.clone();
    let (a, b) = tokio::join!(
        move_due(&mut conn, "all:schedule", "all", 1),
        move_due(&mut other, "all:schedule", "all", 1)
    );
    assert_eq!(a.unwrap().moved + b.unwrap().moved, 1, "only the past one");
    let started = Instant::now();
    loop {
        let moved = move_due(&mut conn, "all:schedule", "all", 10)
            .await
            .unwrap();
        if moved.moved == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all: Vec<(String, Vec<(String, String)>)> = conn.xrange("all", "-", "+").await.unwrap();
    let types: Vec<bool> = ["\"Now\"", "\"Past\"", "\"Soon\""]
        .iter()
        .zip(&all)
        .map(|(t, e)| e.1[0].1.contains(t))
        .collect();
    assert_eq!(types, [true, true, true], "{all:?}");

    // A producer's event for later, by its id.
    let due = publish_later(&mut conn, "all:schedule", Due::At(5), "e-1", "{\"x\":1}")
        .await
        .unwrap();
    assert_eq!(due, 5);
    let moved = move_due(&mut conn, "all:schedule", "all", 10)
        .await
        .unwrap();
    assert_eq!(moved.moved, 1);
}

#[tokio::test]
async fn a_member_that_is_not_ours_is_dropped_not_moved() {
    let (_redis, mut conn) = server().await;
    let () = conn
        .zadd("x:schedule", "not msgpack \u{1}", 1)
        .await
        .unwrap();
    let moved = move_due(&mut conn, "x:schedule", "x", 10).await.unwrap();
    assert_eq!((moved.moved, moved.next_due), (1, None));
    let exists: bool = conn.exists("x").await.unwrap();
    assert!(!exists);
}
