//! Schedules end to end: real hosts on a real redis-server publish each
//! tick of a schedule once across hosts, catch up on (or skip) the ticks
//! missed while none ran, and follow the config file live. The tick
//! script is also tested alone.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventhost::bus::connection::{Connector, Endpoint};
use eventhost::bus::keys::Keys;
use eventhost::bus::scripts::tick::{tick, Arrival, Ticked};
use eventhost::schedule::{event_id, now_ms};
use redis::AsyncCommands;
use serde_json::Value;
use support::*;

/// A published tick: its time (ms), its event id, when it was added (the
/// entry id's ms) and its event.
#[derive(Debug, Clone)]
struct Published {
    tick: i64,
    id: String,
    added: i64,
    data: Value,
}

/// The events of `event_type` in `events:all`, in the order added.
fn published(conn: &mut redis::Connection, event_type: &str) -> Vec<Published> {
    published_in(conn, "events:all", event_type)
}

/// The events of `event_type` in `stream`, in the order added.
fn published_in(
    conn: &mut impl redis::ConnectionLike,
    stream: &str,
    event_type: &str,
) -> Vec<Published> {
    type Entry = (String, Vec<(String, String)>);
    let reply: Vec<Entry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply
        .into_iter()
        .filter_map(|(stream_id, fields)| {
            let (_, text) = fields.into_iter().find(|(k, _)| k == "data")?;
            let data: Value = serde_json::from_str(&text).ok()?;
            (data["event_type"] == event_type).then(|| Published {
                tick: (data["timestamp"].as_f64().unwrap() * 1000.0).round() as i64,
                id: data["event_id"].as_str().unwrap().to_string(),
                added: stream_id.split('-').next().unwrap().parse().unwrap(),
                data,
            })
        })
        .collect()
}

/// Checks that `events` of schedule `name` (every `period` ms) hold each
/// tick from the first to the last exactly once, with its id; returns the
/// delays from tick to publish, sorted.
fn each_tick_once(name: &str, events: &[Published], period: i64) -> Vec<i64> {
    assert!(!events.is_empty(), "no tick was published");
    let mut by_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for e in events {
        assert_eq!(e.id, event_id(name, e.tick), "{e:?}");
        assert_eq!(e.tick % period, 0, "ticks are aligned to the epoch: {e:?}");
        *by_tick.entry(e.tick).or_default() += 1;
    }
    let repeated: Vec<_> = by_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "ticks published more than once: {repeated:?}"
    );
    let ticks: Vec<i64> = by_tick.keys().copied().collect();
    let gaps: Vec<_> = ticks
        .windows(2)
        .filter(|w| w[1] - w[0] != period)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "ticks missing between {gaps:?}");
    let mut delays: Vec<i64> = events.iter().map(|e| e.added - e.tick).collect();
    delays.sort();
    delays
}

/// The `p`-th percentile of sorted `values`.
fn percentile(values: &[i64], p: usize) -> i64 {
    values[(values.len() - 1) * p / 100]
}

const BEAT: &str =
    "[schedules.beat]\nevent_type = \"Beat\"\nevery = \"1s\"\ndata = { source = \"e2e\" }\n";

/// 3 hosts run one schedule for `run`; one is killed (SIGKILL) a third of
/// the way and, if `restart`, started again at two thirds. Every tick in
/// the window is published once.
fn three_hosts(run: Duration, restart: bool, extra: &str) -> (usize, Vec<i64>, Vec<Published>) {
    let world = World::new(&[], &format!("{BEAT}{extra}"));
    let mut hosts: Vec<Host> = (0..3).map(|_| world.host()).collect();
    let started = Instant::now();
    std::thread::sleep(run / 3);
    hosts.remove(1).kill();
    std::thread::sleep(run / 3);
    if restart {
        hosts.push(world.host());
    }
    std::thread::sleep(run.saturating_sub(started.elapsed()));
    for host in hosts {
        host.stop();
    }
    let mut conn = world.conn();
    let events = published(&mut conn, "Beat");
    assert!(events.iter().all(|e| e.data["source"] == "e2e"));
    let delays = each_tick_once("beat", &events, 1000);
    let expected = run.as_secs() as usize;
    assert!(
        events.len() + 2 >= expected,
        "{} ticks published in {run:?}",
        events.len()
    );
    (events.len(), delays, published(&mut conn, "Minute"))
}

#[test]
fn three_hosts_publish_each_tick_once_through_a_kill() {
    let (ticks, delays, _) = three_hosts(Duration::from_secs(18), false, "");
    eprintln!(
        "{ticks} ticks, each once; delay tick → publish: median {} ms, p99 {} ms, max {} ms",
        percentile(&delays, 50),
        percentile(&delays, 99),
        delays.last().unwrap()
    );
    assert!(
        percentile(&delays, 50) < 100,
        "most ticks are published within 100 ms: {delays:?}"
    );
}

#[test]
#[ignore = "3 minutes; run with --ignored"]
fn three_hosts_for_three_minutes_publish_each_tick_once() {
    let minute = "[schedules.minute]\nevent_type = \"Minute\"\ncron = \"* * * * *\"\n";
    let (ticks, delays, minutes) = three_hosts(Duration::from_secs(180), true, minute);
    eprintln!(
        "{ticks} ticks, each once; delay tick → publish: median {} ms, p99 {} ms, max {} ms",
        percentile(&delays, 50),
        percentile(&delays, 99),
        delays.last().unwrap()
    );
    let minute_delays = each_tick_once("minute", &minutes, 60_000);
    eprintln!(
        "cron \"* * * * *\": {} ticks, each once, delays {minute_delays:?} ms",
        minutes.len()
    );
    assert!(minutes.len() >= 2, "{minutes:?}");
}

#[test]
fn a_redis_outage_costs_the_ticks_it_covers_never_a_repeat_or_a_burst() {
    let redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut world = World::with_redis(redis, &[], BEAT);
    let mut host = world.host();
    let mut conn = world.conn();
    eventually("ticks are published", Duration::from_secs(10), || {
        published(&mut conn, "Beat").len() >= 2
    });
    world.redis.kill();
    std::thread::sleep(Duration::from_millis(3000));
    world.redis.launch();
    let back = now_ms();
    let mut conn = world.conn();
    eventually("ticks are published again", Duration::from_secs(15), || {
        published(&mut conn, "Beat")
            .iter()
            .filter(|e| e.tick > back + 1000)
            .count()
            >= 3
    });
    assert!(host.is_running(), "the host survives the outage");
    let log = host.log();
    host.stop();
    assert!(log.contains("cannot publish the tick"), "{log}");

    let events = published(&mut conn, "Beat");
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "no tick twice: {events:?}");
    // Once back: the newest missed tick, late, then every tick on time.
    let late: Vec<&Published> = events.iter().filter(|e| e.added - e.tick > 500).collect();
    assert!(late.len() <= 1, "a burst of old ticks: {late:?}");
    let resumed: Vec<Published> = events.into_iter().filter(|e| e.added >= back).collect();
    let delays = each_tick_once("beat", &resumed, 1000);
    eprintln!(
        "back after the outage: {} ticks, the first {} ms late, then within {} ms",
        resumed.len(),
        resumed[0].added - resumed[0].tick,
        resumed[1..].iter().map(|e| e.added - e.tick).max().unwrap()
    );
    assert!(delays.len() >= 3);
}

/// The first tick the host's schedule `name` waited for, from its log.
fn first_waited_for(host: &Host, name: &str) -> i64 {
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("schedule started") && l.contains(&format!("schedule={name} ")))
        .unwrap_or_else(|| panic!("no start of {name} in the log:\n{log}"));
    let next = line
        .split("next=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    chrono::DateTime::parse_from_rfc3339(next.trim())
        .unwrap_or_else(|e| panic!("{next:?}: {e}"))
        .timestamp_millis()
}

#[test]
fn a_tick_missed_while_no_host_ran_is_published_once_or_skipped() {
    let config = "[schedules.once]\nevent_type = \"Once\"\nevery = \"2s\"\n\n\
                  [schedules.skip]\nevent_type = \"Skip\"\nevery = \"2s\"\nmissed = \"skip\"\n";
    let world = World::new(&[], config);
    let mut conn = world.conn();
    let host = world.host();
    eventually(
        "both schedules published a tick",
        Duration::from_secs(10),
        || !published(&mut conn, "Once").is_empty() && !published(&mut conn, "Skip").is_empty(),
    );
    host.stop();
    let before = |conn: &mut redis::Connection, t: &str| published(conn, t).last().unwrap().tick;
    let (once_last, skip_last) = (before(&mut conn, "Once"), before(&mut conn, "Skip"));
    // At least two ticks pass with no host.
    std::thread::sleep(Duration::from_millis(4500));
    let mut host = world.host();
    host.wait_for_log("schedule=skip");
    let once_next = first_waited_for(&host, "once");
    let skip_next = first_waited_for(&host, "skip");
    eventually(
        "both schedules are back on time",
        Duration::from_secs(10),
        || {
            published(&mut conn, "Once")
                .iter()
                .any(|e| e.tick == once_next)
                && published(&mut conn, "Skip")
                    .iter()
                    .any(|e| e.tick == skip_next)
        },
    );
    let log = host.log();
    host.stop();

    let between = |conn: &mut redis::Connection, t: &str, last: i64, next: i64| -> Vec<Published> {
        published(conn, t)
            .into_iter()
            .filter(|e| e.tick > last && e.tick < next)
            .collect()
    };
    let caught_up = between(&mut conn, "Once", once_last, once_next);
    assert_eq!(
        caught_up.len(),
        1,
        "one catch-up for missed = \"once\": {caught_up:?}"
    );
    assert_eq!(
        caught_up[0].tick,
        once_next - 2000,
        "the newest missed tick"
    );
    assert!(
        caught_up[0].tick - once_last > 2000,
        "older missed ticks are not published"
    );
    assert!(log.contains("published a missed tick"), "{log}");
    let skipped = between(&mut conn, "Skip", skip_last, skip_next);
    assert!(skipped.is_empty(), "missed = \"skip\": {skipped:?}");
    assert!(log.contains("left a missed tick unpublished"), "{log}");
    // `status` shows each schedule's last tick, and its next.
    let status = world.eventhost(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let last = published(&mut conn, "Once").last().unwrap().tick;
    let line = text
        .lines()
        .find(|l| l.starts_with("  once  Once  every 2s  last "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&eventhost::schedule::rfc3339(last)), "{line}");
    assert!(line.contains("  next "), "{line}");
    let mut ids: Vec<String> = published(&mut conn, "Once")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "no tick is published twice");
}

#[test]
fn schedules_follow_the_config_file_live() {
    let world = World::new(&[], "");
    world.configure_watched("");
    let mut conn = world.conn();
    let host = world.host();
    assert!(published(&mut conn, "Live").is_empty());

    world.configure_watched(
        "[schedules.live]\nevent_type = \"Live\"\nevery = \"1s\"\ndata = { v = 1 }\n",
    );
    eventually("the added schedule ticks", Duration::from_secs(10), || {
        published(&mut conn, "Live").len() >= 2
    });
    world.configure_watched(
        "[schedules.live]\nevent_type = \"Live\"\nevery = \"1s\"\ndata = { v = 2 }\n",
    );
    eventually(
        "the changed schedule ticks with its new data",
        Duration::from_secs(10),
        || {
            published(&mut conn, "Live")
                .iter()
                .any(|e| e.data["v"] == 2)
        },
    );
    world.configure_watched("");
    eventually(
        "the removed schedule stops",
        Duration::from_secs(10),
        || host.log().matches("schedule stopped").count() >= 2,
    );
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = published(&mut conn, "Live").len();
    std::thread::sleep(Duration::from_millis(2500));
    let events = published(&mut conn, "Live");
    assert_eq!(events.len(), stopped_at, "a removed schedule stops ticking");
    each_tick_once("live", &events, 1000);
    host.stop();
}

#[test]
fn on_a_cluster_a_schedules_ticks_go_once_to_one_partition() {
    use support::cluster::{partitions, Cluster, ClusterWorld};
    let config = "[schedules.a]\nevent_type = \"A\"\nevery = \"1s\"\n\n\
                  [schedules.b]\nevent_type = \"B\"\nevery = \"1s\"\n";
    let world = ClusterWorld::new(Cluster::start(3, 0), &[], "", config);
    let hosts = [world.host(), world.host()];
    std::thread::sleep(Duration::from_secs(6));
    for host in hosts {
        host.stop();
    }
    let mut conn = world.cluster.conn();
    let parts = partitions(&mut conn);
    let keys = Keys::cluster("events:", parts.len());
    for (name, event_type) in [("a", "A"), ("b", "B")] {
        let home = keys.schedule(name).ingress.stream;
        for part in &parts {
            let events = published_in(&mut conn, part, event_type);
            if *part == home {
                each_tick_once(name, &events, 1000);
                assert!(events.len() >= 4, "{name}: {events:?}");
            } else {
                assert!(events.is_empty(), "{name} published to {part}");
            }
        }
        let state: BTreeMap<String, String> =
            redis::Commands::hgetall(&mut conn, keys.schedule(name).state).unwrap();
        assert!(state.contains_key("tick"), "{state:?}");
    }
}

#[test]
fn check_names_a_schedules_mistakes_at_their_lines_and_its_next_tick() {
    let world = World::new(
        &[],
        "[schedules.nightly]\nevent_type = \"Report\"\ncron = \"0 2 * * *\"\n",
    );
    let out = world.eventhost(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok: schedules.nightly: Report cron \"0 2 * * *\", next tick 20"),
        "{text}"
    );
    assert!(text.contains("T02:00:00Z"), "{text}");
    assert!(text.contains(", 1 schedule"), "{text}");

    world.configure("[schedules.nightly]\nevent_type = \"Report\"\ncron = \"0 25 * * *\"\n");
    let (check, run) = world.refused();
    let line = world.line_of("cron = \"0 25 * * *\"");
    for said in [check, run] {
        assert!(
            said.contains(&format!(
                "eventhost.toml:{line}:8: schedules.nightly.cron: not a 5-field cron pattern"
            )),
            "{said}"
        );
    }
}

#[tokio::test]
async fn the_tick_script_publishes_each_tick_once() {
    let redis = Redis::start();
    let mut conn = Connector::new(&Endpoint::Server(redis.url()))
        .unwrap()
        .commands()
        .await
        .unwrap();
    let keys = Keys::new("events:").schedule("s");
    let call = |tick_ms: i64, arrival: Arrival, timing: &'static str| {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        async move {
            tick(
                &mut conn,
                &keys,
                timing,
                tick_ms,
                arrival,
                &format!("{{\"t\":{tick_ms}}}"),
            )
            .await
            .unwrap()
        }
    };
    let t = now_ms() / 1000 * 1000;
    // Never run: a missed tick is not caught up, whatever the schedule says.
    assert_eq!(call(t, Arrival::MissedOnce, "a").await, Ticked::Skipped);
    assert!(matches!(
        call(t + 1000, Arrival::OnTime, "a").await,
        Ticked::Published(_)
    ));
    assert_eq!(
        call(t + 1000, Arrival::OnTime, "a").await,
        Ticked::Done,
        "once"
    );
    assert_eq!(call(t + 1000, Arrival::MissedOnce, "a").await, Ticked::Done);
    assert_eq!(
        call(t, Arrival::OnTime, "a").await,
        Ticked::Done,
        "older ticks too"
    );
    // Ran before: a missed tick is published once, or skipped.
    assert!(matches!(
        call(t + 5000, Arrival::MissedOnce, "a").await,
        Ticked::Published(_)
    ));
    assert_eq!(
        call(t + 7000, Arrival::MissedSkip, "a").await,
        Ticked::Skipped
    );
    // A skip leaves the tick to a host that waited for it.
    assert!(matches!(
        call(t + 7000, Arrival::OnTime, "a").await,
        Ticked::Published(_)
    ));
    // A new timing starts afresh: no catch-up; what one host left out, no
    // other host that missed it publishes.
    assert_eq!(
        call(t + 9000, Arrival::MissedOnce, "b").await,
        Ticked::Skipped
    );
    assert_eq!(call(t + 9000, Arrival::MissedOnce, "b").await, Ticked::Done);
    assert!(matches!(
        call(t + 11000, Arrival::MissedOnce, "b").await,
        Ticked::Published(_)
    ));

    let entries: Vec<(String, Vec<(String, String)>)> =
        conn.xrange("events:all", "-", "+").await.unwrap();
    let ticks: Vec<String> = entries.into_iter().map(|(_, f)| f[0].1.clone()).collect();
    assert_eq!(
        ticks,
        [1000, 5000, 7000, 11000].map(|d| format!("{{\"t\":{}}}", t + d))
    );
    let state: BTreeMap<String, String> = conn.hgetall(&keys.state).await.unwrap();
    assert_eq!(state["tick"], (t + 11000).to_string());
    assert_eq!(state["timing"], "b");
}
