//! Data-driven test plugin for eventhost's end-to-end tests.
//!
//! For every event it first performs a fixed set of effects (state writes and
//! an optional follow-up publish) and only then decides the outcome from the
//! event data's `"act"` field. Because the effects always happen, a test can
//! prove that the host discards them whenever the outcome is not `Ok`.
//!
//! Effects, in order:
//! * `calls:<event id>` = how many times this instance's `handle` has been
//!   called, this call included ([`CALLS`]): 1, 2, 3... while the host
//!   reuses one instance, 1 again on a fresh one (e.g. after a trap);
//! * `seen:<event id>` = the delivery attempt;
//! * `count` incremented;
//! * if config `follow_up` is set, one event of that type with data
//!   `{"source_id": <event id>, "source_type": <event type>}`;
//! * `build:<event id>` = [`BUILD`] (tests build two variants for hot reload);
//! * if config `tag` is set, `tag` = its value.
//!
//! Outcomes by `"act"`: absent/`"ok"`, `"retry"` (honours `"succeed_on"`),
//! `"reject"`, `"panic"`, `"spin"` (forever, or with `"spin_ms"` busy for
//! that long, then ok), `"hog"` (allocates until stopped), `"alloc"`
//! (allocates and touches `"mb"` MiB, then ok), `"log"`, `"bad_publish"`,
//! `"sleep"` (waits `"sleep_ms"`, then ok: a slow but healthy handler), and
//! `"reject_unless_allowed"` (rejects until an operator sets the state key
//! `allow:<event id>`: a poison message fixed by hand, then requeued),
//! `"echo"` (stores what it received under `echo:<event id>`, so tests see
//! the event exactly as the plugin does), and `"peek"` (reads the state key
//! `"key"` and stores what it got under `peeked:<event id>`, `"<none>"` if
//! absent, so tests see which state a plugin can read), and `"read"` (reads
//! the state key `"key"` and stores only its length under `read:<event id>`:
//! a large read with a small write).

use std::sync::atomic::{AtomicU32, Ordering};

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde_json::{json, Value};

/// Calls of `handle` in this instance: its linear memory lives as long as
/// the instance, so the count tells a reused instance from a fresh one.
pub static CALLS: AtomicU32 = AtomicU32::new(0);

/// Which build of the plugin handled the event; set `PROBE_BUILD` at compile
/// time to tell two builds apart in hot-reload tests.
pub const BUILD: &str = match option_env!("PROBE_BUILD") {
    Some(b) => b,
    None => "a",
};

struct Probe;

impl Guest for Probe {
    fn handle(event: Event) -> Result<(), Failure> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        eventhost_plugin::state_set(&format!("calls:{}", event.id), &calls.to_string());
        effects(&event)?;
        outcome(&event)
    }
}

eventhost_plugin::export!(Probe);

/// The effects every event gets, whatever its outcome.
fn effects(event: &Event) -> Result<(), Failure> {
    eventhost_plugin::state_set(&format!("seen:{}", event.id), &event.attempt.to_string());
    eventhost_plugin::state_increment("count")?;
    if let Some(follow_up) = eventhost_plugin::config_get("follow_up") {
        let data = json!({"source_id": event.id, "source_type": event.event_type});
        eventhost_plugin::publish_json(&follow_up, &data)?;
    }
    eventhost_plugin::state_set(&format!("build:{}", event.id), BUILD);
    if let Some(tag) = eventhost_plugin::config_get("tag") {
        eventhost_plugin::state_set("tag", &tag);
    }
    Ok(())
}

/// What the event's data asks for.
fn outcome(event: &Event) -> Result<(), Failure> {
    let data: Value = eventhost_plugin::data(event)?;
    let act = match data.get("act") {
        None => "ok",
        Some(Value::String(act)) => act.as_str(),
        Some(other) => {
            return Err(Failure::Reject(format!(
                "`act` must be a string, got {other}"
            )))
        }
    };
    let attempt = event.attempt;
    match act {
        "ok" => Ok(()),
        "retry" => {
            let succeed_on = data.get("succeed_on").and_then(Value::as_f64);
            if succeed_on.is_some_and(|n| f64::from(attempt) >= n) {
                Ok(())
            } else {
                Err(Failure::Retry(format!(
                    "asked to retry (attempt {attempt})"
                )))
            }
        }
        "reject" => Err(Failure::Reject("asked to reject".into())),
        "reject_unless_allowed" => {
            if eventhost_plugin::state_get(&format!("allow:{}", event.id)).is_some() {
                Ok(())
            } else {
                Err(Failure::Reject(format!("{} is not allowed yet", event.id)))
            }
        }
        "echo" => {
            let seen = json!({
                "id": event.id,
                "event_type": event.event_type,
                "stream_id": event.stream_id,
                "timestamp": event.timestamp,
                "attempt": event.attempt,
                "data": event.data,
            });
            eventhost_plugin::state_set(&format!("echo:{}", event.id), &seen.to_string());
            Ok(())
        }
        "read" => {
            let key = match data.get("key") {
                Some(Value::String(key)) => key,
                _ => return Err(Failure::Reject("`read` needs a string `key`".into())),
            };
            let len = eventhost_plugin::state_get(key).map_or(0, |v| v.len());
            eventhost_plugin::state_set(&format!("read:{}", event.id), &len.to_string());
            Ok(())
        }
        "peek" => {
            let key = match data.get("key") {
                Some(Value::String(key)) => key,
                _ => return Err(Failure::Reject("`peek` needs a string `key`".into())),
            };
            let value = eventhost_plugin::state_get(key).unwrap_or_else(|| "<none>".into());
            eventhost_plugin::state_set(&format!("peeked:{}", event.id), &value);
            Ok(())
        }
        "sleep" => {
            let ms = data.get("sleep_ms").and_then(Value::as_u64).unwrap_or(100);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        "panic" => panic!("asked to panic on {}", event.id),
        "spin" => match data.get("spin_ms").and_then(Value::as_u64) {
            Some(ms) => {
                spin_for(std::time::Duration::from_millis(ms));
                Ok(())
            }
            None => spin(),
        },
        "hog" => hog(),
        "alloc" => {
            let mb = data.get("mb").and_then(Value::as_u64).unwrap_or(1);
            alloc(mb as usize);
            Ok(())
        }
        "log" => {
            let levels = [
                (Level::Trace, "trace"),
                (Level::Debug, "debug"),
                (Level::Info, "info"),
                (Level::Warn, "warn"),
                (Level::Error, "error"),
            ];
            for (level, name) in levels {
                eventhost_plugin::log(level, &format!("probe {name} log for {}", event.id));
            }
            Ok(())
        }
        "bad_publish" => match eventhost_plugin::publish("ProbeBadPublish", "not json") {
            Ok(id) => panic!("host accepted non-JSON data (new event {id})"),
            Err(e) => Err(Failure::Reject(e)),
        },
        other => Err(Failure::Reject(format!("unknown act {other:?}"))),
    }
}

/// Loops forever; `black_box` keeps the optimiser from deleting the loop.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Busy for `how_long` without calling the host in between (apart from
/// reading the clock), as CPU-bound work is.
fn spin_for(how_long: std::time::Duration) {
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < how_long {
        for _ in 0..10_000 {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

/// Allocates and touches `mb` chunks of 1 MiB, all alive at once.
fn alloc(mb: usize) {
    let chunks: Vec<Vec<u8>> = (0..mb).map(|_| mib()).collect();
    std::hint::black_box(&chunks);
}

/// Allocates and touches 1 MiB chunks until the host's memory limit stops it.
fn hog() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(mib());
    }
}

/// 1 MiB, allocated and touched: the non-zero fill writes every page, so
/// the memory is really used.
fn mib() -> Vec<u8> {
    std::hint::black_box(vec![1u8; 1 << 20])
}
