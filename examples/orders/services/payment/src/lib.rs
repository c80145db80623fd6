//! Payment service of the orders example (LeanMQ's event-driven microservices
//! example rebuilt as eventhost plugins).
//!
//! Subscribes to `OrderCreatedEvent`, "charges" the order and publishes
//! `PaymentProcessedEvent`. To show the DLQ and retries at work, a
//! configurable share of payments fails, decided by a stable hash of the
//! order id so a replay behaves exactly like the first run:
//!
//! * config `decline_percent` (default 10): the card is declined, a poison
//!   message that goes to the DLQ at once;
//! * config `flaky_percent` (default 0): the provider "times out" on the first
//!   attempt, and the retry succeeds.

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde::{Deserialize, Serialize};

/// `OrderCreatedEvent` data, as far as this service needs it.
#[derive(Debug, Deserialize)]
pub struct OrderCreated {
    /// The order to charge.
    pub order_id: String,
    /// The amount to charge.
    pub total: f64,
}

/// A completed payment: stored under `payment:<order_id>` and published as
/// `PaymentProcessedEvent` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    /// Stable id derived from the order id.
    pub payment_id: String,
    /// The order paid for.
    pub order_id: String,
    /// The amount charged.
    pub amount: f64,
    /// Always `"succeeded"`: failed payments are never published.
    pub status: String,
}

/// What happens to an order's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Charge it.
    Approve,
    /// The card is declined: never retry.
    Decline,
    /// The provider times out: try again later.
    TimeOut,
}

/// 64-bit FNV-1a: a stable hash, so every run makes the same decisions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Decides an order's payment. The order id hashes to a bucket in 0..100:
/// the first `decline_percent` buckets are declined, the next
/// `flaky_percent` time out on the first attempt only, the rest succeed.
pub fn decide(order_id: &str, decline_percent: u64, flaky_percent: u64, attempt: u32) -> Decision {
    let bucket = fnv1a(order_id.as_bytes()) % 100;
    if bucket < decline_percent {
        Decision::Decline
    } else if bucket < decline_percent.saturating_add(flaky_percent) && attempt == 1 {
        Decision::TimeOut
    } else {
        Decision::Approve
    }
}

/// The payment id for an order; salted so it does not share digits with the
/// other ids derived from the same order id.
pub fn payment_id(order_id: &str) -> String {
    format!(
        "payment-{:016x}",
        fnv1a(format!("payment:{order_id}").as_bytes())
    )
}

/// Reads a percentage from config, rejecting values above 100 so a typo
/// cannot silently decline everything.
fn percent(key: &str, default: u64) -> Result<u64, Failure> {
    let value = eventhost_plugin::config_or(key, default)?;
    if value > 100 {
        return Err(Failure::Reject(format!(
            "config key `{key}` must be 0..=100, got {value}"
        )));
    }
    Ok(value)
}

struct PaymentService;

impl Guest for PaymentService {
    fn handle(event: Event) -> Result<(), Failure> {
        let order: OrderCreated = eventhost_plugin::data(&event)?;
        let key = format!("payment:{}", order.order_id);
        // Never charge an order twice, whatever the delivery count.
        if eventhost_plugin::state_get(&key).is_some() {
            return Ok(());
        }
        let decline_percent = percent("decline_percent", 10)?;
        let flaky_percent = percent("flaky_percent", 0)?;
        match decide(
            &order.order_id,
            decline_percent,
            flaky_percent,
            event.attempt,
        ) {
            Decision::Decline => Err(Failure::Reject(format!(
                "card declined for order {} (amount {:.2})",
                order.order_id, order.total
            ))),
            Decision::TimeOut => Err(Failure::Retry(format!(
                "payment provider timed out for order {}",
                order.order_id
            ))),
            Decision::Approve => {
                let payment = Payment {
                    payment_id: payment_id(&order.order_id),
                    order_id: order.order_id,
                    amount: order.total,
                    status: "succeeded".into(),
                };
                eventhost_plugin::state_set_json(&key, &payment)?;
                eventhost_plugin::publish_json("PaymentProcessedEvent", &payment)?;
                eventhost_plugin::log(
                    Level::Info,
                    &format!(
                        "payment {} for order {} succeeded (amount {:.2})",
                        payment.payment_id, payment.order_id, payment.amount
                    ),
                );
                Ok(())
            }
        }
    }
}

eventhost_plugin::export!(PaymentService);

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl Iterator<Item = String> {
        (0..2000).map(|n| format!("order-{n:012x}"))
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn extremes_decline_all_or_nothing() {
        assert!(ids().all(|id| decide(&id, 100, 0, 1) == Decision::Decline));
        assert!(ids().all(|id| decide(&id, 0, 0, 1) == Decision::Approve));
    }

    #[test]
    fn decline_share_is_roughly_the_configured_percent() {
        let declined = ids()
            .filter(|id| decide(id, 10, 0, 1) == Decision::Decline)
            .count();
        // 10% of 2000 is 200; a decent hash stays well within ±50.
        assert!(
            (150..=250).contains(&declined),
            "declined {declined} of 2000"
        );
    }

    #[test]
    fn flaky_payments_time_out_once_then_succeed() {
        let flaky: Vec<String> = ids()
            .filter(|id| decide(id, 0, 20, 1) == Decision::TimeOut)
            .collect();
        assert!(!flaky.is_empty());
        for id in &flaky {
            assert_eq!(decide(id, 0, 20, 2), Decision::Approve);
        }
    }

    #[test]
    fn flaky_band_follows_the_decline_band() {
        for id in ids() {
            let bucket = fnv1a(id.as_bytes()) % 100;
            let expected = match bucket {
                0..10 => Decision::Decline,
                10..15 => Decision::TimeOut,
                _ => Decision::Approve,
            };
            assert_eq!(decide(&id, 10, 5, 1), expected, "{id} in bucket {bucket}");
            // Declines are final, whatever the attempt.
            if expected == Decision::Decline {
                assert_eq!(decide(&id, 10, 5, 3), Decision::Decline);
            }
        }
    }

    #[test]
    fn decisions_and_ids_are_stable() {
        for id in ids().take(50) {
            assert_eq!(decide(&id, 30, 30, 1), decide(&id, 30, 30, 1));
            assert_eq!(payment_id(&id), payment_id(&id));
        }
        assert_ne!(payment_id("order-a"), payment_id("order-b"));
        assert!(payment_id("order-a").starts_with("payment-"));
    }
}
