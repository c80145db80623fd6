//! Order per key end to end (`order_by`): events that share a key are
//! handled one at a time, in the order they were routed, across hosts,
//! concurrency, retries, `kill -9`s and a hot reload; different keys run in
//! parallel; a dead letter lets its key move on, or parks it until an
//! operator replays or skips it; an event without the key runs unordered
//! or is refused. The real binary against real redis-servers (one server,
//! and a 3-master cluster), with `plugins/sequence`, which can only commit
//! each key's events in increasing `seq` and rejects the rest as "out of
//! order".

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::cluster::ClusterConnection;
use redis::ConnectionLike;
use serde_json::{json, Value};

use support::cluster::{partition_for, partitions, Cluster, ClusterWorld};
use support::*;

/// The subscriber every test runs `plugins/sequence` as.
const SUB: &str = "seq";

// ----- the plugin, in two builds -----

/// Runs `cargo build --profile plugin --target wasm32-wasip2 -p sequence`
/// with `env`; fails naming `what`.
fn build_sequence(what: &str, env: &[(&str, &OsStr)]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"])
        .args(["-p", "sequence"])
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sequence plugin, build "a"; built once per test binary.
fn sequence() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        build_sequence("the sequence plugin", &[]);
        root().join("target/wasm32-wasip2/plugin/sequence.wasm")
    })
}

/// A second build, which records "b" as its build: the hot reload swaps
/// it in. Built into its own target folder.
fn sequence_b() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let target = root().join("target/sequence-b");
        build_sequence(
            "sequence build b",
            &[
                ("SEQUENCE_BUILD", OsStr::new("b")),
                ("CARGO_TARGET_DIR", target.as_os_str()),
            ],
        );
        target.join("wasm32-wasip2/plugin/sequence.wasm")
    })
}

/// The two big runs load the machine: one at a time.
fn one_big_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BIG: Mutex<()> = Mutex::new(());
    BIG.lock().unwrap_or_else(|p| p.into_inner())
}

// ----- Redis, on one server or a cluster -----

/// Where the subscriber's keys are: `events:state:seq` on one server,
/// `events:state:{seq}` on a cluster.
struct Layout {
    state: String,
    stream: String,
    dlq: String,
    group: String,
    /// `events:order:seq`: the prefix of the order keys (each key's list is
    /// `<order>:q:<key>`).
    order: String,
}

impl Layout {
    fn new(tag: &str) -> Layout {
        Layout {
            state: format!("events:state:{tag}"),
            stream: format!("events:sub:{tag}"),
            dlq: format!("events:sub:{tag}:dlq"),
            group: format!("sub:{SUB}-group"),
            order: format!("events:order:{tag}"),
        }
    }

    fn single() -> Layout {
        Layout::new(SUB)
    }

    fn cluster() -> Layout {
        Layout::new(&format!("{{{SUB}}}"))
    }
}

/// A connection that can add many entries in one round trip: a pipeline
/// on one server, a cluster pipeline on a cluster.
trait Conn: ConnectionLike + Send + 'static {
    /// XADDs each `(stream, data)`.
    fn xadd_all(&mut self, adds: &[(String, String)]);
}

impl Conn for redis::Connection {
    fn xadd_all(&mut self, adds: &[(String, String)]) {
        let mut pipe = redis::pipe();
        for (stream, text) in adds {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(text)
                .ignore();
        }
        let () = pipe.query(self).unwrap();
    }
}

impl Conn for ClusterConnection {
    fn xadd_all(&mut self, adds: &[(String, String)]) {
        let mut pipe = redis::cluster::cluster_pipe();
        for (stream, text) in adds {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("data")
                .arg(text)
                .ignore();
        }
        let () = pipe.query(self).unwrap();
    }
}

fn hgetall(conn: &mut impl ConnectionLike, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(conn).unwrap()
}

fn xlen(conn: &mut impl ConnectionLike, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(conn).unwrap()
}

/// A dead letter: its id in the DLQ, its fields, its `data` parsed.
struct Dead {
    id: String,
    fields: HashMap<String, String>,
    data: Value,
}

impl Dead {
    fn reason(&self) -> String {
        self.data["_failures"]
            .as_array()
            .and_then(|f| f.last())
            .and_then(|f| f["reason"].as_str())
            .unwrap_or("<no reason>")
            .to_string()
    }

    fn seq(&self) -> u64 {
        self.data["seq"].as_u64().unwrap_or(0)
    }

    /// The `key` the bus noted beside the dead letter, wherever it put it:
    /// a field of the entry, of its data or of its last failure record.
    fn key(&self) -> Option<String> {
        let last = self.data["_failures"].as_array().and_then(|f| f.last());
        self.fields
            .get("key")
            .cloned()
            .or_else(|| self.data["key"].as_str().map(String::from))
            .or_else(|| last.and_then(|f| f["key"].as_str()).map(String::from))
    }
}

fn dead_letters(conn: &mut impl ConnectionLike, dlq: &str) -> Vec<Dead> {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(dlq)
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    reply
        .into_iter()
        .map(|(id, fields)| {
            let fields: HashMap<String, String> = fields.into_iter().collect();
            let data = fields
                .get("data")
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            Dead { id, fields, data }
        })
        .collect()
}

/// Every key matching `pattern` on a plain connection to one node.
fn scan(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// The first element of the list `list` (a key's holder, or its park),
/// its first 80 bytes.
fn head_of(conn: &mut impl ConnectionLike, list: &str) -> Option<String> {
    let head: Option<String> = redis::cmd("LINDEX").arg(list).arg(0).query(conn).ok()?;
    head.map(|h| h.chars().take(80).collect())
}

/// The elements of the list `list` as "park:<id>" or the seq of the
/// event waiting there.
fn list_of(conn: &mut impl ConnectionLike, list: &str) -> Vec<String> {
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap_or_default();
    items
        .iter()
        .map(|item| match item.split_once(' ') {
            Some((_, data)) if !item.starts_with("park:") => {
                let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                format!("seq {}", data["seq"])
            }
            _ => item.clone(),
        })
        .collect()
}

/// A stream id as (ms, seq), to compare.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Whether the fan-out has routed every entry of `stream` up to `last`:
/// its group has read past it and holds nothing pending.
fn routed(conn: &mut impl ConnectionLike, stream: &str, last: &str) -> bool {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .unwrap_or_default();
    let Some(group) = groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == b"all-group"))
    else {
        return false;
    };
    let delivered = match group.get("last-delivered-id") {
        Some(redis::Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
        _ => return false,
    };
    let pending = match group.get("pending") {
        Some(redis::Value::Int(n)) => *n,
        _ => return false,
    };
    pending == 0 && stream_id(&delivered) >= stream_id(last)
}

/// A little deterministic randomness, seeded by the clock (printed).
fn rng() -> (u64, impl FnMut(u64) -> u64 + Send) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut state = seed;
    (seed, move |below: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % below
    })
}

/// An event as a producer writes it: `data` plus `event_type` and a new
/// `event_id`; its id and its text.
fn step_event(data: Value) -> (String, String) {
    let Value::Object(mut object) = data else {
        panic!("an event is an object")
    };
    let id = uuid::Uuid::new_v4().to_string();
    object.insert("event_type".into(), "Step".into());
    object.insert("event_id".into(), id.clone().into());
    (id, Value::Object(object).to_string())
}

/// The seqs `log:<key>` lists, in commit order.
fn log_of(state: &HashMap<String, String>, key: &str) -> Vec<u64> {
    state
        .get(&format!("log:{key}"))
        .map(|l| {
            l.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn seqs(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

/// Polls `check` every 25 ms until it is `Ok`; past `limit`, fails with
/// what it said last.
fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(seen) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting until {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

/// `Ok` if `holds`, else what was seen.
fn seen(holds: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(what())
    }
}

// ----- the big run: many keys, three hosts, kills, a reload -----

/// How big a run is.
struct Scale {
    /// Names the run in messages.
    what: &'static str,
    /// The subscriber's `concurrency` on each host.
    concurrency: usize,
    keys: usize,
    per_key: u64,
    poison: usize,
    retry_percent: u64,
    /// The most the run may take from the first publish.
    limit: Duration,
}

/// What the publisher does: waves of events; in each wave, each key
/// appears at most once (its next seq), keys shuffled, each wave published
/// in one round trip. On one server the waves follow each other at once:
/// three hosts fan out concurrently and a killed host's batch is
/// reclaimed seconds later, and the events of a key must still be handled
/// in publish order, which the plugin checks. On a cluster the event id
/// picks the ingress partition, so the events of one key are in different
/// partitions, routed by independent fan-outs: there the next wave waits
/// until the last is routed (publish order across partitions is not
/// promised; routing order is).
struct Plan {
    waves: Vec<Vec<(usize, u64)>>,
    poison: HashSet<(usize, u64)>,
    total: usize,
}

impl Plan {
    fn new(scale: &Scale) -> Plan {
        let (seed, mut random) = rng();
        println!("order: plan seed {seed}");
        let mut poison = HashSet::new();
        while poison.len() < scale.poison {
            let key = random(scale.keys as u64) as usize;
            let seq = 1 + random(scale.per_key);
            poison.insert((key, seq));
        }
        let mut next = vec![1u64; scale.keys];
        let mut waves = Vec::new();
        let mut total = 0;
        while next.iter().any(|&n| n <= scale.per_key) {
            let mut wave = Vec::new();
            for (key, n) in next.iter_mut().enumerate() {
                // Keys move on at their own pace: some fall behind.
                if *n <= scale.per_key && random(100) < 70 {
                    wave.push((key, *n));
                    *n += 1;
                }
            }
            for i in (1..wave.len()).rev() {
                let j = random(i as u64 + 1) as usize;
                wave.swap(i, j);
            }
            if !wave.is_empty() {
                total += wave.len();
                waves.push(wave);
            }
        }
        Plan {
            waves,
            poison,
            total,
        }
    }
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

/// Publishes the plan's waves on `conn` through `ingress` (the event id
/// picks the partition); stops early if `abort` is set.
fn publish_waves<C: Conn>(
    mut conn: C,
    ingress: Vec<String>,
    plan: Arc<Plan>,
    retry_percent: u64,
    abort: Arc<AtomicBool>,
) -> Duration {
    let started = Instant::now();
    for (n, wave) in plan.waves.iter().enumerate() {
        let mut adds = Vec::with_capacity(wave.len());
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for &(key, seq) in wave {
            let (id, text) = step_event(json!({
                "order_id": key_name(key),
                "seq": seq,
                "retry_percent": retry_percent,
                "poison": plan.poison.contains(&(key, seq)),
            }));
            adds.push((partition_for(&ingress, &id).to_string(), text));
        }
        conn.xadd_all(&adds);
        if ingress.len() == 1 {
            continue;
        }
        // The last id of each stream this wave wrote to.
        for stream in adds.iter().map(|(s, _)| s) {
            if !last.contains_key(stream) {
                let top: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query(&mut conn)
                    .unwrap();
                last.insert(stream.clone(), top[0].0.clone());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while !last.iter().all(|(s, id)| routed(&mut conn, s, id)) {
            if abort.load(Ordering::Relaxed) {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "wave {n} of {} was not routed within 90 s",
                plan.waves.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    started.elapsed()
}

/// Sets its flag when dropped: tells the publisher to stop if the test
/// fails first.
struct Abort(Arc<AtomicBool>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Three hosts on `config` (which watches the plugins folder, where the
/// plugin is `plugin_file`) handle the plan; two hosts are `kill -9`ed and
/// restarted, the plugin is replaced by build b midway; then every event
/// must be committed in its key's order or, the poison ones and only
/// them, in the DLQ; and nothing of the order may be left in Redis.
fn keep_every_keys_order<C: Conn>(
    config: &Path,
    plugin_file: &Path,
    mut connect: impl FnMut() -> C,
    ingress: impl FnOnce(&mut C) -> Vec<String>,
    layout: Layout,
    mut order_keys_left: impl FnMut() -> Vec<String>,
    scale: Scale,
) {
    let what = scale.what;
    let started_hosts = Instant::now();
    let hosts: Vec<Host> = (0..3).map(|_| Host::serving(config, &[])).collect();
    let mut conn = connect();
    let ingress = ingress(&mut conn);
    println!(
        "{what}: 3 hosts serving in {:.1?}; ingress {ingress:?}",
        started_hosts.elapsed()
    );

    let plan = Arc::new(Plan::new(&scale));
    let abort = Arc::new(AtomicBool::new(false));
    let _abort_on_failure = Abort(abort.clone());
    let started = Instant::now();
    let publisher = {
        let (conn, ingress, plan, abort) =
            (connect(), ingress.clone(), plan.clone(), abort.clone());
        let retry_percent = scale.retry_percent;
        std::thread::spawn(move || publish_waves(conn, ingress, plan, retry_percent, abort))
    };

    let keys: Vec<String> = (0..scale.keys).map(key_name).collect();
    let done = |conn: &mut C| -> (usize, HashMap<String, String>) {
        let state = hgetall(conn, &layout.state);
        let committed: usize = keys.iter().map(|k| log_of(&state, k).len()).sum();
        let dead = xlen(conn, &layout.dlq) as usize;
        (committed + dead, state)
    };
    // Each host, and when it was started.
    let mut hosts: Vec<(Host, Instant)> = hosts.into_iter().map(|h| (h, started)).collect();
    let restart = |hosts: &mut Vec<(Host, Instant)>, n: usize| {
        let (killed, _) = hosts.remove(n);
        killed.kill();
        std::thread::sleep(Duration::from_millis(300));
        let since = Instant::now();
        hosts.insert(n, (Host::serving(config, &[]), since));
    };

    let mut kills = Vec::new();
    let mut reload_written: Option<Instant> = None;
    let mut reload: Option<(Duration, HashMap<String, usize>)> = None;
    let settled_at;
    // The most keys seen with events waiting behind their holder.
    let mut most_held = 0;
    let mut publisher = Some(publisher);
    let mut published_in = None;
    loop {
        if publisher.as_ref().is_some_and(|p| p.is_finished()) {
            let joined = publisher.take().unwrap().join();
            published_in = Some(joined.expect("the publisher failed"));
        }
        let (finished, state) = done(&mut conn);
        let held: u64 = redis::cmd("ZCARD")
            .arg(format!("{}:held", layout.order))
            .query(&mut conn)
            .unwrap();
        most_held = most_held.max(held);
        let progress = finished as f64 / plan.total as f64;
        if kills.is_empty() && progress >= 0.15 {
            restart(&mut hosts, 0);
            kills.push((started.elapsed(), finished));
        }
        if reload_written.is_none() && progress >= 0.35 {
            // Build b, written beside the plugin and renamed over it.
            let tmp = plugin_file.with_extension("wasm.tmp");
            std::fs::copy(sequence_b(), &tmp).unwrap();
            std::fs::rename(&tmp, plugin_file).unwrap();
            reload_written = Some(Instant::now());
        }
        if let (Some(written), None) = (reload_written, &reload) {
            // Every host reloaded b, or started after it was written.
            if hosts
                .iter()
                .all(|(h, since)| *since > written || h.log().contains("reloaded: build"))
            {
                // Each key's commits so far: at most one more of it (the
                // one in flight during the reload) may run on build a.
                let state = hgetall(&mut conn, &layout.state);
                let lengths = keys
                    .iter()
                    .map(|k| (k.clone(), log_of(&state, k).len()))
                    .collect();
                reload = Some((started.elapsed(), lengths));
            } else {
                assert!(
                    written.elapsed() < Duration::from_secs(60),
                    "{what}: the hosts did not reload build b within 60 s"
                );
            }
        }
        if kills.len() == 1 && progress >= 0.6 {
            restart(&mut hosts, 2);
            kills.push((started.elapsed(), finished));
        }
        if finished >= plan.total && kills.len() == 2 && reload.is_some() && published_in.is_some()
        {
            let quiet = pending(&mut conn, &layout.stream, &layout.group) == 0
                && ingress
                    .iter()
                    .all(|s| pending(&mut conn, s, "all-group") == 0);
            if quiet && order_keys_left().is_empty() {
                settled_at = started.elapsed();
                break;
            }
        }
        if started.elapsed() > scale.limit {
            let left = order_keys_left();
            let stuck: Vec<_> = left
                .iter()
                .filter(|k| k.contains(":q:"))
                .take(10)
                .map(|k| (k.clone(), head_of(&mut conn, k)))
                .collect();
            panic!(
                "{what}: not done within {:?}: {finished} of {} events committed or \
                 dead-lettered; pending in {}: {}; kills at {kills:?}; reload at {:?}; \
                 {} order keys left ({:?}...); lists and their heads {stuck:?}; \
                 {} keys committed nothing",
                scale.limit,
                plan.total,
                layout.stream,
                pending(&mut conn, &layout.stream, &layout.group),
                reload.as_ref().map(|r| r.0),
                left.len(),
                &left[..left.len().min(10)],
                keys.iter().filter(|k| log_of(&state, k).is_empty()).count(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let published_in = published_in.unwrap();

    // ----- what must hold -----
    let state = hgetall(&mut conn, &layout.state);
    let dead = dead_letters(&mut conn, &layout.dlq);
    let out_of_order: Vec<String> = dead
        .iter()
        .map(Dead::reason)
        .filter(|r| r.contains("out of order"))
        .collect();
    assert!(
        out_of_order.is_empty(),
        "{what}: {} events ran out of order, e.g. {:?}",
        out_of_order.len(),
        &out_of_order[..out_of_order.len().min(10)]
    );
    let mut dead_set = HashSet::new();
    for letter in &dead {
        let key: usize = letter.data["order_id"].as_str().unwrap()[1..]
            .parse()
            .unwrap();
        assert!(
            dead_set.insert((key, letter.seq())),
            "{what}: k{key} seq {} dead-lettered twice",
            letter.seq()
        );
        assert!(
            letter.reason().contains("rejected: poison:"),
            "{what}: k{key} seq {} dead-lettered for {:?}",
            letter.seq(),
            letter.reason()
        );
        assert_eq!(
            letter.key().as_deref(),
            Some(key_name(key).as_str()),
            "{what}: the dead letter {} names its key: {:?}",
            letter.id,
            letter.fields
        );
    }
    assert_eq!(
        dead_set, plan.poison,
        "{what}: the poison, and only it, is dead"
    );

    let (reloaded_at, lengths) = reload.unwrap();
    let (mut on_a, mut on_b) = (0, 0);
    for (n, key) in keys.iter().enumerate() {
        let log = log_of(&state, key);
        assert!(
            log.windows(2).all(|w| w[0] < w[1]),
            "{what}: {key} committed out of order: {log:?}"
        );
        let expected: Vec<u64> = seqs(1, scale.per_key)
            .into_iter()
            .filter(|&s| !plan.poison.contains(&(n, s)))
            .collect();
        assert_eq!(log, expected, "{what}: every event of {key} committed once");
        let builds = state[&format!("builds:{key}")].as_bytes();
        assert_eq!(
            builds.len(),
            log.len(),
            "{what}: one build letter per commit"
        );
        on_a += builds.iter().filter(|&&b| b == b'a').count();
        on_b += builds.iter().filter(|&&b| b == b'b').count();
        let after = lengths[key] + 1;
        assert!(
            builds.iter().skip(after).all(|&b| b == b'b'),
            "{what}: {key} ran on build a after every host had reloaded b \
             ({} commits then): {}",
            lengths[key],
            String::from_utf8_lossy(builds)
        );
    }
    assert!(on_a > 0 && on_b > 0, "{what}: a ran {on_a}, b ran {on_b}");
    assert!(most_held > 0, "{what}: no key ever had an event waiting");
    assert_eq!(order_keys_left(), Vec::<String>::new());
    assert_eq!(pending(&mut conn, &layout.stream, &layout.group), 0);
    println!(
        "{what}: {} events on {} keys ({} poison, {}% chance of a retry), 3 hosts at \
         concurrency {}: published in {:.1?} ({} waves), all committed in order or dead \
         in {:.1?}; kills at {kills:?} (time, events done); reload at {reloaded_at:.1?}; \
         {on_a} commits on build a, {on_b} on b; at most {most_held} keys had events \
         waiting at once",
        plan.total,
        scale.keys,
        plan.poison.len(),
        scale.retry_percent,
        scale.concurrency,
        published_in,
        plan.waves.len(),
        settled_at,
    );
    for (n, (_, at)) in kills.iter().enumerate() {
        assert!(
            *at < plan.total,
            "{what}: kill {} came once every event was handled: the run is too short \
             to kill a host midway",
            n + 1
        );
    }
    for (host, _) in hosts {
        host.stop();
    }
}

/// The subscriber's table for the big runs.
fn ordered_subscriber(concurrency: usize) -> String {
    format!(
        "[subscribers.{SUB}]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = {concurrency}\n\
         max_attempts = 8\nretry_backoff_ms = 20\norder_by = \"order_id\"\n"
    )
}

/// The big run on one redis-server.
fn on_one_server(scale: Scale) {
    let _big = one_big_run_at_a_time();
    sequence_b();
    let world = World::new(&[], "");
    world.install_file(sequence(), "sequence.wasm");
    world.configure_watched(&ordered_subscriber(scale.concurrency));
    let plugin_file = world.dir.path().join("plugins/sequence.wasm");
    let layout = Layout::single();
    let pattern = format!("{}*", layout.order);
    let mut scanner = world.conn();
    keep_every_keys_order(
        &world.config(),
        &plugin_file,
        || world.conn(),
        |_| vec!["events:all".to_string()],
        layout,
        move || scan(&mut scanner, &pattern),
        scale,
    );
}

#[test]
fn three_hosts_keep_every_keys_order_on_one_server() {
    on_one_server(Scale {
        what: "one server",
        concurrency: 8,
        keys: 500,
        per_key: 40,
        poison: 36,
        retry_percent: 10,
        limit: Duration::from_secs(600),
    });
}

/// At concurrency 1 a host commits its batch as one ordered run (a
/// conflict stops the rest of the batch): the same must hold.
#[test]
fn three_hosts_at_concurrency_1_keep_every_keys_order() {
    on_one_server(Scale {
        what: "concurrency 1",
        concurrency: 1,
        keys: 100,
        per_key: 30,
        poison: 10,
        retry_percent: 10,
        limit: Duration::from_secs(300),
    });
}

#[test]
fn three_hosts_keep_every_keys_order_on_a_cluster() {
    let _big = one_big_run_at_a_time();
    sequence_b();
    let world = ClusterWorld::new(Cluster::start(3, 0), &[], "", "");
    std::fs::copy(sequence(), world.dir.path().join("plugins/sequence.wasm")).unwrap();
    world.configure_watching(true, "", "", &ordered_subscriber(8));
    let plugin_file = world.dir.path().join("plugins/sequence.wasm");
    let layout = Layout::cluster();
    // Every order key shares the subscriber's slot: one node holds them.
    let port = world.cluster.master_of(&layout.order);
    let mut scanner = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let pattern = format!("{}*", layout.order);
    keep_every_keys_order(
        &world.config(),
        &plugin_file,
        || world.cluster.conn(),
        partitions,
        layout,
        move || scan(&mut scanner, &pattern),
        Scale {
            what: "cluster",
            concurrency: 8,
            keys: 500,
            per_key: 40,
            poison: 36,
            retry_percent: 10,
            limit: Duration::from_secs(600),
        },
    );
}

// ----- a retry holds its key, and only it -----

/// Key R's first event fails three times (backoff 400 ms, doubling):
/// R2..R5 wait for it, while 50 other keys, published after it, are all
/// handled meanwhile; then R runs in order. Between attempts R1 waits in
/// the subscriber's schedule, not pending on a host, and still holds R.
#[test]
fn a_retry_holds_back_its_key_and_no_other() {
    let world = World::new(&[], "");
    world.install_file(sequence(), "sequence.wasm");
    world.configure(&format!(
        "[subscribers.{SUB}]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = 4\n\
         max_attempts = 5\nretry_backoff_ms = 400\norder_by = \"order_id\"\n"
    ));
    let host = world.host();
    let mut conn = world.conn();
    let mut adds = Vec::new();
    let first = json!({"order_id": "R", "seq": 1, "retry_percent": 100, "max_chance_retries": 3});
    adds.push(("events:all".to_string(), step_event(first).1));
    for seq in 2..=5u64 {
        let data = json!({"order_id": "R", "seq": seq});
        adds.push(("events:all".to_string(), step_event(data).1));
    }
    for key in 0..50 {
        for seq in 1..=3u64 {
            let data = json!({"order_id": format!("s{key}"), "seq": seq});
            adds.push(("events:all".to_string(), step_event(data).1));
        }
    }
    let published = Instant::now();
    conn.xadd_all(&adds);
    wait(
        "the other keys are handled",
        Duration::from_secs(20),
        || {
            let st = state(&mut conn, SUB);
            let done = (0..50)
                .filter(|k| log_of(&st, &format!("s{k}")) == [1, 2, 3])
                .count();
            seen(done == 50, || format!("{done} of 50 keys done"))
        },
    );
    let others = published.elapsed();
    wait(
        "R1 waits in the schedule, holding R",
        Duration::from_secs(5),
        || {
            let scheduled: usize = redis::cmd("ZCARD")
                .arg("events:sub:seq:schedule")
                .query(&mut conn)
                .unwrap();
            let list: usize = redis::cmd("LLEN")
                .arg("events:order:seq:q:R")
                .query(&mut conn)
                .unwrap();
            let pending = pending(&mut conn, "events:sub:seq", "sub:seq-group");
            seen(scheduled == 1 && list == 5 && pending == 0, || {
                format!("scheduled {scheduled}, R's list {list}, pending {pending}")
            })
        },
    );
    let st = state(&mut conn, SUB);
    assert_eq!(
        log_of(&st, "R"),
        Vec::<u64>::new(),
        "R1 is still retrying after {others:?}, and R2..R5 wait for it"
    );
    wait("R is handled", Duration::from_secs(30), || {
        let r = log_of(&state(&mut conn, SUB), "R");
        seen(r.len() == 5, || format!("log:R {r:?}"))
    });
    let r_done = published.elapsed();
    assert_eq!(log_of(&state(&mut conn, SUB), "R"), seqs(1, 5));
    assert!(
        r_done >= Duration::from_millis(2000),
        "R1 waited out its backoffs (400 ms, 800 ms, 1.6 s, less 10% jitter): {r_done:?}"
    );
    assert_eq!(len(&mut conn, "events:sub:seq:dlq"), 0);
    println!("retry: 50 other keys done in {others:?}; R (3 retries) done in {r_done:?}");
    all_quiet(&world, &[SUB]);
    host.stop();
}

// ----- order turned off and on by a config reload -----

/// `order_by` removed from the config of a running host while keys have
/// events waiting, then set again: no event is lost or left waiting (each
/// is committed, or dead-lettered if it ran out of order while order was
/// off), and once order is back every key's later events run in order.
#[test]
fn turning_order_off_and_on_by_a_config_reload_loses_no_waiting_event() {
    let world = World::new(&[], "");
    world.install_file(sequence(), "sequence.wasm");
    let table = |order: &str| {
        format!(
            "[subscribers.{SUB}]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\n\
             concurrency = 4\n{order}"
        )
    };
    world.configure_watched(&table("order_by = \"order_id\"\n"));
    let mut host = world.host();
    let mut conn = world.conn();
    let publish_keys = |conn: &mut redis::Connection, seqs: std::ops::RangeInclusive<u64>| {
        let mut adds = Vec::new();
        for seq in seqs {
            for key in 0..20 {
                let data = json!({"order_id": format!("k{key}"), "seq": seq, "pause_ms": 20});
                adds.push(("events:all".to_string(), step_event(data).1));
            }
        }
        conn.xadd_all(&adds);
    };
    publish_keys(&mut conn, 1..=10);
    let layout = Layout::single();
    wait("keys have events waiting", Duration::from_secs(10), || {
        let held: u64 = redis::cmd("ZCARD")
            .arg(format!("{}:held", layout.order))
            .query(&mut conn)
            .unwrap();
        seen(held > 0, || "no key has events waiting".into())
    });
    world.configure_watched(&table(""));
    host.wait_for_log("settings changed");
    publish_keys(&mut conn, 11..=15);
    std::thread::sleep(Duration::from_millis(500));
    world.configure_watched(&table("order_by = \"order_id\"\n"));
    wait("order is back", Duration::from_secs(20), || {
        seen(host.log().matches("settings changed").count() >= 2, || {
            "one settings change logged".into()
        })
    });
    // Waiting here until everything before is handled makes the next
    // events the first of their keys' new order.
    let total = |conn: &mut redis::Connection| -> usize {
        let st = state(conn, SUB);
        let committed: usize = (0..20).map(|k| log_of(&st, &format!("k{k}")).len()).sum();
        committed + len(conn, &layout.dlq)
    };
    wait("the first 300 are handled", Duration::from_secs(30), || {
        let done = total(&mut conn);
        seen(done == 300, || format!("{done} of 300"))
    });
    all_quiet(&world, &[SUB]);
    let before: HashMap<String, usize> = {
        let st = state(&mut conn, SUB);
        (0..20)
            .map(|k| (format!("k{k}"), log_of(&st, &format!("k{k}")).len()))
            .collect()
    };
    publish_keys(&mut conn, 16..=25);
    wait("all 500 are handled", Duration::from_secs(30), || {
        let done = total(&mut conn);
        seen(done == 500, || format!("{done} of 500"))
    });
    all_quiet(&world, &[SUB]);
    let st = state(&mut conn, SUB);
    let dead = dead_letters(&mut conn, &layout.dlq);
    for letter in &dead {
        assert!(
            letter.reason().contains("out of order") && letter.seq() <= 15,
            "only events that ran while order was off may run out of order: seq {} {}",
            letter.seq(),
            letter.reason()
        );
    }
    for k in 0..20 {
        let key = format!("k{k}");
        let log = log_of(&st, &key);
        assert!(log.windows(2).all(|w| w[0] < w[1]), "{key}: {log:?}");
        assert_eq!(
            &log[before[&key]..],
            seqs(16, 25),
            "{key}: with order back, 16..25 in order"
        );
    }
    println!(
        "order off and on: {} of the 300 events published before order was back \
         dead-lettered out of order; none lost, 16..25 in order on every key",
        dead.len()
    );
    host.stop();
}

// ----- a parked key -----

/// One host, `on_dead_letter = "park"`; key A's 3rd event is poison until
/// the state key `cure` is set. A1..A10 and B1..B100, interleaved, are
/// published; A1, A2 and all of B are handled, A3 is dead, A4..A10 wait.
/// Returns the world, its host and A3's id in the DLQ.
fn a_parked_key() -> (World, Host, String) {
    let world = World::new(&[], "");
    world.install_file(sequence(), "sequence.wasm");
    world.configure(&format!(
        "[subscribers.{SUB}]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = 4\n\
         order_by = \"order_id\"\non_dead_letter = \"park\"\n"
    ));
    let host = world.host();
    let mut conn = world.conn();
    let mut adds = Vec::new();
    for a in 1..=10u64 {
        let mut data = json!({"order_id": "A", "seq": a});
        if a == 3 {
            data["cure"] = "cure".into();
        }
        adds.push(("events:all".to_string(), step_event(data).1));
        for b in (a - 1) * 10 + 1..=a * 10 {
            let data = json!({"order_id": "B", "seq": b});
            adds.push(("events:all".to_string(), step_event(data).1));
        }
    }
    conn.xadd_all(&adds);
    let layout = Layout::single();
    wait(
        "B is handled and A3 is dead",
        Duration::from_secs(60),
        || {
            let state = state(&mut conn, SUB);
            let dead = dead_letters(&mut conn, &layout.dlq);
            seen(log_of(&state, "B").len() == 100 && dead.len() == 1, || {
                format!(
                    "log:A {:?}, log:B {:?}, dead {:?}",
                    log_of(&state, "A"),
                    log_of(&state, "B"),
                    dead.iter().map(Dead::reason).collect::<Vec<_>>()
                )
            })
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let st = state(&mut conn, SUB);
    assert_eq!(log_of(&st, "B"), seqs(1, 100), "all of B, in order");
    assert_eq!(
        log_of(&st, "A"),
        [1, 2],
        "A1, A2 handled; A4..A10 wait for A3"
    );
    let dead = dead_letters(&mut conn, &layout.dlq);
    assert_eq!(dead.len(), 1);
    let a3 = &dead[0];
    assert_eq!((a3.data["order_id"].as_str(), a3.seq()), (Some("A"), 3));
    assert!(
        a3.reason().contains("poison until state cure"),
        "{}",
        a3.reason()
    );
    assert_eq!(a3.key().as_deref(), Some("A"), "{:?}", a3.fields);

    // A is parked on that dead letter, and only A.
    let list_a = format!("{}:q:A", layout.order);
    assert_eq!(
        head_of(&mut conn, &list_a),
        Some(format!("park:{}", a3.id)),
        "A's list starts with its park"
    );
    let left = scan(&mut conn, &format!("{}*", layout.order));
    assert!(
        !left.contains(&format!("{}:q:B", layout.order)),
        "B is done: {left:?}"
    );
    let parked: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{}:parked", layout.order))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        parked.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["A"]
    );
    let list: Vec<String> = redis::cmd("LRANGE")
        .arg(&list_a)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let waiting: Vec<u64> = list
        .iter()
        .filter(|e| !e.starts_with("park:"))
        .filter_map(|e| e.split_once(' '))
        .map(|(_, data)| {
            serde_json::from_str::<Value>(data).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(waiting, seqs(4, 10), "A4..A10 wait in A's list");
    let status = world.eventhost(&["status", "--config", world.config().to_str().unwrap()]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && said.contains("1 key PARKED")
            && said.contains(&format!("A (dead letter {})", a3.id)),
        "status shows A parked on its dead letter:\n{said}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let id = a3.id.clone();
    (world, host, id)
}

/// Runs `eventhost dlq <args> --config <world's>`, which must succeed.
fn dlq(world: &World, args: &[&str]) -> String {
    let config = world.config();
    let mut all = vec!["dlq"];
    all.extend(args);
    all.extend(["--config", config.to_str().unwrap()]);
    let out = world.eventhost(&all);
    assert!(
        out.status.success(),
        "eventhost {all:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of the order is left, nothing is pending.
fn all_quiet(world: &World, subscribers: &[&str]) {
    let mut conn = world.conn();
    wait(
        "nothing pending and every order key gone",
        Duration::from_secs(20),
        || {
            let left: Vec<String> = subscribers
                .iter()
                .flat_map(|s| scan(&mut conn, &format!("events:order:{s}*")))
                .collect();
            let settled = settled(&mut conn, subscribers);
            seen(settled && left.is_empty(), || {
                format!("settled: {settled}; order keys left: {left:?}")
            })
        },
    );
}

#[test]
fn a_parked_key_waits_for_its_dead_letter_and_no_other_key_does() {
    let (world, host, a3) = a_parked_key();
    let mut conn = world.conn();
    // The park is in Redis, not in a host: it outlives a kill -9, and new
    // events of A queue behind it while B's run.
    host.kill();
    let host = world.host();
    let mut adds = Vec::new();
    for seq in 11..=12u64 {
        let data = json!({"order_id": "A", "seq": seq});
        adds.push(("events:all".to_string(), step_event(data).1));
    }
    for seq in 101..=110u64 {
        let data = json!({"order_id": "B", "seq": seq});
        adds.push(("events:all".to_string(), step_event(data).1));
    }
    conn.xadd_all(&adds);
    wait("B101..B110 are handled", Duration::from_secs(20), || {
        let b = log_of(&state(&mut conn, SUB), "B");
        seen(b.len() == 110, || format!("log:B {b:?}"))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log_of(&state(&mut conn, SUB), "A"), [1, 2], "A still waits");
    let () = redis::cmd("HSET")
        .arg(Layout::single().state)
        .arg("cure")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let said = dlq(&world, &["replay", SUB, &a3]);
    println!("replay: {said}");
    wait("A3..A12 are handled", Duration::from_secs(30), || {
        let a = log_of(&state(&mut conn, SUB), "A");
        seen(a.len() == 12, || format!("log:A {a:?}"))
    });
    let st = state(&mut conn, SUB);
    assert_eq!(log_of(&st, "A"), seqs(1, 12), "A3..A12 in order");
    assert_eq!(log_of(&st, "B"), seqs(1, 110));
    assert_eq!(
        xlen(&mut conn, &Layout::single().dlq),
        0,
        "the replayed dead letter left the DLQ"
    );
    all_quiet(&world, &[SUB]);
    host.stop();
}

#[test]
fn a_parked_key_moves_on_when_its_dead_letter_is_skipped() {
    let (world, host, a3) = a_parked_key();
    let mut conn = world.conn();
    let said = dlq(&world, &["skip", SUB, &a3]);
    println!("skip: {said}");
    wait("A4..A10 are handled", Duration::from_secs(30), || {
        let a = log_of(&state(&mut conn, SUB), "A");
        seen(a.len() == 9, || format!("log:A {a:?}"))
    });
    let st = state(&mut conn, SUB);
    let mut expected = vec![1, 2];
    expected.extend(4..=10);
    assert_eq!(log_of(&st, "A"), expected, "A4..A10 in order, A3 never");
    let dead = dead_letters(&mut conn, &Layout::single().dlq);
    assert_eq!(
        dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [a3.as_str()],
        "A3 stays in the DLQ"
    );
    all_quiet(&world, &[SUB]);
    host.stop();
}

/// Purging the dead letter a key is parked on must not strand the key:
/// either the purge refuses (the letter stays, to replay or skip) or the
/// key moves on, as a skip would. A parked key whose letter is gone has no
/// command left that can release it.
#[test]
fn purging_the_dead_letter_a_key_is_parked_on_does_not_strand_the_key() {
    let (world, host, a3) = a_parked_key();
    let mut conn = world.conn();
    let config = world.config();
    let out = world.eventhost(&[
        "dlq",
        "purge",
        SUB,
        &a3,
        "--yes",
        "--config",
        config.to_str().unwrap(),
    ]);
    println!(
        "purge: {}; {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = dead_letters(&mut conn, &Layout::single().dlq);
    if out.status.success() {
        assert!(dead.is_empty(), "purged");
        wait(
            "A moves on past its purged dead letter",
            Duration::from_secs(10),
            || {
                let a = log_of(&state(&mut conn, SUB), "A");
                let head = head_of(&mut conn, &format!("{}:q:A", Layout::single().order));
                seen(a.len() == 9, || {
                    format!("log:A {a:?}; head of A's list {head:?}")
                })
            },
        );
        all_quiet(&world, &[SUB]);
    } else {
        assert_eq!(
            dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            [a3.as_str()],
            "a refused purge keeps the letter"
        );
    }
    host.stop();
}

/// LeanMQ's DLQ tools must work on eventhost's DLQs (DESIGN): a dead
/// letter a key is parked on, requeued with LeanMQ's `requeue_messages`
/// once its cause is fixed, must let its key go on, in order, as `dlq
/// replay` does. LeanMQ puts back only the `data` field, without the
/// letter's `key`.
#[test]
fn a_dead_letter_requeued_with_leanmqs_tools_lets_its_key_go_on() {
    let (world, host, a3) = a_parked_key();
    let mut conn = world.conn();
    let () = redis::cmd("HSET")
        .arg(Layout::single().state)
        .arg("cure")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let dir = root().join("tests/python");
    let out = Command::new("python3")
        .arg("-B")
        .arg(dir.join("dead_letters.py"))
        .args(["--port", &world.redis.port.to_string()])
        .args(["--queue", &format!("sub:{SUB}"), "requeue", &a3])
        .current_dir(&dir)
        .output()
        .expect("running python3 (LeanMQ 0.2: pip install leanmq==0.2.0)");
    assert!(
        out.status.success(),
        "LeanMQ's requeue failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait(
        "A3..A10 are handled after LeanMQ's requeue",
        Duration::from_secs(10),
        || {
            let a = log_of(&state(&mut conn, SUB), "A");
            let list = list_of(&mut conn, &format!("{}:q:A", Layout::single().order));
            let dead: Vec<String> = dead_letters(&mut conn, &Layout::single().dlq)
                .iter()
                .map(|d| format!("{} seq {}", d.id, d.seq()))
                .collect();
            seen(a.len() == 10, || {
                format!("log:A {a:?}; A's list {list:?}; DLQ {dead:?}")
            })
        },
    );
    assert_eq!(log_of(&state(&mut conn, SUB), "A"), seqs(1, 10));
    all_quiet(&world, &[SUB]);
    host.stop();
}

/// LeanMQ's `requeue_messages` is two steps: XADD the letter's data to
/// the stream, then XDEL it from the DLQ. Here the second comes 500 ms
/// after the first (a slow client), once the host has taken the requeued
/// event into A's order while A was still parked on the letter: A must
/// still go on, A3 first, once the letter is gone.
#[test]
fn a_parked_keys_dead_letter_deleted_just_after_its_requeue_strands_nothing() {
    let (world, host, a3) = a_parked_key();
    let mut conn = world.conn();
    let layout = Layout::single();
    let () = redis::cmd("HSET")
        .arg(&layout.state)
        .arg("cure")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let letter = dead_letters(&mut conn, &layout.dlq).remove(0);
    let mut data = letter.data.clone();
    data["_requeues"] =
        json!([{"timestamp": 1.0, "from_dlq": layout.dlq, "to_queue": layout.stream}]);
    xadd(&mut conn, &layout.stream, &data.to_string());
    let list_a = format!("{}:q:A", layout.order);
    wait(
        "the requeued A3 is taken into A's order or run",
        Duration::from_secs(10),
        || {
            let list = list_of(&mut conn, &list_a);
            let a = log_of(&state(&mut conn, SUB), "A");
            seen(list.len() > 8 || a.len() > 2, || {
                format!("A's list {list:?}")
            })
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let () = redis::cmd("XDEL")
        .arg(&layout.dlq)
        .arg(&a3)
        .query::<u64>(&mut conn)
        .map(|_| ())
        .unwrap();
    wait(
        "A3..A10 are handled once the letter is gone",
        Duration::from_secs(10),
        || {
            let a = log_of(&state(&mut conn, SUB), "A");
            let list = list_of(&mut conn, &list_a);
            seen(a.len() == 10, || format!("log:A {a:?}; A's list {list:?}"))
        },
    );
    assert_eq!(log_of(&state(&mut conn, SUB), "A"), seqs(1, 10));
    all_quiet(&world, &[SUB]);
    host.stop();
}

// ----- events without the key -----

#[test]
fn an_event_without_the_key_is_refused_when_the_subscriber_says_so() {
    let world = World::new(&[], "");
    world.install_file(sequence(), "sequence.wasm");
    world.configure(
        "[subscribers.refuse]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = 4\n\
         order_by = \"order_id\"\nwithout_key = \"refuse\"\n\n\
         [subscribers.run]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = 4\n\
         order_by = \"order_id\"\n\n\
         [subscribers.nested]\nplugin = \"sequence.wasm\"\nevents = [\"Step\"]\nconcurrency = 4\n\
         order_by = \"customer.id\"\nwithout_key = \"refuse\"\n\
         [subscribers.nested.config]\nkey_path = \"customer.id\"\n",
    );
    let host = world.host();
    let mut conn = world.conn();
    let mut keyless = Vec::new();
    for seq in 1..=20u64 {
        publish(
            &mut conn,
            "Step",
            json!({"order_id": "K", "customer": {"id": 7}, "seq": seq}),
        );
        if seq % 5 == 0 {
            keyless.push(publish(&mut conn, "Step", json!({"seq": seq})));
        }
    }
    wait("every subscriber is done", Duration::from_secs(60), || {
        let refuse = state(&mut conn, "refuse");
        let run = state(&mut conn, "run");
        let nested = state(&mut conn, "nested");
        let refused = dlq_reasons(&mut conn, "events:sub:refuse:dlq");
        let refused_nested = dlq_reasons(&mut conn, "events:sub:nested:dlq");
        let ran = dlq_reasons(&mut conn, "events:sub:run:dlq");
        let unkeyed = keyless
            .iter()
            .filter(|id| run.contains_key(&format!("unkeyed:{id}")))
            .count();
        seen(
            log_of(&refuse, "K").len() == 20
                && log_of(&run, "K").len() == 20
                && log_of(&nested, "7").len() == 20
                && unkeyed == keyless.len()
                && refused.len() == keyless.len()
                && refused_nested.len() == keyless.len(),
            || {
                format!(
                    "refuse: log:K {:?}, DLQ {refused:?}; run: log:K {:?}, {unkeyed} of {} \
                     keyless ran, DLQ {ran:?}; nested: log:7 {:?}, DLQ {refused_nested:?}",
                    log_of(&refuse, "K"),
                    log_of(&run, "K"),
                    keyless.len(),
                    log_of(&nested, "7"),
                )
            },
        )
    });
    for (sub, key) in [("refuse", "K"), ("run", "K"), ("nested", "7")] {
        assert_eq!(log_of(&state(&mut conn, sub), key), seqs(1, 20), "{sub}");
    }
    for (dlq, field) in [
        ("events:sub:refuse:dlq", "order_id"),
        ("events:sub:nested:dlq", "customer.id"),
    ] {
        for id in &keyless {
            let reason = reason_of(&mut conn, dlq, id);
            assert!(
                reason.contains(field),
                "the reason names the field {field}: {reason}"
            );
        }
    }
    assert_eq!(len(&mut conn, "events:sub:run:dlq"), 0, "run: unordered");
    let refused = state(&mut conn, "refuse");
    assert!(
        !refused.keys().any(|k| k.starts_with("unkeyed:")),
        "a refused event never ran"
    );
    all_quiet(&world, &["refuse", "run", "nested"]);
    host.stop();
}
