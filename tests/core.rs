//! End-to-end tests of the core: the real `eventhost` binary against a real
//! `redis-server`, asserting on what ends up in Redis.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A config with the probe subscribed to `Ping` and a catch-all subscriber.
fn two_subscribers() -> World {
    World::new(
        &["probe.wasm"],
        r#"
[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
[subscribers.probe.config]
follow_up = "Pong"

[subscribers.everything]
plugin = "probe.wasm"
events = ["*"]
"#,
    )
}

#[test]
fn events_reach_every_subscriber_of_their_type() {
    let world = two_subscribers();
    let host = world.host();
    let mut conn = world.conn();

    let ping = publish(&mut conn, "Ping", json!({"n": 1}));
    let other = publish(&mut conn, "Other", json!({"n": 2}));
    // The probe publishes a Pong per Ping; "everything" gets all three.
    eventually("every event is handled", WAIT, || {
        state(&mut conn, "everything")
            .get("count")
            .map(String::as_str)
            == Some("3")
            && settled(&mut conn, &["probe", "everything"])
    });

    let probe = state(&mut conn, "probe");
    assert_eq!(probe["count"], "1", "only Ping is routed to probe");
    assert!(probe.contains_key(&format!("seen:{ping}")));
    assert!(!probe.contains_key(&format!("seen:{other}")));
    let everything = state(&mut conn, "everything");
    assert!(everything.contains_key(&format!("seen:{ping}")));
    assert!(everything.contains_key(&format!("seen:{other}")));

    // The follow-up is a complete LeanMQ event with a fresh id.
    let all = data_of(&mut conn, "events:all");
    let pong = all
        .iter()
        .find(|d| d["event_type"] == "Pong")
        .expect("a Pong");
    assert_eq!(pong["source_id"], ping.as_str());
    let pong_id = pong["event_id"].as_str().unwrap();
    assert_eq!(pong["_metadata"]["id"], pong_id);
    assert!(pong["timestamp"].as_f64().unwrap() > 1.0e9);
    assert!(everything.contains_key(&format!("seen:{pong_id}")));

    // Subscriber streams carry the producer's data unchanged.
    let copied = data_of(&mut conn, "events:sub:probe");
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0]["event_id"], ping.as_str());
    assert_eq!(copied[0]["_metadata"]["id"], ping.as_str());
    assert_eq!(host.stop().code(), Some(0));
}

#[test]
fn a_type_nobody_subscribes_to_is_acknowledged_not_left_pending() {
    let world = World::probe();
    let _host = world.host();
    let mut conn = world.conn();
    for n in 0..5 {
        publish(&mut conn, "Nobody", json!({"n": n}));
    }
    let ping = publish(&mut conn, "Ping", json!({}));
    eventually("the Ping is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{ping}"))
    });
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe"])
    });
    assert_eq!(len(&mut conn, "events:sub:probe"), 1);
    assert_eq!(len(&mut conn, "events:all:dlq"), 0);
}

#[test]
fn unroutable_entries_go_to_the_bus_dlq_with_the_reason() {
    let world = World::new(&["probe.wasm"], "");
    // A payload limit of 2000 bytes, in the [bus] table of the header.
    world.configure_bus("max_payload_bytes = 2000\n", PROBE);
    let _host = world.host();
    let mut conn = world.conn();

    xadd_field(&mut conn, "events:all", "payload", b"{}");
    xadd(&mut conn, "events:all", "not json");
    xadd(&mut conn, "events:all", "[1, 2, 3]");
    xadd(&mut conn, "events:all", r#"{"no_type": true}"#);
    xadd(
        &mut conn,
        "events:all",
        &json!({"event_type": "Big", "pad": "x".repeat(3000)}).to_string(),
    );
    xadd_field(
        &mut conn,
        "events:all",
        "data",
        b"{\"event_type\": \"\xff\"}",
    );
    let good = publish(&mut conn, "Ping", json!({}));

    eventually("the good event is handled after the bad ones", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{good}"))
    });
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe"])
    });
    let reasons = dlq_reasons(&mut conn, "events:all:dlq");
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    for expected in [
        "entry has no `data` field",
        "`data` is not JSON",
        "`data` is an array, not a JSON object",
        "`data` has no string `event_type`",
        "over the limit of 2000",
        "`data` is not UTF-8",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason mentions {expected:?}: {reasons:#?}"
        );
    }
    // The original entry is kept whole in the dead letter.
    let dead = data_of(&mut conn, "events:all:dlq");
    assert!(dead.iter().any(|d| d["_raw"] == "not json"));
    assert!(dead.iter().any(|d| d["_fields"]["payload"] == "{}"));
    assert!(dead.iter().any(|d| d["_raw_hex"].is_string()));
}

#[test]
fn each_failure_kind_ends_in_the_dlq_with_its_reason_and_the_rest_keeps_working() {
    let world = World::new(
        &["probe.wasm", "spin.wasm", "hog.wasm", "panic.wasm"],
        r#"
[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
max_attempts = 3
retry_backoff_ms = 20

[subscribers.spinner]
plugin = "spin.wasm"
events = ["Spin"]
timeout_ms = 300

[subscribers.hog]
plugin = "hog.wasm"
events = ["Hog"]
memory_mb = 16

[subscribers.panicky]
plugin = "panic.wasm"
events = ["Panic"]
"#,
    );
    let host = world.host();
    let mut conn = world.conn();

    let spin = publish(&mut conn, "Spin", json!({}));
    let hog = publish(&mut conn, "Hog", json!({}));
    let panic = publish(&mut conn, "Panic", json!({}));
    let reject = publish(&mut conn, "Ping", json!({"act": "reject"}));
    let retry = publish(&mut conn, "Ping", json!({"act": "retry"}));
    let trap = publish(&mut conn, "Ping", json!({"act": "panic"}));
    // After a trap the probe's instance is replaced; the next event works.
    let after_trap = publish(&mut conn, "Ping", json!({}));

    eventually("every failure is dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 3
            && len(&mut conn, "events:sub:spinner:dlq") == 1
            && len(&mut conn, "events:sub:hog:dlq") == 1
            && len(&mut conn, "events:sub:panicky:dlq") == 1
    });
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe", "spinner", "hog", "panicky"])
    });

    let r = reason_of(&mut conn, "events:sub:spinner:dlq", &spin);
    assert!(
        r.starts_with("spinner: timeout: spin.wasm ran past its time limit of 300 ms"),
        "{r}"
    );
    let r = reason_of(&mut conn, "events:sub:hog:dlq", &hog);
    assert!(
        r.starts_with("hog: out of memory: hog.wasm ran past its memory limit of 16 MiB"),
        "{r}"
    );
    let r = reason_of(&mut conn, "events:sub:panicky:dlq", &panic);
    assert!(
        r.starts_with("panicky: trap: panic.wasm trapped: wasm trap"),
        "{r}"
    );
    assert!(
        r.contains(&format!("deliberate panic on event {panic}")),
        "the panic message: {r}"
    );
    let r = reason_of(&mut conn, "events:sub:probe:dlq", &reject);
    assert_eq!(r, "probe: rejected: asked to reject");
    let r = reason_of(&mut conn, "events:sub:probe:dlq", &retry);
    assert_eq!(
        r,
        "probe: retry exhausted after 3 attempts: asked to retry (attempt 3)"
    );
    let r = reason_of(&mut conn, "events:sub:probe:dlq", &trap);
    assert!(r.contains(&format!("asked to panic on {trap}")), "{r}");

    // The dead letter is the original event plus the failure record.
    let dead = data_of(&mut conn, "events:sub:probe:dlq");
    let rejected = dead
        .iter()
        .find(|d| d["event_id"] == reject.as_str())
        .unwrap();
    assert_eq!(rejected["act"], "reject");
    assert_eq!(rejected["_failures"][0]["kind"], "reject");
    assert_eq!(rejected["_failures"][0]["subscriber"], "probe");
    assert_eq!(rejected["_metadata"]["id"], reject.as_str());

    let probe = state(&mut conn, "probe");
    assert!(
        probe.contains_key(&format!("seen:{after_trap}")),
        "a fresh instance served"
    );
    assert_eq!(
        probe["count"], "1",
        "only the one successful event committed its effects"
    );
    // The log line follows the commit that put the entry in the DLQ.
    let mut host = host;
    host.wait_for_log("dead-lettered: spinner: timeout");
    assert_eq!(host.stop().code(), Some(0));
}

#[test]
fn effects_commit_only_on_ok_and_once_across_retries() {
    let world = World::new(
        &["probe.wasm"],
        r#"
[subscribers.probe]
plugin = "probe.wasm"
events = ["Ping"]
max_attempts = 5
retry_backoff_ms = 20
[subscribers.probe.config]
follow_up = "Echo"
"#,
    );
    let _host = world.host();
    let mut conn = world.conn();

    let flaky = publish(&mut conn, "Ping", json!({"act": "retry", "succeed_on": 3}));
    let rejected = publish(&mut conn, "Ping", json!({"act": "reject"}));
    let crashed = publish(&mut conn, "Ping", json!({"act": "panic"}));
    eventually(
        "the flaky event succeeds and the others are dead",
        WAIT,
        || {
            state(&mut conn, "probe").contains_key(&format!("seen:{flaky}"))
                && len(&mut conn, "events:sub:probe:dlq") == 2
        },
    );
    eventually("nothing is pending", WAIT, || {
        settled(&mut conn, &["probe"])
    });

    let probe = state(&mut conn, "probe");
    assert_eq!(
        probe[&format!("seen:{flaky}")],
        "3",
        "committed on the third attempt"
    );
    assert!(!probe.contains_key(&format!("seen:{rejected}")));
    assert!(!probe.contains_key(&format!("seen:{crashed}")));
    let echoes: Vec<_> = data_of(&mut conn, "events:all")
        .into_iter()
        .filter(|d| d["event_type"] == "Echo")
        .collect();
    assert_eq!(
        echoes.len(),
        1,
        "one follow-up, from the successful attempt only"
    );
    assert_eq!(echoes[0]["source_id"], flaky.as_str());
    assert_eq!(
        probe["count"], "1",
        "the counter moved once, on the third attempt"
    );
}

#[test]
fn a_stalled_hosts_late_result_is_discarded() {
    let world = World::new(
        &["probe.wasm"],
        "[subscribers.probe]\nplugin = \"probe.wasm\"\ntimeout_ms = 900\n",
    );
    let first = world.host();
    let mut conn = world.conn();
    let slow = publish(&mut conn, "Ping", json!({"act": "sleep", "sleep_ms": 600}));
    eventually("the first host holds the event", WAIT, || {
        pending(&mut conn, "events:sub:probe", "sub:probe-group") == 1
    });
    // Freeze it mid-handle, in its 600 ms sleep (past its state reads: one
    // frozen mid-read is taken for Redis's delay and runs again instead of
    // committing): it can neither commit nor renew its lease.
    std::thread::sleep(Duration::from_millis(200));
    first.signal(libc::SIGSTOP);
    let second = world.host();
    eventually("the second host reclaims and commits it", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{slow}"))
    });
    assert_eq!(
        state(&mut conn, "probe")[&format!("seen:{slow}")],
        "2",
        "the second delivery"
    );
    first.signal(libc::SIGCONT);
    let mut first = first;
    first.wait_for_log("another consumer committed those events first");

    let probe = state(&mut conn, "probe");
    assert_eq!(
        probe["count"], "1",
        "the effects were committed exactly once"
    );
    assert_eq!(
        len(&mut conn, "events:sub:probe:dlq"),
        0,
        "the late result did not dead-letter it"
    );
    assert!(settled(&mut conn, &["probe"]));
    first.stop();
    second.stop();
}

#[test]
fn events_published_while_no_host_runs_are_handled() {
    let world = World::new(&["probe.wasm"], PROBE);
    let mut conn = world.conn();
    // Before the host ever ran: no stream, no group exists yet.
    let early = publish(&mut conn, "Ping", json!({}));
    let host = world.host();
    eventually("the early event is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{early}"))
    });
    host.stop();
    // While it is down.
    let ids: Vec<String> = (0..20)
        .map(|n| publish(&mut conn, "Ping", json!({"n": n})))
        .collect();
    let _host = world.host();
    eventually("every event is handled", WAIT, || {
        seen_all(&mut conn, "probe", &ids)
    });
    assert_eq!(state(&mut conn, "probe")["count"], "21");
}

#[test]
fn graceful_restarts_under_load_lose_nothing_and_repeat_nothing() {
    let world = World::new(
        &["probe.wasm"],
        "[subscribers.probe]\nplugin = \"probe.wasm\"\nconcurrency = 4\n\n[subscribers.other]\nplugin = \"probe.wasm\"\n",
    );
    let mut conn = world.conn();
    let mut host = Some(world.host());
    let total = 600;
    let mut ids = Vec::new();
    for n in 0..total {
        ids.push(publish(&mut conn, "Ping", json!({"n": n})));
        if n % 150 == 149 {
            // Stop while events flow, start again.
            assert_eq!(host.take().unwrap().stop().code(), Some(0));
            host = Some(world.host());
        }
        if n % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // `other` handles one event at a time, so its counter is exact; the
    // probe's 4 concurrent handlers race on theirs, so check its seen keys.
    eventually(
        "every event is handled by both",
        Duration::from_secs(60),
        || {
            state(&mut conn, "other").get("count").map(String::as_str) == Some("600")
                && state(&mut conn, "probe")
                    .keys()
                    .filter(|k| k.starts_with("seen:"))
                    .count()
                    == total
        },
    );
    for subscriber in ["probe", "other"] {
        let s = state(&mut conn, subscriber);
        for id in &ids {
            assert_eq!(
                s.get(&format!("seen:{id}")).map(String::as_str),
                Some("1"),
                "{subscriber} {id}"
            );
        }
        assert_eq!(len(&mut conn, &format!("events:sub:{subscriber}")), total);
        assert_eq!(len(&mut conn, &format!("events:sub:{subscriber}:dlq")), 0);
    }
    assert!(settled(&mut conn, &["probe", "other"]));
}

#[test]
fn vanished_groups_are_recreated_not_fatal() {
    let mut world = World::new(&["probe.wasm"], PROBE);
    let host = world.host();
    let mut conn = world.conn();
    let first = publish(&mut conn, "Ping", json!({}));
    eventually("the first event is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{first}"))
    });

    // Someone destroys a group...
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("events:sub:probe")
        .arg("sub:probe-group")
        .query(&mut conn)
        .unwrap();
    let second = publish(&mut conn, "Ping", json!({}));
    eventually("the second event is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{second}"))
    });

    // ...and Redis restarts without persistence: every key is gone.
    world.redis.restart();
    let mut conn = world.conn();
    let third = loop {
        // The host reconnects on its own; publish once it has recreated
        // the bus so the event lands in a stream with a group.
        let exists: bool = redis::cmd("EXISTS")
            .arg("events:sub:probe")
            .query(&mut conn)
            .unwrap();
        if exists {
            break publish(&mut conn, "Ping", json!({}));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eventually("the event after the restart is handled", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{third}"))
    });
    assert!(host.log().contains("is gone; recreating it"));
    assert_eq!(host.stop().code(), Some(0));
}

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let world = World::new(&["probe.wasm"], "");
    world.write_config(
        "[redis]\nurl = \"redis://127.0.0.1:1/0\"\n\n[subscribers.probe]\nplugin = \"probe.wasm\"\nconcurency = 4\n",
    );
    let out = world.eventhost(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let file = world.config().display().to_string();
    assert!(
        text.contains(&format!(
            "{file}:6:1: subscribers.probe.concurency: unknown field `concurency`, expected one of"
        )),
        "{text}"
    );

    world.write_config(
        "[subscribers.a]\nplugin = \"missing.wasm\"\n\n[subscribers.b]\nplugin = \"probe.wasm\"\nmemory_mb = 0\ntimeout_ms = -5\n",
    );
    let text = String::from_utf8_lossy(&world.eventhost(&["check"]).stdout).into_owned();
    assert!(
        text.contains(&format!("{file}:2:10: subscribers.a.plugin: plugin file")),
        "{text}"
    );
    assert!(text.contains("missing.wasm not found"), "{text}");
    assert!(
        text.contains(&format!(
            "{file}:6:13: subscribers.b.memory_mb: must be between 1 and 4096 (got 0)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:7:14: subscribers.b.timeout_ms:")),
        "{text}"
    );

    world.write_config("[subscribers.a\nplugin = \"probe.wasm\"\n");
    let text = String::from_utf8_lossy(&world.eventhost(&["check"]).stdout).into_owned();
    assert!(
        text.starts_with(&format!("{file}:1:")),
        "a syntax error has a line: {text}"
    );

    // `run` refuses the same config with the same message and exit code.
    world.write_config("[subscribers.probe]\nplugin = \"probe.wasm\"\nconcurency = 4\n");
    let out = world.eventhost(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("subscribers.probe.concurency: unknown field `concurency`"));
}

#[test]
fn plugins_that_do_not_fit_are_refused_with_what_is_wrong() {
    let world = World::new(&["probe.wasm"], "");
    let plugins = world.dir.path().join("plugins");
    std::fs::write(plugins.join("text.wasm"), "this is not wasm").unwrap();
    std::fs::write(plugins.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    world.install("not_a_plugin.wasm", "command.wasm");
    world.configure(
        r#"
[subscribers.good]
plugin = "probe.wasm"
[subscribers.text]
plugin = "text.wasm"
[subscribers.core]
plugin = "core.wasm"
[subscribers.command]
plugin = "command.wasm"
"#,
    );
    let (text, err) = world.refused();
    assert!(text.contains("ok: subscribers.good: probe.wasm"), "{text}");
    let file = world.config().display().to_string();
    let line = world.line_of("plugin = \"text.wasm\"");
    assert!(
        text.contains(&format!("{file}:{line}:10: subscribers.text.plugin:")),
        "a refused plugin is located in the config: {text}"
    );
    assert!(
        text.contains("subscribers.text.plugin:") && text.contains("not a WebAssembly file"),
        "{text}"
    );
    assert!(
        text.contains("is a core WebAssembly module, not a component"),
        "{text}"
    );
    assert!(
        text.contains("no exported function `handle` (it exports: wasi:cli/run@0.2"),
        "names what is missing and what is there: {text}"
    );
    assert!(err.contains("3 plugins were refused"), "{err}");
}

#[test]
fn a_private_redis_server_runs_when_no_url_is_set() {
    let world = World::new(&["probe.wasm"], "");
    world.write_config(&format!(
        "[plugins]\ncache_dir = \"{}\"\n\n[subscribers.probe]\nplugin = \"probe.wasm\"\n",
        cache_dir().display()
    ));
    let host = world.host();
    assert!(host
        .log()
        .contains("started a private redis-server at unix:///"));

    let out = world.eventhost(&["publish", "Ping", r#"{"order": 7}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = std::fs::read_to_string(world.dir.path().join(".eventhost/redis/url")).unwrap();
    let mut conn = redis::Client::open(url.trim())
        .unwrap()
        .get_connection()
        .unwrap();
    eventually("the event is handled", WAIT, || {
        state(&mut conn, "probe").get("count").map(String::as_str) == Some("1")
    });
    assert_eq!(host.stop().code(), Some(0));
    assert!(
        redis::Client::open(url.trim())
            .unwrap()
            .get_connection()
            .is_err(),
        "the private server stops with the host"
    );
    assert!(!world.dir.path().join(".eventhost/redis/url").exists());

    // Its data survives: the next run starts with the committed state.
    let host = world.host();
    let url = std::fs::read_to_string(world.dir.path().join(".eventhost/redis/url")).unwrap();
    let mut conn = redis::Client::open(url.trim())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        state(&mut conn, "probe").get("count").map(String::as_str),
        Some("1")
    );
    host.stop();

    // Without a running host, publish says what to do.
    let out = world.eventhost(&["publish", "Ping", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `eventhost run` is running with it"));
}

#[test]
fn publish_writes_a_leanmq_event() {
    let world = World::new(&["probe.wasm"], PROBE);
    let out = world.eventhost(&[
        "publish",
        "OrderCreatedEvent",
        r#"{"order_id": "o-1", "total": 9.5}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = world.conn();
    let all = data_of(&mut conn, "events:all");
    assert_eq!(all.len(), 1);
    let event = &all[0];
    assert_eq!(event["event_type"], "OrderCreatedEvent");
    assert_eq!(event["order_id"], "o-1");
    assert_eq!(event["total"], 9.5);
    let id = event["event_id"].as_str().unwrap();
    assert_eq!(event["_metadata"]["id"], id);
    assert!(event["_metadata"]["ttl"].is_null());
    assert!(String::from_utf8_lossy(&out.stdout).contains(id));
    // The producer side also creates the bus's group, as LeanMQ does.
    assert_eq!(pending(&mut conn, "events:all", "all-group"), 0);

    // An event id the producer gives is kept (publishing again after an
    // error must not make a new event); a bad one is refused.
    let out = world.eventhost(&["publish", "OrderCreatedEvent", r#"{"event_id": "order-9"}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = data_of(&mut conn, "events:all");
    assert_eq!(all[1]["event_id"], "order-9");
    assert_eq!(all[1]["_metadata"]["id"], "order-9");
    let out = world.eventhost(&["publish", "T", r#"{"event_id": {"no": 1}}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("event_id must be"));

    let out = world.eventhost(&["publish", "T", "[1]"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a JSON object"));
}

#[test]
fn host_api_errors_and_logs_reach_the_plugin_and_the_log() {
    let world = World::new(&["probe.wasm"], PROBE);
    let mut host = world.host();
    let mut conn = world.conn();
    let bad = publish(&mut conn, "Ping", json!({"act": "bad_publish"}));
    let logged = publish(&mut conn, "Ping", json!({"act": "log"}));
    eventually("both are done", WAIT, || {
        len(&mut conn, "events:sub:probe:dlq") == 1
            && state(&mut conn, "probe").contains_key(&format!("seen:{logged}"))
    });
    let reasons = dlq_reasons(&mut conn, "events:sub:probe:dlq");
    assert_eq!(
        reasons,
        ["probe: rejected: data is not valid JSON: expected ident at line 1 column 2"]
    );
    let _ = bad;
    host.wait_for_log(&format!("probe warn log for {logged}"));
    let log = host.log();
    assert!(log.contains(&format!("probe info log for {logged}")));
    assert!(
        log.contains(&format!("event_id=\"{logged}\""))
            || log.contains(&format!("event_id={logged}"))
    );
    assert!(
        !log.contains("probe debug log"),
        "debug is below the default level"
    );
}

#[test]
fn a_plugin_sees_the_event_as_published_without_leanmq_bookkeeping() {
    let world = World::new(&["probe.wasm"], PROBE);
    let _host = world.host();
    let mut conn = world.conn();
    // As a requeued dead letter looks: every kind of LeanMQ bookkeeping.
    let published = json!({
        "event_type": "Ping",
        "event_id": "e-42",
        "timestamp": 1700000000.25,
        "act": "echo",
        "nested": {"list": [1, 2.5, null, "ü"]},
        "_metadata": {"id": "m-1", "timestamp": 1.0, "ttl": null},
        "_failures": [{"timestamp": 2.0, "reason": "earlier"}],
        "_requeues": [{"timestamp": 3.0, "from_dlq": "x", "to_queue": "y"}]
    });
    xadd(&mut conn, "events:all", &published.to_string());
    eventually("the probe echoes it", WAIT, || {
        state(&mut conn, "probe").contains_key("echo:e-42")
    });

    let echo: serde_json::Value =
        serde_json::from_str(&state(&mut conn, "probe")["echo:e-42"]).unwrap();
    let (stream_id, _) = entries(&mut conn, "events:sub:probe").remove(0);
    assert_eq!(echo["id"], "e-42");
    assert_eq!(echo["event_type"], "Ping");
    assert_eq!(echo["stream_id"], stream_id.as_str());
    assert_eq!(echo["timestamp"], 1700000000.25);
    assert_eq!(echo["attempt"], 1);
    let data: serde_json::Value = serde_json::from_str(echo["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        data,
        json!({
            "event_type": "Ping",
            "event_id": "e-42",
            "timestamp": 1700000000.25,
            "act": "echo",
            "nested": {"list": [1, 2.5, null, "ü"]}
        })
    );
}
