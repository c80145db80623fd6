//! Hostile test plugin: does what the event's data asks, as an attacker
//! would, to make the host buffer, log or keep more than it should.
//!
//! Acts (`"act"`), each with `"n"` (how many times) and `"size"` (bytes):
//! - `"flood_state"`: writes `n` distinct keys of `size` bytes, then ok;
//! - `"rewrite"`: writes one key `n` times with `size` bytes, then ok;
//! - `"flood_delete"`: deletes `n` distinct keys of `size` bytes, then ok;
//! - `"flood_publish"`: publishes `n` events of about `size` bytes, then
//!   ok; the results are stored under `published` and `publish_refused`
//!   (the last refusal's message under `publish_error`);
//! - `"flood_log"`: logs `n` messages of `size` bytes, then ok;
//! - `"flood_print"`: prints `n` lines of `size` bytes, then ok;
//! - `"forge"`: logs and prints `"text"` (with its newlines and escapes),
//!   then rejects with it as the reason;
//! - `"set"`: writes `"key"` with a value of `size` bytes, then ok;
//! - `"cycle"`: counts itself in `cycles` and publishes its own event again
//!   (same type, same data), ignoring any refusal, then ok: a cycle of
//!   plugins in one;
//! - `"sleep"`: holds its instance for `n` ms (a WASI sleep: no CPU),
//!   then ok;
//! - `"open"`: opens the file `"path"` `n` times and keeps every file open
//!   (in the instance, across events), then ok; stores how many it holds
//!   under `held` and the last refusal under `open_error`;
//! - `"read"`: reads the file `"path"` and stores it under `read:<event id>`;
//! - `"read_loop"`: reads the state key `hot` `"n"` times (forever by default);
//! - `"read_many"`: reads the state keys `k0`, `k1`, ... (`"n"` of them;
//!   forever by default);
//! - `"handles"`: makes `n` WASI pollables and keeps them all, then ok
//!   (the host's handle limit traps it first).
//!
//! Every act stores `done:<event id>` when it returns ok.

use std::sync::Mutex;

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde_json::Value;

/// WASI's monotonic clock, called directly to make handles.
mod clocks {
    wit_bindgen::generate!({ path: "wit", world: "handles", generate_all });
}

/// Files `"open"` keeps open, for as long as the instance lives.
static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

struct Hostile;

impl Guest for Hostile {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Value = eventhost_plugin::data(&event)?;
        let act = data.get("act").and_then(Value::as_str).unwrap_or("");
        let n = data.get("n").and_then(Value::as_u64).unwrap_or(1);
        let size = data.get("size").and_then(Value::as_u64).unwrap_or(16) as usize;
        let text = data.get("text").and_then(Value::as_str).unwrap_or("");
        let filler = "x".repeat(size);
        match act {
            "flood_state" => {
                for i in 0..n {
                    eventhost_plugin::state_set(&format!("k{i}"), &filler);
                }
            }
            "rewrite" => {
                for _ in 0..n {
                    eventhost_plugin::state_set("same", &filler);
                }
            }
            "flood_delete" => {
                for i in 0..n {
                    eventhost_plugin::state_delete(&format!("{i}{filler}"));
                }
            }
            "flood_publish" => {
                let body = format!("{{\"filler\":\"{filler}\"}}");
                let (mut ok, mut refused) = (0u64, 0u64);
                for _ in 0..n {
                    match eventhost_plugin::publish("HostileFlood", &body) {
                        Ok(_) => ok += 1,
                        Err(err) => {
                            refused += 1;
                            eventhost_plugin::state_set("publish_error", &err);
                        }
                    }
                }
                eventhost_plugin::state_set("published", &ok.to_string());
                eventhost_plugin::state_set("publish_refused", &refused.to_string());
            }
            "flood_log" => {
                for _ in 0..n {
                    eventhost_plugin::log(Level::Error, &filler);
                }
            }
            "flood_print" => {
                for _ in 0..n {
                    println!("{filler}");
                }
            }
            "forge" => {
                eventhost_plugin::log(Level::Info, text);
                println!("{text}");
                return Err(Failure::Reject(text.to_string()));
            }
            "set" => {
                let key = data.get("key").and_then(Value::as_str).unwrap_or("big");
                eventhost_plugin::state_set(key, &filler);
            }
            "cycle" => {
                eventhost_plugin::state_increment("cycles")?;
                // A hostile plugin ignores what the host says.
                let _ = eventhost_plugin::publish(&event.event_type, &event.data);
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_millis(n)),
            "open" => {
                let path = data.get("path").and_then(Value::as_str).unwrap_or("");
                let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..n {
                    match std::fs::File::open(path) {
                        Ok(file) => held.push(file),
                        Err(err) => {
                            eventhost_plugin::state_set("open_error", &err.to_string());
                            break;
                        }
                    }
                }
                eventhost_plugin::state_set("held", &held.len().to_string());
            }
            "handles" => {
                let kept: Vec<_> = (0..n)
                    .map(|_| clocks::wasi::clocks::monotonic_clock::subscribe_duration(1 << 40))
                    .collect();
                eventhost_plugin::state_set("handles", &kept.len().to_string());
            }
            "read_loop" => {
                // Reads one key again and again (n times; forever by default).
                let n = data.get("n").and_then(Value::as_u64).unwrap_or(u64::MAX);
                for _ in 0..n {
                    std::hint::black_box(eventhost_plugin::state_get("hot"));
                }
            }
            "read_many" => {
                // Reads another key each time (n keys; forever by default).
                let n = data.get("n").and_then(Value::as_u64).unwrap_or(u64::MAX);
                for i in 0..n {
                    std::hint::black_box(eventhost_plugin::state_get(&format!("k{i}")));
                }
            }
            "read" => {
                let path = data.get("path").and_then(Value::as_str).unwrap_or("");
                let text = std::fs::read_to_string(path)
                    .map_err(|err| Failure::Retry(format!("cannot read {path}: {err}")))?;
                eventhost_plugin::state_set(&format!("read:{}", event.id), &text);
            }
            other => return Err(Failure::Reject(format!("unknown act {other:?}"))),
        }
        eventhost_plugin::state_set(&format!("done:{}", event.id), "1");
        Ok(())
    }
}

eventhost_plugin::export!(Hostile);
