//! Each of the bus's Lua scripts against a real redis-server: what it writes,
//! and that it writes it once.

mod support;

use std::time::Duration;

use eventhost::bus::connection::{Connector, Endpoint, RedisConn};
use eventhost::bus::keys::{Keys, OrderKeys};
use eventhost::bus::scripts::{
    self, CommitBatch, CommitKeys, Committed, Copied, CopyBatch, FanoutBatch, FanoutKeys, Letter,
    ReplayKeys, Target,
};
use eventhost::bus::state::stamp_field;
use eventhost::handler::{Effects, Seen, COMPARED_BYTES};
use redis::AsyncCommands;
use support::Redis;

/// Entries of `stream`: id and `data`.
async fn stream(conn: &mut RedisConn, stream: &str) -> Vec<(String, String)> {
    let entries: Vec<(String, Vec<(String, String)>)> =
        conn.xrange(stream, "-", "+").await.unwrap();
    entries
        .into_iter()
        .map(|(id, fields)| (id, fields.into_iter().find(|(k, _)| k == "data").unwrap().1))
        .collect()
}

/// The fan-out's keys for `streams` (ingress `s`), each subscriber's order
/// keys named after its stream.
fn fanout_keys(streams: &[String]) -> FanoutKeys<'_> {
    let named = |suffix: &str| -> &'static [String] {
        let names: Vec<String> = streams.iter().map(|s| format!("{s}:{suffix}")).collect();
        Box::leak(names.into_boxed_slice())
    };
    FanoutKeys {
        all: "s",
        all_dlq: "s:dlq",
        streams,
        held: named("held"),
        lists: named("order"),
    }
}

/// The order keys of the subscriber whose stream is `sub`.
fn order() -> OrderKeys {
    Keys::new("").order("sub")
}

/// A stream `s` with group `g` that has read `n` new entries.
async fn delivered(conn: &mut RedisConn, n: usize) -> Vec<String> {
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "0", "MKSTREAM"])
        .query_async(conn)
        .await
        .unwrap();
    let ids = add(conn, n).await;
    deliver(conn).await;
    ids
}

#[tokio::test]
async fn the_fanout_copies_each_pending_entry_once_and_dead_letters_the_rest() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 3).await;
    let mut batch = FanoutBatch::new("g");
    batch.route(
        &ids[0],
        &Target::unordered(&[0, 1]),
        b"{\"event_type\":\"A\"}",
    );
    batch.route(&ids[1], &Target::unordered(&[]), b"{\"event_type\":\"B\"}");
    batch.dead_letter(&ids[2], "{\"_raw\":\"x\"}".into());
    let streams = ["sub:1".to_string(), "sub:2".to_string()];
    let skipped = batch
        .apply(&mut s.conn, &fanout_keys(&streams))
        .await
        .unwrap()
        .skipped;
    assert_eq!(skipped, 0);
    for sub in &streams {
        let copied = stream(&mut s.conn, sub).await;
        assert_eq!(copied.len(), 1, "{sub}");
        assert_eq!(copied[0].1, "{\"event_type\":\"A\"}");
    }
    assert_eq!(stream(&mut s.conn, "s:dlq").await[0].1, "{\"_raw\":\"x\"}");
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "every entry acknowledged");

    // The same batch again (a retry after a lost reply, or another
    // consumer that reclaimed it): nothing is written twice.
    let skipped = batch
        .apply(&mut s.conn, &fanout_keys(&streams))
        .await
        .unwrap()
        .skipped;
    assert_eq!(skipped, 3);
    assert_eq!(stream(&mut s.conn, "sub:1").await.len(), 1);
    assert_eq!(stream(&mut s.conn, "s:dlq").await.len(), 1);
}

#[tokio::test]
async fn a_copy_repeated_within_the_window_is_dropped_and_one_past_it_is_not() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let window = Duration::from_millis(400);
    let mut batch = CopyBatch::new("sub", "seen", &order());
    batch.copy("1-0", "event-a", b"{\"n\":1}", None);
    batch.copy("1-1", "event-b", b"{\"n\":2}", None);
    let first = batch.apply(conn, window).await.unwrap();
    assert_eq!(first, Copied::default());
    // A fan-out that crashed before acknowledging copies the batch again,
    // and another routes one of its events once more.
    let again = batch.apply(conn, window).await.unwrap();
    assert_eq!(again.dropped, 2);
    let mut one = CopyBatch::new("sub", "seen", &order());
    one.copy("1-1", "event-b", b"{\"n\":2}", None);
    one.copy("1-2", "event-c", b"{\"n\":3}", None);
    assert_eq!(one.apply(conn, window).await.unwrap().dropped, 1);
    let data: Vec<String> = stream(conn, "sub")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);

    // Past the window an id is forgotten (and the set does not grow).
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let mut late = CopyBatch::new("sub", "seen", &order());
    late.copy("1-0", "event-a", b"{\"n\":1}", None);
    assert_eq!(late.apply(conn, window).await.unwrap().dropped, 0);
    let remembered: u64 = conn.zcard("seen").await.unwrap();
    assert_eq!(
        remembered, 2,
        "only the id copied last is remembered (with and without its content)"
    );
}

/// What makes two copies one is their id and their content: a producer
/// that writes an event with the id a handler's publish will take (ids are
/// derived from the delivery, so they can be foreseen) cannot make the real
/// event be dropped as a repeat; both are copied.
#[tokio::test]
async fn a_copy_with_a_seen_id_but_other_content_is_not_dropped() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let window = Duration::from_secs(60);
    let mut forged = CopyBatch::new("sub", "seen", &order());
    forged.copy("1-0", "event-a", b"{\"amount\":0}", None);
    assert_eq!(forged.apply(conn, window).await.unwrap().dropped, 0);
    let mut real = CopyBatch::new("sub", "seen", &order());
    real.copy("1-1", "event-a", b"{\"amount\":100}", None);
    assert_eq!(
        real.apply(conn, window).await.unwrap(),
        Copied {
            reused: 1,
            ..Copied::default()
        },
        "copied, and counted as an id seen with other content"
    );
    // The real one repeated (a crash between copy and acknowledgement) is.
    assert_eq!(
        real.apply(conn, window).await.unwrap(),
        Copied {
            dropped: 1,
            ..Copied::default()
        }
    );
    let data: Vec<String> = stream(conn, "sub")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, ["{\"amount\":0}", "{\"amount\":100}"]);
}

#[tokio::test]
async fn a_copy_to_a_broken_stream_is_refused_whole_and_written_nowhere() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let _: () = conn.set("sub", "not a stream").await.unwrap();
    let mut batch = CopyBatch::new("sub", "seen", &order());
    batch.copy("1-0", "event-a", b"{}", None);
    batch.copy("1-1", "event-b", b"{}", None);
    let copied = batch.apply(conn, Duration::from_secs(60)).await.unwrap();
    let refused: Vec<&str> = copied.refused.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(refused, ["1-0", "1-1"]);
    assert!(
        copied.refused[0].1.starts_with("WRONGTYPE"),
        "{:?}",
        copied.refused
    );
    let remembered: u64 = conn.zcard("seen").await.unwrap();
    assert_eq!(remembered, 0, "no id is remembered without its copy");
}

#[tokio::test]
async fn a_commit_writes_effects_once_and_only_for_pending_entries() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 3).await;
    let mut effects = Effects::default();
    effects.set("a".into(), "1".into());
    effects.set("gone".into(), "x".into());
    effects.delete("gone".into());
    effects
        .publish("sub/1-0", "Shipped", "{\"order\":7}")
        .unwrap();
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &Effects::default(), 1.0);
    batch.ok(&ids[1], None, &effects, 2.0);
    batch.dead_letter(&ids[2], None, "{\"dead\":true}".into(), &Vec::new());
    let keys = KEYS;
    let () = s.conn.hset("state", "gone", "before").await.unwrap();
    assert_eq!(
        batch.apply(&mut s.conn, &keys).await.unwrap(),
        Committed::default()
    );
    let state: std::collections::HashMap<String, String> = s.conn.hgetall("state").await.unwrap();
    assert_eq!(state, [("a".to_string(), "1".to_string())].into());
    let published = stream(&mut s.conn, "all").await;
    assert_eq!(published.len(), 1);
    let data: serde_json::Value = serde_json::from_str(&published[0].1).unwrap();
    assert_eq!(
        (data["event_type"].as_str(), data["order"].as_i64()),
        (Some("Shipped"), Some(7))
    );
    assert_eq!(stream(&mut s.conn, "s:dlq").await[0].1, "{\"dead\":true}");

    // Committed again (a stalled host's late result): nothing is written.
    let () = s.conn.hset("state", "a", "later").await.unwrap();
    assert_eq!(batch.apply(&mut s.conn, &keys).await.unwrap().skipped, 3);
    assert_eq!(stream(&mut s.conn, "all").await.len(), 1);
    assert_eq!(stream(&mut s.conn, "s:dlq").await.len(), 1);
    let a: String = s.conn.hget("state", "a").await.unwrap();
    assert_eq!(a, "later");
}

/// What one subscriber's commit needs, for the stream `s`.
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

/// Effects that read `reads` and set `key` to `value`.
fn read_then_set(reads: &[(&str, Option<&str>)], key: &str, value: &str) -> Effects {
    let mut effects = Effects::default();
    for (k, v) in reads {
        effects.read(k, &Seen::value(v.map(str::to_owned)));
    }
    effects.set(key.into(), value.into());
    effects
}

#[tokio::test]
async fn a_commit_applies_a_result_only_if_what_it_read_still_holds() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 4).await;
    let () = s.conn.hset("state", "count", "5").await.unwrap();
    let mut batch = CommitBatch::new("g", false);
    // Saw 5, still 5: applied; and the next record sees its write.
    batch.ok(
        &ids[0],
        None,
        &read_then_set(&[("count", Some("5"))], "count", "6"),
        1.0,
    );
    batch.ok(
        &ids[1],
        None,
        &read_then_set(&[("count", Some("6")), ("new", None)], "count", "7"),
        1.0,
    );
    // Saw 5, but the record before made it 7: a conflict, nothing written.
    batch.ok(
        &ids[2],
        None,
        &read_then_set(&[("count", Some("5"))], "count", "99"),
        1.0,
    );
    // A dead letter resting on a read that no longer holds: not written.
    batch.dead_letter(
        &ids[3],
        None,
        "{}".into(),
        &vec![("count".into(), Seen::default())],
    );
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed.conflicts, [ids[2].clone(), ids[3].clone()]);
    let count: String = s.conn.hget("state", "count").await.unwrap();
    assert_eq!(count, "7");
    assert_eq!(stream(&mut s.conn, "s:dlq").await.len(), 0);
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(
        pending.0, 2,
        "the conflicting entries stay pending, to run again"
    );
}

#[tokio::test]
async fn in_an_ordered_batch_nothing_commits_after_a_conflict() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 3).await;
    let () = s.conn.hset("state", "a", "changed by hand").await.unwrap();
    let mut batch = CommitBatch::new("g", true);
    batch.ok(&ids[0], None, &read_then_set(&[], "x", "1"), 1.0);
    batch.ok(
        &ids[1],
        None,
        &read_then_set(&[("a", Some("before"))], "a", "after"),
        1.0,
    );
    // Reads nothing that changed, but comes after the conflict.
    batch.ok(&ids[2], None, &read_then_set(&[("b", None)], "b", "1"), 1.0);
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed.conflicts, [ids[1].clone(), ids[2].clone()]);
    let state: std::collections::HashMap<String, String> = s.conn.hgetall("state").await.unwrap();
    assert_eq!(
        state.get("x").map(String::as_str),
        Some("1"),
        "before the conflict: committed"
    );
    assert_eq!(state.get("a").map(String::as_str), Some("changed by hand"));
    assert_eq!(state.get("b"), None);
}

#[tokio::test]
async fn a_large_value_read_is_checked_by_its_length_and_stamp() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 4).await;
    let large = "v".repeat(COMPARED_BYTES + 1);
    // Written by eventhost: the commit stamps it with the writing entry.
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &read_then_set(&[], "doc", &large), 1.0);
    batch.apply(&mut s.conn, &KEYS).await.unwrap();
    let stamp: String = s.conn.hget("state", stamp_field("doc")).await.unwrap();
    assert_eq!(stamp, ids[0]);

    let seen = Seen {
        value: Some(large.clone()),
        stamp: Some(ids[0].clone()),
        earlier_in_batch: false,
    };
    let reads_doc = |key: &str, value: &str| {
        let mut effects = Effects::default();
        effects.read("doc", &seen);
        effects.set(key.into(), value.into());
        effects
    };
    // Unchanged: applied.
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[1], None, &reads_doc("a", "1"), 1.0);
    assert!(batch
        .apply(&mut s.conn, &KEYS)
        .await
        .unwrap()
        .conflicts
        .is_empty());
    // Rewritten by eventhost, same length: a new stamp, so a conflict.
    let mut batch = CommitBatch::new("g", false);
    batch.ok(
        &ids[2],
        None,
        &read_then_set(&[], "doc", &"w".repeat(large.len())),
        1.0,
    );
    batch.ok(&ids[3], None, &reads_doc("b", "1"), 1.0);
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed.conflicts, [ids[3].clone()]);
    // Changed by hand to another length: a conflict too.
    let () = s.conn.hset("state", "doc", "short").await.unwrap();
    let mut batch = CommitBatch::new("g", false);
    batch.retry(
        &ids[3],
        None,
        &vec![(
            "doc".into(),
            Seen {
                value: Some("w".repeat(large.len())),
                stamp: Some(ids[2].clone()),
                earlier_in_batch: false,
            },
        )],
        Duration::ZERO,
        2,
    );
    assert_eq!(
        batch.apply(&mut s.conn, &KEYS).await.unwrap().conflicts,
        [ids[3].clone()]
    );
}

/// Entries of `s` delivered to `g` and not acknowledged.
async fn pending_count(conn: &mut RedisConn) -> u64 {
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query_async(conn)
        .await
        .unwrap();
    pending.0
}

#[tokio::test]
async fn a_commit_of_nine_thousand_deletes_is_whole() {
    // Lua's unpack takes about 8,000 values: 9,000 deletes (and their
    // stamps) once made the script fail after the ack and the sets.
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 1).await;
    let fields: Vec<(String, String)> = (0..9000).map(|i| (format!("k{i}"), "v".into())).collect();
    let () = s.conn.hset_multiple("state", &fields).await.unwrap();
    let mut effects = Effects::default();
    effects.set("kept".into(), "1".into());
    for i in 0..9000 {
        effects.delete(format!("k{i}"));
    }
    for i in 0..9000 {
        effects.set(format!("n{i}"), "w".into());
    }
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &effects, 1.0);
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed, Committed::default());
    let state: std::collections::HashMap<String, String> = s.conn.hgetall("state").await.unwrap();
    assert_eq!(state.len(), 9001, "every delete and every set");
    assert!(state.contains_key("kept") && state.contains_key("n8999"));
    assert_eq!(pending_count(&mut s.conn).await, 0);
}

#[tokio::test]
async fn a_commit_refused_for_memory_writes_nothing() {
    // A script without a shebang runs past maxmemory once its first write
    // (the XACK, not refused under OOM) is made; the flagged ones are
    // refused whole before they start.
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 2).await;
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &read_then_set(&[], "a", "1"), 1.0);
    batch.dead_letter(&ids[1], None, "{}".into(), &Vec::new());
    let mut fanout = FanoutBatch::new("g");
    fanout.route(&ids[0], &Target::unordered(&[0]), b"{}");
    let streams = ["sub:1".to_string()];
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    let err = batch.apply(&mut s.conn, &KEYS).await.unwrap_err();
    assert_eq!(err.code(), Some("OOM"), "{err}");
    assert!(
        !scripts::is_refusal(&err),
        "memory may come back: not a refusal"
    );
    let err = fanout
        .apply(&mut s.conn, &fanout_keys(&streams))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("OOM"), "{err}");
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(pending_count(&mut s.conn).await, 2, "nothing acknowledged");
    let exists: bool = s.conn.exists("state").await.unwrap();
    assert!(!exists, "nothing written");
    assert_eq!(stream(&mut s.conn, "s:dlq").await.len(), 0);
    assert_eq!(stream(&mut s.conn, "sub:1").await.len(), 0);
    // With memory back, the same batch commits.
    assert_eq!(
        batch.apply(&mut s.conn, &KEYS).await.unwrap(),
        Committed::default()
    );
    assert_eq!(pending_count(&mut s.conn).await, 0);
}

#[tokio::test]
async fn a_malformed_batch_writes_nothing() {
    // A good record, then one cut short: the script refuses the batch
    // before its first write instead of failing half-way.
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 2).await;
    let script = redis::Script::new(include_str!("../host/src/bus/scripts/commit.lua"));
    let mut call = script.prepare_invoke();
    call.key("s").key("s:dlq").key("state").key("all");
    call.arg("g").arg("0").arg(0);
    call.arg(&["ok", ids[0].as_str(), "0", "0", "1", "a", "1", "0"]);
    call.arg(&["ok", ids[1].as_str(), "0", "0", "2", "b"]);
    let err = call
        .invoke_async::<redis::Value>(&mut s.conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    assert!(scripts::is_refusal(&err));
    let exists: bool = s.conn.exists("state").await.unwrap();
    assert!(!exists, "the first record was not written");
    assert_eq!(pending_count(&mut s.conn).await, 2, "nothing acknowledged");

    // The same for the fan-out: a good copy, then a record cut short.
    let script = redis::Script::new(include_str!("../host/src/bus/scripts/fanout.lua"));
    let mut call = script.prepare_invoke();
    call.key("s").key("s:dlq").key("sub:1");
    call.arg("g");
    call.arg(&[ids[0].as_str(), "1", "3", "{}"]);
    call.arg(&[ids[1].as_str(), "2", "3"]);
    let err = call
        .invoke_async::<redis::Value>(&mut s.conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fan-out"), "{err}");
    assert_eq!(
        stream(&mut s.conn, "sub:1").await.len(),
        0,
        "nothing copied"
    );
    assert_eq!(pending_count(&mut s.conn).await, 2, "nothing acknowledged");
}

#[tokio::test]
async fn a_record_redis_refuses_alone_is_returned_and_the_others_commit() {
    // The state hash is not a hash: the record that writes it is refused,
    // the quiet ack and the dead letters (which do not touch it) commit.
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 4).await;
    let () = s.conn.set("state", "not a hash").await.unwrap();
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[0], None, &Effects::default(), 1.0);
    batch.dead_letter(&ids[1], None, "{\"n\":1}".into(), &Vec::new());
    batch.ok(&ids[2], None, &read_then_set(&[], "a", "1"), 1.0);
    batch.dead_letter(&ids[3], None, "{\"n\":3}".into(), &Vec::new());
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed.refused.len(), 1, "{committed:?}");
    assert_eq!(committed.refused[0].0, ids[2]);
    assert!(
        committed.refused[0]
            .1
            .contains("WRONGTYPE state is a string"),
        "{committed:?}"
    );
    assert_eq!(stream(&mut s.conn, "s:dlq").await.len(), 2);
    assert_eq!(pending_count(&mut s.conn).await, 1, "only the refused one");
}

#[tokio::test]
async fn a_fanout_entry_redis_refuses_alone_is_returned_and_the_rest_routed() {
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 3).await;
    let () = s.conn.set("sub:2", "not a stream").await.unwrap();
    let mut batch = FanoutBatch::new("g");
    batch.route(&ids[0], &Target::unordered(&[0]), b"{\"n\":0}");
    batch.route(&ids[1], &Target::unordered(&[1]), b"{\"n\":1}");
    batch.route(&ids[2], &Target::unordered(&[0]), b"{\"n\":2}");
    let streams = ["sub:1".to_string(), "sub:2".to_string()];
    let routed = batch
        .apply(&mut s.conn, &fanout_keys(&streams))
        .await
        .unwrap();
    assert_eq!(routed.skipped, 0);
    assert_eq!(routed.refused.len(), 1, "{routed:?}");
    assert_eq!(routed.refused[0].0, ids[1]);
    assert!(
        routed.refused[0].1.contains("WRONGTYPE sub:2 is a string"),
        "{routed:?}"
    );
    assert_eq!(stream(&mut s.conn, "sub:1").await.len(), 2);
    assert_eq!(pending_count(&mut s.conn).await, 1);
}

#[tokio::test]
async fn a_batch_over_the_call_limit_commits_in_parts_and_keeps_its_order() {
    // Two records of 40 MiB do not go in one call; in an ordered batch a
    // conflict in the first call holds back the second.
    let mut s = server().await;
    let ids = delivered(&mut s.conn, 3).await;
    let big = "v".repeat(40 << 20);
    let () = s.conn.hset("state", "seen", "changed").await.unwrap();
    let mut batch = CommitBatch::new("g", true);
    batch.ok(&ids[0], None, &read_then_set(&[], "big0", &big), 1.0);
    batch.ok(
        &ids[1],
        None,
        &read_then_set(&[("seen", Some("before"))], "x", "1"),
        1.0,
    );
    batch.ok(&ids[2], None, &read_then_set(&[], "big2", &big), 1.0);
    let committed = batch.apply(&mut s.conn, &KEYS).await.unwrap();
    assert_eq!(committed.conflicts, [ids[1].clone(), ids[2].clone()]);
    let len0: usize = redis::cmd("HSTRLEN")
        .arg(&["state", "big0"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(len0, big.len());
    let has2: bool = s.conn.hexists("state", "big2").await.unwrap();
    assert!(!has2, "held back behind the conflict");

    // Unordered: both parts commit.
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&ids[1], None, &read_then_set(&[], "x", "1"), 1.0);
    batch.ok(&ids[2], None, &read_then_set(&[], "big2", &big), 1.0);
    assert_eq!(
        batch.apply(&mut s.conn, &KEYS).await.unwrap(),
        Committed::default()
    );
    assert_eq!(pending_count(&mut s.conn).await, 0);
}

#[tokio::test]
async fn a_replay_moves_each_dead_letter_once_with_its_history() {
    let mut s = server().await;
    let mut dead = Vec::new();
    for n in 0..3 {
        let data = format!(r#"{{"n":{n},"_failures":[{{"reason":"r{n}"}}]}}"#);
        let id: String = s.conn.xadd("dlq", "*", &[("data", data)]).await.unwrap();
        dead.push(id);
    }
    // A LeanMQ reader left the first one pending in the DLQ's group.
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", "dlq", "dg", "0"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "dg", "leanmq", "COUNT", "1", "STREAMS", "dlq", ">"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    let keys = ReplayKeys {
        dlq: "dlq",
        dlq_group: "dg",
        stream: "s",
        requests: None,
        order: None,
    };
    let moved = scripts::replay(&mut s.conn, &keys, &letters(&dead[..2]))
        .await
        .unwrap();
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[0].dlq_id, dead[0]);
    let replayed = stream(&mut s.conn, "s").await;
    assert_eq!(
        replayed,
        [
            (
                moved[0].stream_id.clone(),
                r#"{"n":0,"_failures":[{"reason":"r0"}]}"#.to_string()
            ),
            (
                moved[1].stream_id.clone(),
                r#"{"n":1,"_failures":[{"reason":"r1"}]}"#.to_string()
            ),
        ],
        "fields and failure history as they were, under new ids"
    );
    assert_eq!(stream(&mut s.conn, "dlq").await.len(), 1);
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["dlq", "dg"])
        .query_async(&mut s.conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "no pending entry left in the DLQ's group");

    // Again, with one more: only the one still there moves.
    let again = scripts::replay(&mut s.conn, &keys, &letters(&dead))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dlq_id, dead[2]);
    assert_eq!(stream(&mut s.conn, "s").await.len(), 3);
    assert_eq!(stream(&mut s.conn, "dlq").await.len(), 0);
}

/// A redis-server (stopped when dropped) and a connection to it.
struct Server {
    _redis: Redis,
    conn: RedisConn,
}

/// A redis-server of the test's own, and the bus's kind of connection to
/// it (whose response timeout allows replies of 50,000 entries on a loaded
/// machine).
async fn server() -> Server {
    let redis = Redis::start();
    let conn = Connector::new(&Endpoint::Server(redis.url()))
        .unwrap()
        .commands()
        .await
        .unwrap();
    Server {
        _redis: redis,
        conn,
    }
}

/// Adds `n` entries at once; returns their ids.
async fn add(conn: &mut RedisConn, n: usize) -> Vec<String> {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.xadd("s", "*", &[("data", format!("{{\"n\":{i}}}"))]);
    }
    pipe.query_async(conn).await.unwrap()
}

/// A group `name` that has read nothing yet.
async fn group(conn: &mut RedisConn, name: &str) {
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", name, "0"])
        .query_async(conn)
        .await
        .unwrap();
}

/// Delivers every new entry to group `g`.
async fn deliver(conn: &mut RedisConn) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "c", "STREAMS", "s", ">"])
        .query_async(conn)
        .await
        .unwrap();
}

/// A group `g` that has read every entry so far; it acknowledges
/// all but `unacked`.
async fn read_all(conn: &mut RedisConn, ids: &[String], unacked: &[&str]) {
    group(conn, "g").await;
    deliver(conn).await;
    let acked: Vec<&String> = ids
        .iter()
        .filter(|id| !unacked.contains(&id.as_str()))
        .collect();
    for chunk in acked.chunks(10_000) {
        let _: usize = conn.xack("s", "g", chunk).await.unwrap();
    }
}

async fn len(conn: &mut RedisConn) -> usize {
    conn.xlen("s").await.unwrap()
}

/// The length after one trim to `keep`.
async fn kept_after_trim(conn: &mut RedisConn, keep: usize) -> usize {
    trim(conn, keep).await;
    len(conn).await
}

async fn trim(conn: &mut RedisConn, keep: usize) -> u64 {
    scripts::trim(conn, "s", keep).await.unwrap()
}

async fn exists(conn: &mut RedisConn, id: &str) -> bool {
    let found: Vec<(String, Vec<(String, String)>)> = conn.xrange("s", id, id).await.unwrap();
    !found.is_empty()
}

#[tokio::test]
async fn removes_everything_over_the_limit_in_one_call() {
    // XTRIM's `~` stops at 10,000 entries unless told otherwise: a
    // busy stream would outgrow the trims.
    let mut s = server().await;
    let ids = add(&mut s.conn, 50_000).await;
    read_all(&mut s.conn, &ids, &[]).await;
    let kept = kept_after_trim(&mut s.conn, 1000).await;
    assert!((1000..=1100).contains(&kept), "kept {kept}");
}

#[tokio::test]
async fn keeps_the_limit_however_bursty_the_stream() {
    // 800 entries in one go, then 200 slowly: a cut estimated from
    // the ids' times would keep a fraction of the 200.
    let mut s = server().await;
    let mut ids = add(&mut s.conn, 800).await;
    for _ in 0..200 {
        ids.extend(add(&mut s.conn, 1).await);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    read_all(&mut s.conn, &ids, &[]).await;
    let kept = kept_after_trim(&mut s.conn, 200).await;
    assert!((200..=300).contains(&kept), "kept {kept}");
}

#[tokio::test]
async fn never_cuts_what_a_group_has_not_read_or_acknowledged() {
    let mut s = server().await;
    let ids = add(&mut s.conn, 5000).await;

    // Pending near the end: the limit applies and the entry stays.
    read_all(&mut s.conn, &ids, &[&ids[4500]]).await;
    let kept = kept_after_trim(&mut s.conn, 1000).await;
    assert!((1000..=1100).contains(&kept), "kept {kept}");
    assert!(exists(&mut s.conn, &ids[4500]).await);

    // Pending far back (more than a short walk away): everything
    // from it on stays.
    let more = add(&mut s.conn, 3000).await;
    deliver(&mut s.conn).await;
    let _: usize = s.conn.xack("s", "g", &more).await.unwrap();
    trim(&mut s.conn, 1000).await;
    assert!(exists(&mut s.conn, &ids[4500]).await);
    assert!(exists(&mut s.conn, &ids[4501]).await);

    // Unread: a second group that has read nothing keeps it all.
    group(&mut s.conn, "late").await;
    let before = len(&mut s.conn).await;
    assert_eq!(trim(&mut s.conn, 10).await, 0);
    assert_eq!(len(&mut s.conn).await, before);
}

/// `ids`, as letters without a key.
fn letters(ids: &[String]) -> Vec<Letter> {
    ids.iter()
        .map(|id| Letter {
            id: id.clone(),
            key: None,
        })
        .collect()
}

/// What group `sg` of the stream `sub` has not read yet: id, data and key.
async fn read_sub(conn: &mut RedisConn) -> Vec<(String, String, Option<String>)> {
    let _: redis::Value = redis::cmd("XGROUP")
        .arg(&["CREATE", "sub", "sg", "0", "MKSTREAM"])
        .query_async(conn)
        .await
        .unwrap_or(redis::Value::Nil);
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "sg", "c", "STREAMS", "sub", ">"])
        .query_async(conn)
        .await
        .unwrap();
    let read: Option<redis::streams::StreamReadReply> = redis::from_redis_value(reply).unwrap();
    read.into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| {
            let data: String = e.get("data").unwrap();
            let key: Option<String> = e.get("key");
            (e.id, data, key)
        })
        .collect()
}

/// What the commit of the subscriber whose stream is `sub` writes.
const SUB: CommitKeys<'static> = CommitKeys {
    stream: "sub",
    dlq: "sub:dlq",
    state: "state",
    all: "all",
    http: "sub:http",
    lists: "sub:order",
    held: "sub:held",
    parked: "sub:parked",
    schedule: "sub:schedule",
    later: "all:schedule",
};

/// The order keys of `sub` as [`SUB`] names them.
fn sub_order() -> OrderKeys {
    OrderKeys {
        lists: SUB.lists.into(),
        held: SUB.held.into(),
        parked: SUB.parked.into(),
    }
}

/// Commits `id` (holding `key`) as handled, or dead-letters it as `letter`.
async fn settle(conn: &mut RedisConn, id: &str, key: &str, letter: Option<&str>, park: bool) {
    let mut batch = CommitBatch::new("sg", false).parking(park);
    match letter {
        None => batch.ok(id, Some(key), &Effects::default(), 1.0),
        Some(payload) => batch.dead_letter(id, Some(key), payload.into(), &Vec::new()),
    }
    assert_eq!(batch.apply(conn, &SUB).await.unwrap(), Committed::default());
}

#[tokio::test]
async fn a_keys_events_enter_the_stream_one_at_a_time_and_a_dead_letter_parks_or_moves_it_on() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let ids = delivered(conn, 4).await;
    let streams = ["sub".to_string()];
    let keys = FanoutKeys {
        held: &[SUB.held.to_string()],
        lists: &[SUB.lists.to_string()],
        ..fanout_keys(&streams)
    };
    let to = |key| {
        [Target {
            stream: 0,
            key: Some(key),
        }]
    };
    let mut fanout = FanoutBatch::new("g");
    fanout.route(&ids[0], &to("a"), b"a1");
    fanout.route(&ids[1], &to("a"), b"a2");
    fanout.route(&ids[2], &to("b"), b"b1");
    fanout.route(&ids[3], &to("a"), b"a3");
    fanout.apply(conn, &keys).await.unwrap();

    // Only each key's oldest is in the stream; a2 and a3 wait, in order.
    let read = read_sub(conn).await;
    let seen: Vec<(&str, Option<&str>)> = read
        .iter()
        .map(|(_, data, key)| (data.as_str(), key.as_deref()))
        .collect();
    assert_eq!(seen, [("a1", Some("a")), ("b1", Some("b"))]);
    let list: Vec<String> = conn.lrange("sub:order:q:a", 0, -1).await.unwrap();
    let ends: Vec<&str> = list.iter().map(|e| e.split(' ').nth(1).unwrap()).collect();
    assert_eq!(ends, ["a1", "a2", "a3"], "the holder, then what waits");
    let held: Vec<String> = conn.zrange("sub:held", 0, -1).await.unwrap();
    assert_eq!(held, ["a"]);

    // a1 handled: a2 enters. b1 dead-lettered (the key moves on): b is
    // forgotten, and its letter carries its key.
    settle(conn, &read[0].0, "a", None, false).await;
    settle(conn, &read[1].0, "b", Some("{\"b\":1}"), false).await;
    let read = read_sub(conn).await;
    assert_eq!((read.len(), read[0].1.as_str()), (1, "a2"));
    let b: bool = conn.exists("sub:order:q:b").await.unwrap();
    assert!(!b, "b is forgotten");
    let dlq: Vec<(String, Vec<(String, String)>)> = conn.xrange("sub:dlq", "-", "+").await.unwrap();
    assert_eq!(dlq[0].1[1], ("key".to_string(), "b".to_string()));

    // a2 dead-lettered by a subscriber that parks: a3 stays back.
    settle(conn, &read[0].0, "a", Some("{\"a\":2}"), true).await;
    assert!(read_sub(conn).await.is_empty(), "a parked");
    let dlq: Vec<(String, Vec<(String, String)>)> = conn.xrange("sub:dlq", "-", "+").await.unwrap();
    let letter = dlq[1].0.clone();
    let holder: String = conn.lindex("sub:order:q:a", 0).await.unwrap();
    assert_eq!(holder, format!("park:{letter}"));
    let parked: Vec<String> = conn.zrange("sub:parked", 0, -1).await.unwrap();
    assert_eq!(parked, ["a"]);

    // Replayed, the parking letter runs first, then a3.
    let order = sub_order();
    let replay = ReplayKeys {
        dlq: "sub:dlq",
        dlq_group: "dg",
        stream: "sub",
        requests: None,
        order: Some(&order),
    };
    let keyed = |id: &str, key: &str| Letter {
        id: id.into(),
        key: Some(key.into()),
    };
    let moved = scripts::replay(conn, &replay, &[keyed(&letter, "a")])
        .await
        .unwrap();
    let read = read_sub(conn).await;
    assert_eq!(moved[0].stream_id, read[0].0);
    assert_eq!((read.len(), read[0].1.as_str()), (1, "{\"a\":2}"));
    let parked: u64 = conn.zcard("sub:parked").await.unwrap();
    assert_eq!(parked, 0);
    settle(conn, &read[0].0, "a", None, true).await;
    let read = read_sub(conn).await;
    assert_eq!((read.len(), read[0].1.as_str()), (1, "a3"));
    let held: u64 = conn.zcard("sub:held").await.unwrap();
    assert_eq!(held, 0, "nothing waits behind a3");

    // b's letter replayed while a3 runs: routed as a new event of b.
    let moved = scripts::replay(conn, &replay, &[keyed(&dlq[0].0, "b")])
        .await
        .unwrap();
    let read_b = read_sub(conn).await;
    assert_eq!(moved[0].stream_id, read_b[0].0);
    settle(conn, &read_b[0].0, "b", None, true).await;
    settle(conn, &read[0].0, "a", None, true).await;
    let left: Vec<String> = conn.keys("sub:order*").await.unwrap();
    let others: Vec<String> = conn.keys("sub:*ed").await.unwrap();
    assert!(left.is_empty() && others.is_empty(), "{left:?} {others:?}");
}

#[tokio::test]
async fn a_skipped_dead_letter_lets_its_key_move_on_and_stays_in_the_dlq() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let ids = delivered(conn, 2).await;
    let streams = ["sub".to_string()];
    let keys = FanoutKeys {
        held: &[SUB.held.to_string()],
        lists: &[SUB.lists.to_string()],
        ..fanout_keys(&streams)
    };
    let mut fanout = FanoutBatch::new("g");
    for (id, data) in ids.iter().zip(["k1", "k2"]) {
        let to = [Target {
            stream: 0,
            key: Some("k"),
        }];
        fanout.route(id, &to, data.as_bytes());
    }
    fanout.apply(conn, &keys).await.unwrap();
    let read = read_sub(conn).await;
    settle(conn, &read[0].0, "k", Some("{\"k\":1}"), true).await;
    assert!(read_sub(conn).await.is_empty(), "k parked");
    let dlq: Vec<(String, Vec<(String, String)>)> = conn.xrange("sub:dlq", "-", "+").await.unwrap();
    let letter = Letter {
        id: dlq[0].0.clone(),
        key: Some("k".into()),
    };
    let order = sub_order();
    let released = scripts::skip(
        conn,
        "sub:dlq",
        "sub",
        &order,
        std::slice::from_ref(&letter),
    )
    .await
    .unwrap();
    assert_eq!(released, std::slice::from_ref(&letter.id));
    let read = read_sub(conn).await;
    assert_eq!((read.len(), read[0].1.as_str()), (1, "k2"));
    let parked: u64 = conn.zcard("sub:parked").await.unwrap();
    assert_eq!(parked, 0);
    let depth: u64 = conn.xlen("sub:dlq").await.unwrap();
    assert_eq!(depth, 1, "the letter stays");
    // Skipped twice: nothing more moves on.
    let again = scripts::skip(conn, "sub:dlq", "sub", &order, &[letter])
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn a_key_whose_list_was_overwritten_goes_unordered_and_stops_nothing() {
    let mut s = server().await;
    let conn = &mut s.conn;
    let ids = delivered(conn, 2).await;
    let () = conn.set("sub:order:q:z", "not a list").await.unwrap();
    let streams = ["sub".to_string()];
    let keys = FanoutKeys {
        held: &[SUB.held.to_string()],
        lists: &[SUB.lists.to_string()],
        ..fanout_keys(&streams)
    };
    let mut fanout = FanoutBatch::new("g");
    for (id, key) in ids.iter().zip(["z", "y"]) {
        let to = [Target {
            stream: 0,
            key: Some(key),
        }];
        fanout.route(id, &to, key.as_bytes());
    }
    fanout.apply(conn, &keys).await.unwrap();
    let read = read_sub(conn).await;
    let seen: Vec<(&str, Option<&str>)> = read
        .iter()
        .map(|(_, data, key)| (data.as_str(), key.as_deref()))
        .collect();
    assert_eq!(seen, [("z", None), ("y", Some("y"))]);
    // Its commit (were it to hold the key) writes nothing to the list.
    settle(conn, &read[0].0, "z", None, false).await;
    settle(conn, &read[1].0, "y", None, false).await;
    let z: String = conn.get("sub:order:q:z").await.unwrap();
    assert_eq!(z, "not a list");
}
