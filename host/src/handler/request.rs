//! Requests sent only after the commit: what a call queues with
//! `send-after-commit`, as the commit writes it to the subscriber's
//! `:http` stream and the sender reads it back, and the seam through which
//! the bus has it sent without knowing HTTP.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Sends of a request before the DLQ, unless the plugin asks otherwise:
/// with the backoff of [`retry_delay`] they span about a minute, so a
/// receiver down for 30 s gets it once it is back.
pub const DEFAULT_ATTEMPTS: u32 = 10;
/// Most sends a plugin may ask for one request.
pub const MAX_ATTEMPTS: u32 = 20;
/// Most requests one call may queue: each is a stream entry and a sender's
/// work, so a loop in a plugin must not make them without end.
pub const MAX_QUEUED_PER_CALL: usize = 100;

/// One request queued by a call, committed with its event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRequest {
    /// Its `Idempotency-Key` (also in `headers`): the same on every send,
    /// every run of the event and every replay.
    pub key: String,
    /// Who queued it, for logs and its dead letter.
    pub subscriber: String,
    /// The event whose call queued it.
    pub event_id: String,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Sends before the DLQ.
    pub attempts: u32,
}

impl QueuedRequest {
    /// The stream entry's `data`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a request serializes")
    }

    /// What buffering it costs a call's budget of effects.
    pub fn cost(&self) -> usize {
        self.key.len()
            + self.method.len()
            + self.url.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.body.as_ref().map_or(0, String::len)
            + super::EFFECT_OVERHEAD_BYTES
    }
}

/// How one send of a queued request came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A response under 400 came back: done.
    Sent { status: u16 },
    /// It may succeed later (a status of 500 or more, a timeout, a refused
    /// connection): sent again after a backoff, up to its attempts.
    Retry(String),
    /// It will not succeed (another 4xx, a grant gone): the DLQ at once.
    Fail(String),
}

/// Sends queued requests for one subscriber, under its grants: made by the
/// plugin side (`outbound`), used by the bus's sender loop.
#[async_trait]
pub trait RequestSender: Send + Sync {
    /// Sends `request` once.
    async fn send(&self, request: &QueuedRequest) -> Delivery;
}

/// How long to wait after failed send number `attempt` (1-based): 250 ms,
/// doubling, at most 15 s.
pub fn retry_delay(attempt: u32) -> std::time::Duration {
    let ms = 250u64.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    std::time::Duration::from_millis(ms.min(15_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_attempts_outlast_a_30_second_outage() {
        let waited: std::time::Duration = (1..DEFAULT_ATTEMPTS).map(retry_delay).sum();
        assert!(waited > std::time::Duration::from_secs(45), "{waited:?}");
        assert_eq!(retry_delay(1).as_millis(), 250);
        assert_eq!(retry_delay(30).as_secs(), 15);
    }

    #[test]
    fn a_request_reads_back_as_written() {
        let request = QueuedRequest {
            key: "k".into(),
            subscriber: "s".into(),
            event_id: "e".into(),
            method: "POST".into(),
            url: "http://127.0.0.1:1/x".into(),
            headers: vec![("idempotency-key".into(), "k".into())],
            body: Some("{}".into()),
            attempts: 3,
        };
        let back: QueuedRequest = serde_json::from_str(&request.to_json()).unwrap();
        assert_eq!(back, request);
    }
}
