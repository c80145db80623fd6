//! Requests sent only after the commit (`send-after-commit`, world
//! `eventhost:plugin@0.2.0`), against real HTTP servers on loopback: a
//! committed event's requests reach the receiver, each with one
//! `Idempotency-Key`; a failing handler sends nothing; a host `kill -9`ed
//! between the commit and the send sends after its restart; a receiver
//! that is down gets every request once it is back; a request that never
//! succeeds lands in the DLQ with the status and the start of the response,
//! and `dlq replay` sends it again with the same key. A component built
//! against 0.1.0 before the change runs in the same host.

mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{json, Value};
use support::receiver::{Got, Receiver};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A world with the queue-http plugin as subscriber `queuer` (on `Queue`),
/// granted the receiver's port, `max_attempts = 2`, and `extra` tables.
fn world(port: u16, extra: &str) -> World {
    let world = World::new(&["queue_http.wasm"], "");
    world.configure(&format!(
        "[subscribers.queuer]\nplugin = \"queue_http.wasm\"\nevents = [\"Queue\"]\n\
         max_attempts = 2\n[subscribers.queuer.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n\n\
         {extra}"
    ));
    world
}

/// Every request of `events` (each `times` requests) arrived, each with
/// one key, and that key is the one the plugin was given at the call.
fn each_request_once(
    conn: &mut redis::Connection,
    receiver: &Receiver,
    events: &[String],
    times: u64,
) {
    let keys = receiver.keys_per_request();
    let st = state(conn, "queuer");
    for event in events {
        for n in 0..times {
            let got = keys.get(&(event.clone(), n)).cloned().unwrap_or_default();
            assert_eq!(got.len(), 1, "request {event}/{n}: keys {got:?}");
            assert_eq!(
                got.first(),
                st.get(&format!("key:{event}:{n}")),
                "request {event}/{n} carries the key the call returned"
            );
        }
    }
}

#[test]
fn committed_requests_are_sent_once_and_a_failing_handler_sends_nothing() {
    let receiver = Receiver::start();
    let other = Receiver::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let fixture = root().join("tests/fixtures/counter-0.1.0.wasm");
    let bytes = std::fs::read(&fixture).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("eventhost:plugin/host@0.1.0")
            && !text.contains("eventhost:plugin/host@0.2.0"),
        "the fixture is a component built against 0.1.0"
    );
    let world = world(receiver.port, "");
    world.install_file(&fixture, "legacy.wasm");
    world.write_config(&format!(
        "[http]\nlisten = \"{metrics}\"\n\n{}",
        std::fs::read_to_string(world.config()).unwrap().replace(
            "[subscribers.queuer]",
            "[subscribers.legacy]\nplugin = \"legacy.wasm\"\nevents = [\"Transfer\"]\n\n\
             [subscribers.queuer]"
        )
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{}/pay", receiver.port);

    let ok: Vec<String> = (0..3)
        .map(|_| publish(&mut conn, "Queue", json!({"url": url, "times": 2})))
        .collect();
    let rejected = publish(
        &mut conn,
        "Queue",
        json!({"url": url, "times": 2, "fail": "reject"}),
    );
    let retried = publish(&mut conn, "Queue", json!({"url": url, "fail": "retry"}));
    let denied = publish(
        &mut conn,
        "Queue",
        json!({"url": format!("http://127.0.0.1:{}/x", other.port)}),
    );
    let too_big = publish(&mut conn, "Queue", json!({"url": url, "pad": 2 << 20}));
    publish(&mut conn, "Transfer", json!({"account": "a", "amount": 5}));

    eventually("the failing events are dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:queuer:dlq") == 2
    });
    eventually("every committed request arrives", WAIT, || {
        receiver.got().len() >= 6
    });
    // What a sender would send late has had time to arrive.
    std::thread::sleep(Duration::from_secs(1));
    each_request_once(&mut conn, &receiver, &ok, 2);
    let sent: BTreeSet<String> = receiver
        .got()
        .iter()
        .map(|g| g.body["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sent,
        ok.iter().cloned().collect(),
        "nothing of a failed call"
    );
    assert!(!sent.contains(&rejected) && !sent.contains(&retried));
    assert_eq!(receiver.got().len(), 6);

    let st = state(&mut conn, "queuer");
    let refusal = &st[&format!("refused:{denied}")];
    assert!(refusal.starts_with("HttpRequestDenied"), "{refusal}");
    let refusal = &st[&format!("refused:{too_big}")];
    assert!(refusal.contains("bus.max_payload_bytes"), "{refusal}");
    assert!(other.got().is_empty(), "a denied request never leaves");
    assert_eq!(len(&mut conn, "events:sub:queuer:http"), 0, "sent: deleted");

    // The 0.1.0 component ran in the same host.
    eventually("the 0.1.0 plugin counts", WAIT, || {
        state(&mut conn, "legacy").get("count").map(String::as_str) == Some("1")
    });

    let scraped = scrape(&metrics);
    let sent_total = counter(
        &scraped,
        "eventhost_http_after_commit_total{subscriber=\"queuer\",outcome=\"sent\"}",
    );
    assert_eq!(sent_total, 6, "{scraped}");
    assert_eq!(
        counter(
            &scraped,
            "eventhost_http_after_commit_total{subscriber=\"queuer\",outcome=\"denied\"}"
        ),
        1
    );
}

#[test]
fn a_host_killed_between_commit_and_send_sends_after_restart() {
    let receiver = Receiver::start();
    let world = world(receiver.port, "");
    let mut crashing = world.host_with_env(&[("EVENTHOST_CRASH_AT", "sender-after-read")]);
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{}/pay", receiver.port);
    let id = publish(&mut conn, "Queue", json!({"url": url, "times": 3}));
    eventually("the host kills itself", WAIT, || !crashing.is_running());
    assert!(
        crashing
            .log()
            .contains("EVENTHOST_CRASH_AT=sender-after-read"),
        "{}",
        crashing.log()
    );
    assert_eq!(
        pending(&mut conn, "events:sub:queuer", "sub:queuer-group"),
        0
    );
    assert_eq!(len(&mut conn, "events:sub:queuer:http"), 3, "committed");
    assert_eq!(
        pending(&mut conn, "events:sub:queuer:http", "sub:queuer-group-http"),
        3,
        "read by the dead host, so reclaimed by the next"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(receiver.got().is_empty(), "nothing sent before the kill");

    let _host = world.host();
    eventually("the restarted host sends them", WAIT, || {
        receiver.got().len() >= 3
    });
    eventually("and deletes them", WAIT, || {
        len(&mut conn, "events:sub:queuer:http") == 0
    });
    each_request_once(&mut conn, &receiver, &[id], 3);
    assert_eq!(receiver.got().len(), 3);
}

#[test]
fn a_host_killed_right_after_the_commit_sends_after_restart() {
    let receiver = Receiver::start();
    let world = world(receiver.port, "");
    let mut crashing = world.host_with_env(&[("EVENTHOST_CRASH_AT", "commit-queued")]);
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{}/pay", receiver.port);
    let id = publish(&mut conn, "Queue", json!({"url": url, "times": 3}));
    eventually("the host kills itself", WAIT, || !crashing.is_running());
    assert!(
        crashing.log().contains("EVENTHOST_CRASH_AT=commit-queued"),
        "{}",
        crashing.log()
    );
    assert_eq!(
        pending(&mut conn, "events:sub:queuer", "sub:queuer-group"),
        0
    );
    // Its sender may have sent some before the kill: sent again after the
    // restart, with the same key.
    let _host = world.host();
    eventually("every request is sent", WAIT, || {
        receiver.keys_per_request().len() == 3
    });
    eventually("and deleted", WAIT, || {
        len(&mut conn, "events:sub:queuer:http") == 0
    });
    each_request_once(&mut conn, &receiver, &[id], 3);
}

#[test]
fn requests_that_never_succeed_are_dead_lettered_and_replay_sends_them_again() {
    let receiver = Receiver::start();
    let world = world(receiver.port, "");
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let base = format!("http://127.0.0.1:{}", receiver.port);
    let rejected = publish(
        &mut conn,
        "Queue",
        json!({"url": format!("{base}/reject"), "attempts": 5}),
    );
    let flaky = publish(
        &mut conn,
        "Queue",
        json!({"url": format!("{base}/flaky"), "attempts": 3}),
    );
    eventually("both are dead-lettered", WAIT, || {
        len(&mut conn, "events:sub:queuer:dlq") == 2
    });
    let letters = data_of(&mut conn, "events:sub:queuer:dlq");
    let reason_for = |event: &str| {
        let letter = letters
            .iter()
            .find(|l| l["event_id"] == event)
            .unwrap_or_else(|| panic!("no letter for {event}: {letters:?}"));
        let failure = letter["_failures"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(failure["kind"], "http", "{letter}");
        (
            failure["reason"].as_str().unwrap().to_string(),
            failure["attempt"].as_u64(),
        )
    };
    let (reason, attempt) = reason_for(&rejected);
    assert!(reason.contains("HTTP 400: no such account"), "{reason}");
    assert_eq!(attempt, Some(1), "a 4xx is dead-lettered at once");
    let (reason, attempt) = reason_for(&flaky);
    assert!(reason.contains("HTTP 503: try later"), "{reason}");
    assert_eq!(attempt, Some(3), "a 5xx is tried up to its attempts");
    let tried: Vec<Got> = receiver.got();
    assert_eq!(tried.iter().filter(|g| g.path == "/reject").count(), 1);
    assert_eq!(tried.iter().filter(|g| g.path == "/flaky").count(), 3);

    // The receiver is fixed: a replay sends the request again, same key.
    *receiver.flaky.lock().unwrap() = false;
    let out = world.eventhost(&["dlq", "replay", "queuer", "--all"]);
    assert!(out.status.success(), "{out:?}");
    eventually("the replayed requests are sent", WAIT, || {
        receiver.got().iter().filter(|g| g.path == "/flaky").count() == 4
    });
    eventually("the 400 comes back", WAIT, || {
        len(&mut conn, "events:sub:queuer:dlq") == 1
    });
    each_request_once(&mut conn, &receiver, &[rejected, flaky], 1);
    assert_eq!(len(&mut conn, "events:sub:queuer:http"), 0);
}

/// Requests committed while their receiver is down for `outage` all arrive
/// once it is back, each with one key.
fn a_receiver_down_for(outage: Duration) {
    const EVENTS: usize = 20;
    let port = free_port();
    let world = world(port, "");
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{port}/pay");
    let ids: Vec<String> = (0..EVENTS)
        .map(|_| publish(&mut conn, "Queue", json!({"url": url})))
        .collect();
    eventually("every event is committed", WAIT, || {
        state(&mut conn, "queuer").len() == EVENTS
    });
    let status = world.eventhost(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("after-commit requests: {EVENTS} queued")),
        "{status}"
    );
    std::thread::sleep(outage);
    assert_eq!(len(&mut conn, "events:sub:queuer:dlq"), 0);
    let receiver = Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    eventually("every request arrives", WAIT + outage, || {
        receiver.keys_per_request().len() == EVENTS
    });
    eventually("and is deleted", WAIT, || {
        len(&mut conn, "events:sub:queuer:http") == 0
    });
    each_request_once(&mut conn, &receiver, &ids, 1);
    assert_eq!(len(&mut conn, "events:sub:queuer:dlq"), 0);
    // The rate is per heartbeat: the first beat after the sends shows it.
    eventually("status shows the rate they were sent at", WAIT, || {
        let out = world.eventhost(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        status["subscribers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "queuer" && s["after_commit"]["sent_per_s"].as_f64() > Some(0.0))
    });
}

#[test]
fn a_receiver_down_for_5_seconds_gets_every_request_once_back() {
    a_receiver_down_for(Duration::from_secs(5));
}

#[test]
#[ignore = "30 s: run with --ignored"]
fn a_receiver_down_for_30_seconds_gets_every_request_once_back() {
    a_receiver_down_for(Duration::from_secs(30));
}

#[test]
fn invoke_lists_queued_requests_without_sending_them() {
    let receiver = Receiver::start();
    let url = format!("http://127.0.0.1:{}/pay", receiver.port);
    let out = std::process::Command::new(eventhost_bin())
        .arg("invoke")
        .arg(plugins().join("queue_http.wasm"))
        .args(["--type", "Queue", "--json", "--data"])
        .arg(json!({"url": url, "times": 2, "event_id": "e-1"}).to_string())
        .args([
            "--grant-http",
            &format!("http://127.0.0.1:{}", receiver.port),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queued = report["queued"].as_array().unwrap();
    assert_eq!(queued.len(), 2, "{report}");
    assert_eq!(queued[0]["url"], url);
    assert_eq!(queued[0]["method"], "POST");
    assert_eq!(queued[0]["key"], report["state"]["set"]["key:e-1:0"]);
    assert_ne!(queued[0]["key"], queued[1]["key"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(receiver.got().is_empty(), "invoke sends nothing it queued");

    // What is not a URL is refused at the call, like a URL no grant names.
    let out = std::process::Command::new(eventhost_bin())
        .arg("invoke")
        .arg(plugins().join("queue_http.wasm"))
        .args(["--type", "Queue", "--json", "--data"])
        .arg(json!({"url": "not a url", "event_id": "e-2"}).to_string())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = report["state"]["set"]["refused:e-2"]
        .as_str()
        .unwrap_or_default();
    assert!(refused.contains("is not a URL"), "{report}");
    assert_eq!(report["queued"].as_array().map(Vec::len), Some(0));
}

#[test]
fn on_a_cluster_requests_are_sent_once_and_failures_dead_lettered_and_replayed() {
    use redis::Commands;
    use support::cluster::{event, partition_for, partitions, Cluster, ClusterWorld};

    let receiver = Receiver::start();
    let base = format!("http://127.0.0.1:{}", receiver.port);
    let world = ClusterWorld::new(
        Cluster::start(3, 0),
        &["queue_http.wasm"],
        "",
        &format!(
            "[subscribers.queuer]\nplugin = \"queue_http.wasm\"\nevents = [\"Queue\"]\n\
             [subscribers.queuer.grants]\nhttp = [\"{base}\"]\n"
        ),
    );
    let _host = world.host();
    let mut conn = world.cluster.conn();
    let parts = partitions(&mut conn);
    let mut publish = |data: Value| {
        let (id, text) = event("Queue", data);
        let _: String = conn
            .xadd(partition_for(&parts, &id), "*", &[("data", text)])
            .unwrap();
        id
    };
    let ids: Vec<String> = (0..10)
        .map(|_| publish(json!({"url": format!("{base}/pay"), "times": 2})))
        .collect();
    let flaky = publish(json!({"url": format!("{base}/flaky"), "attempts": 1}));
    let mut conn = world.cluster.conn();
    eventually("every request arrives", WAIT, || {
        receiver.keys_per_request().len() == 21
    });
    eventually("the 503 is dead-lettered", WAIT, || {
        conn.xlen::<_, usize>("events:sub:{queuer}:dlq").unwrap() == 1
    });

    *receiver.flaky.lock().unwrap() = false;
    let out = world.eventhost(&["dlq", "replay", "queuer", "--all"]);
    assert!(out.status.success(), "{out:?}");
    eventually("the replayed request is sent", WAIT, || {
        receiver.got().iter().filter(|g| g.path == "/flaky").count() == 2
    });
    eventually("and deleted", WAIT, || {
        conn.xlen::<_, usize>("events:sub:{queuer}:http").unwrap() == 0
            && conn.xlen::<_, usize>("events:sub:{queuer}:dlq").unwrap() == 0
    });
    let st: std::collections::HashMap<String, String> =
        conn.hgetall("events:state:{queuer}").unwrap();
    let keys = receiver.keys_per_request();
    for (event, times) in ids.iter().map(|id| (id, 2)).chain([(&flaky, 1)]) {
        for n in 0..times {
            let got = &keys[&(event.clone(), n)];
            assert_eq!(got.len(), 1, "{event}/{n}: {got:?}");
            assert_eq!(got.first(), st.get(&format!("key:{event}:{n}")));
        }
    }
}

#[tokio::test]
async fn the_commit_queues_a_request_once_and_only_with_its_acknowledgement() {
    use eventhost::bus::connection::{Connector, Endpoint};
    use eventhost::bus::scripts::{CommitBatch, CommitKeys};
    use eventhost::handler::{Effects, QueuedRequest};
    use redis::AsyncCommands;

    let redis = Redis::start();
    let mut conn = Connector::new(&Endpoint::Server(redis.url()))
        .unwrap()
        .commands()
        .await
        .unwrap();
    let () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "0", "MKSTREAM"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let first: String = conn.xadd("s", "*", &[("data", "{}")]).await.unwrap();
    let second: String = conn.xadd("s", "*", &[("data", "{}")]).await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "c", "COUNT", "2", "STREAMS", "s", ">"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let request = QueuedRequest {
        key: "k-1".into(),
        subscriber: "s".into(),
        event_id: "e-1".into(),
        method: "POST".into(),
        url: "http://127.0.0.1:9/x".into(),
        headers: vec![("idempotency-key".into(), "k-1".into())],
        body: Some("{}".into()),
        attempts: 3,
    };
    let mut effects = Effects::default();
    effects.queue(request.clone());
    let keys = CommitKeys {
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
    let mut batch = CommitBatch::new("g", false);
    batch.ok(&first, None, &effects, 1.0);
    batch.dead_letter(&second, None, "{\"dead\":true}".into(), &Vec::new());
    assert_eq!(batch.apply(&mut conn, &keys).await.unwrap().skipped, 0);
    let queued: Vec<(String, Vec<(String, String)>)> =
        conn.xrange("s:http", "-", "+").await.unwrap();
    assert_eq!(queued.len(), 1, "the dead letter queued nothing");
    assert_eq!(queued[0].1, [("data".to_string(), request.to_json())]);

    // Committed again (a stalled host's late result): nothing queued twice.
    assert_eq!(batch.apply(&mut conn, &keys).await.unwrap().skipped, 2);
    let len: usize = conn.xlen("s:http").await.unwrap();
    assert_eq!(len, 1);
}
