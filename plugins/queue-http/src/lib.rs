//! A plugin that queues, with `send-after-commit`, the requests its event
//! names: `times` POSTs (1 if left out) of `{"event": <id>, "n": <i>}` to
//! `url` (padded with `pad` bytes), each allowed `attempts` sends; then it fails as `fail` says
//! (`"retry"`, `"reject"`) or succeeds. It records each request's
//! idempotency key in its state (`key:<event id>:<i>`), or the host's
//! refusal (`refused:<event id>`), so a test can compare what was queued
//! with what a receiver got.

use eventhost_plugin::{Event, Failure, Guest, OutgoingRequest};

#[derive(serde::Deserialize)]
struct Queue {
    url: String,
    #[serde(default)]
    times: Option<u32>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    fail: Option<String>,
    #[serde(default)]
    pad: usize,
}

struct QueueHttp;

impl Guest for QueueHttp {
    fn handle(event: Event) -> Result<(), Failure> {
        let queue: Queue = eventhost_plugin::data(&event)?;
        for n in 0..queue.times.unwrap_or(1) {
            let request = OutgoingRequest {
                method: "POST".into(),
                url: queue.url.clone(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: Some(
                    serde_json::json!({"event": event.id, "n": n, "pad": "x".repeat(queue.pad)})
                        .to_string(),
                ),
                attempts: queue.attempts,
            };
            match eventhost_plugin::send_after_commit(&request) {
                Ok(key) => eventhost_plugin::state_set(&format!("key:{}:{n}", event.id), &key),
                Err(refused) => {
                    eventhost_plugin::state_set(&format!("refused:{}", event.id), &refused);
                    return Ok(());
                }
            }
        }
        match queue.fail.as_deref() {
            Some("retry") => Err(Failure::Retry("told to fail after queuing".into())),
            Some("reject") => Err(Failure::Reject("told to fail after queuing".into())),
            _ => Ok(()),
        }
    }
}

eventhost_plugin::export!(QueueHttp);
