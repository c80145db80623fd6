//! Time, end to end with the real binary: retries that wait in Redis (an
//! outage longer than a host could hold a retry; hosts killed while
//! thousands wait), events published for later by plugins and by
//! `eventhost publish`, each arriving no earlier than its time and soon
//! after it.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Commands;
use serde_json::{json, Value};
use support::receiver::Receiver;
use support::*;

/// The subscriber every test here runs: the provider plugin, for payments,
/// once-failing events and reminders.
fn pay(extra: &str) -> String {
    format!(
        "[subscribers.pay]\nplugin = \"provider.wasm\"\nevents = [\"Pay\", \"Reminder\"]\n{extra}"
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Entries waiting in the schedule of `stream`.
fn scheduled(conn: &mut redis::Connection, stream: &str) -> usize {
    conn.zcard(format!("{stream}:schedule")).unwrap()
}

/// The `prefix`ed entries of pay's state, by what follows the prefix.
fn state_of(state: &HashMap<String, String>, prefix: &str) -> HashMap<String, String> {
    state
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

/// The provider is down (503) for 60 s, three times today's whole retry
/// window: with `max_attempts = 10` and the backoff capped at 20 s, every
/// payment is made once it is back and none reaches the DLQ, while the
/// subscriber's other events keep flowing; the retries wait in Redis, not
/// pending on a host.
#[test]
fn an_outage_longer_than_a_host_could_hold_a_retry_ends_with_every_payment_made() {
    let provider = Receiver::start();
    let url = format!("http://127.0.0.1:{}/flaky", provider.port);
    let world = World::new(
        &["provider.wasm"],
        &pay(&format!(
            "concurrency = 4\nmax_attempts = 10\nretry_backoff_ms = 1000\n\
             retry_backoff_max = \"20s\"\nretry_jitter = 0.2\n\
             [subscribers.pay.grants]\nhttp = [\"http://127.0.0.1:{}\"]\n",
            provider.port
        )),
    );
    let _host = world.host();
    let mut conn = world.conn();
    let outage = Instant::now();
    let payments: Vec<String> = (0..40)
        .map(|n| publish(&mut conn, "Pay", json!({"url": url, "n": n})))
        .collect();

    // Meanwhile the other events flow, each at once.
    let mut others = Vec::new();
    while outage.elapsed() < Duration::from_secs(50) {
        let batch: Vec<String> = (0..20)
            .map(|n| publish(&mut conn, "Pay", json!({"n": n})))
            .collect();
        eventually(
            "the other events are handled during the outage",
            WAIT,
            || {
                let done = state_of(&state(&mut conn, "pay"), "done:");
                batch.iter().all(|id| done.contains_key(id))
            },
        );
        others.extend(batch);
        // The payments wait in the schedule, nothing of them pending.
        assert_eq!(scheduled(&mut conn, "events:sub:pay"), payments.len());
        assert_eq!(pending(&mut conn, "events:sub:pay", "sub:pay-group"), 0);
        std::thread::sleep(Duration::from_secs(5));
    }
    let status = world.eventhost(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let schedule = &status["subscribers"][0]["schedule"];
    assert_eq!(schedule["scheduled"], payments.len(), "{status:#}");
    assert!(schedule["next_due"].as_f64().is_some(), "{status:#}");
    let text = String::from_utf8_lossy(&world.eventhost(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("scheduled: {} retries", payments.len())),
        "{text}"
    );

    while outage.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    *provider.flaky.lock().unwrap() = false;
    eventually(
        "every payment is made once the provider is back",
        Duration::from_secs(45),
        || {
            let paid = state_of(&state(&mut conn, "pay"), "paid:");
            payments.iter().all(|id| paid.contains_key(id))
        },
    );
    assert_eq!(len(&mut conn, "events:sub:pay:dlq"), 0);
    let paid = state_of(&state(&mut conn, "pay"), "paid:");
    let attempts: Vec<u32> = payments
        .iter()
        .map(|id| paid[id].parse().unwrap())
        .collect();
    // 60 s of 1, 2, 4, 8, 16, 20, 20... seconds (less jitter): past the
    // 3 attempts of the old defaults, within the 10 allowed.
    assert!(
        attempts.iter().all(|&a| (6..=10).contains(&a)),
        "{attempts:?}"
    );
    assert_eq!(scheduled(&mut conn, "events:sub:pay"), 0);
    assert_eq!(
        state_of(&state(&mut conn, "pay"), "done:").len(),
        others.len()
    );
}

/// 5,000 events that fail once and 5,000 that publish a reminder for later
/// wait in Redis while every host is killed with SIGKILL; new hosts (one
/// of them killed again as it moves them) handle each once: every event
/// succeeds on its second attempt, every reminder arrives, none twice.
#[test]
fn hosts_killed_while_10000_retries_and_delayed_events_wait_lose_none_and_double_none() {
    let world = World::new(
        &["provider.wasm"],
        &pay("concurrency = 8\nmax_attempts = 5\nretry_backoff_ms = 10000\nretry_jitter = 0\n"),
    );
    let mut conn = world.conn();
    let first = [world.host(), world.host()];
    let failing = publish_burst(&mut conn, "Pay", json!({"fails": 1}), 5_000);
    let reminding = publish_burst(&mut conn, "Pay", json!({"remind_in_ms": 10000}), 5_000);
    eventually("the 10,000 wait in their schedules", WAIT, || {
        scheduled(&mut conn, "events:sub:pay") + scheduled(&mut conn, "events:all") >= 9_000
    });
    for host in first {
        host.kill();
    }
    let waiting = scheduled(&mut conn, "events:sub:pay") + scheduled(&mut conn, "events:all");
    let mut second = world.host();
    let _third = world.host();
    // Kill one again while the moves run.
    eventually("the retries start to come back", WAIT, || {
        scheduled(&mut conn, "events:sub:pay") < 5_000
    });
    second.kill();
    second = world.host();
    eventually("every event and reminder is handled", WAIT * 3, || {
        let state = state(&mut conn, "pay");
        state_of(&state, "ok:").len() == failing.len()
            && state_of(&state, "reminders:").len() == reminding.len()
    });
    let state = state(&mut conn, "pay");
    let ok = state_of(&state, "ok:");
    let twice: Vec<&String> = failing.iter().filter(|id| ok[*id] != "1").collect();
    assert!(twice.is_empty(), "committed twice: {twice:?}");
    let reminders = state_of(&state, "reminders:");
    let twice: Vec<&String> = reminding
        .iter()
        .filter(|id| reminders[*id] != "1")
        .collect();
    assert!(twice.is_empty(), "reminded twice: {twice:?}");
    assert_eq!(len(&mut conn, "events:sub:pay:dlq"), 0, "{}", second.log());
    assert_eq!(scheduled(&mut conn, "events:sub:pay"), 0);
    assert_eq!(scheduled(&mut conn, "events:all"), 0);
    eprintln!("{waiting} scheduled when every host was killed");
}

/// Reminders published for a time (`publish-later` at a Unix time) reach
/// their handler no earlier than that time and within 100 ms of it at the
/// 99th percentile; `eventhost publish --delay/--at` schedule alike.
#[test]
fn delayed_events_arrive_no_earlier_than_their_time_and_soon_after() {
    let world = World::new(&["provider.wasm"], &pay("concurrency = 4\n"));
    let _host = world.host();
    let mut conn = world.conn();
    let start = now_ms() + 1_500;
    let mut due = HashMap::new();
    for i in 0..300u64 {
        let at = start + i * 10;
        let id = publish(&mut conn, "Pay", json!({"remind_at_ms": at}));
        due.insert(id, at);
    }
    eventually("every reminder arrives", WAIT, || {
        state_of(&state(&mut conn, "pay"), "reminded:").len() == due.len()
    });
    let reminded = state_of(&state(&mut conn, "pay"), "reminded:");
    let mut late: Vec<i64> = due
        .iter()
        .map(|(id, at)| reminded[id].parse::<i64>().unwrap() - *at as i64)
        .collect();
    late.sort_unstable();
    let p99 = late[late.len() * 99 / 100];
    eprintln!(
        "lateness of 300 delayed events: min {} ms, p50 {} ms, p99 {p99} ms, max {} ms",
        late[0],
        late[late.len() / 2],
        late[late.len() - 1]
    );
    assert!(late[0] >= 0, "one arrived {} ms early", -late[0]);
    assert!(p99 <= 100, "p99 {p99} ms late: {late:?}");

    // From the command line: a delay, and a time.
    let sent = now_ms();
    let delayed = world.eventhost(&["publish", "Pay", "{\"n\":1}", "--delay", "1500ms"]);
    assert!(delayed.status.success(), "{delayed:?}");
    let said = String::from_utf8_lossy(&delayed.stdout).into_owned();
    assert!(said.starts_with("scheduled Pay "), "{said}");
    let event_id = said.split_whitespace().nth(2).unwrap().to_string();
    let at = format!("{:.3}", (sent + 2_000) as f64 / 1000.0);
    let timed = world.eventhost(&["publish", "Pay", "{\"n\":2}", "--at", &at]);
    assert!(timed.status.success(), "{timed:?}");
    let timed_id = String::from_utf8_lossy(&timed.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    assert_eq!(scheduled(&mut conn, "events:all"), 2);
    std::thread::sleep(Duration::from_millis(1_000));
    let done = state_of(&state(&mut conn, "pay"), "done:");
    assert!(!done.contains_key(&event_id), "routed before its time");
    eventually("both arrive", WAIT, || {
        let done = state_of(&state(&mut conn, "pay"), "done:");
        done.contains_key(&event_id) && done.contains_key(&timed_id)
    });
    assert!(now_ms() >= sent + 2_000);
    let refused = world.eventhost(&["publish", "Pay", "{}", "--delay", "soon"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--delay"));
}

/// A provider that answers its first request with 503 and `Retry-After:
/// 2`: the plugin's `retry-after` makes the next attempt wait those 2 s,
/// not the subscriber's 100 ms backoff.
#[test]
fn a_handler_asks_how_long_its_retry_waits() {
    use std::io::{BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if support::http_server::read_request(&mut reader).is_none() {
                continue;
            }
            let first = {
                let mut seen = record.lock().unwrap();
                seen.push(Instant::now());
                seen.len() == 1
            };
            let head = if first {
                "HTTP/1.1 503 Unavailable\r\nRetry-After: 2\r\n"
            } else {
                "HTTP/1.1 200 OK\r\n"
            };
            let _ = write!(
                stream,
                "{head}Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let world = World::new(
        &["provider.wasm"],
        &pay(&format!(
            "retry_backoff_ms = 100\nretry_jitter = 0\n\
             [subscribers.pay.grants]\nhttp = [\"http://127.0.0.1:{port}\"]\n"
        )),
    );
    let _host = world.host();
    let mut conn = world.conn();
    let url = format!("http://127.0.0.1:{port}/later");
    let id = publish(&mut conn, "Pay", json!({ "url": url }));
    eventually("the payment is made", WAIT, || {
        state_of(&state(&mut conn, "pay"), "paid:").contains_key(&id)
    });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let waited = seen[1] - seen[0];
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(state_of(&state(&mut conn, "pay"), "paid:")[&id], "2");
}

/// On a Redis Cluster (3 masters): a retry waits in the schedule of its
/// subscriber's stream, a handler's reminder in its outbox's (both in the
/// subscriber's slot), an event from `eventhost publish --delay` in its
/// partition's; each is handled once, when due.
#[test]
fn on_a_cluster_each_schedule_is_in_the_slot_of_its_stream() {
    use support::cluster::{event, partition_for, partitions, Cluster, ClusterWorld};
    let world = ClusterWorld::new(
        Cluster::start(3, 0),
        &["provider.wasm"],
        "",
        &pay("concurrency = 4\nretry_backoff_ms = 1500\nretry_jitter = 0\n"),
    );
    let _host = world.host();
    let mut conn = world.cluster.conn();
    let parts = partitions(&mut conn);
    let mut publish = |data: Value| {
        let (id, text) = event("Pay", data);
        let _: String = conn
            .xadd(partition_for(&parts, &id), "*", &[("data", text)])
            .unwrap();
        id
    };
    let failing: Vec<String> = (0..50).map(|_| publish(json!({"fails": 1}))).collect();
    let reminding: Vec<String> = (0..50)
        .map(|_| publish(json!({"remind_in_ms": 1500})))
        .collect();
    let delayed = world.eventhost(&["publish", "Pay", "{\"n\":1}", "--delay", "1s"]);
    assert!(delayed.status.success(), "{delayed:?}");
    let delayed_id = String::from_utf8_lossy(&delayed.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let mut conn = world.cluster.conn();
    let waiting = |conn: &mut redis::cluster::ClusterConnection, key: &str| -> usize {
        conn.zcard(key).unwrap()
    };
    eventually("the retries and reminders wait", WAIT, || {
        waiting(&mut conn, "events:sub:{pay}:schedule") == failing.len()
            && waiting(&mut conn, "events:outbox:{pay}:schedule") == reminding.len()
    });
    eventually("each is handled once", WAIT, || {
        let state: HashMap<String, String> = conn.hgetall("events:state:{pay}").unwrap();
        state_of(&state, "ok:").len() == failing.len()
            && state_of(&state, "reminders:").len() == reminding.len()
            && state.contains_key(&format!("done:{delayed_id}"))
    });
    let state: HashMap<String, String> = conn.hgetall("events:state:{pay}").unwrap();
    assert!(state_of(&state, "ok:").values().all(|n| n == "1"));
    assert!(state_of(&state, "reminders:").values().all(|n| n == "1"));
}

const WAIT: Duration = Duration::from_secs(60);
