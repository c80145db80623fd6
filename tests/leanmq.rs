//! LeanMQ compatibility end to end: the real `eventhost` binary, a real
//! `redis-server`, and the real LeanMQ 0.2 client in python3 on the other
//! side. Producers, queue tools, DLQ tools and consumers written for LeanMQ
//! must work on eventhost's streams unchanged.
//!
//! The python side lives in `tests/python/`: one small script per LeanMQ
//! use, printing its findings as JSON for these tests to assert on.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::streams::StreamInfoGroupsReply;
use redis::Commands;
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// How long one python script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "pip install leanmq==0.2.0";

/// Fails the test unless python3 can import LeanMQ 0.2 (checked once).
fn require_leanmq() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-B",
                "-c",
                "import importlib.metadata as m, leanmq; print(m.version('leanmq'))",
            ])
            .output()
            .map_err(|e| format!("cannot run python3 ({e}); then {INSTALL_HINT}"))?;
        if !out.status.success() {
            return Err(format!(
                "python3 cannot import leanmq: {INSTALL_HINT}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !version.starts_with("0.2.") {
            return Err(format!(
                "these tests target LeanMQ 0.2, python3 has {version}: {INSTALL_HINT}"
            ));
        }
        Ok(())
    });
    if let Err(message) = checked {
        panic!("{message}");
    }
}

/// Runs `tests/python/<script> --port <world's redis> <args>` and returns
/// the JSON it prints; fails the test if it exits non-zero or overruns.
fn python(world: &World, script: &str, args: &[&str]) -> Value {
    require_leanmq();
    let dir: PathBuf = root().join("tests/python");
    let out_dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let mut child = Command::new("python3")
        .arg("-B") // no __pycache__ in the source tree
        .arg(dir.join(script))
        .args(["--port", &world.redis.port.to_string()])
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("running python3");
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} {args:?} ran past {SCRIPT_LIMIT:?}:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&stdout).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.success(),
        "{script} {args:?} failed ({status}):\n{stderr}{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The names of the consumer groups of `stream`, sorted.
fn groups(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    let reply: StreamInfoGroupsReply = conn.xinfo_groups(stream).unwrap();
    let mut names: Vec<String> = reply.groups.into_iter().map(|g| g.name).collect();
    names.sort();
    names
}

/// What LeanMQ's `get_messages` returns from the probe's DLQ right now.
fn read_probe_dlq(world: &World) -> Vec<Value> {
    let read = python(
        world,
        "dead_letters.py",
        &["--queue", "sub:probe", "read", "--count", "10"],
    );
    read["messages"].as_array().unwrap().clone()
}

/// LeanMQ's `requeue_messages` from the probe's DLQ back to its stream.
fn requeue_to_probe(world: &World, dlq_id: &str) {
    let requeued = python(
        world,
        "dead_letters.py",
        &["--queue", "sub:probe", "requeue", dlq_id],
    );
    assert_eq!(requeued["requeued"], 1);
}

/// What an operator does once the cause of a rejection is fixed.
fn allow(conn: &mut redis::Connection, event_id: &str) {
    let _: i64 = conn
        .hset("events:state:probe", format!("allow:{event_id}"), "1")
        .unwrap();
}

/// Events a LeanMQ producer publishes are handled, whichever way it sends
/// them: `Queue.send_message`, a `transaction()` of two events, and the
/// EventBus example's `Event.to_dict()` objects; before eventhost ever ran
/// (LeanMQ then creates `events:all`, its group and its metadata itself) and
/// while it runs. An event without `event_id` is known by LeanMQ's
/// `_metadata.id`.
#[test]
fn leanmq_producers_events_are_handled() {
    let world = World::new(
        &["probe.wasm"],
        "[subscribers.probe]\nplugin = \"probe.wasm\"\nevents = [\"Ping\", \"OrderCreatedEvent\"]\n",
    );
    let before = python(&world, "produce.py", &[]);
    let host = world.host();
    let during = python(&world, "produce.py", &[]);
    let mut conn = world.conn();

    let ids: Vec<String> = [&before, &during]
        .iter()
        .flat_map(|sent| {
            ["send_message", "transaction", "event_bus"]
                .iter()
                .flat_map(|way| sent[*way].as_array().unwrap().clone())
        })
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 10);
    eventually("every LeanMQ event is handled", WAIT, || {
        seen_all(&mut conn, "probe", &ids) && settled(&mut conn, &["probe"])
    });

    let probe = state(&mut conn, "probe");
    for id in &ids {
        assert_eq!(probe[&format!("seen:{id}")], "1", "{id}: on the first try");
    }
    assert_eq!(probe["count"], "10");
    assert_eq!(len(&mut conn, "events:all:dlq"), 0);
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    // LeanMQ and eventhost agree on the group: no second one appeared.
    assert_eq!(groups(&mut conn, "events:all"), ["all-group"]);

    // The subscriber stream holds what LeanMQ sent, untouched.
    let copies = data_of(&mut conn, "events:sub:probe");
    assert_eq!(copies.len(), 10);
    let sent = data_of(&mut conn, "events:all");
    assert!(copies.iter().all(|copy| sent.contains(copy)));
    let metadata_only = before["transaction"][1].as_str().unwrap();
    let copy = copies
        .iter()
        .find(|d| d["_metadata"]["id"] == metadata_only)
        .unwrap();
    assert!(copy.get("event_id").is_none(), "{copy}");
    assert_eq!(copy["via"], "transaction");
    let order_id = before["event_bus"][1].as_str().unwrap();
    let order = copies.iter().find(|d| d["event_id"] == order_id).unwrap();
    assert_eq!(order["event_type"], "OrderCreatedEvent");
    assert_eq!(order["total"], 99.5);
    assert_eq!(order["items"], json!([{"sku": "A", "qty": 2}]));
    assert!(order["timestamp"].as_f64().unwrap() > 1.0e9);
    assert!(order["_metadata"]["id"].is_string());
    assert_eq!(host.stop().code(), Some(0));
}

/// eventhost's queues look right to LeanMQ's tools: `list_queues()` lists
/// the bus and the subscriber with their DLQs, groups and counts;
/// `get_queue`, `get_dead_letter_queue` and `get_info()` find eventhost's
/// own groups (LeanMQ creates a group of its own whenever the name it
/// expects does not exist, so a single group per stream proves the names
/// match).
#[test]
fn leanmq_tools_see_eventhosts_queues() {
    let world = World::probe();
    let _host = world.host();
    let mut conn = world.conn();
    let expected = [
        ("events:all", false, "all-group"),
        ("events:all:dlq", true, "all-group-dlq"),
        ("events:sub:probe", false, "sub:probe-group"),
        ("events:sub:probe:dlq", true, "sub:probe-group-dlq"),
    ];

    // `get_info()` is asked only while the streams are empty: LeanMQ 0.2's
    // computes `float(<first entry id>)`, a ValueError on any stream that
    // holds an entry (its own EventBus's streams too).
    let fresh = python(
        &world,
        "queues.py",
        &["--queue", "all", "--queue", "sub:probe", "--info"],
    );
    for (queue, dlq) in [
        ("all", "events:all:dlq"),
        ("sub:probe", "events:sub:probe:dlq"),
    ] {
        let lookup = &fresh["lookups"][queue];
        assert_eq!(lookup["queue"]["name"], format!("events:{queue}"));
        assert_eq!(lookup["queue"]["consumer_group"], format!("{queue}-group"));
        assert_eq!(lookup["queue"]["is_dlq"], false);
        assert_eq!(lookup["dlq"]["name"], dlq, "get_dead_letter_queue");
        assert_eq!(
            lookup["dlq"]["consumer_group"],
            format!("{queue}-group-dlq")
        );
        assert_eq!(lookup["dlq"]["is_dlq"], true);
    }
    for (name, is_dlq, group) in expected {
        let info = &fresh["info"][name];
        assert_eq!(info["name"], name, "get_info of {name}: {info}");
        assert_eq!(info["is_dlq"], is_dlq, "{name}");
        assert_eq!(info["consumer_group"], group, "{name}");
        assert_eq!(info["message_count"], 0, "{name}");
        assert_eq!(info["pending_messages"], 0, "{name}");
        assert_eq!(groups(&mut conn, name), [group], "the groups of {name}");
    }

    // Some traffic: handled, dead-lettered, unrouted, malformed.
    publish(&mut conn, "Ping", json!({}));
    publish(&mut conn, "Ping", json!({}));
    publish(&mut conn, "Ping", json!({"act": "reject"}));
    publish(&mut conn, "Nobody", json!({}));
    xadd(&mut conn, "events:all", "not json");
    eventually("the traffic is through", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 1
            && len(&mut conn, "events:all:dlq") == 1
            && settled(&mut conn, &["probe"])
    });

    let listed = python(&world, "queues.py", &[]);
    let queues: HashMap<&str, &Value> = listed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap(), q))
        .collect();
    let mut names: Vec<&str> = queues.keys().copied().collect();
    names.sort();
    assert_eq!(names, expected.map(|(name, _, _)| name), "list_queues()");
    for ((name, is_dlq, group), count) in expected.into_iter().zip([5, 1, 3, 1]) {
        let queue = queues[name];
        assert_eq!(queue["is_dlq"], is_dlq, "{name}");
        assert_eq!(queue["consumer_group"], group, "{name}");
        assert_eq!(queue["message_count"], count, "{name}");
        assert_eq!(queue["pending_messages"], 0, "{name}");
        assert!(queue["created_at"].as_f64().unwrap() > 1.0e9, "{name}");
    }
}

/// The DLQ round trip with LeanMQ's own tools: eventhost dead-letters a
/// rejected event; `get_dead_letter_queue("sub:probe").get_messages()`
/// returns it with the failure in `_failures`; once an operator has fixed
/// the cause, `requeue_messages` to `get_queue("sub:probe")` puts it back
/// and eventhost handles it.
#[test]
fn a_dead_letter_is_requeued_with_leanmqs_tools_and_handled() {
    let world = World::probe();
    let _host = world.host();
    let mut conn = world.conn();
    let id = publish(
        &mut conn,
        "Ping",
        json!({"act": "reject_unless_allowed", "order": 7}),
    );
    eventually("eventhost dead-letters it", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 1 && settled(&mut conn, &["probe"])
    });
    assert!(!state(&mut conn, "probe").contains_key(&format!("seen:{id}")));

    let messages = read_probe_dlq(&world);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let dead = &messages[0];
    assert_eq!(dead["delivery_count"], 1);
    let data = &dead["data"];
    assert_eq!(data["event_id"], id.as_str());
    assert_eq!(data["event_type"], "Ping");
    assert_eq!(data["order"], 7);
    assert!(
        data.get("_metadata").is_none(),
        "LeanMQ takes it out: {data}"
    );
    let failures = data["_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    let failure = failures.last().unwrap();
    assert_eq!(
        failure["reason"],
        format!("probe: rejected: {id} is not allowed yet")
    );
    assert_eq!(failure["kind"], "reject");
    assert_eq!(failure["subscriber"], "probe");
    assert_eq!(failure["attempt"], 1);
    assert!(failure["timestamp"].as_f64().unwrap() > 1.0e9);
    assert_eq!(
        dead["timestamp"], failure["timestamp"],
        "_metadata refreshed"
    );

    allow(&mut conn, &id);
    requeue_to_probe(&world, dead["id"].as_str().unwrap());
    eventually("eventhost handles it again", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
            && settled(&mut conn, &["probe"])
    });
    let probe = state(&mut conn, "probe");
    assert_eq!(probe[&format!("seen:{id}")], "1", "a fresh entry");
    assert_eq!(
        probe["count"], "1",
        "committed once: the rejection left nothing"
    );
    // Empty. (The DLQ's group still lists the entry as pending: LeanMQ's
    // `requeue_messages` deletes it from a DLQ with XDEL and no XACK; that
    // group is LeanMQ's alone, eventhost never reads it.)
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);

    // What LeanMQ put back is the dead letter plus its `_requeues` record.
    let copies = data_of(&mut conn, "events:sub:probe");
    assert_eq!(copies.len(), 2);
    let requeued = &copies[1];
    assert_eq!(requeued["event_id"], id.as_str());
    assert_eq!(requeued["_metadata"]["id"], id.as_str());
    assert_eq!(requeued["_failures"].as_array().unwrap().len(), 1);
    assert_eq!(requeued["_requeues"][0]["from_dlq"], "events:sub:probe:dlq");
    assert_eq!(requeued["_requeues"][0]["to_queue"], "events:sub:probe");
}

/// A requeued event that fails again is dead-lettered again with its
/// history: the first failure kept, the new one appended, LeanMQ's
/// `_requeues` kept; LeanMQ's `get_messages` reads it, and a second requeue
/// after the fix succeeds.
#[test]
fn a_requeued_event_that_fails_again_keeps_every_failure() {
    let world = World::probe();
    let _host = world.host();
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({"act": "reject_unless_allowed"}));
    eventually("eventhost dead-letters it", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 1 && settled(&mut conn, &["probe"])
    });
    let first = read_probe_dlq(&world).remove(0);
    let first_failure = first["data"]["_failures"][0].clone();

    // Requeued before the cause is fixed: it fails again.
    requeue_to_probe(&world, first["id"].as_str().unwrap());
    eventually("eventhost dead-letters it again", WAIT, || {
        settled(&mut conn, &["probe"])
            && data_of(&mut conn, "events:sub:probe:dlq")
                .iter()
                .any(|d| d["_failures"].as_array().map(Vec::len) == Some(2))
    });
    let messages = read_probe_dlq(&world);
    assert_eq!(messages.len(), 1, "only the new dead letter: {messages:#?}");
    let second = &messages[0];
    assert_ne!(second["id"], first["id"]);
    let data = &second["data"];
    assert_eq!(data["event_id"], id.as_str());
    let failures = data["_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{data}");
    assert_eq!(
        failures[0], first_failure,
        "the old failure is kept as it was"
    );
    assert_eq!(
        failures[1]["reason"],
        format!("probe: rejected: {id} is not allowed yet")
    );
    assert_eq!(failures[1]["attempt"], 1, "a requeue starts afresh");
    assert!(
        failures[1]["timestamp"].as_f64().unwrap() > failures[0]["timestamp"].as_f64().unwrap()
    );
    assert_eq!(data["_requeues"].as_array().unwrap().len(), 1);

    // Fixed, requeued once more: handled.
    allow(&mut conn, &id);
    requeue_to_probe(&world, second["id"].as_str().unwrap());
    eventually("eventhost handles it", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
            && settled(&mut conn, &["probe"])
    });
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert_eq!(state(&mut conn, "probe")["count"], "1");
    let last = data_of(&mut conn, "events:sub:probe").pop().unwrap();
    assert_eq!(last["_failures"].as_array().unwrap().len(), 2);
    assert_eq!(last["_requeues"].as_array().unwrap().len(), 2);
}

/// What eventhost writes is valid LeanMQ data: a LeanMQ consumer with a
/// group of its own on a subscriber stream reads, with `get_messages`, the
/// copy of a producer's event, an event a plugin published and one the
/// `eventhost publish` CLI published, each with `event_type`, `event_id`
/// and its data intact, and `_metadata` where LeanMQ looks for it; reading
/// and acknowledging in its own group takes nothing from eventhost.
#[test]
fn leanmq_consumers_read_what_eventhost_writes() {
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
[subscribers.probe.config]
follow_up = "Pong"

[subscribers.audit]
plugin = "probe.wasm"
events = ["*"]
"#,
    );
    let _host = world.host();
    let mut conn = world.conn();
    let reader = ["--queue", "sub:audit", "--group", "leanmq-reader"];
    python(&world, "consume.py", &[&reader[..], &["join"]].concat());

    let ping = publish(&mut conn, "Ping", json!({"n": 1}));
    let hello_data = json!({
        "text": "héllo ☕",
        "amount": 12.75,
        "items": [{"sku": "A", "qty": 2}],
        "big": 9007199254740993u64,
        "nothing": null,
    });
    let out = world.eventhost(&["publish", "Hello", &hello_data.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("audit handles Ping, Pong and Hello", WAIT, || {
        state(&mut conn, "audit").get("count").map(String::as_str) == Some("3")
            && settled(&mut conn, &["probe", "audit"])
    });

    let read = python(
        &world,
        "consume.py",
        &[&reader[..], &["read", "--count", "3"]].concat(),
    );
    assert_eq!(read["acked"], 3);
    let messages = read["messages"].as_array().unwrap();
    let stream_ids: Vec<String> = entries(&mut conn, "events:sub:audit")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let read_ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(read_ids, stream_ids, "LeanMQ's ids are the stream ids");
    let by_type: HashMap<&str, &Value> = messages
        .iter()
        .map(|m| (m["data"]["event_type"].as_str().unwrap(), m))
        .collect();
    for m in messages {
        assert_eq!(m["delivery_count"], 1, "{m}");
        assert!(m["data"].get("_metadata").is_none(), "{m}");
    }

    // A producer's event: copied verbatim, `_metadata` included.
    let m = by_type["Ping"];
    assert_eq!(
        m["data"],
        json!({"n": 1, "event_type": "Ping", "event_id": ping})
    );
    assert_eq!(m["timestamp"], 1.0, "from the producer's _metadata");

    // A plugin's follow-up: a complete LeanMQ event.
    let m = by_type["Pong"];
    assert_eq!(m["data"]["source_id"], ping.as_str());
    assert_eq!(m["data"]["source_type"], "Ping");
    assert!(!m["data"]["event_id"].as_str().unwrap().is_empty());
    // `timestamp` is when the plugin published, `_metadata.timestamp` when
    // the host committed it (LeanMQ's EventBus example likewise stamps the
    // event when built and the message when sent).
    let published = m["data"]["timestamp"].as_f64().unwrap();
    let sent = m["timestamp"].as_f64().unwrap();
    assert!(
        published > 1.0e9 && (0.0..5.0).contains(&(sent - published)),
        "{m}"
    );

    // The CLI's event: the data as given, plus the LeanMQ event fields.
    let m = by_type["Hello"];
    let mut expected = hello_data.as_object().unwrap().clone();
    expected.insert("event_type".into(), "Hello".into());
    expected.insert("event_id".into(), m["data"]["event_id"].clone());
    expected.insert("timestamp".into(), m["timestamp"].clone());
    assert_eq!(m["data"], Value::Object(expected));
    assert!(String::from_utf8_lossy(&out.stdout).contains(m["data"]["event_id"].as_str().unwrap()));

    // The reader's group is its own; eventhost's is untouched.
    assert_eq!(
        groups(&mut conn, "events:sub:audit"),
        ["leanmq-reader", "sub:audit-group"]
    );
    assert_eq!(pending(&mut conn, "events:sub:audit", "leanmq-reader"), 0);
    let audit = state(&mut conn, "audit");
    let pong = by_type["Pong"]["data"]["event_id"].as_str().unwrap();
    for id in [ping.as_str(), pong] {
        assert_eq!(audit[&format!("seen:{id}")], "1");
    }
}

/// The Redis ACL users of docs/security.md, applied to a real server: the
/// host runs the bus as `eventhost` (its prefix's keys only, nothing
/// `@dangerous`); a LeanMQ producer, as the `default` user (LeanMQ 0.2 logs
/// in with a password only), appends to the ingress and can write nowhere
/// else, nor read what subscribers keep; an operator user reads `status`
/// and cannot publish. Each refusal is Redis's `NOPERM`, so the proof is the
/// server's own.
#[test]
fn under_acl_users_a_producer_can_append_to_the_ingress_only() {
    let world = World::new(&["probe.wasm"], "");
    let port = world.redis.port;
    let mut setup = world.conn();
    let users: [&[&str]; 4] = [
        &["admin", "on", ">admin-pass-0123456789", "~*", "&*", "+@all"],
        &[
            "eventhost",
            "on",
            ">host-pass-0123456789",
            "resetkeys",
            "~events:*",
            "resetchannels",
            "-@all",
            "+@stream",
            "+@hash",
            "+@set",
            "+@sortedset",
            "+@string",
            "+@keyspace",
            "+@scripting",
            "+@connection",
            "+@transaction",
            "+time",
            "-@dangerous",
        ],
        &[
            "operator",
            "on",
            ">operator-pass-0123456789",
            "resetkeys",
            "%R~events:*",
            "resetchannels",
            "-@all",
            "+@read",
            "+@connection",
            "-@dangerous",
        ],
        // Last: once `default` needs a password, this connection's own
        // login is the last thing it did as the old default.
        &[
            "default",
            "on",
            "resetpass",
            ">producer-pass-0123456",
            "resetkeys",
            "%W~events:all",
            "%R~events:all:metadata",
            "resetchannels",
            "-@all",
            "+xadd",
            // LeanMQ makes sure its group exists (BUSYGROUP: it does).
            "+xgroup|create",
            "+exists",
            "+hgetall",
            "+hget",
            "+ping",
        ],
    ];
    for user in users {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .query::<()>(&mut setup)
            .unwrap_or_else(|e| panic!("ACL SETUSER {user:?}: {e}"));
    }
    let login = |user: &str, pass: &str| -> redis::Connection {
        redis::Client::open(format!("redis://{user}:{pass}@127.0.0.1:{port}/0"))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let mut admin = login("admin", "admin-pass-0123456789");

    let host_url = format!("redis://eventhost:host-pass-0123456789@127.0.0.1:{port}/0");
    let operator_url = format!("redis://operator:operator-pass-0123456789@127.0.0.1:{port}/0");
    let header = world.header().replace(&world.redis.url(), &host_url);
    world.write_config(&format!(
        "{header}[subscribers.probe]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n"
    ));
    let host = world.host();
    eventually("the host creates the ingress", WAIT, || {
        admin.exists::<_, bool>("events:all:metadata").unwrap()
    });

    let sent = python(
        &world,
        "produce_restricted.py",
        &["--password", "producer-pass-0123456", "--count", "5"],
    );
    let ids: Vec<String> = sent["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    eventually("the producer's events are handled", WAIT, || {
        seen_all(&mut admin, "probe", &ids) && settled(&mut admin, &["probe"])
    });
    assert_eq!(len(&mut admin, "events:sub:probe:dlq"), 0);

    let mut producer = login("default", "producer-pass-0123456");
    let refused = |conn: &mut redis::Connection, cmd: &mut redis::Cmd| {
        let err = cmd
            .query::<redis::Value>(conn)
            .expect_err("the ACL lets this through");
        assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    };
    let forged = ["event_type", "Ping", "event_id", "forged"];
    refused(
        &mut producer,
        redis::cmd("XADD")
            .arg("events:sub:probe")
            .arg("*")
            .arg(&forged),
    );
    refused(
        &mut producer,
        redis::cmd("XADD")
            .arg("events:all:dlq")
            .arg("*")
            .arg(&forged),
    );
    refused(
        &mut producer,
        redis::cmd("HSET")
            .arg("events:state:probe")
            .arg("count")
            .arg("0"),
    );
    refused(
        &mut producer,
        redis::cmd("HGETALL").arg("events:state:probe"),
    );
    refused(
        &mut producer,
        redis::cmd("XRANGE").arg("events:all").arg("-").arg("+"),
    );
    refused(&mut producer, redis::cmd("DEL").arg("events:all"));
    refused(
        &mut producer,
        redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg("events:all")
            .arg("all-group"),
    );
    refused(&mut producer, &mut redis::cmd("FLUSHALL"));
    assert_eq!(state(&mut admin, "probe")["count"], "5");

    let mut operator = login("operator", "operator-pass-0123456789");
    refused(
        &mut operator,
        redis::cmd("XADD").arg("events:all").arg("*").arg(&forged),
    );
    let status = world.eventhost(&["status", "--url", &operator_url]);
    assert!(
        status.status.success(),
        "status as the read-only operator: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("probe"));
    let publish = world.eventhost(&["publish", "--url", &operator_url, "Ping", "{}"]);
    assert!(!publish.status.success(), "the operator published");
    let said = String::from_utf8_lossy(&publish.stderr);
    assert!(
        said.contains("cannot publish to events:all") && said.contains("NoPerm"),
        "{said}"
    );
    // `eventhost publish` needs no more than a LeanMQ producer does.
    let producer_url = format!("redis://:producer-pass-0123456@127.0.0.1:{port}/0");
    let publish = world.eventhost(&["publish", "--url", &producer_url, "Ping", "{}"]);
    assert!(
        publish.status.success(),
        "publish as the producer: {}",
        String::from_utf8_lossy(&publish.stderr)
    );
    eventually("the published event is handled", WAIT, || {
        state(&mut admin, "probe")["count"] == "6"
    });
    assert_eq!(len(&mut admin, "events:all"), 6);
    assert_eq!(host.stop().code(), Some(0));
}
