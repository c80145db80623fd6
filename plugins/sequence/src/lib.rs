//! A plugin that can only commit each key's events in sequence order: the
//! per-key order tests count on it.
//!
//! An event's data: `{"order_id": "k17", "seq": 5}` plus, optionally,
//! `retry_percent` (the chance, 0–100, that an attempt fails with a
//! retryable failure; only attempts up to `max_chance_retries`, default 3,
//! so chance alone never exhausts the attempts), `poison` (always
//! rejected), `cure` (rejected while the state key it names is absent: a
//! poison fixed by hand, then replayed) and `pause_ms` (a slow handler).
//! The key is read at the dotted path the config's `key_path` names
//! (default `order_id`); a string or a number.
//!
//! For a key `K`, the state holds `last:K`, the last seq committed;
//! `log:K`, every seq committed, comma-separated, in commit order; and
//! `builds:K`, one letter per entry of `log:K`: the build that ran it
//! ([`BUILD`]; set `SEQUENCE_BUILD` at compile time to tell two builds
//! apart in hot-reload tests). An event whose seq is not above `last:K` is
//! rejected with a reason starting `out of order`, so an event delivered
//! out of order can never commit. An event without a key is committed as
//! `unkeyed:<event id>` = the build, and nothing else.

use eventhost_plugin::{Event, Failure, Guest};
use serde_json::Value;

/// Which build of the plugin handled the event.
pub const BUILD: &str = match option_env!("SEQUENCE_BUILD") {
    Some(b) => b,
    None => "a",
};

/// What a step needs from its host: the plugin's state and a die.
pub trait Host {
    fn get(&mut self, key: &str) -> Option<String>;
    fn set(&mut self, key: &str, value: &str);
    /// A number in 0..100, at random.
    fn percent(&mut self) -> u32;
    fn pause(&mut self, ms: u64);
}

/// Handles one event (its `data` parsed) on `host`.
pub fn step(
    host: &mut impl Host,
    data: &Value,
    key_path: &str,
    event_id: &str,
    attempt: u32,
) -> Result<(), Failure> {
    let pause = data.get("pause_ms").and_then(Value::as_u64).unwrap_or(0);
    let Some(key) = key_at(data, key_path) else {
        host.pause(pause);
        host.set(&format!("unkeyed:{event_id}"), BUILD);
        return Ok(());
    };
    let seq = data
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| Failure::Reject(format!("no seq in the event of {key}")))?;
    let last = match host.get(&format!("last:{key}")) {
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| Failure::Reject(format!("last:{key} holds {text:?}")))?,
        ),
        None => None,
    };
    if let Some(last) = last.filter(|&last| seq <= last) {
        return Err(Failure::Reject(format!(
            "out of order: seq {seq} after {last} for {key}"
        )));
    }
    if data.get("poison").and_then(Value::as_bool) == Some(true) {
        return Err(Failure::Reject(format!("poison: seq {seq} of {key}")));
    }
    if let Some(cure) = data.get("cure").and_then(Value::as_str) {
        if host.get(cure).is_none() {
            return Err(Failure::Reject(format!(
                "poison until state {cure} is set: seq {seq} of {key}"
            )));
        }
    }
    let chance = data
        .get("retry_percent")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let most = data
        .get("max_chance_retries")
        .and_then(Value::as_u64)
        .unwrap_or(3);
    if chance > 0 && u64::from(attempt) <= most && u64::from(host.percent()) < chance {
        return Err(Failure::Retry(format!(
            "by chance: seq {seq} of {key}, attempt {attempt}"
        )));
    }
    host.pause(pause);
    host.set(&format!("last:{key}"), &seq.to_string());
    append(host, &format!("log:{key}"), &seq.to_string(), ",");
    append(host, &format!("builds:{key}"), BUILD, "");
    Ok(())
}

/// The key at the dotted `path` of `data`: a string, or a number as text.
pub fn key_at(data: &Value, path: &str) -> Option<String> {
    let mut at = data;
    for name in path.split('.') {
        at = at.get(name)?;
    }
    match at {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn append(host: &mut impl Host, key: &str, item: &str, separator: &str) {
    let value = match host.get(key) {
        Some(before) if !before.is_empty() => format!("{before}{separator}{item}"),
        _ => item.to_string(),
    };
    host.set(key, &value);
}

/// The real host: the SDK's imports and WASI's random source.
struct Real;

impl Host for Real {
    fn get(&mut self, key: &str) -> Option<String> {
        eventhost_plugin::state_get(key)
    }
    fn set(&mut self, key: &str, value: &str) {
        eventhost_plugin::state_set(key, value)
    }
    fn percent(&mut self) -> u32 {
        getrandom::u32().unwrap_or(0) % 100
    }
    fn pause(&mut self, ms: u64) {
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

struct Sequence;

impl Guest for Sequence {
    fn handle(event: Event) -> Result<(), Failure> {
        let data: Value = eventhost_plugin::data(&event)?;
        let key_path =
            eventhost_plugin::config_get("key_path").unwrap_or_else(|| "order_id".into());
        step(&mut Real, &data, &key_path, &event.id, event.attempt)
    }
}

eventhost_plugin::export!(Sequence);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    /// State in a map, and a die that always shows `roll`.
    #[derive(Default)]
    struct Fake {
        state: HashMap<String, String>,
        roll: u32,
    }

    impl Host for Fake {
        fn get(&mut self, key: &str) -> Option<String> {
            self.state.get(key).cloned()
        }
        fn set(&mut self, key: &str, value: &str) {
            self.state.insert(key.into(), value.into());
        }
        fn percent(&mut self) -> u32 {
            self.roll
        }
        fn pause(&mut self, _: u64) {}
    }

    fn run(host: &mut Fake, data: Value) -> Result<(), Failure> {
        step(host, &data, "order_id", "e-1", 1)
    }

    #[test]
    fn steps_in_order_are_logged_and_one_out_of_order_is_rejected() {
        let mut host = Fake {
            roll: 99,
            ..Fake::default()
        };
        for seq in [1, 2, 5] {
            run(&mut host, json!({"order_id": "k1", "seq": seq})).unwrap();
        }
        run(&mut host, json!({"order_id": "k2", "seq": 1})).unwrap();
        assert_eq!(host.state["log:k1"], "1,2,5");
        assert_eq!(host.state["builds:k1"], "aaa");
        assert_eq!(host.state["last:k1"], "5");
        assert_eq!(host.state["log:k2"], "1");
        for seq in [5, 3] {
            assert_eq!(
                run(&mut host, json!({"order_id": "k1", "seq": seq})),
                Err(Failure::Reject(format!(
                    "out of order: seq {seq} after 5 for k1"
                )))
            );
        }
        assert_eq!(host.state["log:k1"], "1,2,5");
    }

    #[test]
    fn poison_and_an_uncured_poison_are_rejected() {
        let mut host = Fake::default();
        let poison = run(
            &mut host,
            json!({"order_id": "k", "seq": 1, "poison": true}),
        );
        assert!(matches!(poison, Err(Failure::Reject(r)) if r.starts_with("poison")));
        let cured = json!({"order_id": "k", "seq": 2, "cure": "cure"});
        assert!(matches!(
            run(&mut host, cured.clone()),
            Err(Failure::Reject(_))
        ));
        host.set("cure", "1");
        run(&mut host, cured).unwrap();
        assert_eq!(host.state["log:k"], "2");
    }

    #[test]
    fn chance_retries_only_the_first_attempts() {
        let mut host = Fake {
            roll: 5,
            ..Fake::default()
        };
        let data = json!({"order_id": "k", "seq": 1, "retry_percent": 10, "max_chance_retries": 2});
        for attempt in [1, 2] {
            assert!(matches!(
                step(&mut host, &data, "order_id", "e", attempt),
                Err(Failure::Retry(_))
            ));
        }
        step(&mut host, &data, "order_id", "e", 3).unwrap();
        host.roll = 10;
        let next = json!({"order_id": "k", "seq": 2, "retry_percent": 10});
        step(&mut host, &next, "order_id", "e", 1).unwrap();
        assert_eq!(host.state["log:k"], "1,2");
    }

    #[test]
    fn keys_at_dotted_paths_and_events_without_one() {
        let data = json!({"customer": {"id": 7}, "order_id": "o"});
        assert_eq!(key_at(&data, "customer.id").as_deref(), Some("7"));
        assert_eq!(key_at(&data, "order_id").as_deref(), Some("o"));
        assert_eq!(key_at(&data, "customer"), None);
        assert_eq!(key_at(&data, "missing.id"), None);
        let mut host = Fake::default();
        run(&mut host, json!({"seq": 1})).unwrap();
        assert_eq!(host.state["unkeyed:e-1"], "a");
        assert_eq!(host.state.len(), 1);
    }
}
