//! `eventhost status` prints what Redis holds, and anyone who can write to
//! the bus writes there: a subscriber's name with an escape sequence must
//! reach the operator's terminal as inert text, and a heartbeat whose build
//! has multi-byte characters must not make `status` panic.

mod support;

use redis::Commands;
use serde_json::json;
use support::*;

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
