//! State is serializable per subscriber: no update is lost, whatever the
//! concurrency and the number of hosts, and an event whose reads changed
//! under it runs again without counting an attempt.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;
use support::*;

/// A config like `world`'s, with its own metrics endpoint: several hosts
/// run on one world, each with its own file.
fn host_config(world: &World, n: usize, metrics: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(world.config()).unwrap();
    let path = world.dir.path().join(format!("host-{n}.toml"));
    std::fs::write(
        &path,
        format!("[telemetry]\nmetrics = \"{metrics}\"\n\n{text}"),
    )
    .unwrap();
    path
}

fn start_host(config: &std::path::Path) -> Host {
    let mut host = Host::start(config);
    host.wait_for_log("eventhost running");
    host
}

/// 3 hosts at concurrency 8 on one subscriber whose every event reads and
/// writes one hot counter and one of 20 balances; a host is `kill -9`ed
/// midway. Both must end exact.
#[test]
fn three_hosts_at_concurrency_8_lose_no_update_across_a_kill_9() {
    const EVENTS: usize = 20_000;
    const ACCOUNTS: usize = 20;
    let world = World::new(
        &["counter.wasm"],
        "[subscribers.ledger]\nplugin = \"counter.wasm\"\nevents = [\"Transfer\"]\nconcurrency = 8\n",
    );
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let configs: Vec<_> = (0..3)
        .map(|n| host_config(&world, n, &metrics[n]))
        .collect();
    let mut hosts: Vec<Option<Host>> = configs.iter().map(|c| Some(start_host(c))).collect();

    let mut expected = [0i64; ACCOUNTS];
    let publisher = {
        let mut conn = world.conn();
        std::thread::spawn(move || {
            for n in 0..EVENTS {
                let amount = (n % 7) as i64 + 1;
                publish(
                    &mut conn,
                    "Transfer",
                    json!({"account": format!("a{}", n % ACCOUNTS), "amount": amount}),
                );
            }
        })
    };
    for n in 0..EVENTS {
        expected[n % ACCOUNTS] += (n % 7) as i64 + 1;
    }

    let mut conn = world.conn();
    let count = |conn: &mut redis::Connection| -> usize {
        state(conn, "ledger")
            .get("count")
            .map_or(0, |c| c.parse().unwrap())
    };
    eventually(
        "a quarter of the events are counted",
        Duration::from_secs(120),
        || count(&mut conn) >= EVENTS / 4,
    );
    hosts[1].take().unwrap().kill();
    let started = Instant::now();
    publisher.join().unwrap();
    eventually(
        "every event is counted and nothing is pending",
        Duration::from_secs(300),
        || count(&mut conn) >= EVENTS && settled(&mut conn, &["ledger"]),
    );
    // Entries the dead host held were reclaimed after claim_idle: wait a
    // little longer, in case one were committed twice.
    std::thread::sleep(Duration::from_secs(3));

    let st = state(&mut conn, "ledger");
    assert_eq!(
        st["count"],
        EVENTS.to_string(),
        "no update of the counter lost or doubled"
    );
    for (account, balance) in expected.iter().enumerate() {
        assert_eq!(
            st[&format!("balance:a{account}")],
            balance.to_string(),
            "balance of a{account}"
        );
    }
    assert_eq!(len(&mut conn, "events:sub:ledger:dlq"), 0);

    let scrape_sum = |name: &str| -> u64 {
        [0, 2]
            .iter()
            .map(|&n| {
                counter(
                    &scrape(&metrics[n]),
                    &format!("{name}{{subscriber=\"ledger\"}}"),
                )
            })
            .sum()
    };
    let conflicts = scrape_sum("eventhost_state_conflicts_total");
    let handled = scrape_sum("eventhost_handled_total");
    println!(
        "lost updates: {EVENTS} events, 3 hosts at concurrency 8, one kill -9: count and {ACCOUNTS} \
         balances exact; the 2 surviving hosts handled {handled} and ran {conflicts} events again \
         after a conflict ({:.2} per event handled); {:.1} s after the kill",
        conflicts as f64 / handled.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(conflicts > 0, "a hot key read by every event must conflict");
    for host in hosts.into_iter().flatten() {
        host.stop();
    }
}

/// An event whose read changes before its commit (someone writes the hash
/// by hand) runs again on fresh state: no attempt counted, no dead letter,
/// the write by hand not lost.
#[test]
fn a_conflicting_event_runs_again_without_an_attempt_or_a_dead_letter() {
    let world = World::new(&["probe.wasm"], "");
    let metrics = format!("127.0.0.1:{}", free_port());
    world.write_config(&format!(
        "[telemetry]\nmetrics = \"{metrics}\"\n\n{}{PROBE}events = [\"Ping\"]\ntimeout_ms = 8000\n",
        world
            .header()
            .replace("claim_idle_ms = 2000", "claim_idle_ms = 20000")
    ));
    let host = world.host();
    let mut conn = world.conn();
    // The probe reads `count` first, then sleeps 2 s before it returns ok.
    let id = publish(&mut conn, "Ping", json!({"act": "sleep", "sleep_ms": 2000}));
    std::thread::sleep(Duration::from_millis(700));
    let () = conn.hset("events:state:probe", "count", "100").unwrap();

    eventually("the event is committed", Duration::from_secs(30), || {
        state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
    });
    let st: HashMap<String, String> = state(&mut conn, "probe");
    assert_eq!(st["count"], "101", "the re-run read the write by hand");
    assert_eq!(st[&format!("seen:{id}")], "1", "still the first attempt");
    assert_eq!(st[&format!("calls:{id}")], "2", "the handler ran twice");
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    let text = scrape(&metrics);
    assert_eq!(
        counter(
            &text,
            "eventhost_state_conflicts_total{subscriber=\"probe\"}"
        ),
        1
    );
    assert_eq!(
        counter(&text, "eventhost_retried_total{subscriber=\"probe\"}"),
        0
    );
    assert!(settled(&mut conn, &["probe"]));
    host.stop();
}

/// One hot key holds neither the events beside it nor a shutdown. 24
/// events read-modify-write one key, each pausing 1 s, at concurrency 64:
/// one commits per round and the rest run again, taking turns. 24 events on
/// keys of their own, published while they do, must all be handled within
/// 8 s (before, they waited for the re-runs, one at a time: ~20 s);
/// SIGTERM midway exits within 10 s with the rest pending; a second host
/// finishes them and the hot key ends exact.
#[test]
fn a_hot_key_holds_neither_the_events_beside_it_nor_a_shutdown() {
    const HOT: usize = 24;
    let world = World::new(&["hotkey.wasm"], "");
    world.write_config(&format!(
        "{}[subscribers.hot]\nplugin = \"hotkey.wasm\"\nevents = [\"Bump\"]\nconcurrency = 64\ntimeout_ms = 3000\n",
        world
            .header()
            .replace("claim_idle_ms = 2000", "claim_idle_ms = 6000")
    ));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    for _ in 0..HOT {
        publish(&mut conn, "Bump", json!({"key": "hot", "pause_ms": 1000}));
    }
    // Once one has committed, the rest conflicted and are running again.
    eventually(
        "the first commit on the hot key",
        Duration::from_secs(20),
        || state(&mut conn, "hot").contains_key("hot"),
    );
    std::thread::sleep(Duration::from_millis(1200));
    let published = Instant::now();
    for i in 0..HOT {
        publish(&mut conn, "Bump", json!({"key": format!("cold:{i}")}));
    }
    eventually(
        "the events beside the hot key are handled",
        Duration::from_secs(8),
        || {
            let st = state(&mut conn, "hot");
            (0..HOT).all(|i| st.get(&format!("cold:{i}")).map(String::as_str) == Some("1"))
        },
    );
    let beside = published.elapsed();
    let hot_then: usize = state(&mut conn, "hot")["hot"].parse().unwrap();

    let stopping = Instant::now();
    assert_eq!(host.stop().code(), Some(0));
    let stopped = stopping.elapsed();
    let hot_at_stop: usize = state(&mut conn, "hot")["hot"].parse().unwrap();
    assert!(
        hot_at_stop < HOT,
        "the test stopped the host after the hot key was done"
    );
    println!(
        "hot key: {HOT} events beside it handled in {beside:?} (hot key at {hot_then}); \
         SIGTERM → exit in {stopped:?} with {} of {HOT} on the hot key pending",
        HOT - hot_at_stop
    );
    assert!(stopped < Duration::from_secs(10), "{stopped:?}");

    let mut host = world.host();
    host.wait_for_log("eventhost running");
    eventually(
        "the rest of the hot key is handled",
        Duration::from_secs(90),
        || state(&mut conn, "hot")["hot"] == HOT.to_string(),
    );
    assert!(settled(&mut conn, &["hot"]));
    assert_eq!(len(&mut conn, "events:sub:hot:dlq"), 0);
    host.stop();
}

/// An event whose reads keep changing under it (here a key rewritten by
/// hand every 5 ms; in life, other hosts committing to a hot key) runs
/// again at once 100 times in a row, then backs off as a retry would,
/// without counting an attempt, and is never dead-lettered for it: once
/// the writes stop, it commits, on its first attempt.
#[test]
fn an_event_that_keeps_conflicting_backs_off_and_is_never_dead_lettered() {
    let world = World::new(&["probe.wasm"], &format!("{PROBE}events = [\"Ping\"]\n"));
    let mut host = world.host();
    host.wait_for_log("eventhost running");
    let mut conn = world.conn();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut conn = world.conn();
        std::thread::spawn(move || {
            let mut n = 1000u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let () = conn.hset("events:state:probe", "count", n).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The probe reads `count`, then sleeps 20 ms: every run conflicts.
    let id = publish(&mut conn, "Ping", json!({"act": "sleep", "sleep_ms": 20}));
    host.wait_for_log_within("100 times in a row", Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eventually("the event commits", Duration::from_secs(20), || {
        state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
    });
    let st = state(&mut conn, "probe");
    assert_eq!(st[&format!("seen:{id}")], "1", "still the first attempt");
    let runs: u32 = st[&format!("calls:{id}")].parse().unwrap();
    assert!(runs > 100, "it ran {runs} times");
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert!(settled(&mut conn, &["probe"]));
    host.stop();
}
