//! Payment service of the orders example (LeanMQ's event-driven microservices
//! example rebuilt as eventhost plugins).
//!
//! Subscribes to `OrderCreatedEvent`, charges the order at the payment
//! provider over HTTP (`POST <provider_url>`, a real server the example
//! starts, granted in the subscriber's `grants.http`) and publishes
//! `PaymentProcessedEvent`. What the provider answers drives eventhost's
//! retries and DLQ:
//!
//! * 200: paid, under the provider's charge id;
//! * 402 (the card is declined) or another 4xx: a poison message for the
//!   DLQ at once (`reject`, with the provider's words);
//! * 5xx, a timeout, no connection: `retry`. eventhost sends the same
//!   `Idempotency-Key` on every attempt of the event, so the provider never
//!   charges an order twice.

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
    /// The provider's charge id.
    pub payment_id: String,
    /// The order paid for.
    pub order_id: String,
    /// The amount charged.
    pub amount: f64,
    /// Always `"succeeded"`: failed payments are never published.
    pub status: String,
}

/// What the provider says about a charge, as far as this service reads it.
#[derive(Debug, Deserialize)]
struct ProviderAnswer {
    charge_id: Option<String>,
    error: Option<ProviderError>,
}

#[derive(Debug, Deserialize)]
struct ProviderError {
    code: String,
    message: String,
}

/// The outcome of a charge from the provider's `status` and `body`: the
/// payment, or how the event fails.
pub fn outcome(order: &OrderCreated, status: u16, body: &[u8]) -> Result<Payment, Failure> {
    let answer: Option<ProviderAnswer> = serde_json::from_slice(body).ok();
    let said = match answer.as_ref().and_then(|a| a.error.as_ref()) {
        Some(e) => format!("{} ({})", e.message, e.code),
        None => format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    };
    match status {
        200..=299 => match answer.and_then(|a| a.charge_id) {
            Some(charge_id) => Ok(Payment {
                payment_id: charge_id,
                order_id: order.order_id.clone(),
                amount: order.total,
                status: "succeeded".into(),
            }),
            None => Err(Failure::Retry(format!(
                "payment provider answered {status} without a charge id for order {}",
                order.order_id
            ))),
        },
        504 => Err(Failure::Retry(format!(
            "payment provider timed out for order {}",
            order.order_id
        ))),
        402 => Err(Failure::Reject(format!(
            "card declined for order {} (amount {:.2}): {said}",
            order.order_id, order.total
        ))),
        400..=499 => Err(Failure::Reject(format!(
            "payment provider refused the charge for order {}: {said}",
            order.order_id
        ))),
        _ => Err(Failure::Retry(format!(
            "payment provider failed for order {}: {said}",
            order.order_id
        ))),
    }
}

/// Charges `order` at `url`; the host adds the `Idempotency-Key`.
fn charge(url: &str, order: &OrderCreated) -> Result<Payment, Failure> {
    let body = serde_json::json!({"order_id": order.order_id, "amount": order.total});
    let response = waki::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string().into_bytes())
        .send()
        .and_then(|r| {
            let status = r.status_code();
            Ok((status, r.body()?))
        });
    match response {
        Ok((status, body)) => outcome(order, status, &body),
        Err(err) => Err(Failure::Retry(format!(
            "payment provider unreachable for order {}: {err:#}",
            order.order_id
        ))),
    }
}

struct PaymentService;

impl Guest for PaymentService {
    fn handle(event: Event) -> Result<(), Failure> {
        let order: OrderCreated = eventhost_plugin::data(&event)?;
        let key = format!("payment:{}", order.order_id);
        // Paid already (an event delivered again): nothing to charge.
        if eventhost_plugin::state_get(&key).is_some() {
            return Ok(());
        }
        let Some(url) = eventhost_plugin::config_get("provider_url") else {
            return Err(Failure::Reject(
                "config key `provider_url` is not set: where to charge orders".into(),
            ));
        };
        let payment = charge(&url, &order)?;
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

eventhost_plugin::export!(PaymentService);

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderCreated {
        OrderCreated {
            order_id: "order-1".into(),
            total: 12.5,
        }
    }

    fn split(failure: Failure) -> (bool, String) {
        match failure {
            Failure::Retry(r) => (true, r),
            Failure::Reject(r) => (false, r),
        }
    }

    #[test]
    fn a_charge_is_paid_under_the_providers_id() {
        let body =
            br#"{"charge_id":"ch_1","order_id":"order-1","amount":12.5,"status":"succeeded"}"#;
        let payment = outcome(&order(), 200, body).unwrap();
        assert_eq!(payment.payment_id, "ch_1");
        assert_eq!(
            (payment.amount, payment.status.as_str()),
            (12.5, "succeeded")
        );
    }

    #[test]
    fn a_decline_is_rejected_with_the_providers_words() {
        let body = br#"{"error":{"code":"card_declined","message":"the card was declined"}}"#;
        let (retry, reason) = split(outcome(&order(), 402, body).unwrap_err());
        assert!(!retry);
        assert_eq!(
            reason,
            "card declined for order order-1 (amount 12.50): the card was declined (card_declined)"
        );
    }

    #[test]
    fn timeouts_and_server_errors_are_retried() {
        let (retry, reason) = split(outcome(&order(), 504, b"{}").unwrap_err());
        assert!(retry);
        assert_eq!(reason, "payment provider timed out for order order-1");
        let (retry, reason) = split(outcome(&order(), 500, b"oops").unwrap_err());
        assert!(retry);
        assert!(reason.ends_with("HTTP 500: oops"), "{reason}");
        // A 200 without a charge id is not a payment.
        assert!(reason_is_retry(outcome(&order(), 200, b"{}")));
        // A refused request is not a decline, but it is final too.
        let (retry, reason) = split(outcome(&order(), 400, b"bad").unwrap_err());
        assert!(!retry);
        assert!(reason.starts_with("payment provider refused"), "{reason}");
    }

    fn reason_is_retry(result: Result<Payment, Failure>) -> bool {
        matches!(result, Err(Failure::Retry(_)))
    }
}
