//! Hot reload end to end: plugins and subscriptions change under a running
//! host while events flow, and no event is lost, handled twice, or handled
//! by a half-loaded plugin.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// How the new file reaches the plugins folder.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Written beside it, then renamed over it (what deploy tools do).
    AtomicRename,
    /// Truncated and rewritten in place (what `cp` does).
    InPlace,
    /// Written in place in small chunks with pauses (a slow copy).
    SlowChunks,
}

fn put(source: &Path, target: &Path, how: Write) {
    let bytes = std::fs::read(source).unwrap();
    match how {
        Write::AtomicRename => {
            let tmp = target.with_extension("wasm.tmp");
            std::fs::write(&tmp, &bytes).unwrap();
            std::fs::rename(&tmp, target).unwrap();
        }
        Write::InPlace => std::fs::write(target, &bytes).unwrap(),
        Write::SlowChunks => {
            use std::io::Write as _;
            let mut file = std::fs::File::create(target).unwrap();
            for chunk in bytes.chunks(bytes.len() / 8 + 1) {
                file.write_all(chunk).unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(80));
            }
        }
    }
}

fn builds() -> (PathBuf, PathBuf) {
    (plugins().join("probe.wasm"), probe_b().to_path_buf())
}

/// Waits until the probe has counted `n` events: all that were sent.
fn wait_all_handled(conn: &mut redis::Connection, n: usize) {
    eventually("every event is handled", WAIT, || {
        state(conn, "probe").get("count").map(String::as_str) == Some(&n.to_string())
    });
}

/// The build of the probe that handled event `id`, once it has.
fn build_of(conn: &mut redis::Connection, id: &str) -> Option<String> {
    state(conn, "probe").remove(&format!("build:{id}"))
}

/// Waits until the host has logged `n` reloads.
fn wait_reloads(host: &Host, n: usize) {
    eventually(&format!("{n} reloads are logged"), WAIT, || {
        host.log().matches("reloaded: build").count() >= n
    });
}

#[test]
fn swapping_builds_under_load_handles_every_event_once_by_the_right_build() {
    let world = World::watched("");
    let host = world.host();
    let target = world.dir.path().join("plugins/probe.wasm");
    let (a, b) = builds();
    let load = Load::start(&world, 300);

    // Windows (build, from, until) in which a published event must run on
    // `build`: from the moment a reload was seen done until the next file
    // is written.
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    let swaps = [
        (&b, "b", Write::AtomicRename),
        (&a, "a", Write::InPlace),
        (&b, "b", Write::SlowChunks),
        (&a, "a", Write::AtomicRename),
        (&b, "b", Write::InPlace),
    ];
    let mut since = Instant::now();
    let mut running = "a";
    std::thread::sleep(Duration::from_millis(500));
    for (n, (file, build, how)) in swaps.iter().enumerate() {
        windows.push((running, since, Instant::now()));
        put(file, &target, *how);
        wait_reloads(&host, n + 1);
        (running, since) = (build, Instant::now());
        std::thread::sleep(Duration::from_millis(400));
    }
    windows.push((running, since, Instant::now()));
    let sent = load.finish();
    assert!(sent.len() > 600, "only {} events were sent", sent.len());

    let mut conn = world.conn();
    wait_all_handled(&mut conn, sent.len());
    assert!(settled(&mut conn, &["probe"]));
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    let probe = state(&mut conn, "probe");
    let mut checked = 0;
    for (id, at) in &sent {
        assert_eq!(
            probe.get(&format!("seen:{id}")).map(String::as_str),
            Some("1"),
            "{id} handled once"
        );
        let build = probe[&format!("build:{id}")].as_str();
        assert!(build == "a" || build == "b", "{id} ran on build {build}");
        if let Some((expected, ..)) = windows
            .iter()
            .find(|(_, from, until)| from <= at && at < until)
        {
            assert_eq!(
                build, *expected,
                "{id} was published while {expected} was the build"
            );
            checked += 1;
        }
    }
    assert!(checked > 600, "the check covered {checked} events");
    assert_eq!(
        host.log().matches("reloaded: build").count(),
        swaps.len(),
        "one reload per swap"
    );
    host.stop();
}

#[test]
fn a_build_written_while_the_host_starts_is_reloaded_once_it_serves() {
    let mut world = World::watched("");
    // With Redis down the host loads its plugins and then waits: the file
    // changes after it was loaded and before the host serves.
    world.redis.kill();
    let mut host = Host::start(&world.config());
    host.wait_for_log("cannot reach Redis");
    assert!(
        host.log().contains("loaded in"),
        "loaded before Redis is up"
    );
    put(
        probe_b(),
        &world.dir.path().join("plugins/probe.wasm"),
        Write::AtomicRename,
    );
    world.redis.launch();
    host.wait_for_log("eventhost running");
    wait_reloads(&host, 1);

    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the build written during the start serves", WAIT, || {
        build_of(&mut conn, &id).as_deref() == Some("b")
    });
}

#[test]
fn broken_builds_are_refused_and_the_running_build_keeps_serving() {
    let world = World::new(&["probe.wasm"], "");
    let metrics = format!("127.0.0.1:{}", free_port());
    world.configure_watched(&format!("[telemetry]\nmetrics = \"{metrics}\"\n\n{PROBE}"));
    let mut host = world.host();
    let target = world.dir.path().join("plugins/probe.wasm");
    let load = Load::start(&world, 200);

    std::fs::write(&target, "not a component at all").unwrap();
    host.wait_for_log("not a WebAssembly file");
    std::fs::write(&target, b"\0asm\x01\0\0\0").unwrap();
    host.wait_for_log("is a core WebAssembly module");
    world.install("not_a_plugin.wasm", "probe.wasm");
    host.wait_for_log("no exported function `handle`");
    std::fs::remove_file(&target).unwrap();
    host.wait_for_log("plugin file removed");

    let sent = load.finish();
    let mut conn = world.conn();
    wait_all_handled(&mut conn, sent.len());
    let probe = state(&mut conn, "probe");
    for (id, _) in &sent {
        assert_eq!(
            probe[&format!("build:{id}")],
            "a",
            "the loaded build kept serving {id}"
        );
    }
    let log = host.log();
    assert_eq!(
        log.matches("refused the new build").count(),
        3,
        "each refusal once:\n{log}"
    );
    assert!(log.contains("probe keep running the loaded build"));
    assert_eq!(
        counter(
            &scrape(&metrics),
            "eventhost_reload_refused_total{what=\"plugin\"}"
        ),
        3
    );

    // A good build after all that is taken.
    std::fs::copy(probe_b(), &target).unwrap();
    wait_reloads(&host, 1);
    let after = publish(&mut conn, "Ping", json!({}));
    eventually("the new build serves", WAIT, || {
        build_of(&mut conn, &after).as_deref() == Some("b")
    });
    assert_eq!(
        counter(
            &scrape(&metrics),
            "eventhost_reloads_total{what=\"plugin\"}"
        ),
        1
    );
}

#[test]
fn a_file_written_in_slow_chunks_is_never_loaded_half_way() {
    let world = World::watched("");
    let host = world.host();
    let target = world.dir.path().join("plugins/probe.wasm");
    let load = Load::start(&world, 200);
    std::thread::sleep(Duration::from_millis(200));
    let writing = Instant::now();
    put(probe_b(), &target, Write::SlowChunks);
    let written = Instant::now();
    wait_reloads(&host, 1);
    std::thread::sleep(Duration::from_millis(300));
    let sent = load.finish();

    let mut conn = world.conn();
    wait_all_handled(&mut conn, sent.len());
    let probe = state(&mut conn, "probe");
    let during: Vec<_> = sent
        .iter()
        .filter(|(_, at)| *at >= writing && *at < written)
        .collect();
    assert!(
        during.len() > 50,
        "{} events were published while the file was written",
        during.len()
    );
    // Handled within a few ms of publishing, these ran while the file was
    // incomplete: the old build served them.
    let early: Vec<_> = during
        .iter()
        .filter(|(_, at)| *at < written - Duration::from_millis(200))
        .collect();
    for (id, _) in &early {
        assert_eq!(
            probe[&format!("build:{id}")],
            "a",
            "{id} published while the file was half written"
        );
    }
    assert_eq!(len(&mut conn, "events:sub:probe:dlq"), 0);
    assert_eq!(
        host.log().matches("reloaded: build").count(),
        1,
        "loaded once, when complete"
    );
}

#[test]
fn subscribers_come_and_go_and_change_through_the_config_while_events_flow() {
    let world = World::watched("events = [\"Ping\"]\n");
    let mut host = world.host();
    let load = Load::start(&world, 200);
    std::thread::sleep(Duration::from_millis(300));

    // Add a second subscriber.
    world.configure_watched(
        "[subscribers.probe]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n\n[subscribers.late]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n[subscribers.late.config]\ntag = \"one\"\n",
    );
    host.wait_for_log("subscriber added");
    let added = Instant::now();
    std::thread::sleep(Duration::from_millis(400));

    // Change its config: the next events see the new value.
    world.configure_watched(
        "[subscribers.probe]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n\n[subscribers.late]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\nconcurrency = 2\n[subscribers.late.config]\ntag = \"two\"\n",
    );
    host.wait_for_log("settings changed");
    let mut conn = world.conn();
    eventually("new events see the new config value", WAIT, || {
        state(&mut conn, "late").get("tag").map(String::as_str) == Some("two")
    });

    // Remove the first one.
    world.configure_watched("[subscribers.late]\nplugin = \"probe.wasm\"\nevents = [\"Ping\"]\n");
    host.wait_for_log("subscriber removed");
    let removed = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let sent = load.finish();

    eventually("the late subscriber is done", WAIT, || {
        settled(&mut conn, &["late"])
    });
    let probe = state(&mut conn, "probe");
    let late = state(&mut conn, "late");
    // Everything routed to `probe` before it was removed was handled:
    // its stream holds nothing unacknowledged.
    assert_eq!(pending(&mut conn, "events:sub:probe", "sub:probe-group"), 0);
    let routed_to_probe = len(&mut conn, "events:sub:probe");
    assert_eq!(
        probe["count"],
        routed_to_probe.to_string(),
        "every event in its stream, once"
    );
    for (id, at) in &sent {
        if *at < added {
            assert!(
                probe.contains_key(&format!("seen:{id}")),
                "{id} before the change"
            );
        }
        if *at > added + Duration::from_millis(100) {
            assert!(
                late.contains_key(&format!("seen:{id}")),
                "{id} after `late` was added"
            );
        }
        if *at > removed + Duration::from_millis(100) {
            assert!(
                !probe.contains_key(&format!("seen:{id}")),
                "{id} after `probe` was removed"
            );
        }
    }
    assert!(len(&mut conn, "events:sub:probe:dlq") + len(&mut conn, "events:sub:late:dlq") == 0);
}

#[test]
fn a_removed_subscriber_first_handles_what_was_routed_to_it() {
    let world = World::watched("events = [\"Ping\"]\n");
    let mut host = world.host();
    let mut conn = world.conn();
    // About 2 s of work queued in its stream when it is removed.
    let ids: Vec<String> = (0..40)
        .map(|_| publish(&mut conn, "Ping", json!({"act": "sleep", "sleep_ms": 50})))
        .collect();
    eventually("the first is handled", WAIT, || {
        state(&mut conn, "probe").contains_key("count")
    });
    world.configure_watched("[subscribers.other]\nplugin = \"probe.wasm\"\nevents = [\"Other\"]\n");
    host.wait_for_log("subscriber removed");
    assert!(
        host.log()
            .contains("subscriber removed after handling what was routed to it"),
        "{}",
        host.log()
    );
    assert!(
        seen_all(&mut conn, "probe", &ids),
        "every event routed to it was handled"
    );
    assert_eq!(pending(&mut conn, "events:sub:probe", "sub:probe-group"), 0);
    assert_eq!(state(&mut conn, "probe")["count"], "40");
    // Nothing more reaches it: the fan-out routes in order, so once the
    // `Other` published after a `Ping` is handled, the `Ping` was routed.
    publish(&mut conn, "Ping", json!({}));
    let marker = publish(&mut conn, "Other", json!({}));
    eventually("the marker is handled", WAIT, || {
        state(&mut conn, "other").contains_key(&format!("seen:{marker}"))
    });
    assert_eq!(
        len(&mut conn, "events:sub:probe"),
        40,
        "nothing routed after"
    );
}

#[test]
fn an_invalid_config_edit_is_refused_and_the_running_config_stays() {
    let world = World::watched("");
    let mut host = world.host();
    let good = std::fs::read_to_string(world.config()).unwrap();
    world.write_config(&format!("{good}concurency = 4\n"));
    host.wait_for_log("config change refused, the running config stays");
    let file = world.config().display().to_string();
    assert!(host.log().contains(&format!("{file}:")), "names the file");
    assert!(host
        .log()
        .contains("subscribers.probe.concurency: unknown field"));

    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the running config still serves", WAIT, || {
        state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
    });

    world.write_config(&format!(
        "{good}[subscribers.probe.config]\ntag = \"fixed\"\n"
    ));
    host.wait_for_log("settings changed");
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the fixed config applies", WAIT, || {
        state(&mut conn, "probe").get("tag").map(String::as_str) == Some("fixed")
            && state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
    });
}

#[test]
fn a_live_edit_of_a_start_setting_is_reported_at_its_line_and_the_rest_applies() {
    let world = World::watched("");
    let mut host = world.host();
    let good = std::fs::read_to_string(world.config()).unwrap();
    // One edit: a setting that applies only at start, and a subscriber's.
    let edited = good.replace("watch = true\n", "watch = true\ninstances = 7\n");
    world.write_config(&format!(
        "{edited}[subscribers.probe.config]\ntag = \"live\"\n"
    ));
    host.wait_for_log("plugins.instances: changed while eventhost runs");
    let file = world.config().display().to_string();
    let line = world.line_of("instances = 7");
    assert!(
        host.log().contains(&format!(
            "{file}:{line}:13: plugins.instances: changed while eventhost runs: this setting \
             applies only at start, so the running value stays; restart eventhost to apply it"
        )),
        "{}",
        host.log()
    );
    host.wait_for_log("settings changed");
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually(
        "the subscriber's edit applies, the host serves",
        WAIT,
        || {
            state(&mut conn, "probe").get("tag").map(String::as_str) == Some("live")
                && state(&mut conn, "probe").contains_key(&format!("seen:{id}"))
        },
    );
}

#[test]
fn sighup_reloads_when_watching_is_off_and_known_builds_come_from_the_cache() {
    let world = World::new(&["probe.wasm"], PROBE);
    let mut host = world.host();
    let target = world.dir.path().join("plugins/probe.wasm");
    let (a, b) = builds();

    put(&b, &target, Write::AtomicRename);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        host.log().matches("reloaded: build").count(),
        0,
        "not watching"
    );
    host.signal(libc::SIGHUP);
    wait_reloads(&host, 1);

    put(&a, &target, Write::AtomicRename);
    host.signal(libc::SIGHUP);
    wait_reloads(&host, 2);
    let last = host
        .log()
        .lines()
        .rfind(|l| l.contains("reloaded: build"))
        .unwrap()
        .to_string();
    assert!(
        last.contains("(compiled cache)"),
        "a build seen before is not compiled again: {last}"
    );

    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("build a serves again", WAIT, || {
        build_of(&mut conn, &id).as_deref() == Some("a")
    });
    host.wait_for_log("SIGHUP: reloading");
}

#[test]
fn editor_and_copy_temp_files_beside_a_plugin_are_ignored() {
    let world = World::watched("");
    let mut host = world.host();
    let dir = world.dir.path().join("plugins");
    // What vim, emacs, rsync and cp leave around while they work.
    for name in [
        ".probe.wasm.swp",
        "probe.wasm~",
        "4913",
        ".probe.wasm.XXXXXX",
        "#probe.wasm#",
    ] {
        std::fs::write(dir.join(name), b"half a file").unwrap();
    }
    std::fs::copy(probe_b(), dir.join(".probe.wasm.partial")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut conn = world.conn();
    let id = publish(&mut conn, "Ping", json!({}));
    eventually("the loaded build still serves", WAIT, || {
        build_of(&mut conn, &id).as_deref() == Some("a")
    });
    let log = host.log();
    assert!(
        !log.contains("refused"),
        "nothing was read as a plugin:\n{log}"
    );
    assert!(!log.contains("reloaded"), "nothing was loaded:\n{log}");
    // The rename that finishes such a copy is what counts.
    std::fs::rename(dir.join(".probe.wasm.partial"), dir.join("probe.wasm")).unwrap();
    host.wait_for_log("reloaded: build");
}
