//! How fast eventhost moves events, end to end, on this machine: its own
//! redis-server, the host, and the publisher all on it.
//!
//!     cargo bench -p eventhost --bench throughput            # the full run
//!     cargo bench -p eventhost --bench throughput -- quick   # smaller, faster
//!     cargo bench -p eventhost --bench throughput -- latency # one section:
//!         throughput, latency, start, reads, languages or leanmq (several
//!         may be named)
//!     cargo bench -p eventhost --bench throughput -- ratios [check] # wasm
//!         against native in alternating rounds; `check` fails below the
//!         floors (the guard CI runs, with `quick`, on a debug build)
//!     cargo bench -p eventhost --bench throughput -- latency 10000 # one rate
//!
//! Prints a table: deliveries/s with 3 subscribers (trivial and stateful
//! plugins, each against the same loop with a native Rust handler), latency
//! from publish to commit at fixed offered rates, host CPU and peak RSS,
//! cold start with 10 plugins with and without the compiled cache, and the
//! LeanMQ EventBus pattern (Python) on the same Redis, and what a plugin
//! written in Rust, Python or JavaScript costs per event. Figures, not
//! assertions: see BENCHMARKS.md for a run and the targets.
//!
//! The native baseline runs this very binary as the host (`--serve-native`):
//! the daemon's own wiring, with a factory of Rust handlers in place of wasm
//! plugins.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventhost::config::{Config, SubscriberConfig};
use eventhost::handler::{
    unix_now, Effects, Event, Handler, HandlerFactory, Outcome, Reload, StateReader,
};
use serde_json::json;
use support::*;

const SUBSCRIBERS: [&str; 3] = ["s1", "s2", "s3"];

/// The allocator of the `eventhost` binary, so the native baseline (this
/// binary run as a host) differs from it only in the handler.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.get(1).map(String::as_str) == Some("--serve-native") {
        return serve_native(Path::new(&args[2]));
    }
    let quick = args.iter().any(|a| a == "quick");
    let sections = [
        "ratios",
        "throughput",
        "latency",
        "start",
        "reads",
        "languages",
        "leanmq",
    ];
    let named: Vec<&str> = sections
        .into_iter()
        .filter(|s| args.iter().any(|a| a == s))
        .collect();
    let wanted = |section: &str| named.is_empty() || named.contains(&section);

    println!(
        "eventhost throughput and latency, {} cores, redis-server {}",
        cores(),
        redis_version()
    );
    println!("(the host, redis-server and the publisher share the machine)");
    // Alone: it is the guard, and the other sections are figures.
    if named == ["ratios"] {
        // A debug build's quick run (CI's guard) does not judge the tail
        // (see `P99_CEILING`): five rounds of throughput in its time.
        let (rounds, events, latency_s) = match (quick, P99_CEILING) {
            (true, None) => (5, 30_000, None),
            (true, Some(_)) => (3, 30_000, Some(2)),
            (false, _) => (3, 100_000, Some(5)),
        };
        let held = ratios_section(rounds, events, latency_s.map(Duration::from_secs));
        if args.iter().any(|a| a == "check") && !held {
            std::process::exit(1);
        }
        return;
    }
    let mut trivial_wasm = None;
    if wanted("throughput") {
        trivial_wasm = Some(throughput_section(if quick { 30_000 } else { 150_000 }));
    }
    if wanted("latency") {
        // Offered rates named on the command line replace the default three.
        let mut rates: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if rates.is_empty() {
            rates = vec![1_000, 10_000, 50_000];
        }
        latency_section(Duration::from_secs(if quick { 2 } else { 5 }), &rates);
    }
    if wanted("start") {
        start_section();
    }
    if wanted("reads") {
        reads_section(if quick { 100 } else { 300 });
    }
    if wanted("languages") {
        languages_section(if quick { 10_000 } else { 20_000 });
    }
    if wanted("leanmq") {
        leanmq_section(if quick { 3_000 } else { 10_000 }, trivial_wasm);
    }
}

/// Lowest wasm/native throughput (median of the rounds) `ratios check`
/// accepts, trivial and stateful: under what the build's quick runs give
/// (release 0.86–1.00, debug 0.69–0.82, see BENCHMARKS.md) by what a
/// quick run on a busy machine may lose. A debug build (CI's, which shares
/// the tests' build) runs eventhost's own code unoptimised, and the wasm
/// path has more of it.
const RATIO_FLOOR: [f64; 2] = if cfg!(debug_assertions) {
    [0.55, 0.55]
} else {
    [0.82, 0.82]
};

/// Highest wasm/native p99 at 10,000 events/s `ratios check` accepts (the
/// target is 1.5); none for a debug build, whose host is near its capacity
/// at that rate and whose tail is noise.
const P99_CEILING: Option<f64> = if cfg!(debug_assertions) {
    None
} else {
    Some(2.0)
};

/// wasm against native in the same run, alternating, `rounds` times: each
/// round runs both workloads, wasm then native, and (given `latency_for`)
/// the p99 at 10,000 events/s of each, so a slow minute of the machine falls on both; prints
/// each round and the medians. Returns whether the medians hold
/// [`RATIO_FLOOR`] and [`P99_CEILING`]: the guard CI runs (`--profile dev
/// ... -- quick ratios check`, on the tests' build), a ratio and not a
/// time, so a slower machine does not fail it.
fn ratios_section(rounds: usize, events: usize, latency_for: Option<Duration>) -> bool {
    let latency_text = latency_for.map_or(String::from("no latency"), |d| {
        format!("p99 publish → commit at 10,000/s for {} s", d.as_secs())
    });
    println!(
        "\nwasm / native, same run, {rounds} alternating rounds: {events} events to 3 subscribers; {latency_text}"
    );
    println!(
        "{:<7} {:>13} {:>13} {:>13} {:>13} {:>9} {:>9} {:>10} {:>10} {:>6}",
        "round",
        "trivial wasm",
        "native",
        "stateful wasm",
        "native",
        "trivial",
        "stateful",
        "p99 wasm",
        "p99 native",
        "p99 ×"
    );
    let mut seen: [Vec<f64>; 3] = Default::default();
    for round in 1..=rounds {
        let rate = |workload, native| throughput(workload, native, events).deliveries_per_second;
        let (tw, tn) = (
            rate(Workload::Trivial, false),
            rate(Workload::Trivial, true),
        );
        let (sw, sn) = (
            rate(Workload::Stateful, false),
            rate(Workload::Stateful, true),
        );
        let p99 = |native| latency_for.map_or(f64::NAN, |d| latency(10_000, d, native).p99_ms);
        let (lw, ln) = (p99(false), p99(true));
        // Not measured (NaN): a dash.
        let shown = |x: f64, unit: &str| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{x:.2}{unit}")
            }
        };
        println!(
            "{round:<7} {tw:>13.0} {tn:>13.0} {sw:>13.0} {sn:>13.0} {:>9.2} {:>9.2} {:>10} {:>10} {:>6}",
            tw / tn,
            sw / sn,
            shown(lw, " ms"),
            shown(ln, " ms"),
            shown(lw / ln, "")
        );
        seen[0].push(tw / tn);
        seen[1].push(sw / sn);
        seen[2].push(lw / ln);
    }
    let [trivial, stateful, p99] = seen.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    let ceiling = P99_CEILING.map_or("none".to_string(), |c| format!("{c:.2}"));
    let tail = match latency_for {
        Some(_) => format!("p99 wasm/native {p99:.2} (ceiling {ceiling})"),
        None => "p99 not measured".to_string(),
    };
    println!(
        "medians: trivial {trivial:.2} (floor {:.2}), stateful {stateful:.2} (floor {:.2}), {tail}",
        RATIO_FLOOR[0], RATIO_FLOOR[1]
    );
    let held = trivial >= RATIO_FLOOR[0]
        && stateful >= RATIO_FLOOR[1]
        && (latency_for.is_none() || P99_CEILING.is_none_or(|ceiling| p99 <= ceiling));
    if !held {
        println!("wasm slid against native: find what with a profile (BENCHMARKS.md, \"Where the time goes\")");
    }
    held
}

/// A plugin of each language as an author makes it (`eventhost new`, then
/// `eventhost build`): its size, build time, first compile and start from
/// the compiled cache, and its cost per event on the real bus, one
/// subscriber handling one event at a time with a reused instance. Each
/// language runs twice: the template's handler (parse the data, log at
/// info, count in state) and an empty one, so the SDK's and the handler's
/// shares are apart.
fn languages_section(events: usize) {
    println!("\nplugins by language: `eventhost new` + `eventhost build`, one subscriber, concurrency 1, {events} events");
    println!(
        "{:<20} {:>8} {:>9} {:>10} {:>9} {:>12} {:>10} {:>10}",
        "", "size", "build s", "compile s", "cached ms", "deliveries/s", "µs/event", "µs CPU/ev"
    );
    let projects = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        for (variant, handler) in [("template", None), ("empty", Some(empty_handler(lang)))] {
            let name = format!("{lang}-{variant}");
            let out = eventhost_in(
                projects.path(),
                &["new", &name, "--lang", lang, "--events", "Ping"],
            );
            assert!(
                out.status.success(),
                "new: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dir = projects.path().join(&name);
            if let Some((file, source)) = handler {
                std::fs::write(dir.join(file), source).unwrap();
            }
            let built = Instant::now();
            let out = eventhost_in(projects.path(), &["build", &name]);
            let build_s = built.elapsed().as_secs_f64();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "build {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let component = std::path::PathBuf::from(stdout.lines().last().unwrap().trim());
            let run = language_run(&component, events);
            println!(
                "{:<20} {:>5.1} MB {:>9.1} {:>10.1} {:>9.0} {:>12.0} {:>10.1} {:>10.1}",
                name,
                std::fs::metadata(&component).unwrap().len() as f64 / 1e6,
                build_s,
                run.compile_s,
                run.cached_ms,
                run.deliveries_per_second,
                1e6 / run.deliveries_per_second,
                run.host_cpu * 1e6 / events as f64,
            );
        }
    }
}

/// A handler that does nothing, through each language's SDK: the file of a
/// project from `eventhost new` to replace, and its text.
fn empty_handler(lang: &str) -> (&'static str, &'static str) {
    match lang {
        "rust" => (
            "src/lib.rs",
            "use eventhost_plugin::{Event, Failure, Guest};\nstruct Plugin;\nimpl Guest for Plugin {\n    fn handle(_: Event) -> Result<(), Failure> {\n        Ok(())\n    }\n}\neventhost_plugin::export!(Plugin);\n",
        ),
        "python" => (
            "src/app.py",
            "from eventhost_plugin import Event, export\n\ndef handle(event: Event) -> None:\n    pass\n\nWitWorld = export(handle)\n",
        ),
        _ => (
            "app.js",
            "import { handler } from \"./sdk/index.js\";\nexport const handle = handler(() => {});\n",
        ),
    }
}

/// Runs `eventhost args…` in `dir`.
fn eventhost_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

struct LanguageRun {
    compile_s: f64,
    cached_ms: f64,
    deliveries_per_second: f64,
    host_cpu: f64,
}

/// One subscriber of `component`: its start with an empty compiled cache
/// and from the cache, then `events` Pings through it.
fn language_run(component: &Path, events: usize) -> LanguageRun {
    let world = World::new(&[], "");
    world.install_file(component, "plugin.wasm");
    let cache = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    world.write_config(
        &(world.header().replace(
            &cache_dir().display().to_string(),
            &cache.path().display().to_string(),
        ) + &format!(
            "[telemetry]\nmetrics = \"{metrics}\"\n\n[subscribers.lang]\nplugin = \"plugin.wasm\"\nevents = [\"Ping\"]\nconcurrency = 1\n"
        )),
    );
    let time_start = || {
        let spawned = Instant::now();
        let host = start_host(&world, false);
        (spawned.elapsed().as_secs_f64(), host)
    };
    let (compile_s, host) = time_start();
    host.stop();
    let (cached_s, host) = time_start();
    let host_cpu0 = cpu_seconds(host.pid());
    let elapsed = publish_and_wait(&world, &host, &metrics, &["lang"], events);
    let run = LanguageRun {
        compile_s,
        cached_ms: cached_s * 1000.0,
        deliveries_per_second: events as f64 / elapsed.as_secs_f64(),
        host_cpu: cpu_seconds(host.pid()) - host_cpu0,
    };
    host.stop();
    run
}

/// What checking a result's reads costs Redis: each event reads one value
/// (the probe's `read`, which writes only its length), whose size varies;
/// the commit checks it inside Redis before it writes.
fn reads_section(events: usize) {
    println!("\nthe commit's check of what an event read: Redis CPU per event, {events} events each reading one value");
    println!(
        "{:<16} {:>14} {:>18}",
        "value read", "Redis µs/event", "EVALSHA µs/call"
    );
    for size in [10usize, 64 << 10, 1 << 20] {
        let world = World::new(
            &["probe.wasm"],
            &format!("{PROBE}events = [\"Peek\"]\nconcurrency = 4\n"),
        );
        let mut conn = world.conn();
        let () = redis::cmd("HSET")
            .arg("events:state:probe")
            .arg("big")
            .arg("x".repeat(size))
            .query(&mut conn)
            .unwrap();
        let host = world.host();
        let redis_cpu = cpu_seconds(world.redis.pid());
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .unwrap();
        let ids: Vec<String> = (0..events)
            .map(|_| publish(&mut conn, "Peek", json!({"act": "read", "key": "big"})))
            .collect();
        let started = Instant::now();
        while !seen_all(&mut conn, "probe", &ids) {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "stuck:\n{}",
                host.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let redis_cpu = cpu_seconds(world.redis.pid()) - redis_cpu;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        let evalsha = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split("usec_per_call=").nth(1))
            .and_then(|v| v.split(',').next())
            .unwrap_or("-")
            .to_string();
        println!(
            "{:<16} {:>14.0} {:>18}",
            format!("{size} bytes"),
            redis_cpu * 1e6 / events as f64,
            evalsha
        );
        host.stop();
    }
}

/// Deliveries/s of each workload, wasm and native; returns the trivial
/// wasm figure.
fn throughput_section(events: usize) -> f64 {
    println!(
        "\nend to end, {events} events to 3 subscribers, published pipelined as fast as possible"
    );
    println!(
        "{:<38} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "", "deliveries/s", "host CPU s", "µs CPU/dlv", "peak RSS", "redis CPU"
    );
    let mut rates = Vec::new();
    for (label, workload, native) in [
        ("wasm, trivial plugin (noop)", Workload::Trivial, false),
        ("native Rust handler, trivial", Workload::Trivial, true),
        (
            "wasm, JSON + state + publish (probe)",
            Workload::Stateful,
            false,
        ),
        ("native Rust handler, same work", Workload::Stateful, true),
    ] {
        let run = throughput(workload, native, events);
        println!(
            "{label:<38} {:>12.0} {:>10.2} {:>10.1} {:>6.0} MB {:>7.2} s",
            run.deliveries_per_second,
            run.host_cpu,
            run.host_cpu * 1e6 / (events * SUBSCRIBERS.len()) as f64,
            run.peak_rss_mb,
            run.redis_cpu
        );
        rates.push(run.deliveries_per_second);
    }
    println!(
        "wasm / native throughput: trivial {:.2}, stateful {:.2}",
        rates[0] / rates[1],
        rates[2] / rates[3]
    );
    rates[0]
}

fn latency_section(duration: Duration, rates: &[u32]) {
    println!(
        "\nlatency, publish → commit, 3 subscribers, trivial handler, {} s at each offered rate",
        duration.as_secs()
    );
    println!(
        "{:<12} {:<8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "offered/s", "handler", "achieved/s", "mean ms", "p50 ms", "p99 ms", "p99.9 ms", "≤ 5 ms"
    );
    for &rate in rates {
        for native in [false, true] {
            let run = latency(rate, duration, native);
            println!(
                "{rate:<12} {:<8} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2}%",
                if native { "native" } else { "wasm" },
                run.achieved,
                run.mean_ms,
                run.p50_ms,
                run.p99_ms,
                run.p999_ms,
                run.within_5ms * 100.0
            );
        }
    }
}

fn start_section() {
    println!("\ncold start with 10 plugins (spawn → serving)");
    let start = cold_start();
    println!("  without the compiled cache   {:>8.0} ms", start.cold_ms);
    println!("  from the compiled cache      {:>8.0} ms", start.warm_ms);
    println!(
        "  peak RSS after 10k events    {:>8.0} MB",
        start.peak_rss_mb
    );
}

fn leanmq_section(events: usize, trivial_wasm: Option<f64>) {
    println!("\nLeanMQ EventBus pattern (Python, LeanMQ 0.2), 3 services, same machine");
    match (leanmq(events), trivial_wasm) {
        (Some(rate), Some(ours)) => println!(
            "  {rate:.0} deliveries/s; eventhost (wasm, trivial) is {:.0}× faster",
            ours / rate
        ),
        (Some(rate), None) => println!("  {rate:.0} deliveries/s"),
        (None, _) => println!(
            "  (skipped: python3 with leanmq==0.2.0 and host/benches/leanmq_eventbus.py needed)"
        ),
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Trivial,
    Stateful,
}

struct Throughput {
    deliveries_per_second: f64,
    host_cpu: f64,
    redis_cpu: f64,
    peak_rss_mb: f64,
}

/// A world with 3 subscribers of `Ping` and a metrics endpoint.
fn world(workload: Workload, native: bool, extra_bus: &str) -> (World, String) {
    let world = World::new(&["noop.wasm", "probe.wasm"], "");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut config = format!("[http]\nlisten = \"{metrics}\"\n\n");
    // The plugin, its native stand-in and its config, by workload.
    let (plugin, kind, plugin_config) = match workload {
        Workload::Trivial => ("noop.wasm", "noop", ""),
        Workload::Stateful => ("probe.wasm", "probe", "follow_up = \"Pong\"\n"),
    };
    for name in SUBSCRIBERS {
        config += &format!("[subscribers.{name}]\nplugin = \"{plugin}\"\nevents = [\"Ping\"]\n");
        config += &format!("[subscribers.{name}.config]\n{plugin_config}");
        if native {
            config += &format!("native = \"{kind}\"\n");
        }
        config += "\n";
    }
    world.configure_bus(extra_bus, &config);
    (world, metrics)
}

fn start_host(world: &World, native: bool) -> Host {
    if !native {
        return world.host();
    }
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.arg("--serve-native").arg(world.config());
    let mut host = Host::spawn(command);
    host.wait_for_log("eventhost running");
    host
}

/// Events handled by `subscribers`, summed from one scrape.
fn handled(metrics: &str, subscribers: &[impl AsRef<str>]) -> u64 {
    let text = scrape(metrics);
    subscribers
        .iter()
        .map(|s| {
            counter(
                &text,
                &format!("eventhost_handled_total{{subscriber=\"{}\"}}", s.as_ref()),
            )
        })
        .sum()
}

fn throughput(workload: Workload, native: bool, events: usize) -> Throughput {
    // Trimming on, as users run it, and often: the default (100,000) would
    // barely trim in a run this long.
    let (world, metrics) = world(workload, native, "stream_maxlen = 10000\n");
    let host = start_host(&world, native);
    let expected = (events * SUBSCRIBERS.len()) as u64;
    let (host_cpu0, redis_cpu0) = (cpu_seconds(host.pid()), cpu_seconds(world.redis.pid()));
    let elapsed = publish_and_wait(&world, &host, &metrics, &SUBSCRIBERS, events);
    let run = Throughput {
        deliveries_per_second: expected as f64 / elapsed.as_secs_f64(),
        host_cpu: cpu_seconds(host.pid()) - host_cpu0,
        redis_cpu: cpu_seconds(world.redis.pid()) - redis_cpu0,
        peak_rss_mb: peak_rss_mb(host.pid()),
    };
    host.stop();
    run
}

/// Publishes `events` Pings as fast as Redis takes them and waits until
/// each of `subscribers` has handled them all; returns how long that took.
fn publish_and_wait(
    world: &World,
    host: &Host,
    metrics: &str,
    subscribers: &[&str],
    events: usize,
) -> Duration {
    let expected = (events * subscribers.len()) as u64;
    let started = Instant::now();
    let publisher = publish_many(world, events, None);
    wait_on_host(host, started, || handled(metrics, subscribers) >= expected);
    publisher.join().unwrap();
    started.elapsed()
}

/// Publishes `events` Pings like a LeanMQ producer, pipelined 500 at a time;
/// at `rate` per second if given, else as fast as Redis takes them.
fn publish_many(world: &World, events: usize, rate: Option<u32>) -> std::thread::JoinHandle<()> {
    let mut conn = world.conn();
    std::thread::spawn(move || {
        const CHUNK: usize = 500;
        let begin = Instant::now();
        let mut sent = 0;
        while sent < events {
            // At a fixed rate, one chunk a millisecond: what a steady
            // producer looks like, not bursts that are then waited for.
            let chunk = match rate {
                Some(rate) => ((rate / 1000) as usize).clamp(1, CHUNK),
                None => CHUNK,
            }
            .min(events - sent);
            let mut pipe = redis::pipe();
            for n in sent..sent + chunk {
                // What a LeanMQ producer writes, formatted directly: the
                // publisher shares the two cores, so it should cost little.
                let now = unix_now();
                let data = format!(
                    r#"{{"event_type":"Ping","event_id":"{n}","timestamp":{now},"n":{n},"_metadata":{{"id":"{n}","timestamp":{now},"ttl":null}}}}"#
                );
                pipe.cmd("XADD")
                    .arg("events:all")
                    .arg("*")
                    .arg("data")
                    .arg(data)
                    .ignore();
            }
            pipe.query::<()>(&mut conn).unwrap();
            sent += chunk;
            if let Some(rate) = rate {
                let due = begin + Duration::from_secs_f64(sent as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
    })
}

struct Latency {
    achieved: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    within_5ms: f64,
}

/// `eventhost_event_latency_seconds` of every subscriber, merged: the
/// cumulative count at each bucket bound, the sum and the count.
struct LatencyHistogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl LatencyHistogram {
    fn parse(text: &str) -> Self {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let (mut sum, mut count) = (0.0, 0.0);
        let value = |line: &str| -> f64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("eventhost_event_latency_seconds") else {
                continue;
            };
            if rest.starts_with("_bucket") {
                let le = rest
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                match buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, n)) => *n += value(line),
                    None => buckets.push((bound, value(line))),
                }
            } else if rest.starts_with("_sum") {
                sum += value(line);
            } else if rest.starts_with("_count") {
                count += value(line);
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        LatencyHistogram {
            buckets,
            sum,
            count,
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// As Prometheus's `histogram_quantile`: linear within the bucket.
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count;
        let mut below = (0.0, 0.0);
        for &(bound, cumulative) in &self.buckets {
            if cumulative >= rank {
                if bound.is_infinite() {
                    return below.0;
                }
                let share = (rank - below.1) / (cumulative - below.1).max(1.0);
                return below.0 + (bound - below.0) * share;
            }
            below = (bound, cumulative);
        }
        f64::NAN
    }

    /// The share of events committed within `bound` seconds (a bucket bound).
    fn share_within(&self, bound: f64) -> f64 {
        let at = self.buckets.iter().find(|(b, _)| *b >= bound);
        at.map_or(f64::NAN, |(_, n)| n / self.count)
    }
}

fn latency(rate: u32, duration: Duration, native: bool) -> Latency {
    let (world, metrics) = world(Workload::Trivial, native, "");
    let host = start_host(&world, native);
    let events = (rate as f64 * duration.as_secs_f64()) as usize;
    let started = Instant::now();
    publish_many(&world, events, Some(rate)).join().unwrap();
    let expected = (events * SUBSCRIBERS.len()) as u64;
    while handled(&metrics, &SUBSCRIBERS) < expected {
        std::thread::sleep(Duration::from_millis(10));
    }
    let achieved = events as f64 / started.elapsed().as_secs_f64();
    let histogram = LatencyHistogram::parse(&scrape(&metrics));
    let run = Latency {
        achieved,
        mean_ms: histogram.mean() * 1e3,
        p50_ms: histogram.quantile(0.5) * 1e3,
        p99_ms: histogram.quantile(0.99) * 1e3,
        p999_ms: histogram.quantile(0.999) * 1e3,
        within_5ms: histogram.share_within(0.005),
    };
    host.stop();
    run
}

struct ColdStart {
    cold_ms: f64,
    warm_ms: f64,
    peak_rss_mb: f64,
}

/// Ten subscribers, each with its own plugin build (a noop with a distinct
/// custom section, so ten different files to compile).
fn cold_start() -> ColdStart {
    let world = World::new(&[], "");
    let cache = tempfile::tempdir().unwrap();
    let noop = std::fs::read(plugins().join("noop.wasm")).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut config = world.header().replace(
        &cache_dir().display().to_string(),
        &cache.path().display().to_string(),
    ) + &format!("[http]\nlisten = \"{metrics}\"\n\n");
    let names: Vec<String> = (0..10).map(|n| format!("p{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        let mut bytes = noop.clone();
        let variant = format!("variant-{n}");
        // A custom section: id 0, size, name length, name.
        bytes.extend([0, (variant.len() + 1) as u8, variant.len() as u8]);
        bytes.extend(variant.as_bytes());
        std::fs::write(world.dir.path().join(format!("plugins/{name}.wasm")), bytes).unwrap();
        config +=
            &format!("[subscribers.{name}]\nplugin = \"{name}.wasm\"\nevents = [\"Ping\"]\n\n");
    }
    world.write_config(&config);
    let time_start = || {
        let spawned = Instant::now();
        let host = start_host(&world, false);
        (spawned.elapsed().as_secs_f64() * 1000.0, host)
    };
    let (cold_ms, host) = time_start();
    host.stop();
    let (warm_ms, host) = time_start();
    publish_many(&world, 10_000, None).join().unwrap();
    while handled(&metrics, &names) < 100_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak_rss_mb = peak_rss_mb(host.pid());
    host.stop();
    ColdStart {
        cold_ms,
        warm_ms,
        peak_rss_mb,
    }
}

/// The LeanMQ EventBus pattern's deliveries/s, if python3 can run it.
fn leanmq(events: usize) -> Option<f64> {
    let script = root().join("host/benches/leanmq_eventbus.py");
    let redis = Redis::start();
    let out = Command::new("python3")
        .arg("-B")
        .arg(&script)
        .args([
            "--port",
            &redis.port.to_string(),
            "--events",
            &events.to_string(),
            "--services",
            "3",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    result["deliveries_per_second"].as_f64()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn redis_version() -> String {
    let out = Command::new("redis-server").arg("--version").output();
    out.map(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.split_whitespace()
            .find(|w| w.starts_with("v="))
            .map(|w| w[2..].to_string())
            .unwrap_or(text)
    })
    .unwrap_or_default()
}

// ---- the native host: the same bus, Rust handlers ------------------------

/// Accepts every event and does nothing, like `plugins/noop`.
struct NativeNoop;

#[async_trait]
impl Handler for NativeNoop {
    async fn handle(&self, _event: Event, _state: Arc<dyn StateReader>) -> Outcome {
        Outcome::Ok(Effects::default())
    }
}

/// The work of `plugins/probe` for an `ok` event, in Rust: write
/// `calls:<id>` (its count of calls), `seen:<id>`, increment `count` (a
/// read the commit checks, as a plugin's), publish a follow-up, write
/// `build:<id>`, parse the data.
struct NativeProbe {
    subscriber: String,
    follow_up: Option<String>,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Handler for NativeProbe {
    async fn handle(&self, event: Event, state: Arc<dyn StateReader>) -> Outcome {
        let mut effects = Effects::default();
        let calls = 1 + self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        effects.set(format!("calls:{}", event.id), calls.to_string());
        effects.set(format!("seen:{}", event.id), event.attempt.to_string());
        // As the wasm host's `state-get`: the read is recorded, so the
        // commit checks it, the same work as the plugin's increment.
        let count = match effects.pending("count") {
            Some(value) => value.map(str::to_owned),
            None => match state.read("count").await {
                Ok(seen) => {
                    effects.read("count", &seen);
                    seen.value
                }
                Err(_) => None,
            },
        };
        let count: u64 = count.and_then(|c| c.parse().ok()).unwrap_or(0);
        effects.set("count".into(), (count + 1).to_string());
        if let Some(follow_up) = &self.follow_up {
            let data = json!({"source_id": event.id, "source_type": event.event_type}).to_string();
            let seed = format!("{}/{}", self.subscriber, event.stream_id);
            let _ = effects.publish(&seed, follow_up, &data);
        }
        effects.set(format!("build:{}", event.id), "native".into());
        // The probe decides on the data's `act`; the benchmark sends none.
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
        match data.get("act").and_then(|a| a.as_str()) {
            None | Some("ok") => Outcome::Ok(effects),
            Some(act) => Outcome::Failed(eventhost::handler::Failure::new(
                eventhost::handler::FailureKind::Reject,
                format!("the native probe does not do {act:?}"),
            )),
        }
    }
}

/// Native handlers by each subscriber's `config.native`: `probe`, else noop.
struct NativeHandlers;

#[async_trait]
impl HandlerFactory for NativeHandlers {
    async fn load(&self, _: &Config, _: &[SubscriberConfig]) -> anyhow::Result<()> {
        Ok(())
    }

    fn handler(&self, settings: &SubscriberConfig) -> Arc<dyn Handler> {
        match settings.config.get("native").map(String::as_str) {
            Some("probe") => Arc::new(NativeProbe {
                subscriber: settings.name.clone(),
                follow_up: settings.config.get("follow_up").cloned(),
                calls: Default::default(),
            }),
            _ => Arc::new(NativeNoop),
        }
    }

    async fn reload(&self, _: &Path) -> Reload {
        Reload::Unchanged
    }
}

/// `eventhost run` with native handlers: the daemon's own wiring, what the
/// wasm numbers are compared with.
fn serve_native(path: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        eventhost::telemetry::init_logging(eventhost::config::LogFormat::Text);
        let shutdown = tokio_util::sync::CancellationToken::new();
        eventhost::signals::on_signals(shutdown.clone()).unwrap();
        let config = eventhost::preflight::config(path).unwrap();
        eventhost::daemon::run(config, Arc::new(NativeHandlers), shutdown.cancelled_owned())
            .await
            .unwrap();
    });
}
