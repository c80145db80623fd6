//! The bounds on what one call may do, and what the host does past each:
//! memory and time (computing, or blocked in a WASI call; the instance
//! that failed hard is thrown away), buffered effects (within the budget
//! a call commits whole, 9,000 deletes included), state values,
//! publishes per call, payloads, hops and log. Past a bound the event is
//! dead-lettered or the call refused, with a reason naming the bound, and
//! the host serves on; a limit out of range is refused at its config line.
//!
//! A test that keeps an attack up measures a bystander (the probe, on
//! `Ping`) with `Pace` and asserts `Pace::holds_against`. Every test holds
//! `one_attack_at_a_time()`: none runs beside an attack.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use support::attack::{peak_mib, stop_timed, Attack, Pace, BYSTANDER};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

// ----- memory and time --------------------------------------------------

/// Memory limits are per subscriber: the same event, asking for 24 MiB,
/// is dead-lettered as out of memory by a subscriber limited to 8 MiB and
/// handled by one with 64 MiB, and a hog in the small one leaves the big
/// one serving.
#[test]
fn memory_limits_hold_per_subscriber() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.small]
plugin = "probe.wasm"
events = ["Mem", "Hog", "Ping"]
memory_mb = 8

[subscribers.big]
plugin = "probe.wasm"
events = ["Mem", "Ping"]
memory_mb = 64
"#,
    );
    let host = world.host();
    let mut conn = world.conn();

    let mem = publish(&mut conn, "Mem", json!({"act": "alloc", "mb": 24}));
    let hog = publish(&mut conn, "Hog", json!({"act": "hog"}));
    let after = publish(&mut conn, "Ping", json!({}));
    eventually("both are done", WAIT, || {
        len(&mut conn, "events:sub:small:dlq") == 2
            && state(&mut conn, "big").contains_key(&format!("seen:{after}"))
            && settled(&mut conn, &["small", "big"])
    });

    for id in [&mem, &hog] {
        let r = reason_of(&mut conn, "events:sub:small:dlq", id);
        assert!(
            r.starts_with("small: out of memory: probe.wasm ran past its memory limit of 8 MiB"),
            "{r}"
        );
    }
    let big = state(&mut conn, "big");
    assert!(
        big.contains_key(&format!("seen:{mem}")),
        "64 MiB holds 24 MiB"
    );
    assert_eq!(len(&mut conn, "events:sub:big:dlq"), 0);
    let small = state(&mut conn, "small");
    assert_eq!(
        small.get(&format!("calls:{after}")).map(String::as_str),
        Some("1"),
        "the small subscriber serves on, on a fresh instance"
    );
    assert_eq!(host.stop().code(), Some(0));
}

/// Time limits are per subscriber and hold promptly: one busy event of
/// 500 ms is dead-lettered by a subscriber limited to 200 ms, in under
/// 2 s from publishing to its dead letter (and not before 200 ms), and
/// handled by one limited to 1000 ms.
#[test]
fn time_limits_hold_per_subscriber_and_promptly() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.quick]
plugin = "probe.wasm"
events = ["Busy", "Ping"]
timeout_ms = 200

[subscribers.patient]
plugin = "probe.wasm"
events = ["Busy", "Ping"]
timeout_ms = 1000
"#,
    );
    let host = world.host();
    let mut conn = world.conn();
    // Warm up: both instances exist before the timed event.
    still_serves(&world, &["quick", "patient"]);

    let published = Instant::now();
    let busy = publish(&mut conn, "Busy", json!({"act": "spin", "spin_ms": 500}));
    let took = time_until_dead_lettered(&mut conn, "events:sub:quick:dlq", published);
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "the 200 ms limit stopped the event {took:?} after it was published"
    );
    let r = reason_of(&mut conn, "events:sub:quick:dlq", &busy);
    assert!(
        r.starts_with("quick: timeout: probe.wasm ran past its time limit of 200 ms"),
        "{r}"
    );
    eventually("the patient subscriber handles it", WAIT, || {
        state(&mut conn, "patient").contains_key(&format!("seen:{busy}"))
    });
    assert_eq!(len(&mut conn, "events:sub:patient:dlq"), 0);
    still_serves(&world, &["quick", "patient"]);
    assert_eq!(host.stop().code(), Some(0));
}

/// How long after `since` the first entry appears in `dlq`.
fn time_until_dead_lettered(conn: &mut redis::Connection, dlq: &str, since: Instant) -> Duration {
    while len(conn, dlq) == 0 {
        assert!(
            since.elapsed() < WAIT,
            "nothing reached {dlq} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

/// The time limit also stops a plugin that is blocked in a WASI call
/// rather than computing: a 5 s sleep under a 200 ms limit is
/// dead-lettered as a timeout within 2 s, and the subscriber serves on.
#[test]
fn a_plugin_blocked_in_a_wasi_call_is_stopped_at_its_time_limit() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.sleepy]
plugin = "probe.wasm"
events = ["Ping"]
timeout_ms = 200
"#,
    );
    let host = world.host();
    let mut conn = world.conn();
    still_serves(&world, &["sleepy"]);

    let published = Instant::now();
    let slow = publish(
        &mut conn,
        "Ping",
        json!({"act": "sleep", "sleep_ms": 5_000}),
    );
    let took = time_until_dead_lettered(&mut conn, "events:sub:sleepy:dlq", published);
    assert!(
        took < Duration::from_secs(2),
        "the 200 ms limit stopped the sleeping event only {took:?} after it was published"
    );
    let r = reason_of(&mut conn, "events:sub:sleepy:dlq", &slow);
    assert!(
        r.starts_with("sleepy: timeout: probe.wasm ran past its time limit of 200 ms"),
        "{r}"
    );
    still_serves(&world, &["sleepy"]);
    assert_eq!(host.stop().code(), Some(0));
}

/// An instance that trapped, timed out or ran out of memory is thrown away:
/// the probe's instance-local call counter starts again at 1 on the next
/// event, where a reused instance (after `ok` or a `reject`) counts on.
/// One subscriber, concurrency 1, so one instance serves in stream order.
#[test]
fn an_instance_that_failed_hard_is_never_reused() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
concurrency = 1
timeout_ms = 300
memory_mb = 16
"#,
    );
    let host = world.host();
    let mut conn = world.conn();

    // (act, the calls count the event records; None: dead-lettered, so
    // nothing it wrote is committed)
    let script: [(&str, Option<&str>); 11] = [
        ("ok", Some("1")),
        ("ok", Some("2")),
        ("reject", None),
        ("ok", Some("4")), // a rejection is an answer, not a crash: same instance
        ("panic", None),
        ("ok", Some("1")),
        ("ok", Some("2")),
        ("spin", None),
        ("ok", Some("1")),
        ("hog", None),
        ("ok", Some("1")),
    ];
    let ids: Vec<String> = script
        .iter()
        .map(|(act, _)| publish(&mut conn, "Ping", json!({ "act": act })))
        .collect();
    eventually("every event is handled or dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 4 && settled(&mut conn, &["probe"])
    });

    let probe = state(&mut conn, "probe");
    let calls: Vec<Option<&str>> = ids
        .iter()
        .map(|id| probe.get(&format!("calls:{id}")).map(String::as_str))
        .collect();
    let expected: Vec<Option<&str>> = script.iter().map(|(_, c)| *c).collect();
    assert_eq!(calls, expected, "calls per event, in order");
    for (n, kind) in [
        (2, "reject"),
        (4, "trap"),
        (7, "timeout"),
        (9, "out-of-memory"),
    ] {
        assert_eq!(
            failure_of(&mut conn, "events:sub:probe:dlq", &ids[n])["kind"],
            kind,
            "{} event",
            script[n].0
        );
    }
    assert_eq!(host.stop().code(), Some(0));
}

// ----- effects: state, publishes, payloads, hops ------------------------

/// What a call makes the host buffer is bounded by `effects_mb` (16 MiB by
/// default): 32 MiB of distinct state writes, 25 MiB of publishes or
/// 32 MiB of deleted keys in one event dead-letter it (`reject`: it would
/// go over again every time) with a reason naming the budget, and nothing
/// of it is committed; 150 MiB written to one key keeps one value and
/// commits it. The host's peak RSS stays far below what was attempted.
/// A plugin that reads one state key again and again is timed out as
/// itself: a call reads a key from Redis once and answers again from what
/// it read, so the loop spends the plugin's own time (not Redis's, which
/// would be taken for an outage and run again without end). The event is
/// dead-lettered as a `timeout`, and Redis sends the 1 MiB value about once
/// per call, not once per read.
#[test]
fn a_plugin_looping_on_a_state_read_times_out_as_itself() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm"],
        "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\ntimeout_ms = 500\n",
    );
    let _host = world.host();
    let mut conn = world.conn();
    let () = conn
        .hset("events:state:hostile", "hot", "v".repeat(1 << 20))
        .unwrap();
    let sent_before = redis_sent_bytes(&mut conn);
    let id = publish(&mut conn, "Hostile", json!({"act": "read_loop"}));
    eventually("the loop is dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:hostile:dlq") == 1
    });
    let failure = failure_of(&mut conn, "events:sub:hostile:dlq", &id);
    assert_eq!(failure["kind"], "timeout", "{failure}");
    let sent = redis_sent_bytes(&mut conn) - sent_before;
    println!("a read loop on a 1 MiB key: Redis sent {sent} bytes in all");
    assert!(sent < 8 << 20, "Redis sent {sent} bytes for one event");
}

/// A plugin that reads one key after another without end is timed out as
/// itself too: Redis answered each read at once, so the time is the
/// plugin's doing, not an outage's (which would run it again without end).
#[test]
fn a_plugin_reading_key_after_key_times_out_as_itself() {
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm"],
        "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\ntimeout_ms = 500\n",
    );
    let _host = world.host();
    let mut conn = world.conn();
    let id = publish(&mut conn, "Hostile", json!({"act": "read_many"}));
    eventually("the reads are dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:hostile:dlq") == 1
    });
    let failure = failure_of(&mut conn, "events:sub:hostile:dlq", &id);
    assert_eq!(failure["kind"], "timeout", "{failure}");
}

/// What Redis has sent its clients so far (`total_net_output_bytes`).
fn redis_sent_bytes(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_net_output_bytes")
}

#[test]
fn buffered_effects_are_bounded_per_call() {
    // This test waits up to 30 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(30);
    const FLOOD_ROUNDS: usize = 6;
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm", "probe.wasm"],
        &format!("[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\n\n{BYSTANDER}"),
    );
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, 1000, WAIT);
    let start_peak = peak_mib(&host);

    let floods = [
        json!({"act": "flood_state", "n": 512, "size": 65536}),
        json!({"act": "flood_publish", "n": 400, "size": 65536}),
        json!({"act": "flood_delete", "n": 4096, "size": 8192}),
    ];
    let rewrite = publish(
        &mut conn,
        "Hostile",
        json!({"act": "rewrite", "n": 300, "size": 524288}),
    );
    // Rounds of floods, so the attack outlasts the bystander's rounds.
    let flood_ids: Vec<String> = (0..FLOOD_ROUNDS)
        .flat_map(|_| floods.iter())
        .map(|data| publish(&mut conn, "Hostile", data.clone()))
        .collect();
    let during = Pace::measure(&world, 1000, WAIT);
    let dead_by_then = len(&mut conn, "events:sub:hostile:dlq");
    assert!(
        dead_by_then < flood_ids.len(),
        "the attack ended before the bystander was measured"
    );
    eventually(
        "the floods are dead-lettered and the rewrite done",
        WAIT,
        || {
            len(&mut conn, "events:sub:hostile:dlq") == flood_ids.len()
                && state(&mut conn, "hostile").contains_key(&format!("done:{rewrite}"))
        },
    );
    for id in &flood_ids {
        let failure = failure_of(&mut conn, "events:sub:hostile:dlq", id);
        assert_eq!(failure["kind"], "reject", "{failure}");
        let reason = failure["reason"].as_str().unwrap();
        assert!(
            reason.contains("hostile.wasm is over its budget of 16 MiB of buffered effects"),
            "{reason}"
        );
    }
    let hostile = state(&mut conn, "hostile");
    assert_eq!(
        hostile["same"].len(),
        524288,
        "the rewritten key holds one value"
    );
    assert!(
        !hostile.contains_key("k0"),
        "nothing of a refused call is committed"
    );
    assert!(!hostile.contains_key("published"));
    assert_eq!(len(&mut conn, "events:all:dlq"), 0);

    let peak = peak_mib(&host);
    println!(
        "effects: peak RSS {peak} MiB (was {start_peak} MiB before the attack; attempted: 32 MiB of \
         writes, 25 MiB of publishes, 32 MiB of deletes, 150 MiB through one key); bystander \
         {alone} alone, {during} during {FLOOD_ROUNDS} rounds of floods ({dead_by_then} of {} done by then)",
        flood_ids.len()
    );
    assert!(
        peak < start_peak + 100,
        "the host buffered what it should not: {start_peak} → {peak} MiB"
    );
    let took = stop_timed(host);
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

/// A call that deletes 9,000 keys (past Lua's `unpack` limit) commits
/// whole: every key deleted, its other effects written, nothing left
/// pending.
#[test]
fn a_call_with_nine_thousand_deletes_commits_whole() {
    // This test waits up to 60 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(60);
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm", "probe.wasm"],
        &format!(
            "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\n\n{BYSTANDER}"
        ),
    );
    let mut conn = world.conn();
    // flood_delete deletes the keys `<i>x` for size 1.
    let keys: Vec<(String, String)> = (0..9000).map(|i| (format!("{i}x"), "v".into())).collect();
    for chunk in keys.chunks(1000) {
        let () = conn.hset_multiple("events:state:hostile", chunk).unwrap();
    }
    let host = world.host();
    let alone = Pace::measure(&world, 1000, WAIT);
    let id = publish(
        &mut conn,
        "Hostile",
        json!({"act": "flood_delete", "n": 9000, "size": 1}),
    );
    eventually("the call commits", WAIT, || {
        state(&mut conn, "hostile").contains_key(&format!("done:{id}"))
    });
    let left: Vec<String> = state(&mut conn, "hostile")
        .into_keys()
        .filter(|k| k.ends_with('x'))
        .collect();
    assert!(left.is_empty(), "{} keys not deleted", left.len());
    assert_eq!(len(&mut conn, "events:sub:hostile:dlq"), 0);
    assert_eq!(
        pending(&mut conn, "events:sub:hostile", "sub:hostile-group"),
        0
    );

    // Such calls one after another, beside the bystander.
    let attack = Attack::start(&world, Duration::from_millis(50), |conn| {
        publish(
            conn,
            "Hostile",
            json!({"act": "flood_delete", "n": 9000, "size": 1}),
        )
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let ids = attack.stop();
    eventually("every call commits", WAIT, || {
        let state = state(&mut conn, "hostile");
        ids.iter()
            .all(|id| state.contains_key(&format!("done:{id}")))
    });
    let peak = peak_mib(&host);
    let took = stop_timed(host);
    println!(
        "9,000 deletes ({} calls): peak RSS {peak} MiB; bystander {alone} alone, {during} \
         during; SIGTERM → exit in {took:?}",
        ids.len()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

/// Checked by hand before and true on main: event types like `*`,
/// `a\nb\r\nPING` or 100 KB long are routed as any other; a 1 MiB state
/// value is written, one byte more traps; the 10,001st publish of a call is
/// refused at the call.
#[test]
fn odd_event_types_big_values_and_the_publish_limit_hold() {
    // This test waits up to 30 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(30);
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm", "probe.wasm"],
        "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\n\n\
         [subscribers.all]\nplugin = \"probe.wasm\"\n",
    );
    let host = world.host();
    let mut conn = world.conn();
    let long = "T".repeat(100_000);
    let odd: Vec<String> = ["*", "a\nb\r\nPING", long.as_str()]
        .iter()
        .map(|t| publish(&mut conn, t, json!({})))
        .collect();
    eventually(
        "every odd type reaches the subscriber of all types",
        WAIT,
        || seen_all(&mut conn, "all", &odd),
    );
    assert_eq!(len(&mut conn, "events:all:dlq"), 0);

    let fits = publish(
        &mut conn,
        "Hostile",
        json!({"act": "set", "key": "v", "size": 1 << 20}),
    );
    let over = publish(
        &mut conn,
        "Hostile",
        json!({"act": "set", "key": "w", "size": (1 << 20) + 1}),
    );
    let many = publish(
        &mut conn,
        "Hostile",
        json!({"act": "flood_publish", "n": 10_001, "size": 1}),
    );
    eventually("the hostile events are done", WAIT, || {
        let s = state(&mut conn, "hostile");
        s.contains_key(&format!("done:{fits}"))
            && s.contains_key(&format!("done:{many}"))
            && len(&mut conn, "events:sub:hostile:dlq") == 1
    });
    let s = state(&mut conn, "hostile");
    assert_eq!(s["v"].len(), 1 << 20);
    assert!(!s.contains_key("w"));
    let reason = reason_of(&mut conn, "events:sub:hostile:dlq", &over);
    assert!(reason.contains("limited to 1048576 bytes"), "{reason}");
    assert_eq!(s["published"], "10000");
    assert_eq!(s["publish_refused"], "1");
    assert!(s["publish_error"].contains("at most 10000 events"), "{s:?}");
    println!("odd input: peak RSS {} MiB", peak_mib(&host));
    assert_eq!(host.stop().code(), Some(0));
}

/// A publish over `bus.max_payload_bytes` (1 MiB by default) fails at the
/// call, in the plugin, with a reason naming the limit: ten of 1.1 MB
/// publish nothing, leave `events:all:dlq` empty, and the call itself
/// (which ignores the refusals) commits.
#[test]
fn a_publish_over_the_payload_limit_fails_in_the_plugin() {
    // This test waits up to 60 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(60);
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm", "probe.wasm"],
        &format!(
            "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\n\n{BYSTANDER}"
        ),
    );
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, 1000, WAIT);
    let start_peak = peak_mib(&host);
    let attack = Attack::start(&world, Duration::from_millis(50), |conn| {
        publish(
            conn,
            "Hostile",
            json!({"act": "flood_publish", "n": 10, "size": 1_100_000}),
        )
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let ids = attack.stop();
    eventually("the calls commit", WAIT, || {
        let state = state(&mut conn, "hostile");
        ids.iter()
            .all(|id| state.contains_key(&format!("done:{id}")))
    });
    let hostile = state(&mut conn, "hostile");
    assert_eq!(hostile["published"], "0");
    assert_eq!(hostile["publish_refused"], "10");
    assert!(
        hostile["publish_error"].contains("over the limit of 1048576 (bus.max_payload_bytes)"),
        "{}",
        hostile["publish_error"]
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        len(&mut conn, "events:all:dlq"),
        0,
        "the bus DLQ stays empty"
    );
    let peak = peak_mib(&host);
    let took = stop_timed(host);
    println!(
        "publishes over the limit ({} calls × 10 × 1.1 MB): peak RSS {peak} MiB (was \
         {start_peak}); bystander {alone} alone, {during} during; SIGTERM → exit in {took:?}",
        ids.len()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

/// A dead letter keeps the hops the host counted: a cycle stopped at
/// `max_hops` and replayed with `eventhost dlq replay` is refused again at
/// once, not given a fresh budget (it ran the whole cycle again before).
#[test]
fn a_replayed_cycle_keeps_its_hops() {
    let _attack = one_attack_at_a_time();
    let world = World::new(&["hostile.wasm"], "");
    world.configure_bus(
        "max_hops = 4\n",
        "[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Cycle\"]\n",
    );
    let _host = world.host();
    let mut conn = world.conn();
    publish(&mut conn, "Cycle", json!({"act": "cycle"}));
    let dlq = "events:sub:hostile:dlq";
    eventually("the cycle ends in the DLQ", WAIT, || {
        len(&mut conn, dlq) == 1
    });
    let cycles = |conn: &mut redis::Connection| state(conn, "hostile")["cycles"].clone();
    assert_eq!(cycles(&mut conn), "4");

    let replay = world.eventhost(&["dlq", "replay", "hostile", "--all"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    eventually("the replayed event is dead-lettered again", WAIT, || {
        len(&mut conn, dlq) == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cycles(&mut conn), "4", "the replay started no new cycle");
    let dead = &data_of(&mut conn, dlq)[0];
    assert_eq!(dead["_metadata"]["hops"], 4, "{dead}");
}

/// Events a plugin publishes carry a hop count kept by the host
/// (`_metadata.hops`); a plugin that publishes its own event again, and
/// ignores the refusal, runs `bus.max_hops` times, then the event is
/// dead-lettered with a reason naming the limit. The DLQ's depth is a
/// metric.
#[test]
fn a_cycle_of_plugins_ends_in_the_dlq_at_the_hop_limit() {
    // This test waits up to 60 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(60);
    let _attack = one_attack_at_a_time();
    let world = World::new(&["hostile.wasm", "probe.wasm"], "");
    let metrics = format!("127.0.0.1:{}", free_port());
    world.configure_bus(
        "max_hops = 8\n",
        &format!(
            "[telemetry]\nmetrics = \"{metrics}\"\n\n[subscribers.hostile]\nplugin = \"hostile.wasm\"\n\
             events = [\"Cycle\"]\n\n{BYSTANDER}"
        ),
    );
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, 1000, WAIT);
    let attack = Attack::start(&world, Duration::from_millis(20), |conn| {
        publish(conn, "Cycle", json!({"act": "cycle"}))
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let cycles = attack.stop().len();
    eventually("every cycle ends in the DLQ", WAIT, || {
        len(&mut conn, "events:sub:hostile:dlq") == cycles
    });
    // Hops 0 to 7 published; the event 8 hops away was refused.
    let counted = || state(&mut world.conn(), "hostile")["cycles"].clone();
    assert_eq!(counted(), (8 * cycles).to_string());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counted(), (8 * cycles).to_string(), "the cycles stopped");
    for dead in data_of(&mut conn, "events:sub:hostile:dlq") {
        let failure = &dead["_failures"][0];
        assert_eq!(failure["kind"], "reject", "{failure}");
        let reason = failure["reason"].as_str().unwrap();
        assert!(
            reason.contains("8 publishes from its producer, the limit (bus.max_hops)"),
            "{reason}"
        );
    }
    let all: Vec<Value> = data_of(&mut conn, "events:all");
    assert!(
        all.iter().any(|e| e["_metadata"]["hops"] == 8),
        "the host counts hops in _metadata"
    );
    assert_eq!(len(&mut conn, "events:all:dlq"), 0);
    eventually("the DLQ depth is a metric", WAIT, || {
        counter(
            &scrape(&metrics),
            "eventhost_dlq_depth{dlq=\"events:sub:hostile:dlq\"}",
        ) == cycles as u64
    });
    let peak = peak_mib(&host);
    let took = stop_timed(host);
    println!(
        "cycle of plugins ({cycles} cycles, max_hops 8): peak RSS {peak} MiB; bystander \
         {alone} alone, {during} during; SIGTERM → exit in {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

// ----- log --------------------------------------------------------------

/// A plugin's log messages, printed lines and failure reasons cannot write
/// a line that looks like the host's (newlines and escapes are escaped);
/// an event logging 200 MB leaves at most about 64 KiB in the host's log
/// and says how much it dropped; many events logging within their limit
/// are rate-limited per subscriber, saying how much was dropped.
#[test]
fn plugin_logs_cannot_forge_host_lines_nor_flood_the_log() {
    // This test waits up to 30 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(30);
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["hostile.wasm", "probe.wasm"],
        &format!("[subscribers.hostile]\nplugin = \"hostile.wasm\"\nevents = [\"Hostile\"]\n\n{BYSTANDER}"),
    );
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, 1000, WAIT);

    let forged = "2026-11-30T20:00:00.000000Z ERROR eventhost::daemon: forged";
    let forge = publish(
        &mut conn,
        "Hostile",
        json!({"act": "forge", "text": format!("innocent\n{forged}\r\n\u{1b}[2Kcleared")}),
    );
    eventually("the forger is dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:hostile:dlq") == 1
    });
    let reason = reason_of(&mut conn, "events:sub:hostile:dlq", &forge);
    assert!(reason.contains("innocent\\n2026-11-30"), "{reason}");
    std::thread::sleep(Duration::from_millis(200));
    let log = host.log();
    assert!(
        log.contains(&format!("innocent\\n{forged}\\r\\n\\u{{1b}}[2Kcleared")),
        "the message is logged, escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-11-30T20:00:00"),
            "a forged line: {line}"
        );
        assert!(!line.contains('\u{1b}') && !line.contains('\r'), "{line:?}");
    }

    // One event logging 200 MB.
    let size_before = host.log().len();
    let flood = publish(
        &mut conn,
        "Hostile",
        json!({"act": "flood_log", "n": 200_000, "size": 1000}),
    );
    eventually("the flood ends", WAIT, || {
        state(&mut conn, "hostile").contains_key(&format!("done:{flood}"))
            || len(&mut conn, "events:sub:hostile:dlq") == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    let log = host.log();
    let grown = log.len() - size_before;
    assert!(grown < 200 << 10, "one event grew the log by {grown} bytes");
    assert!(
        log.contains("log lines") && log.contains("of this event: over the limit of 64 KiB"),
        "says what it dropped:\n{}",
        &log[size_before..]
    );

    // The bystander beside a sustained flood: events of 200,000 lines each.
    let done = |conn: &mut redis::Connection| {
        state(conn, "hostile")
            .keys()
            .filter(|k| k.starts_with("done:"))
            .count()
    };
    let done_before = done(&mut conn);
    const FLOODS: usize = 12;
    for _ in 0..FLOODS {
        publish(
            &mut conn,
            "Hostile",
            json!({"act": "flood_log", "n": 200_000, "size": 1000}),
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    let during = Pace::measure(&world, 1000, WAIT);
    let done_by_then = done(&mut conn) - done_before;
    assert!(
        done_by_then < FLOODS,
        "the flood ended before the bystander was measured"
    );
    eventually("the sustained flood ends", WAIT, || {
        done(&mut conn) >= done_before + FLOODS
    });

    // Many events, each within its own limit: the rate applies.
    std::thread::sleep(Duration::from_millis(1000));
    let size_before = host.log().len();
    let done_before = done(&mut conn);
    for _ in 0..20 {
        publish(
            &mut conn,
            "Hostile",
            json!({"act": "flood_log", "n": 1000, "size": 10}),
        );
    }
    eventually("the chatty events are handled", WAIT, || {
        done(&mut conn) >= done_before + 20
    });
    // The drop is said with the next line let through.
    std::thread::sleep(Duration::from_millis(1000));
    publish(
        &mut conn,
        "Hostile",
        json!({"act": "flood_log", "n": 1, "size": 10}),
    );
    eventually("the rate limit says what it dropped", WAIT, || {
        host.log()[size_before..].contains("over its rate of 100 lines/s")
    });
    let log = host.log();
    let lines = log[size_before..].lines().count();
    assert!(lines < 2000, "20,000 lines asked, {lines} written");

    let peak = peak_mib(&host);
    println!(
        "logs: peak RSS {peak} MiB; one event asked 200 MB of log, the log grew {grown} bytes; \
         20,000 lines over 20 events wrote {lines}; bystander {alone} alone, {during} during {FLOODS} events of 200 MB of log ({done_by_then} done by then)"
    );
    let took = stop_timed(host);
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

// ----- the limits' own range --------------------------------------------

/// Out-of-range limits, each reported with file, line, column and key,
/// all at once, by `check` and by `run`: the ones core.rs does not try
/// (zero concurrency and attempts, memory over 4096 MiB, a time limit over
/// half of `claim_idle_ms`, a negative backoff, bus settings of zero) and
/// a value of the wrong type.
#[test]
fn every_out_of_range_limit_is_reported_with_file_line_and_key() {
    let _attack = one_attack_at_a_time();
    let world = World::new(&["probe.wasm"], "");
    world.configure_bus(
        "read_batch = 0\nmax_payload_bytes = 0\n",
        "[subscribers.probe]\nplugin = \"probe.wasm\"\nconcurrency = 0\nmax_attempts = 0\nmemory_mb = 4097\ntimeout_ms = 1001\nretry_backoff_ms = -1\n",
    );
    let file = world.config().display().to_string();
    let bus_line = world.line_of("read_batch = 0");
    let sub = world.line_of("[subscribers.probe]");
    let expected = [
        format!("{file}:{bus_line}:14: bus.read_batch: must be between 1 and 10000 (got 0)"),
        format!(
            "{file}:{}:21: bus.max_payload_bytes: must be between 1 and 536870912 (got 0)",
            bus_line + 1
        ),
        format!(
            "{file}:{}:15: subscribers.probe.concurrency: must be between 1 and 1024 (got 0)",
            sub + 2
        ),
        format!(
            "{file}:{}:16: subscribers.probe.max_attempts: must be between 1 and 100000 (got 0)",
            sub + 3
        ),
        format!(
            "{file}:{}:13: subscribers.probe.memory_mb: must be between 1 and 4096 (got 4097)",
            sub + 4
        ),
        format!(
            "{file}:{}:14: subscribers.probe.timeout_ms: must be at most half of bus.claim_idle_ms (2000 ms)",
            sub + 5
        ),
        format!(
            "{file}:{}:20: subscribers.probe.retry_backoff_ms: must be between 0 and 2592000000 (got -1)",
            sub + 6
        ),
    ];
    let (check, run) = world.refused();
    for text in [&check, &run] {
        for line in &expected {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }

    // A value of the wrong type is a problem with a position too.
    world.configure("[subscribers.probe]\nplugin = \"probe.wasm\"\nmemory_mb = \"64\"\n");
    let line = world.line_of("memory_mb = \"64\"");
    let text = String::from_utf8_lossy(&world.eventhost(&["check"]).stdout).into_owned();
    assert!(
        text.starts_with(&format!("{file}:{line}:13: subscribers.probe.memory_mb:")),
        "{text}"
    );
}
