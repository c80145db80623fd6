//! `eventhost status` prints what Redis holds, and anyone who can write to
//! the bus writes there: a subscriber's name with an escape sequence must
//! reach the operator's terminal as inert text, and a heartbeat whose build
//! has multi-byte characters must not make `status` panic. Nor can a
//! registry flooded with members make `status` or the console's
//! `/api/status` slow or large: they read at most 1,000 members and say how
//! many they left out.

mod support;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use support::*;

/// Members put in the registry: each names a subscriber stream, the most
/// costly kind (each one read is a row and a queue's worth of commands).
const JUNK: usize = 100_000;
/// What status reads of them (`bus::status::REGISTRY_READ`).
const READ: usize = 1_000;

/// Fills `events:registry` with [`JUNK`] members `events:sub:junk-<i>`.
fn flood_registry(conn: &mut redis::Connection) {
    for chunk in (0..JUNK).collect::<Vec<_>>().chunks(10_000) {
        let mut cmd = redis::cmd("SADD");
        cmd.arg("events:registry");
        for i in chunk {
            cmd.arg(format!("events:sub:junk-{i}"));
        }
        let _: () = cmd.query(conn).unwrap();
    }
    let members: usize = conn.scard("events:registry").unwrap();
    assert_eq!(members, JUNK);
}

/// Issue 20: `status` read every member of `events:registry` (SMEMBERS),
/// then each one's queue. With 100,000 junk members it reads 1,000, answers
/// within 10 s in under 300 KB, and says how many it did not show, in text
/// and in JSON.
#[test]
fn status_reads_a_bounded_part_of_a_flooded_registry_and_says_what_it_left_out() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    flood_registry(&mut conn);
    let dir = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let out = eventhost_in(dir.path(), &["status", "--url", &redis.url()]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("junk-"))
        .count();
    println!(
        "status over {JUNK} registry members: {} ms, {} bytes, {rows} rows",
        took.as_millis(),
        out.stdout.len()
    );
    assert_eq!(rows, READ, "one row per member read");
    let not_read = JUNK - READ;
    assert!(
        stdout.contains(&format!(
            "{not_read} more members of the LeanMQ registry not shown (status reads at most {READ}"
        )),
        "{}",
        &stdout[stdout.len().saturating_sub(400)..]
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(out.stdout.len() < 300 * 1024, "{} bytes", out.stdout.len());

    let out = eventhost_in(dir.path(), &["status", "--url", &redis.url(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["registry_not_read"], not_read as u64);
    assert_eq!(status["subscribers"].as_array().unwrap().len(), READ);
}

/// The console's read token (reading the overview needs it).
const READ_TOKEN: &str = "status-read-token-0123456789";

/// The console's `/api/status` reads the same bounded part: with 100,000
/// junk members it answers within 10 s, in under 2 MB, with the configured
/// subscriber among those shown and the count of members left out.
#[test]
fn the_consoles_status_reads_a_bounded_part_of_a_flooded_registry() {
    let world = World::new(&["probe.wasm"], "");
    let port = free_port();
    world.configure(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\nread_token = \"{READ_TOKEN}\"\n\n[subscribers.probe]\nplugin = \"probe.wasm\"\n"
    ));
    let mut conn = world.conn();
    flood_registry(&mut conn);
    let _host = world.host();

    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {READ_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    println!(
        "/api/status over {JUNK} registry members: {} ms, {} bytes",
        took.as_millis(),
        answer.len()
    );
    let status: Value = serde_json::from_str(body).unwrap();
    let names: Vec<&str> = status["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"probe"), "the config's subscriber is shown");
    // The host registers its own subscriber's streams too.
    let members: usize = conn.scard("events:registry").unwrap();
    assert!(members > JUNK, "{members}");
    // Those read (a few may be the host's own `:dlq` or `:metadata`
    // members, not subscribers) and the configured one.
    assert!(
        (READ - 3..=READ + 1).contains(&names.len()),
        "{} subscribers",
        names.len()
    );
    assert_eq!(status["registry_not_read"], (members - READ) as u64);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(answer.len() < 2 * 1024 * 1024, "{} bytes", answer.len());
}

#[test]
fn status_shows_hostile_text_from_redis_escaped_and_cut_by_characters() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    let _: () = conn
        .sadd("events:registry", "events:sub:\x1b[31mEVIL\x07")
        .unwrap();
    // A live host's heartbeat, as bus/heartbeat.rs writes it; its build
    // is cut at 12 characters for the table, and byte 12 of this one is
    // inside a `€`.
    let build = "x€€€€€€€€€€€€€€€€";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rates = json!({"handled": 0, "dead_lettered": 0, "handled_per_s": 0.0,
                       "dead_lettered_per_s": 0.0});
    let record = json!({
        "consumer": "host-\x1b]0;pwned\x07",
        "hostname": "box",
        "pid": 4242,
        "version": "0.1.0\u{9b}2J",
        "started_at": now - 60.0,
        "seen_at": now,
        "listen": null,
        "fanout": rates,
        "subscribers": {
            "pay": {"plugin": "pay\x1b[2J.wasm", "build": build, "events": ["Ping\x7f"],
                    "rates": rates},
        },
    });
    let consumer = "host-\x1b]0;pwned\x07";
    let _: () = redis::cmd("SET")
        .arg(format!("events:host:{consumer}"))
        .arg(record.to_string())
        .arg("PX")
        .arg(60_000)
        .query(&mut conn)
        .unwrap();
    let _: () = conn
        .zadd("events:hosts", consumer, (now * 1000.0) as u64)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = eventhost_in(dir.path(), &["status", "--url", &redis.url()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "status exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (byte, name) in [(0x1b, "ESC"), (0x07, "BEL"), (0x7f, "DEL")] {
        assert!(
            !out.stdout.contains(&byte),
            "no raw {name} reaches the terminal:\n{stdout:?}"
        );
    }
    assert!(
        !stdout.contains('\u{9b}'),
        "no raw C1 CSI reaches the terminal:\n{stdout:?}"
    );
    for shown in [
        "\\u{1b}[31mEVIL\\u{7}",
        "host-\\u{1b}]0;pwned\\u{7}",
        "0.1.0\\u{9b}2J",
        "pay\\u{1b}[2J.wasm",
        "Ping\\u{7f}",
        "x€€€€€€€€€€€",
    ] {
        assert!(
            stdout.contains(shown),
            "{shown} is shown escaped:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("x€€€€€€€€€€€€"),
        "the build is cut at 12 characters:\n{stdout}"
    );
}
