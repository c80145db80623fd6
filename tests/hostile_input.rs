//! What producers, Redis and a config file can put before the host: an
//! entry of 90 MB, writes Redis refuses (a route, a commit), malformed
//! entries on `events:all` and in a subscriber stream, a config with a
//! syntax error or a missing plugin. Each ends in a clear error or a DLQ
//! reason, and the host routes and serves on; beside the attacks a
//! bystander (the probe, on `Ping`) keeps its pace (`Pace::holds_against`).
//! Every test holds `one_attack_at_a_time()`: none runs beside an attack.
//!
//! `core.rs` already proves the routing of malformed entries on
//! `events:all` and `check`/`run` on a bad config; what is here completes
//! that list (see each test).

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use support::attack::{bystander_rate, peak_mib, status_kib, stop_timed, Attack, Pace, BYSTANDER};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

// ----- oversized entries ------------------------------------------------

/// Bytes of the oversized entries: about what the issue reproduced with.
const HUGE: usize = 90 << 20;

/// Events the bystander's rate is measured over beside an oversized entry:
/// reading one stalls the loop that reads it for a moment (Redis cannot
/// bound a read in bytes), so the rate is taken over a second or so.
const RATE_EVENTS: usize = 3000;

/// `data` of an entry of `HUGE` bytes whose escaping as JSON would be six
/// times its size: control characters inside a JSON string (so not even
/// valid JSON), after a valid `event_type` of `event_type`.
fn huge_entry(event_type: &str) -> Vec<u8> {
    let head = format!("{{\"event_type\":\"{event_type}\",\"x\":\"");
    let mut data = head.into_bytes();
    data.resize(HUGE - 2, 1u8);
    data.extend_from_slice(b"\"}");
    data
}

/// A stream entry as `XRANGE` gives it: id, and fields with raw values.
type RawEntry = (String, Vec<(String, Vec<u8>)>);

/// The one entry of `dlq` dead-lettered for the entry `stream_id`, by its
/// id, size and prefix: checks what it keeps and that it is small.
fn check_oversized(conn: &mut redis::Connection, dlq: &str, stream_id: &str) -> Value {
    let raw: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    let found: Vec<Value> = raw
        .into_iter()
        .map(|(_, fields)| {
            let (_, data) = fields.into_iter().find(|(k, _)| k == "data").unwrap();
            assert!(
                data.len() < 16 << 10,
                "a dead letter of {} bytes",
                data.len()
            );
            serde_json::from_slice::<Value>(&data).expect("data is a JSON object")
        })
        .filter(|d| d["_oversized"]["stream_id"] == stream_id)
        .collect();
    assert_eq!(found.len(), 1, "one dead letter of {stream_id}: {found:#?}");
    let dead = found.into_iter().next().unwrap();
    assert_eq!(dead["_oversized"]["bytes"], HUGE + "data".len());
    let prefix = dead["_oversized"]["prefix"].as_str().unwrap();
    assert!(prefix.starts_with("{\"event_type\":"), "{prefix:.80}");
    assert!(prefix.len() <= 1024 * 3, "{} bytes", prefix.len());
    assert!(dead["_metadata"]["id"].is_string(), "LeanMQ's _metadata");
    dead
}

/// A 90 MB entry in `events:all` (invalid JSON whose escaped copy would be
/// 540 MB, over Redis's argument limit) is dead-lettered once, as its
/// stream id, size and first KiB; the fan-out goes on routing what comes
/// after it; the host's peak RSS grows by a small multiple of the entry,
/// once. The same for an entry written straight into a subscriber's
/// stream. SIGTERM while one is being read stops the host within 10 s.
#[test]
fn an_oversized_entry_is_dead_lettered_once_by_its_size_and_prefix() {
    // This test waits up to 60 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(60);
    let _attack = one_attack_at_a_time();
    let world = World::new(&["probe.wasm"], BYSTANDER);
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, RATE_EVENTS, WAIT);
    let start_peak = peak_mib(&host);

    let data = huge_entry("Ping");
    let sent = Instant::now();
    let all_id = xadd_field(&mut conn, "events:all", "data", &data);
    let during = bystander_rate(&world, RATE_EVENTS, WAIT);
    eventually("the entry is dead-lettered", WAIT, || {
        len(&mut conn, "events:all:dlq") == 1
    });
    // From the producer's XADD to the dead letter: at most the stall (the
    // bystander's events are in it too).
    let stall = sent.elapsed();
    let dead = check_oversized(&mut conn, "events:all:dlq", &all_id);
    let failure = &dead["_failures"][0];
    assert_eq!(failure["kind"], "malformed", "{failure}");
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .contains("over the limit of 1048576"),
        "{failure}"
    );
    eventually("nothing is left pending", WAIT, || {
        pending(&mut conn, "events:all", "all-group") == 0
    });
    let after_all = peak_mib(&host);

    // The same, straight into the bystander's own stream.
    let sub_id = xadd_field(&mut conn, "events:sub:bystander", "data", &data);
    let during_sub = bystander_rate(&world, RATE_EVENTS, WAIT);
    eventually("the entry is dead-lettered by the subscriber", WAIT, || {
        len(&mut conn, "events:sub:bystander:dlq") == 1
    });
    let dead = check_oversized(&mut conn, "events:sub:bystander:dlq", &sub_id);
    assert_eq!(dead["_failures"][0]["subscriber"], "bystander");
    let peak = peak_mib(&host);

    // Read once: two more, one after the other, cost no more than the
    // first did, and the memory goes back (the readers that carried them
    // were replaced).
    for n in 2..=3 {
        xadd_field(&mut conn, "events:all", "data", &data);
        eventually("it is dead-lettered", WAIT, || {
            len(&mut conn, "events:all:dlq") == n
        });
    }
    drop(data);
    let after = Pace::measure(&world, RATE_EVENTS, WAIT);
    let peak_again = peak_mib(&host);
    // The allocator gives freed memory back to the system lazily, as the
    // process goes on allocating: keep the bystander busy meanwhile.
    let entry_mib = (HUGE >> 20) as u64;
    let resident = || status_kib(host.pid(), "VmRSS") >> 10;
    eventually("the host gives the memory back", WAIT, || {
        bystander_rate(&world, 100, WAIT);
        resident() < start_peak + entry_mib
    });
    let now = resident();

    // SIGTERM while the host reads and dead-letters another.
    xadd_field(&mut conn, "events:all", "data", &huge_entry("Ping"));
    std::thread::sleep(Duration::from_millis(50));
    let took = stop_timed(host);
    println!(
        "oversized entry ({} MiB): peak RSS {start_peak} MiB before, {after_all} MiB after one \
         in events:all, {peak} MiB after one in a subscriber stream, {peak_again} MiB after two \
         more, {now} MiB resident then; dead-lettered within {stall:?} of its XADD; bystander \
         {alone} alone, {during:.0} events/s during (events:all), {during_sub:.0} during (its own stream), {after} after; \
         SIGTERM → exit in {took:?}",
        HUGE >> 20
    );
    assert!(
        peak < start_peak + 4 * entry_mib,
        "the host kept more than a small multiple of the entry: {start_peak} → {peak} MiB"
    );
    // Two more cost no more than one entry's worth on top (two can be in
    // flight at once: one read by the fan-out, one by the subscriber);
    // kept, they would add twice that.
    assert!(
        peak_again < peak + entry_mib,
        "more oversized entries cost more: {peak} → {peak_again} MiB"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Reading the entry stalls the fan-out for a moment, once (Redis sends
    // it whole); after that the bystander has its pace back.
    assert!(
        stall < Duration::from_secs(5),
        "the fan-out stalled {stall:?}"
    );
    after.holds_against(&alone);
}

// ----- writes Redis refuses ---------------------------------------------

/// A write Redis refuses for a reason that will not change (here a
/// subscriber's stream replaced by a string: WRONGTYPE) costs only the
/// entries routed there: each is quarantined in `events:all:dlq` with
/// Redis's reason, and every other entry of the same batches is routed.
#[test]
fn an_entry_redis_refuses_to_route_is_quarantined_and_the_rest_routed() {
    // This test waits up to 60 s where the others here wait 20 s.
    const WAIT: Duration = Duration::from_secs(60);
    let _attack = one_attack_at_a_time();
    let world = World::new(
        &["probe.wasm"],
        &format!(
            "[subscribers.victim]\nplugin = \"probe.wasm\"\nevents = [\"Victim\"]\n\n{BYSTANDER}"
        ),
    );
    let host = world.host();
    let mut conn = world.conn();
    let alone = Pace::measure(&world, 1000, WAIT);
    // Someone clobbers the victim's stream.
    let () = conn.del("events:sub:victim").unwrap();
    let () = conn.set("events:sub:victim", "not a stream").unwrap();

    // Victims in the same batches as the bystander's pings.
    // A victim every 5 ms is in most of the bystander's batches, each then
    // routed in halves around it.
    let attack = Attack::start(&world, Duration::from_millis(5), |conn| {
        publish(conn, "Victim", json!({}))
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let victims = attack.stop();
    eventually("every victim event is quarantined", WAIT, || {
        len(&mut conn, "events:all:dlq") == victims.len()
    });
    for id in &victims {
        let failure = failure_of(&mut conn, "events:all:dlq", id);
        assert_eq!(failure["kind"], "refused", "{failure}");
        let reason = failure["reason"].as_str().unwrap();
        assert!(
            reason.contains("WRONGTYPE events:sub:victim is a string"),
            "{reason}"
        );
    }
    eventually("nothing is left pending in events:all", WAIT, || {
        pending(&mut conn, "events:all", "all-group") == 0
    });
    let peak = peak_mib(&host);
    let took = stop_timed(host);
    println!(
        "refused route ({} entries quarantined): peak RSS {peak} MiB; bystander {alone} alone, \
         {during} during; SIGTERM → exit in {took:?}",
        victims.len()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

/// A subscriber's commit Redis refuses for a reason that will not change
/// (its state hash replaced by a string) is not retried forever: each
/// event whose result writes state is quarantined in its DLQ with Redis's
/// reason, and nothing stays pending.
#[test]
fn a_result_redis_refuses_to_commit_is_quarantined() {
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
    let () = conn.set("events:state:hostile", "not a hash").unwrap();
    // `set` writes state and reads none: only its commit can fail.
    let attack = Attack::start(&world, Duration::from_millis(5), |conn| {
        publish(conn, "Hostile", json!({"act": "set", "size": 8}))
    });
    let during = Pace::measure(&world, 1000, WAIT);
    let ids = attack.stop();
    eventually("every result is quarantined", WAIT, || {
        len(&mut conn, "events:sub:hostile:dlq") == ids.len()
    });
    for id in &ids {
        let failure = failure_of(&mut conn, "events:sub:hostile:dlq", id);
        assert_eq!(failure["kind"], "refused", "{failure}");
        let reason = failure["reason"].as_str().unwrap();
        assert!(
            reason.contains("Redis refused its commit: WRONGTYPE events:state:hostile is a string"),
            "{reason}"
        );
    }
    assert_eq!(
        pending(&mut conn, "events:sub:hostile", "sub:hostile-group"),
        0
    );
    let peak = peak_mib(&host);
    let took = stop_timed(host);
    println!(
        "refused commit ({} results quarantined): peak RSS {peak} MiB; bystander {alone} \
         alone, {during} during; SIGTERM → exit in {took:?}",
        ids.len()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    during.holds_against(&alone);
}

// ----- malformed entries ------------------------------------------------

/// Malformed entries written straight into a subscriber stream (a
/// misbehaving producer, or a LeanMQ requeue of junk) end in that
/// subscriber's DLQ with a reason, kept whole, and do not block it: the
/// good entry after them is handled. Includes a dead letter of the bus DLQ
/// requeued as is, and a payload over the default limit of 1 MiB.
#[test]
fn malformed_entries_in_a_subscriber_stream_are_dead_lettered_there() {
    let _attack = one_attack_at_a_time();
    let world = World::probe();
    let host = world.host();
    let mut conn = world.conn();
    let stream = "events:sub:probe";

    // What the bus dead-letters for unparseable data, requeued as LeanMQ's
    // requeue_messages would: the dead letter's object plus `_requeues`.
    xadd(&mut conn, "events:all", "not json at all");
    eventually("the bus dead-letters it", WAIT, || {
        len(&mut conn, "events:all:dlq") == 1
    });
    let mut requeued = data_of(&mut conn, "events:all:dlq").remove(0);
    requeued["_requeues"] = json!([{"timestamp": 2.0, "from_dlq": "all", "to_queue": "sub:probe"}]);

    xadd_field(&mut conn, stream, "payload", b"{}");
    xadd(&mut conn, stream, "{not json");
    xadd(&mut conn, stream, "[1, 2]");
    xadd(&mut conn, stream, "42");
    xadd(&mut conn, stream, "\"a string\"");
    xadd(&mut conn, stream, r#"{"event_id": "no-type"}"#);
    xadd(
        &mut conn,
        stream,
        r#"{"event_type": 7, "event_id": "numeric-type"}"#,
    );
    xadd(
        &mut conn,
        stream,
        r#"{"event_type": "", "event_id": "empty-type"}"#,
    );
    xadd_field(
        &mut conn,
        stream,
        "data",
        b"{\"event_type\": \"Ping\", \"x\": \"\xc3\x28\"}",
    );
    xadd(
        &mut conn,
        stream,
        &sized_event("too-big", (1 << 20) + 1).to_string(),
    );
    xadd(&mut conn, stream, &requeued.to_string());
    let good = "good-after-junk";
    xadd(
        &mut conn,
        stream,
        &json!({"event_type": "Ping", "event_id": good}).to_string(),
    );

    eventually("the good entry is handled after the junk", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{good}"))
    });
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe"])
    });
    let dead = data_of(&mut conn, "events:sub:probe:dlq");
    assert_eq!(dead.len(), 11, "{dead:#?}");
    for d in &dead {
        let failure = &d["_failures"].as_array().unwrap().last().unwrap();
        assert_eq!(failure["kind"], "malformed", "{d:#}");
        assert_eq!(failure["subscriber"], "probe", "{d:#}");
        assert!(
            failure["reason"]
                .as_str()
                .unwrap()
                .starts_with("probe: malformed entry: "),
            "{d:#}"
        );
    }
    let reasons = dlq_reasons(&mut conn, "events:sub:probe:dlq");
    for expected in [
        "entry has no `data` field",
        "`data` is not JSON",
        "`data` is an array, not a JSON object",
        "`data` is a number, not a JSON object",
        "`data` is a string, not a JSON object",
        "`data` is not UTF-8",
        "`data` is 1048577 bytes, over the limit of 1048576",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(expected)).count(),
            1,
            "one reason mentions {expected:?}: {reasons:#?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("`data` has no string `event_type`"))
            .count(),
        4,
        "missing, numeric, empty, and the requeued dead letter: {reasons:#?}"
    );
    // Kept whole: what was not an object under `_raw`/`_raw_hex`/`_fields`,
    // objects as they were, the requeued one with both failures.
    assert!(dead.iter().any(|d| d["_raw"] == "{not json"));
    assert!(dead.iter().any(|d| d["_fields"]["payload"] == "{}"));
    assert!(dead.iter().any(|d| d["_raw_hex"].is_string()));
    assert!(dead.iter().any(|d| d["event_id"] == "numeric-type"));
    let twice = dead
        .iter()
        .find(|d| d["_raw"] == "not json at all")
        .expect("the requeued dead letter");
    assert_eq!(twice["_failures"].as_array().unwrap().len(), 2);
    assert_eq!(twice["_requeues"][0]["to_queue"], "sub:probe");
    assert_eq!(
        len(&mut conn, "events:all:dlq"),
        1,
        "nothing new in the bus DLQ"
    );
    assert_eq!(state(&mut conn, "probe")["count"], "1");
    still_serves(&world, &["probe"]);
    assert_eq!(host.stop().code(), Some(0));
}

/// 1,000,000 control characters on `events:all` (text, not JSON, under
/// the 1 MiB limit) become a dead letter of about 1 MiB, not of the 6 MB
/// their escaped copy would take: `_raw` is cut to `max_payload_bytes`
/// once escaped, and the letter says it was cut and how big the entry
/// was. The event after it is routed.
#[test]
fn text_that_escaping_would_multiply_is_dead_lettered_within_the_limit() {
    let _attack = one_attack_at_a_time();
    let world = World::probe();
    let _host = world.host();
    let mut conn = world.conn();
    let controls = vec![1u8; 1_000_000];
    let stream_id = xadd_field(&mut conn, "events:all", "data", &controls);
    let after = publish(&mut conn, "Ping", json!({}));
    eventually("the event after it is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{after}"))
    });
    let raw: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg("events:all:dlq")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(raw.len(), 1, "one dead letter");
    let (_, data) = raw[0].1.iter().find(|(k, _)| k == "data").unwrap();
    eprintln!(
        "1,000,000 control characters dead-lettered as {} bytes",
        data.len()
    );
    assert!(
        data.len() <= (1 << 20) + 4096,
        "a dead letter of {} bytes in Redis",
        data.len()
    );
    let letter: Value = serde_json::from_slice(data).unwrap();
    assert_eq!(letter["_raw_truncated"], true);
    assert_eq!(letter["_raw_bytes"], 1_000_000);
    let kept = letter["_raw"].as_str().unwrap();
    assert!(
        kept.len() > 170_000 && kept.bytes().all(|b| b == 1),
        "{} characters kept",
        kept.len()
    );
    assert_eq!(
        letter["_failures"][0]["kind"], "malformed",
        "{:.300}",
        letter
    );
    assert_eq!(entries(&mut conn, "events:all")[0].0, stream_id);
}

/// A `Ping` event whose `data` is exactly `size` bytes.
fn sized_event(id: &str, size: usize) -> Value {
    let mut event = json!({"event_type": "Ping", "event_id": id, "pad": ""});
    let bare = event.to_string().len();
    assert!(size >= bare);
    event["pad"] = "x".repeat(size - bare).into();
    assert_eq!(event.to_string().len(), size);
    event
}

/// On `events:all`, with the default configuration: the payload limit is
/// 1 MiB exactly (an event of 1,048,576 bytes is routed and handled, one
/// byte more is dead-lettered unread), and the kinds of "not an object"
/// and "no `event_type`" that core.rs does not publish (a number, a
/// string, `null`; a numeric or empty `event_type`) are dead-lettered with
/// their reason, while the events around them flow.
#[test]
fn the_bus_enforces_the_default_payload_limit_and_every_shape_of_bad_data() {
    let _attack = one_attack_at_a_time();
    let world = World::probe();
    let host = world.host();
    let mut conn = world.conn();

    let at_limit = sized_event("at-limit", 1 << 20);
    xadd(&mut conn, "events:all", &at_limit.to_string());
    xadd(
        &mut conn,
        "events:all",
        &sized_event("over-limit", (1 << 20) + 1).to_string(),
    );
    for text in [
        "3.5",
        "\"Ping\"",
        "null",
        r#"{"event_type": 7, "event_id": "numeric"}"#,
        r#"{"event_type": "", "event_id": "empty"}"#,
    ] {
        xadd(&mut conn, "events:all", text);
    }
    let last = publish(&mut conn, "Ping", json!({}));

    eventually("the good events are handled", WAIT, || {
        let probe = state(&mut conn, "probe");
        probe.contains_key("seen:at-limit") && probe.contains_key(&format!("seen:{last}"))
    });
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe"])
    });
    let reasons = dlq_reasons(&mut conn, "events:all:dlq");
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    for expected in [
        "`data` is 1048577 bytes, over the limit of 1048576",
        "`data` is a number, not a JSON object",
        "`data` is a string, not a JSON object",
        "`data` is null, not a JSON object",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(expected)).count(),
            1,
            "one reason mentions {expected:?}: {reasons:#?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("`data` has no string `event_type`"))
            .count(),
        2,
        "{reasons:#?}"
    );
    let copied = data_of(&mut conn, "events:sub:probe");
    assert_eq!(copied.len(), 2, "only the two good events are routed");
    assert_eq!(
        copied[0], at_limit,
        "the event at the limit is copied unchanged"
    );
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert_eq!(host.stop().code(), Some(0));
}

// ----- bad configs ------------------------------------------------------

/// `run` refuses, with the same file:line message as `check`, the config
/// problems core.rs shows only through `check`: a TOML syntax error and a
/// missing plugin file; it exits 1 without touching Redis.
#[test]
fn run_refuses_a_syntax_error_and_a_missing_plugin_like_check() {
    let _attack = one_attack_at_a_time();
    let world = World::new(&["probe.wasm"], "");
    let file = world.config().display().to_string();
    let mut conn = world.conn();
    let keys_before: Vec<String> = conn.keys("*").unwrap();

    world.configure("[subscribers.probe\nplugin = \"probe.wasm\"\n");
    let (check, run) = world.refused();
    let at = format!("{file}:{}:", world.line_of("[subscribers.probe"));
    assert!(check.starts_with(&at), "{check}");
    assert!(run.starts_with(&at), "{run}");
    assert_eq!(run.trim(), check.trim(), "the same message");

    world.configure("[subscribers.probe]\nplugin = \"gone.wasm\"\n");
    let (check, run) = world.refused();
    let expected = format!(
        "{file}:{}:10: subscribers.probe.plugin: plugin file",
        world.line_of("plugin = \"gone.wasm\"")
    );
    assert!(check.starts_with(&expected), "{check}");
    assert!(run.starts_with(&expected), "{run}");
    assert!(run.contains("gone.wasm not found"), "{run}");

    let keys_after: Vec<String> = conn.keys("*").unwrap();
    assert_eq!(keys_after, keys_before, "a refused run writes nothing");
}
