//! End-to-end tests of the sandbox and of bad input: what a plugin cannot
//! reach (files, environment, sockets, another plugin's state), that a
//! broken instance is never reused, that limits hold per subscriber, and
//! that every kind of bad input ends in a clear error or a DLQ reason while
//! the host keeps running. The real `eventhost` binary against a real
//! `redis-server`, asserting on what ends up in Redis.
//!
//! `core.rs` already proves the routing of malformed entries on
//! `events:all`, the reason of every failure kind, and `check`/`run` on a
//! bad config and on files that are not plugins; what is here completes
//! that list (see each test).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Publishes a plain event to each of `subscribers` (each subscribed to
/// `Ping`) and waits until every one of them has handled it: the host
/// still serves.
fn still_serves(world: &World, subscribers: &[&str]) {
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the host still handles events", WAIT, || {
        subscribers
            .iter()
            .all(|s| state(&mut conn, s).contains_key(&format!("seen:{id}")))
    });
}

// ----- the sandbox ------------------------------------------------------

/// A plugin gets no files (read, list, write), no environment, no sockets
/// (TCP connect and listen, UDP, name lookup): the snoop plugin records
/// each attempt as `denied: <error>`. The host runs with an extra
/// variable `SECRET` that must not leak, and the snoop connects to the
/// test's own `redis-server`, which is listening, so the refusal is the
/// sandbox's and not a closed port's.
#[test]
fn a_plugin_gets_no_files_environment_or_sockets() {
    let world = World::new(&["snoop.wasm", "probe.wasm"], "");
    let redis_addr = format!("127.0.0.1:{}", world.redis.port);
    std::net::TcpStream::connect(&redis_addr)
        .expect("the test's redis-server listens: a plugin's connect could succeed");
    world.configure(&format!(
        r#"
[subscribers.snoop]
plugin = "snoop.wasm"
events = ["Snoop"]
[subscribers.snoop.config]
connect = "{redis_addr}"

[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
"#
    ));
    let host = world.host_with_env(&[("SECRET", "1"), ("EVENTHOST_SANDBOX_TEST", "visible?")]);
    let mut conn = world.conn();

    let id = publish(&mut conn, "Snoop", json!({}));
    eventually("the snoop's event is handled", WAIT, || {
        state(&mut conn, "snoop").contains_key("net") && settled(&mut conn, &["snoop"])
    });
    assert_eq!(
        len(&mut conn, "events:sub:snoop:dlq"),
        0,
        "snooping is not a failure"
    );
    let snoop = state(&mut conn, "snoop");
    assert!(snoop.contains_key("clock"), "the snoop ran to the end");
    for key in [
        "fs",
        "fs_dir",
        "fs_write",
        "env",
        "net",
        "net_listen",
        "udp",
        "dns",
    ] {
        assert!(
            snoop[key].starts_with("denied: "),
            "{key} must be denied (event {id}): {snoop:#?}"
        );
    }
    assert_eq!(snoop["env"], "denied: no environment variables visible");
    let net = snoop["net"].to_lowercase();
    assert!(
        !net.contains("refused") && !net.contains("timed out"),
        "the port listens, so only the sandbox can have said no: {net}"
    );
    for dir in [std::env::current_dir().unwrap(), world.dir.path().into()] {
        assert!(
            !dir.join("snoop-was-here.txt").exists(),
            "the snoop wrote into {}",
            dir.display()
        );
    }

    still_serves(&world, &["probe"]);
    assert_eq!(host.stop().code(), Some(0));
}

/// What a subscriber's `grants` table opens, and nothing more: the granted
/// variable is all of its environment (not the host's `SECRET`); the granted
/// folder can be read but not written, nor left through `..`; the rest of
/// the file system stays closed.
#[test]
fn grants_open_exactly_what_they_name() {
    let world = World::new(&["snoop.wasm"], "");
    std::fs::create_dir(world.dir.path().join("rates")).unwrap();
    std::fs::write(world.dir.path().join("rates/eur.txt"), "1.08").unwrap();
    std::fs::write(world.dir.path().join("secret.txt"), "s3cr3t").unwrap();
    world.configure(
        r#"
[subscribers.snoop]
plugin = "snoop.wasm"
events = ["Snoop"]
[subscribers.snoop.config]
read = "/rates/eur.txt"
escape = "/rates/../secret.txt"
write = "/rates/new.txt"
var = "REGION"
[subscribers.snoop.grants]
env = { REGION = "eu-west" }
dirs = { "/rates" = "rates" }
"#,
    );
    let host = world.host_with_env(&[("SECRET", "1")]);
    let mut conn = world.conn();

    publish(&mut conn, "Snoop", json!({}));
    eventually("the snoop's event is handled", WAIT, || {
        state(&mut conn, "snoop").contains_key("clock") && settled(&mut conn, &["snoop"])
    });
    let snoop = state(&mut conn, "snoop");
    assert_eq!(snoop["granted_read"], "allowed: 1.08", "{snoop:#?}");
    assert_eq!(snoop["granted_env"], "allowed: eu-west", "{snoop:#?}");
    assert_eq!(snoop["env"], "allowed: 1 variables", "{snoop:#?}");
    for key in ["granted_escape", "granted_write", "fs", "fs_dir"] {
        assert!(
            snoop[key].starts_with("denied: "),
            "{key} must be denied: {snoop:#?}"
        );
    }
    assert!(!world.dir.path().join("rates/new.txt").exists());
    assert_eq!(host.stop().code(), Some(0));
}

/// A plugin reads and writes only its own state: subscriber `b` cannot see
/// a key `a` committed through an event nor one an operator set in `a`'s
/// hash, not even by naming `a`'s Redis key; what `b` writes lands in
/// `events:state:b` only. (`b` reading its own key proves the peek works.)
#[test]
fn a_plugin_reads_and_writes_only_its_own_state() {
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.a]
plugin = "probe.wasm"
events = ["ForA"]

[subscribers.b]
plugin = "probe.wasm"
events = ["ForB"]
"#,
    );
    let mut conn = world.conn();
    let _: i64 = conn.hset("events:state:a", "secret", "s3cret").unwrap();
    let host = world.host();

    let a_event = publish(&mut conn, "ForA", json!({}));
    eventually("a handles its event", WAIT, || {
        state(&mut conn, "a").contains_key(&format!("seen:{a_event}"))
    });
    let peeks = [
        "secret",
        &format!("seen:{a_event}"),
        "events:state:a",
        "count",
    ]
    .map(|key| {
        (
            key.to_string(),
            publish(&mut conn, "ForB", json!({"act": "peek", "key": key})),
        )
    });
    eventually("b handles its peeks", WAIT, || {
        let b = state(&mut conn, "b");
        peeks
            .iter()
            .all(|(_, id)| b.contains_key(&format!("peeked:{id}")))
    });

    let b = state(&mut conn, "b");
    let peeked = |n: usize| b[&format!("peeked:{}", peeks[n].1)].as_str();
    assert_eq!(peeked(0), "<none>", "a's operator-set key");
    assert_eq!(peeked(1), "<none>", "a's committed key");
    assert_eq!(peeked(2), "<none>", "a's Redis key as a field name");
    assert_eq!(peeked(3), "4", "b's own count (its 4th event) is readable");

    // b's writes are in b's hash only; a's hash holds a's event and the
    // operator's key, nothing else.
    let a = state(&mut conn, "a");
    let a_keys: BTreeSet<String> = a.keys().cloned().collect();
    let expected: BTreeSet<String> = ["secret".to_string(), "count".to_string()]
        .into_iter()
        .chain(["seen", "build", "calls"].map(|k| format!("{k}:{a_event}")))
        .collect();
    assert_eq!(a_keys, expected, "a's hash: {a:#?}");
    assert_eq!(a["secret"], "s3cret");
    assert_eq!(a["count"], "1");
    for (_, id) in &peeks {
        assert!(b.contains_key(&format!("seen:{id}")));
    }
    let hashes: BTreeSet<String> = conn.keys("events:state:*").unwrap();
    assert_eq!(
        hashes,
        BTreeSet::from(["events:state:a".into(), "events:state:b".into()]),
        "no other state hash was written"
    );
    assert_eq!(len(&mut conn, "events:sub:b:dlq"), 0);
    assert_eq!(host.stop().code(), Some(0));
}

/// An instance that trapped, timed out or ran out of memory is thrown away:
/// the probe's instance-local call counter starts again at 1 on the next
/// event, where a reused instance (after `ok` or a `reject`) counts on.
/// One subscriber, concurrency 1, so one instance serves in stream order.
#[test]
fn an_instance_that_failed_hard_is_never_reused() {
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

/// Memory limits are per subscriber: the same event, asking for 24 MiB,
/// is dead-lettered as out of memory by a subscriber limited to 8 MiB and
/// handled by one with 64 MiB, and a hog in the small one leaves the big
/// one serving.
#[test]
fn memory_limits_hold_per_subscriber() {
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

// ----- bad plugins ------------------------------------------------------

/// A component that implements the subscriber world but also imports an
/// interface the host does not offer (`acme:ledger/api@1.0.0`) is refused
/// by `check` and by `run`, with a message naming the import.
#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_the_import() {
    let world = World::new(&["probe.wasm"], "");
    world.install("extra_import.wasm", "ledger.wasm");
    world.configure(
        r#"
[subscribers.good]
plugin = "probe.wasm"

[subscribers.ledger]
plugin = "ledger.wasm"
"#,
    );
    let (text, err) = world.refused();
    assert!(text.contains("ok: subscribers.good: probe.wasm"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("subscribers.ledger.plugin:"))
        .unwrap_or_else(|| panic!("no line about the ledger plugin: {text}"));
    assert!(
        line.starts_with(&world.config().display().to_string()),
        "{line}"
    );
    assert!(line.contains("ledger.wasm"), "names the file: {line}");
    assert!(
        line.contains("acme:ledger/api"),
        "names the missing import: {line}"
    );
    assert!(err.contains("1 plugin was refused"), "{err}");
    assert!(err.contains("acme:ledger/api"), "{err}");
    let keys: Vec<String> = world.conn().keys("*").unwrap();
    assert!(keys.is_empty(), "a refused run writes nothing: {keys:?}");
}

/// With hot reload on, the same component written over a running plugin
/// is refused, the log names the import, and the old build keeps serving.
#[test]
fn a_component_importing_what_the_host_lacks_is_refused_on_reload() {
    let world = World::watched("");
    let mut host = world.host();
    let mut conn = world.conn();
    let before = publish(&mut conn, "Ping", json!({}));
    eventually("the probe serves", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{before}"))
    });

    world.install("extra_import.wasm", "probe.wasm");
    host.wait_for_log("refused the new build");
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("refused the new build"))
        .unwrap();
    assert!(line.contains("acme:ledger/api"), "{line}");
    assert!(
        line.contains("probe keep running the loaded build"),
        "{line}"
    );

    let after = publish(&mut conn, "Ping", json!({}));
    eventually("the loaded build still serves", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{after}"))
    });
    let probe = state(&mut conn, "probe");
    assert_eq!(probe[&format!("build:{after}")], "a");
    assert!(
        !probe.keys().any(|k| k.starts_with("balance:")),
        "the refused build never ran"
    );
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert!(!host.log().contains("reloaded: build"));
    assert_eq!(host.stop().code(), Some(0));
}

// ----- bad entries and bad configs --------------------------------------

/// Malformed entries written straight into a subscriber stream (a
/// misbehaving producer, or a LeanMQ requeue of junk) end in that
/// subscriber's DLQ with a reason, kept whole, and do not block it: the
/// good entry after them is handled. Includes a dead letter of the bus DLQ
/// requeued as is, and a payload over the default limit of 1 MiB.
#[test]
fn malformed_entries_in_a_subscriber_stream_are_dead_lettered_there() {
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

/// Out-of-range limits, each reported with file, line, column and key,
/// all at once, by `check` and by `run`: the ones core.rs does not try
/// (zero concurrency and attempts, memory over 4096 MiB, a time limit over
/// half of `claim_idle_ms`, a negative backoff, bus settings of zero) and
/// a value of the wrong type.
#[test]
fn every_out_of_range_limit_is_reported_with_file_line_and_key() {
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
            "{file}:{}:16: subscribers.probe.max_attempts: must be between 1 and 1000 (got 0)",
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
            "{file}:{}:20: subscribers.probe.retry_backoff_ms: must be between 0 and 10000 (got -1)",
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

/// `run` refuses, with the same file:line message as `check`, the config
/// problems core.rs shows only through `check`: a TOML syntax error and a
/// missing plugin file; it exits 1 without touching Redis.
#[test]
fn run_refuses_a_syntax_error_and_a_missing_plugin_like_check() {
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
