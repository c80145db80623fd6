//! Operators' tools on a live bus, as the person on call uses them: the
//! real binary's `dlq` commands against a real redis-server and a running
//! host, and a replay of 10,000 dead letters killed with `kill -9` halfway
//! and run again: every one handled exactly once.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use support::*;

/// Two event types, so filters by type have something to tell apart.
fn world() -> World {
    World::new(
        &["probe.wasm"],
        &format!("{PROBE}events = [\"Ping\", \"Pong\"]\n"),
    )
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `eventhost` with `args` and the world's config; it must succeed.
fn ok(world: &World, args: &[&str]) -> String {
    let out = eventhost(world, args);
    assert!(
        out.status.success(),
        "eventhost {args:?} failed: {}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

fn eventhost(world: &World, args: &[&str]) -> Output {
    let config = world.config();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    world.eventhost(&all)
}

fn json_of(world: &World, args: &[&str]) -> Value {
    let out = ok(world, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{out}"))
}

fn ids_of(list: &Value) -> Vec<String> {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

const DLQ: &str = "events:sub:probe:dlq";

#[test]
fn dlq_commands_list_filter_show_replay_and_purge_on_a_live_bus() {
    let world = world();
    let _host = world.host();
    let mut conn = world.conn();
    let blocked: Vec<String> = (0..3)
        .map(|i| {
            publish(
                &mut conn,
                "Ping",
                json!({"act": "reject_unless_allowed", "n": i}),
            )
        })
        .collect();
    let pong = publish(&mut conn, "Pong", json!({"act": "reject_unless_allowed"}));
    let trapped = publish(
        &mut conn,
        "Ping",
        json!({"act": "panic", "note": "<script>alert(1)</script>"}),
    );
    eventually("five dead letters", Duration::from_secs(20), || {
        len(&mut conn, DLQ) == 5
    });

    let all = json_of(&world, &["dlq", "list", "probe", "--json"]);
    assert_eq!(all["dlq"], DLQ);
    assert_eq!(all["stream"], "events:sub:probe");
    assert_eq!(all["depth"], 5);
    assert_eq!(ids_of(&all).len(), 5);
    let first = &all["entries"][0];
    assert_eq!(first["event_type"], "Ping");
    assert_eq!(first["kind"], "reject");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["data"]["act"], "reject_unless_allowed");
    assert!(
        first["data"].get("_failures").is_none(),
        "failures are apart"
    );
    assert!(first["reason"]
        .as_str()
        .unwrap()
        .contains("is not allowed yet"));

    let traps = json_of(
        &world,
        &["dlq", "list", "probe", "--kind", "trap", "--json"],
    );
    assert_eq!(ids_of(&traps).len(), 1);
    assert_eq!(traps["entries"][0]["event_id"], trapped.as_str());
    let pongs = json_of(
        &world,
        &["dlq", "list", "probe", "--type", "Pong", "--json"],
    );
    assert_eq!(pongs["entries"][0]["event_id"], pong.as_str());
    assert_eq!(ids_of(&pongs).len(), 1);
    let recent = json_of(
        &world,
        &["dlq", "list", "probe", "--since", "10m", "--json"],
    );
    assert_eq!(ids_of(&recent).len(), 5);
    let future = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let none = json_of(
        &world,
        &["dlq", "list", "probe", "--since", &future, "--json"],
    );
    assert_eq!(ids_of(&none).len(), 0);
    let limited = json_of(&world, &["dlq", "list", "probe", "--limit", "2", "--json"]);
    assert_eq!(ids_of(&limited), ids_of(&all)[..2]);

    let table = ok(&world, &["dlq", "list", "probe"]);
    assert!(
        table.starts_with("events:sub:probe:dlq: 5 dead letters\n"),
        "{table}"
    );
    assert!(table.contains("ID") && table.contains("REASON"), "{table}");
    assert_eq!(table.matches("  reject  ").count(), 4, "{table}");

    let trap_id = traps["entries"][0]["id"].as_str().unwrap().to_string();
    let shown = ok(&world, &["dlq", "show", "probe", &trap_id]);
    assert!(shown.contains("trap"), "{shown}");
    assert!(
        shown.contains(r#""note": "<script>alert(1)</script>""#),
        "{shown}"
    );
    let shown = json_of(&world, &["dlq", "show", "probe", &trap_id, "--json"]);
    assert_eq!(shown["failures"].as_array().unwrap().len(), 1);
    assert_eq!(shown["failures"][0]["subscriber"], "probe");
    let missing = eventhost(&world, &["dlq", "show", "probe", "1-0"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("is not in events:sub:probe:dlq"));

    // A dry run moves nothing.
    let dry = ok(
        &world,
        &["dlq", "replay", "probe", "--kind", "reject", "--dry-run"],
    );
    assert!(dry.starts_with("would replay 4 dead letters"), "{dry}");
    assert_eq!(len(&mut conn, DLQ), 5);

    // The operator fixes what blocked the Pings, then replays one by id:
    // it is handled from attempt 1.
    for id in &blocked {
        let _: () = conn
            .hset("events:state:probe", format!("allow:{id}"), "1")
            .unwrap();
    }
    let one = ids_of(&all)[0].clone();
    let replayed = ok(&world, &["dlq", "replay", "probe", &one]);
    assert!(
        replayed
            .starts_with("replayed 1 dead letter from events:sub:probe:dlq into events:sub:probe"),
        "{replayed}"
    );
    eventually(
        "the replayed event is handled",
        Duration::from_secs(10),
        || seen_all(&mut conn, "probe", &blocked[..1]),
    );
    assert_eq!(
        state(&mut conn, "probe")[&format!("seen:{}", blocked[0])],
        "1",
        "attempt reset"
    );
    // Again: it is gone, nothing is doubled.
    let again = ok(&world, &["dlq", "replay", "probe", &one]);
    assert!(
        again.contains("replayed 0 dead letters") && again.contains(&one),
        "{again}"
    );

    // By filter: the two other Pings, not the Pong nor the trap.
    let replayed = json_of(
        &world,
        &[
            "dlq", "replay", "probe", "--type", "Ping", "--kind", "reject", "--json",
        ],
    );
    assert_eq!(replayed["replayed"], 2);
    eventually("the Pings are handled", Duration::from_secs(10), || {
        seen_all(&mut conn, "probe", &blocked)
    });
    assert_eq!(state(&mut conn, "probe")["count"], "3", "each handled once");

    // The Pong is still refused: back in the DLQ with both failures.
    ok(&world, &["dlq", "replay", "probe", "--type", "Pong"]);
    eventually("the Pong fails again", Duration::from_secs(10), || {
        data_of(&mut conn, DLQ).iter().any(|d| {
            d["event_id"] == pong.as_str() && d["_failures"].as_array().unwrap().len() == 2
        })
    });
    assert_eq!(len(&mut conn, DLQ), 2, "the Pong and the trap");
    assert!(settled(&mut conn, &["probe"]));

    // Purge asks first.
    let refused = eventhost(&world, &["dlq", "purge", "probe", "--kind", "trap"]);
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("deletes 1 dead letter") && why.contains("--yes"),
        "{why}"
    );
    assert_eq!(len(&mut conn, DLQ), 2);
    let purged = ok(
        &world,
        &["dlq", "purge", "probe", "--kind", "trap", "--yes"],
    );
    assert_eq!(
        purged.trim(),
        "purged 1 dead letter from events:sub:probe:dlq"
    );
    assert_eq!(data_of(&mut conn, DLQ)[0]["event_id"], pong.as_str());

    // Choosing nothing, or ids and filters at once, is refused.
    for args in [
        &["dlq", "replay", "probe"][..],
        &["dlq", "replay", "probe", &one, "--all"],
        &["dlq", "replay", "probe", "not-an-id"],
    ] {
        let out = eventhost(&world, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    // A subscriber no host ever ran would never read what is replayed.
    let ghost = eventhost(&world, &["dlq", "replay", "ghost", "--all"]);
    assert_eq!(ghost.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ghost.stderr).contains("no consumer group sub:ghost-group"));
    // Purging needs no reader: it counts, and asks first.
    let ghost = eventhost(&world, &["dlq", "purge", "ghost", "--all"]);
    assert_eq!(ghost.status.code(), Some(1));
    let why = String::from_utf8_lossy(&ghost.stderr);
    assert!(
        why.contains("deletes 0 dead letters") && why.contains("--yes"),
        "{why}"
    );
}

#[test]
fn the_bus_dlq_replays_into_events_all() {
    let world = world();
    let _host = world.host();
    let mut conn = world.conn();
    xadd(&mut conn, "events:all", r#"{"no_type": true}"#);
    eventually(
        "the malformed entry is dead-lettered",
        Duration::from_secs(10),
        || len(&mut conn, "events:all:dlq") == 1,
    );
    let list = json_of(&world, &["dlq", "list", "all", "--json"]);
    assert_eq!(list["dlq"], "events:all:dlq");
    assert_eq!(list["entries"][0]["kind"], "malformed");

    // An event the fan-out once could not route, fixed since: replayed
    // into events:all, it is routed and handled.
    let fixed = r#"{"event_type":"Ping","event_id":"fixed-1","_failures":[{"timestamp":1.0,"reason":"no route","kind":"malformed"}]}"#;
    let id = xadd(&mut conn, "events:all:dlq", fixed);
    ok(&world, &["dlq", "replay", "all", &id]);
    eventually(
        "the replayed entry is handled",
        Duration::from_secs(10),
        || seen_all(&mut conn, "probe", &["fixed-1".to_string()]),
    );
    assert_eq!(
        len(&mut conn, "events:all:dlq"),
        1,
        "only the malformed one is left"
    );
}

#[test]
fn an_interrupted_replay_of_10000_dead_letters_loses_and_doubles_nothing() {
    const N: usize = 10_000;
    let world = world();
    let _host = world.host();
    let mut conn = world.conn();
    let mut ids = Vec::with_capacity(N);
    let mut pipe = redis::pipe();
    for _ in 0..N {
        let id = uuid::Uuid::new_v4().to_string();
        let data = json!({"event_type": "Ping", "event_id": id, "act": "reject_unless_allowed"});
        pipe.xadd("events:all", "*", &[("data", data.to_string())])
            .ignore();
        ids.push(id);
    }
    let _: () = pipe.query(&mut conn).unwrap();
    eventually("10,000 dead letters", Duration::from_secs(120), || {
        len(&mut conn, DLQ) == N
    });
    // The fix: every event is allowed now.
    for chunk in ids.chunks(1000) {
        let fields: Vec<(String, &str)> = chunk
            .iter()
            .map(|id| (format!("allow:{id}"), "1"))
            .collect();
        let _: () = conn.hset_multiple("events:state:probe", &fields).unwrap();
    }

    let config = world.config();
    let mut replay = Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args([
            "dlq", "replay", "probe", "--all", "--rate", "4000", "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the replay is under way", Duration::from_secs(30), || {
        len(&mut conn, DLQ) <= N * 3 / 4
    });
    replay.kill().unwrap(); // SIGKILL
    replay.wait().unwrap();
    let left = len(&mut conn, DLQ);
    assert!(left > 0 && left < N, "killed halfway: {left} left");

    let started = Instant::now();
    let out = ok(&world, &["dlq", "replay", "probe", "--all"]);
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.starts_with(&format!("replayed {left} dead letters")),
        "{out}"
    );
    assert_eq!(len(&mut conn, DLQ), 0);
    eventually("every event is handled", Duration::from_secs(120), || {
        state(&mut conn, "probe").get("count").map(String::as_str) == Some("10000")
            && settled(&mut conn, &["probe"])
    });
    let state = state(&mut conn, "probe");
    assert!(seen_all_in(&state, &ids), "every event handled");
    assert_eq!(state["count"], N.to_string(), "and each once");
    assert_eq!(len(&mut conn, DLQ), 0);
    eprintln!(
        "replay killed with {left} of {N} left; the rest replayed in {seconds:.2} s \
         ({:.0}/s, the command's start included): {}",
        left as f64 / seconds,
        out.trim()
    );
}

fn seen_all_in(state: &std::collections::HashMap<String, String>, ids: &[String]) -> bool {
    ids.iter()
        .all(|id| state.contains_key(&format!("seen:{id}")))
}

#[test]
fn status_shows_hosts_builds_backlog_pending_and_rates_from_redis_alone() {
    let world = world();
    // Room for a handler that takes seconds: a pending entry to look at.
    let header = world
        .header()
        .replace("claim_idle_ms = 2000", "claim_idle_ms = 20000");
    world.write_config(&format!(
        "{header}{PROBE}events = [\"Ping\", \"Pong\"]\ntimeout_ms = 10000\n"
    ));
    let first = world.host();
    let second = world.host();
    let mut conn = world.conn();
    let load = Load::start(&world, 500);
    publish(&mut conn, "Ping", json!({"act": "reject"}));
    let mut status = Value::Null;
    eventually(
        "status sees both hosts at work",
        Duration::from_secs(20),
        || {
            status = json_of(&world, &["status", "--json"]);
            let probe = &status["subscribers"][0];
            status["hosts"].as_array().unwrap().len() == 2
                && probe["builds"].as_array().unwrap().len() == 2
                && probe["handled_per_s"].as_f64().unwrap() > 100.0
                && probe["dlq_depth"] == 1
        },
    );
    load.finish();
    let hosts = status["hosts"].as_array().unwrap();
    assert!(hosts.iter().all(|h| h["alive"] == true));
    let pids: Vec<u64> = hosts.iter().map(|h| h["pid"].as_u64().unwrap()).collect();
    assert!(pids.contains(&(first.pid() as u64)) && pids.contains(&(second.pid() as u64)));
    let probe = &status["subscribers"][0];
    assert_eq!(probe["name"], "probe");
    assert_eq!(probe["plugin"], "probe.wasm");
    assert_eq!(probe["events"], json!(["Ping", "Pong"]));
    let build = probe["builds"][0]["build"].as_str().unwrap().to_string();
    assert_eq!(build.len(), 64, "a SHA-256 digest: {build}");
    assert_eq!(
        probe["builds"][1]["build"],
        build.as_str(),
        "both run the same build"
    );
    assert_eq!(probe["stream"], "events:sub:probe");
    assert_eq!(probe["dlq"], "events:sub:probe:dlq");
    assert!(probe["length"].as_u64().unwrap() > 0);
    assert!(status["fanout"]["handled_per_s"].as_f64().unwrap() > 100.0);
    assert_eq!(status["fanout"]["stream"], "events:all");

    // A slow handler holds an entry: pending, by consumer, with its age.
    // Long enough for three `status` runs on a busy machine.
    publish(&mut conn, "Ping", json!({"act": "sleep", "sleep_ms": 8000}));
    eventually(
        "status sees the entry pending",
        Duration::from_secs(15),
        || {
            status = json_of(&world, &["status", "--json"]);
            let probe = &status["subscribers"][0];
            probe["pending"] == 1
                && probe["pending_by_consumer"][0]["oldest_ms"]
                    .as_u64()
                    .unwrap_or(0)
                    >= 500
        },
    );
    let holder = status["subscribers"][0]["pending_by_consumer"][0]["consumer"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["consumer"] == holder.as_str()),
        "{holder} is one of the hosts"
    );
    let text = ok(&world, &["status"]);
    assert!(text.starts_with("hosts: 2 alive\n"), "{text}");
    assert!(
        text.contains(&format!("pending on {holder}: 1 (oldest")),
        "{text}"
    );
    assert!(
        text.contains("probe.wasm") && text.contains(&build[..12]),
        "{text}"
    );

    // With every host stopped: they are gone, and what is published waits
    // as the fan-out's lag.
    assert!(first.stop().success());
    assert!(second.stop().success());
    for _ in 0..5 {
        publish(&mut conn, "Ping", json!({}));
    }
    let status = json_of(&world, &["status", "--json"]);
    assert!(status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["alive"] == false));
    assert_eq!(status["fanout"]["lag"], 5);
    assert_eq!(
        status["subscribers"][0]["name"], "probe",
        "still listed from Redis"
    );
    assert_eq!(status["subscribers"][0]["plugin"], Value::Null);
    let text = ok(&world, &["status"]);
    assert!(
        text.starts_with("hosts: 0 alive (no `eventhost run` is serving this bus)\n"),
        "{text}"
    );
    assert!(text.contains("gone, last seen"), "{text}");
}

#[test]
fn one_listener_serves_metrics_health_and_readiness() {
    let mut world = world();
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\n\n{PROBE}events = [\"Ping\"]\n"
    ));
    let host = world.host();
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the event is handled", Duration::from_secs(10), || {
        seen_all(&mut conn, "probe", std::slice::from_ref(&id))
    });

    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!((code, body.as_str()), (200, r#"{"alive":true}"#));
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, json!({"ready": true, "redis": "ok", "waiting": []}));
    eventually(
        "the metrics count the event",
        Duration::from_secs(10),
        || {
            counter(
                &http_get(&addr, "/metrics").1,
                "eventhost_handled_total{subscriber=\"probe\"}",
            ) == 1
        },
    );
    assert_eq!(http_get(&addr, "/nothing-here").0, 404);
    eventually("status names the listener", Duration::from_secs(10), || {
        json_of(&world, &["status", "--json"])["hosts"][0]["listen"] == addr.as_str()
    });

    // Redis gone: alive, not ready, and the body says why.
    world.redis.kill();
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert!(
        ready["waiting"][0].as_str().unwrap().starts_with("redis: "),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    world.redis.launch();
    eventually("ready again", Duration::from_secs(20), || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert!(host.stop().success());
}

#[test]
fn the_old_metrics_key_still_serves_with_a_warning() {
    let world = world();
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[telemetry]\nmetrics = \"{addr}\"\n\n{PROBE}events = [\"Ping\"]\n"
    ));
    let check = text(&eventhost(&world, &["check"]));
    let line = world.line_of(&format!("metrics = \"{addr}\""));
    assert!(
        check.contains(&format!(
            "eventhost.toml:{line}:11: telemetry.metrics: is now [http] listen"
        )),
        "{check}"
    );
    let host = world.host();
    assert!(
        host.log()
            .contains("telemetry.metrics: is now [http] listen"),
        "{}",
        host.log()
    );
    assert_eq!(http_get(&addr, "/readyz").0, 200);
}

#[test]
fn json_logs_carry_subscriber_event_stream_and_kind_as_fields() {
    let world = world();
    for (env, config) in [
        (&[("EVENTHOST_LOG_FORMAT", "json")][..], String::new()),
        (
            &[][..],
            "[telemetry]\nlog_format = \"json\"\n\n".to_string(),
        ),
    ] {
        world.configure(&format!("{config}{PROBE}events = [\"Ping\"]\n"));
        let host = world.host_with_env(env);
        let mut conn = world.conn();
        let id = publish(&mut conn, "Ping", json!({"act": "reject"}));
        let mut line = Value::Null;
        eventually("the dead letter is logged", Duration::from_secs(10), || {
            let log = host.log();
            let found = log
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
                })
                .find(|l| l["event_id"] == id.as_str());
            line = found.unwrap_or(Value::Null);
            !line.is_null()
        });
        assert_eq!(line["subscriber"], "probe", "{line}");
        assert_eq!(line["kind"], "reject", "{line}");
        assert_eq!(line["level"], "WARN", "{line}");
        assert!(line["stream_id"].as_str().unwrap().contains('-'), "{line}");
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .starts_with("dead-lettered: "),
            "{line}"
        );
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(host.stop().success());
    }
}

/// The read token of the order test's console.
const READ_TOKEN: &str = "ops-read-token-0123456789";

/// GET `path` on `addr` with the read token: the status and the body.
fn get_read(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {READ_TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// The value of the gauge `name{labels}` in a scrape, `None` if absent.
fn gauge(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Unix time now, ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The subscriber named `name` in a status.
fn subscriber<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no subscriber {name} in {status}"))
}

/// Order per key (`order_by`): the keys a dead letter parked and the
/// events held behind their key's holder are read from the order keys in
/// Redis (each key's list `events:order:<name>:q:<key>` and the `:held`
/// and `:parked` sorted sets, written here as the bus writes them) and shown by `status`
/// (text and JSON, with or without the config: a live host says which
/// subscribers keep an order), the console's `/api/status` and
/// `/metrics`; a subscriber without `order_by` shows none of it.
#[test]
fn parked_keys_and_the_oldest_held_event_are_in_status_the_console_and_the_metrics() {
    let world = world();
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\nread_token = \"{READ_TOKEN}\"\n\n\
         {PROBE}events = [\"Ping\"]\norder_by = \"order_id\"\non_dead_letter = \"park\"\n\n\
         [subscribers.plain]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n"
    ));
    let mut conn = world.conn();
    let now = now_ms();
    let _: () = redis::pipe()
        // Six parked keys, o-1 the oldest (90 s), parked by dead letter 1-0.
        .zadd("events:order:probe:parked", "o-1", now - 90_000)
        .zadd("events:order:probe:parked", "o-2", now - 60_000)
        .zadd("events:order:probe:parked", "o-3", now - 50_000)
        .zadd("events:order:probe:parked", "o-4", now - 40_000)
        .zadd("events:order:probe:parked", "o-5", now - 20_000)
        .zadd("events:order:probe:parked", "o-6", now - 10_000)
        .rpush("events:order:probe:q:o-1", "park:1-0")
        .rpush("events:order:probe:q:o-2", "park:2-0")
        // Two keys with events held, the oldest routed 30 s ago.
        .zadd("events:order:probe:held", "o-7", now - 30_000)
        .zadd("events:order:probe:held", "o-8", now - 5_000)
        .rpush("events:order:probe:q:o-7", format!("{} {{}}", now - 31_000))
        .rpush("events:order:probe:q:o-7", format!("{} {{}}", now - 30_000))
        // Keys of a subscriber without order_by: not its business to show.
        .zadd("events:order:plain:parked", "x", now - 1_000)
        .query(&mut conn)
        .unwrap();
    let host = world.host();

    let check = |status: &Value, what: &str| {
        let order = &subscriber(status, "probe")["order"];
        assert_eq!(order["order_by"], "order_id", "{what}: {order}");
        assert_eq!(order["on_dead_letter"], "park", "{what}: {order}");
        assert_eq!(order["parked"], 6, "{what}: {order}");
        let shown = order["oldest_parked"].as_array().unwrap();
        let keys: Vec<&str> = shown.iter().map(|k| k["key"].as_str().unwrap()).collect();
        assert_eq!(
            keys,
            ["o-1", "o-2", "o-3", "o-4", "o-5"],
            "{what}: five, oldest first"
        );
        let age = shown[0]["age_s"].as_f64().unwrap();
        assert!((90.0..150.0).contains(&age), "{what}: {age}");
        assert_eq!(shown[0]["parked_at"], (now - 90_000) as f64 / 1000.0);
        assert_eq!(shown[0]["dead_letter"], "1-0", "{what}");
        assert_eq!(shown[2]["dead_letter"], Value::Null, "{what}");
        assert_eq!(order["held"], 2, "{what}: {order}");
        let held = order["oldest_held_s"].as_f64().unwrap();
        assert!((30.0..90.0).contains(&held), "{what}: {held}");
        assert!(
            subscriber(status, "plain").get("order").is_none(),
            "{what}: without order_by, nothing new"
        );
    };
    check(&json_of(&world, &["status", "--json"]), "status --json");

    let text = ok(&world, &["status"]);
    assert!(
        text.contains(
            "    order by order_id (a dead letter parks its key): 6 keys PARKED (each waits for \
             `eventhost dlq replay` or `eventhost dlq skip` of its dead letter), 2 keys holding \
             events back, the oldest routed "
        ),
        "{text}"
    );
    assert!(text.contains(" ago: o-1 (dead letter 1-0)\n"), "{text}");
    assert!(
        text.contains(" ago: o-5\n      and 1 more parked key\n"),
        "{text}"
    );
    assert_eq!(text.matches("order by").count(), 1, "{text}");

    // Without the config: the live host's heartbeat says probe keeps an order.
    let bare = tempfile::tempdir().unwrap();
    eventually(
        "the host's heartbeat is in Redis",
        Duration::from_secs(10),
        || {
            let out = eventhost_in(
                bare.path(),
                &["status", "--json", "--url", &world.redis.url()],
            );
            let status: Value = serde_json::from_slice(&out.stdout).unwrap();
            status["subscribers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "probe" && s["order"]["parked"] == 6)
        },
    );

    let (code, body) = get_read(&addr, "/api/status");
    assert_eq!(code, 200, "{body}");
    check(&serde_json::from_str(&body).unwrap(), "/api/status");

    let probe = |name: &str| format!("{name}{{subscriber=\"probe\"}}");
    let mut scrape = String::new();
    eventually(
        "the metrics show the order keys",
        Duration::from_secs(10),
        || {
            scrape = http_get(&addr, "/metrics").1;
            gauge(&scrape, &probe("eventhost_order_parked_keys")) == Some(6.0)
        },
    );
    assert_eq!(
        gauge(&scrape, &probe("eventhost_order_held_keys")),
        Some(2.0)
    );
    let oldest = gauge(&scrape, &probe("eventhost_order_oldest_held_seconds")).unwrap();
    assert!((30.0..90.0).contains(&oldest), "{oldest}");
    assert!(
        !scrape
            .lines()
            .any(|l| l.starts_with("eventhost_order_") && l.contains("\"plain\"")),
        "no order gauges for plain:\n{scrape}"
    );

    // Released and drained: nothing parked, nothing held.
    let _: () = redis::pipe()
        .del("events:order:probe:parked")
        .del("events:order:probe:held")
        .query(&mut conn)
        .unwrap();
    let status = json_of(&world, &["status", "--json"]);
    let order = &subscriber(&status, "probe")["order"];
    assert_eq!(
        (&order["parked"], &order["held"], &order["oldest_held_s"]),
        (&json!(0), &json!(0), &Value::Null),
        "{order}"
    );
    assert_eq!(order["oldest_parked"], json!([]));
    assert!(ok(&world, &["status"]).contains(
        "order by order_id (a dead letter parks its key): no key parked, no event held\n"
    ));
    eventually(
        "the metrics show nothing parked or held",
        Duration::from_secs(10),
        || {
            scrape = http_get(&addr, "/metrics").1;
            gauge(&scrape, &probe("eventhost_order_parked_keys")) == Some(0.0)
                && gauge(&scrape, &probe("eventhost_order_held_keys")) == Some(0.0)
                && gauge(&scrape, &probe("eventhost_order_oldest_held_seconds")) == Some(0.0)
        },
    );
    assert!(host.stop().success());
}

/// The same from the bus itself: the probe rejecting an event of key o-1
/// (`on_dead_letter = "park"`) parks o-1, and the next event of o-1 waits
/// behind it while o-2 runs; `status`, `/api/status` and `/metrics` show
/// the parked key with its dead letter and the held event, until
/// `eventhost dlq skip` lets the key move on.
#[test]
fn a_rejected_event_parks_its_key_in_status_until_its_dead_letter_is_skipped() {
    let world = world();
    let addr = format!("127.0.0.1:{}", free_port());
    world.configure(&format!(
        "[http]\nlisten = \"{addr}\"\nread_token = \"{READ_TOKEN}\"\n\n\
         {PROBE}events = [\"Ping\"]\norder_by = \"order_id\"\non_dead_letter = \"park\"\n"
    ));
    let host = world.host();
    let mut conn = world.conn();
    publish(
        &mut conn,
        "Ping",
        json!({"order_id": "o-1", "act": "reject"}),
    );
    eventually(
        "the rejected event is dead-lettered",
        Duration::from_secs(10),
        || len(&mut conn, DLQ) == 1,
    );
    let letter = entries(&mut conn, DLQ)[0].0.clone();
    let next = publish(&mut conn, "Ping", json!({"order_id": "o-1", "n": 2}));
    let other = publish(&mut conn, "Ping", json!({"order_id": "o-2"}));
    eventually("the other key runs", Duration::from_secs(10), || {
        seen_all(&mut conn, "probe", std::slice::from_ref(&other))
    });
    assert!(
        !seen_all(&mut conn, "probe", std::slice::from_ref(&next)),
        "o-1 is parked"
    );

    let mut status = Value::Null;
    eventually(
        "status shows o-1 parked and its next event held",
        Duration::from_secs(10),
        || {
            status = json_of(&world, &["status", "--json"]);
            let order = &subscriber(&status, "probe")["order"];
            order["parked"] == 1 && order["held"] == 1
        },
    );
    let order = &subscriber(&status, "probe")["order"];
    assert_eq!(order["oldest_parked"][0]["key"], "o-1", "{order}");
    assert_eq!(
        order["oldest_parked"][0]["dead_letter"],
        letter.as_str(),
        "{order}"
    );
    assert!(order["oldest_held_s"].as_f64().unwrap() < 60.0, "{order}");
    let text = ok(&world, &["status"]);
    assert!(text.contains("1 key PARKED"), "{text}");
    assert!(
        text.contains(&format!(" ago: o-1 (dead letter {letter})\n")),
        "{text}"
    );
    let (code, body) = get_read(&addr, "/api/status");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(subscriber(&api, "probe")["order"]["parked"], 1, "{body}");
    let probe = |name: &str| format!("{name}{{subscriber=\"probe\"}}");
    eventually(
        "the metrics show the parked key",
        Duration::from_secs(10),
        || {
            let scrape = http_get(&addr, "/metrics").1;
            gauge(&scrape, &probe("eventhost_order_parked_keys")) == Some(1.0)
                && gauge(&scrape, &probe("eventhost_order_held_keys")) == Some(1.0)
        },
    );

    // Skipped: o-1 moves on to its next event; nothing parked or held.
    let skipped = ok(&world, &["dlq", "skip", "probe", &letter]);
    assert!(skipped.starts_with("1 key moved on"), "{skipped}");
    eventually("o-1's next event runs", Duration::from_secs(10), || {
        seen_all(&mut conn, "probe", std::slice::from_ref(&next))
    });
    let status = json_of(&world, &["status", "--json"]);
    let order = &subscriber(&status, "probe")["order"];
    assert_eq!(
        (&order["parked"], &order["held"], &order["oldest_held_s"]),
        (&json!(0), &json!(0), &Value::Null),
        "{order}"
    );
    eventually(
        "the metrics show nothing parked",
        Duration::from_secs(10),
        || {
            let scrape = http_get(&addr, "/metrics").1;
            gauge(&scrape, &probe("eventhost_order_parked_keys")) == Some(0.0)
                && gauge(&scrape, &probe("eventhost_order_held_keys")) == Some(0.0)
        },
    );
    assert_eq!(len(&mut conn, DLQ), 1, "the letter stays in the DLQ");
    assert!(host.stop().success());
}
