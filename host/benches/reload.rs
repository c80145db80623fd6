//! Hot-reload latency: from a new plugin file landing in the plugins folder
//! to the first event handled by the new build, under a steady load.
//!
//!     cargo bench -p eventhost --bench reload
//!
//! Prints, per plugin, the time with compilation (empty compiled cache) and
//! from the compiled cache (a build seen before). The host's own account of
//! the load time is printed beside it. Figures, not assertions.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

/// Swaps per case: fewer for plugins that take seconds to compile.
const SWAPS: usize = 8;
const SWAPS_LARGE: usize = 4;
const RATE: u32 = 500;

fn main() {
    let (a, b) = (plugins().join("probe.wasm"), probe_b().to_path_buf());
    let mut plugins_to_measure: Vec<(&str, PathBuf, PathBuf, &str, &str, usize)> =
        vec![("Rust probe", a, b, "a", "b", SWAPS)];
    // Larger plugins, when their builds exist (plugins/python-probe,
    // plugins/js-probe build them as <name>.wasm and <name>_b.wasm).
    for (label, name, builds) in [
        ("Python probe", "python_probe", ("py", "py2")),
        ("JavaScript probe", "js_probe", ("js", "js2")),
    ] {
        let first = plugins().join(format!("{name}.wasm"));
        let second = plugins().join(format!("{name}_b.wasm"));
        if first.exists() && second.exists() {
            plugins_to_measure.push((label, first, second, builds.0, builds.1, SWAPS_LARGE));
        } else {
            println!("({label}: {} not built; skipped)", first.display());
        }
    }

    println!("hot reload: file written → first event handled by the new build");
    println!(
        "steady load {RATE} events/s, {SWAPS} swaps per case ({SWAPS_LARGE} for Python and JS), median / max\n"
    );
    for (label, first, second, first_build, second_build, swaps) in plugins_to_measure {
        for cached in [false, true] {
            let (latencies, host_times) =
                measure(&first, &second, first_build, second_build, cached, swaps);
            println!(
                "{label:>16} {:<14} {:>7.1} ms / {:>7.1} ms   (host: load {:.1} ms median)",
                if cached { "cached build" } else { "compiled" },
                median(&latencies),
                latencies.iter().cloned().fold(0.0, f64::max),
                median(&host_times),
            );
        }
    }
}

/// Swaps between two builds `swaps` times; returns write→first-event times
/// and the load times the host logged, in milliseconds.
fn measure(
    first: &Path,
    second: &Path,
    first_build: &str,
    second_build: &str,
    cached: bool,
    swaps: usize,
) -> (Vec<f64>, Vec<f64>) {
    let world = World::new(&[], "");
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(first, world.dir.path().join("plugins/plugin.wasm")).unwrap();
    world.write_config(&format!(
        "{}[subscribers.probe]\nplugin = \"plugin.wasm\"\ntimeout_ms = 1000\nmemory_mb = 256\n",
        world
            .header()
            .replace("watch = false", "watch = true")
            .replace(
                &cache_dir().display().to_string(),
                &cache.path().display().to_string()
            )
    ));
    let host = world.host();
    let target = world.dir.path().join("plugins/plugin.wasm");
    let load = Load::start(&world, RATE);
    let mut conn = world.conn();
    let mut latencies = Vec::new();
    let mut host_times = Vec::new();
    if cached {
        // Every build goes through once, so the measured swaps load from the cache.
        for (file, n) in [(second, 1), (first, 2)] {
            swap(file, &target);
            eventually("a warm-up reload", Duration::from_secs(60), || {
                reloads(&host) >= n
            });
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..swaps {
        let (file, build) = if i % 2 == 0 {
            (second, second_build)
        } else {
            (first, first_build)
        };
        if !cached {
            for entry in std::fs::read_dir(cache.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let before = reloads(&host);
        let written = Instant::now();
        swap(file, &target);
        // The first event published after the write whose record names the
        // new build: poll Redis for it.
        let found = loop {
            let candidates: Vec<String> = load
                .sent()
                .into_iter()
                .filter(|(_, at)| *at + Duration::from_millis(50) >= written)
                .map(|(id, _)| format!("build:{id}"))
                .collect();
            if !candidates.is_empty() {
                let builds: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg("events:state:probe")
                    .arg(&candidates)
                    .query(&mut conn)
                    .unwrap();
                if builds.iter().flatten().any(|b| b == build) {
                    break written.elapsed();
                }
            }
            assert!(
                written.elapsed() < Duration::from_secs(60),
                "no event ran on the new build:\n{}",
                host.log()
            );
            std::thread::sleep(Duration::from_micros(500));
        };
        latencies.push(found.as_secs_f64() * 1000.0);
        eventually("the reload is logged", Duration::from_secs(10), || {
            reloads(&host) > before
        });
        host_times.push(last_load_ms(&host.log()));
        std::thread::sleep(Duration::from_millis(200));
    }
    load.finish();
    host.stop();
    (latencies, host_times)
}

fn swap(source: &Path, target: &Path) {
    let tmp = target.with_extension("wasm.tmp");
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

fn reloads(host: &Host) -> usize {
    host.log().matches("reloaded: build").count()
}

/// The load time of the last reload the host logged ("... in 61.2ms; ...").
fn last_load_ms(log: &str) -> f64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("reloaded: build"))
        .unwrap_or("");
    let Some(after) = line.split(") in ").nth(1) else {
        return f64::NAN;
    };
    let value: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let number: f64 = value.parse().unwrap_or(f64::NAN);
    let unit = &after[value.len()..];
    if unit.starts_with("ms") {
        number
    } else if unit.starts_with("µs") {
        number / 1000.0
    } else if unit.starts_with('s') {
        number * 1000.0
    } else {
        f64::NAN
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}
