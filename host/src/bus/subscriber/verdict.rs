//! What becomes of an event that did not succeed: retried later, run again
//! at once, or dead-lettered. A pure decision, so every rule is tested here.

use std::time::Duration;

use crate::config::SubscriberConfig;
use crate::handler::{Failure, FailureKind};

/// The fate of one delivery that did not end in `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves the stream for its schedule: attempt `next` runs after
    /// `delay`, on any host.
    Retry { next: u32, delay: Duration },
    /// Runs again at once, and it does not count as an attempt: it failed
    /// for no fault of its own (the state it read changed under it).
    RunAgain,
    /// Goes to the DLQ with a record of this kind and reason.
    DeadLetter { kind: &'static str, reason: String },
    /// Stays pending and runs again after `delay` on the same attempt: the
    /// host had no capacity for it (backpressure, not a failure).
    Wait { delay: Duration },
    /// Not run: an entry without a key, of a subscriber that orders by
    /// one, leaves the stream and joins the order of its key as a new
    /// event (see `commit.lua`).
    Adopt { key: String },
}

/// How long an event that found no capacity waits before it runs again:
/// its handler already waited for a slot, so this only spaces the tries.
pub const CAPACITY_RETRY: Duration = Duration::from_millis(20);

/// How long an event whose state Redis could not serve waits before it
/// runs again: long enough not to hammer a server that is down.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_millis(500);

/// How many times in a row an event runs again at once after a conflict
/// before it backs off. On one host an event run again never loses to
/// newer ones (the oldest commits first); only other hosts' commits to a
/// key it read can beat it, round after round. Backing off as a retry
/// would (without counting an attempt) spaces those rounds out, so the
/// hosts stop running the same losing race, and an event on a hot key
/// runs again at a bounded rate, never dead-lettered for it.
pub const CONFLICTS_IN_A_ROW: u32 = 100;

/// After the event's `conflicts`th conflict on this host: `None` to run it
/// again at once, or how long to wait first (every
/// [`CONFLICTS_IN_A_ROW`]th, doubling like a retry's backoff, at most
/// `longest_wait`).
pub fn after_conflict(
    conflicts: u32,
    settings: &SubscriberConfig,
    longest_wait: Duration,
) -> Option<Duration> {
    (conflicts > 0 && conflicts.is_multiple_of(CONFLICTS_IN_A_ROW)).then(|| {
        settings
            .backoff_before(1 + conflicts / CONFLICTS_IN_A_ROW)
            .min(longest_wait)
    })
}

/// The decision for a handler's `failure` on `attempt` (from 1) of an event
/// of the subscriber with `settings`. What waits on the same attempt stays
/// pending here, so never longer than `longest_wait`: past half the claim
/// window another process would take the entry for abandoned. A retry
/// waits in Redis, as long as the handler asked (`retry-after`) or the
/// backoff says, less the share `draw` (0 to 1, random) of its jitter.
pub fn after_failure(
    attempt: u32,
    failure: &Failure,
    settings: &SubscriberConfig,
    longest_wait: Duration,
    draw: f64,
) -> Verdict {
    let kind = failure.kind;
    match kind {
        FailureKind::Capacity => {
            return Verdict::Wait {
                delay: CAPACITY_RETRY.min(longest_wait),
            }
        }
        FailureKind::Unavailable => {
            return Verdict::Wait {
                delay: UNAVAILABLE_RETRY.min(longest_wait),
            }
        }
        _ => {}
    }
    if kind.is_retryable() && attempt < settings.max_attempts {
        let next = attempt + 1;
        let delay = match failure.retry_after {
            Some(asked) => asked.min(crate::handler::Due::MAX_WAIT),
            None => settings.retry.delay_before(next, draw),
        };
        return Verdict::Retry { next, delay };
    }
    let what = match kind {
        FailureKind::Retry => format!("retry exhausted after {attempt} attempts"),
        FailureKind::Host => format!("host error after {attempt} attempts"),
        FailureKind::Reject => "rejected".into(),
        FailureKind::Trap => "trap".into(),
        FailureKind::Timeout => "timeout".into(),
        FailureKind::OutOfMemory => "out of memory".into(),
        FailureKind::Capacity | FailureKind::Unavailable => {
            unreachable!("a capacity shortage or an unreachable Redis waits")
        }
    };
    Verdict::DeadLetter {
        kind: kind.as_str(),
        reason: format!("{}: {what}: {}", settings.name, failure.message),
    }
}

/// The decision before running an event on delivery `attempt`: an event
/// delivered more often than it may be attempted kept dying with the
/// process that ran it, and is dead-lettered instead of run again.
pub fn before_running(attempt: u32, settings: &SubscriberConfig) -> Option<Verdict> {
    (attempt > settings.max_attempts).then(|| Verdict::DeadLetter {
        kind: "abandoned",
        reason: format!(
            "{}: abandoned after {attempt} deliveries without a result (the host stopped or \
             crashed while handling it)",
            settings.name
        ),
    })
}

/// The decision for an entry that is not an event at all.
pub fn malformed(settings: &SubscriberConfig, what: impl std::fmt::Display) -> Verdict {
    Verdict::DeadLetter {
        kind: "malformed",
        reason: format!("{}: malformed entry: {what}", settings.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EventFilter, Grants};

    fn settings(max_attempts: u32) -> SubscriberConfig {
        SubscriberConfig {
            name: "pay".into(),
            plugin_file: "pay.wasm".into(),
            plugin: "/p/pay.wasm".into(),
            events: EventFilter::All,
            concurrency: 1,
            max_attempts,
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            effects_bytes: 16 << 20,
            publish: Default::default(),
            retry: crate::config::RetryPolicy {
                jitter: 0.0,
                ..Default::default()
            },
            order: None,
            config: Default::default(),
            grants: Grants::default(),
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    fn failure(kind: FailureKind) -> Failure {
        Failure::new(kind, "boom")
    }

    #[test]
    fn no_capacity_waits_on_the_same_attempt_whatever_the_attempt() {
        let s = settings(3);
        for attempt in [1, 3, 50] {
            assert_eq!(
                after_failure(attempt, &failure(FailureKind::Capacity), &s, LONG, 0.0),
                Verdict::Wait {
                    delay: CAPACITY_RETRY
                }
            );
        }
    }

    #[test]
    fn an_unreachable_redis_waits_and_never_dead_letters() {
        let s = settings(3);
        for attempt in [1, 3, 50] {
            assert_eq!(
                after_failure(attempt, &failure(FailureKind::Unavailable), &s, LONG, 0.0),
                Verdict::Wait {
                    delay: UNAVAILABLE_RETRY
                }
            );
        }
        let short = Duration::from_millis(100);
        assert_eq!(
            after_failure(1, &failure(FailureKind::Unavailable), &s, short, 0.0),
            Verdict::Wait { delay: short }
        );
    }

    #[test]
    fn conflicts_run_again_at_once_then_back_off_every_hundred() {
        let s = settings(3);
        for conflicts in [1, 2, 99, 101, 199] {
            assert_eq!(after_conflict(conflicts, &s, LONG), None, "{conflicts}");
        }
        assert_eq!(
            after_conflict(100, &s, LONG),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            after_conflict(200, &s, LONG),
            Some(Duration::from_millis(200))
        );
        let short = Duration::from_millis(150);
        assert_eq!(after_conflict(300, &s, short), Some(short));
    }

    #[test]
    fn a_retry_waits_longer_each_attempt_then_goes_to_the_dlq() {
        let s = settings(3);
        let retry = failure(FailureKind::Retry);
        assert_eq!(
            after_failure(1, &retry, &s, LONG, 0.0),
            Verdict::Retry {
                next: 2,
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            after_failure(2, &retry, &s, LONG, 0.0),
            Verdict::Retry {
                next: 3,
                delay: Duration::from_millis(200)
            }
        );
        assert_eq!(
            after_failure(3, &retry, &s, LONG, 0.0),
            Verdict::DeadLetter {
                kind: "retry",
                reason: "pay: retry exhausted after 3 attempts: boom".into()
            }
        );
    }

    #[test]
    fn a_retry_waits_in_redis_as_long_as_the_backoff_or_the_handler_says() {
        let mut s = settings(50);
        s.retry = crate::config::RetryPolicy {
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(6 * 3600),
            jitter: 0.5,
        };
        let retry = failure(FailureKind::Retry);
        let short = Duration::from_millis(30);
        // Far past the claim window: the entry waits in its schedule.
        assert_eq!(
            after_failure(20, &retry, &s, short, 0.0),
            Verdict::Retry {
                next: 21,
                delay: Duration::from_secs(6 * 3600)
            }
        );
        // Jitter takes up to its share off.
        assert_eq!(
            after_failure(2, &retry, &s, short, 1.0),
            Verdict::Retry {
                next: 3,
                delay: Duration::from_secs(1)
            }
        );
        let mut asked = failure(FailureKind::Retry);
        asked.retry_after = Some(Duration::from_secs(90));
        assert_eq!(
            after_failure(1, &asked, &s, short, 0.7),
            Verdict::Retry {
                next: 2,
                delay: Duration::from_secs(90)
            }
        );
    }

    #[test]
    fn host_errors_are_retried_like_retries() {
        let s = settings(2);
        let host = failure(FailureKind::Host);
        assert!(matches!(
            after_failure(1, &host, &s, LONG, 0.0),
            Verdict::Retry { next: 2, .. }
        ));
        assert!(matches!(
            after_failure(2, &host, &s, LONG, 0.0),
            Verdict::DeadLetter {
                kind: "host-error",
                ..
            }
        ));
    }

    #[test]
    fn what_will_never_succeed_goes_to_the_dlq_at_once() {
        let s = settings(5);
        for (kind, word, what) in [
            (FailureKind::Reject, "reject", "rejected"),
            (FailureKind::Trap, "trap", "trap"),
            (FailureKind::Timeout, "timeout", "timeout"),
            (FailureKind::OutOfMemory, "out-of-memory", "out of memory"),
        ] {
            assert_eq!(
                after_failure(1, &failure(kind), &s, LONG, 0.0),
                Verdict::DeadLetter {
                    kind: word,
                    reason: format!("pay: {what}: boom")
                }
            );
        }
    }

    #[test]
    fn an_event_delivered_past_its_attempts_is_abandoned() {
        let s = settings(3);
        assert_eq!(before_running(3, &s), None);
        assert!(matches!(
            before_running(4, &s),
            Some(Verdict::DeadLetter { kind: "abandoned", reason }) if reason.contains("after 4 deliveries")
        ));
        assert!(matches!(
            malformed(&s, "no data"),
            Verdict::DeadLetter { kind: "malformed", reason } if reason == "pay: malformed entry: no data"
        ));
    }
}
