//! A plugin for the tests of time, by what its event holds:
//! - `url`: POSTs `{"event": <id>}` there; a 2xx records `paid:<event id>`
//!   = the attempt in its state, anything else is a `retry` (after the
//!   provider's `Retry-After` seconds, if it sent one);
//! - `fails`: a `retry` on each of the first `fails` attempts, then ok,
//!   counting `ok:<event id>` (committed once: a count of 2 is a doubled
//!   event);
//! - `remind_in_ms` / `remind_at_ms`: publishes a `Reminder` for later
//!   (`{"of": <id>, "at_ms": ...}`) with `publish-later`;
//! - a `Reminder`: records `reminded:<of>` = the wall clock (ms) it ran at,
//!   and counts `reminders:<of>`;
//! - anything else: records `done:<event id>`.

use std::time::{SystemTime, UNIX_EPOCH};

use eventhost_plugin::{Event, Failure, Guest, When};

#[derive(serde::Deserialize)]
struct Job {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    fails: Option<u32>,
    #[serde(default)]
    remind_in_ms: Option<u64>,
    #[serde(default)]
    remind_at_ms: Option<u64>,
    #[serde(default)]
    of: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One payment: ok on a 2xx, else a retry (after `Retry-After`, if said).
fn pay(event: &Event, url: &str) -> Result<(), Failure> {
    let body = serde_json::json!({ "event": event.id }).to_string();
    match waki::Client::new().post(url).body(body.into_bytes()).send() {
        Ok(response) if (200..300).contains(&response.status_code()) => {
            eventhost_plugin::state_set(&format!("paid:{}", event.id), &event.attempt.to_string());
            Ok(())
        }
        Ok(response) => {
            let status = response.status_code();
            let after = response
                .header("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            if let Some(seconds) = after {
                eventhost_plugin::retry_after(seconds * 1000);
            }
            Err(Failure::Retry(format!("the provider answered {status}")))
        }
        Err(err) => Err(Failure::Retry(format!(
            "the provider is unreachable: {err}"
        ))),
    }
}

struct Provider;

impl Guest for Provider {
    fn handle(event: Event) -> Result<(), Failure> {
        let job: Job = eventhost_plugin::data(&event)?;
        if event.event_type == "Reminder" {
            let of = job.of.unwrap_or_default();
            eventhost_plugin::state_set(&format!("reminded:{of}"), &now_ms().to_string());
            eventhost_plugin::state_increment(&format!("reminders:{of}"))?;
            return Ok(());
        }
        if let Some(url) = &job.url {
            return pay(&event, url);
        }
        if let Some(fails) = job.fails {
            if event.attempt <= fails {
                return Err(Failure::Retry(format!("fails {fails} times")));
            }
            eventhost_plugin::state_increment(&format!("ok:{}", event.id))?;
            return Ok(());
        }
        let when = match (job.remind_in_ms, job.remind_at_ms) {
            (Some(ms), _) => Some(When::DelayMs(ms)),
            (None, Some(at)) => Some(When::AtMs(at)),
            (None, None) => None,
        };
        if let Some(when) = when {
            let at_ms = match when {
                When::DelayMs(ms) => now_ms() + ms,
                When::AtMs(at) => at,
            };
            let data = serde_json::json!({ "of": event.id, "at_ms": at_ms }).to_string();
            eventhost_plugin::publish_later("Reminder", &data, when).map_err(Failure::Retry)?;
            return Ok(());
        }
        eventhost_plugin::state_set(&format!("done:{}", event.id), &event.attempt.to_string());
        Ok(())
    }
}

eventhost_plugin::export!(Provider);
