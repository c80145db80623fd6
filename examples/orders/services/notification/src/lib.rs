//! Notification service of the orders example (LeanMQ's event-driven
//! microservices example rebuilt as eventhost plugins).
//!
//! Subscribes to every event type (`*`). For orders created, paid and
//! shipped it "sends" a notification, which in this example means logging it
//! through the host at info level, and counts what it sent in state:
//! `notified` and `notified:<event_type>`. Any other event is ignored.

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde::Deserialize;

/// A message for a customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Short headline, e.g. "Order Confirmation".
    pub subject: &'static str,
    /// The message itself.
    pub body: String,
}

#[derive(Deserialize)]
struct OrderCreated {
    order_id: String,
    user_id: String,
    total: f64,
}

#[derive(Deserialize)]
struct PaymentProcessed {
    order_id: String,
    amount: f64,
    status: String,
}

#[derive(Deserialize)]
struct OrderShipped {
    order_id: String,
    tracking_number: String,
    carrier: String,
}

/// The notification an event calls for, `Ok(None)` for event types nobody
/// is notified about, `Err` if the data does not match its event type.
pub fn notification_for(event_type: &str, data: &str) -> Result<Option<Notification>, String> {
    let notification = match event_type {
        "OrderCreatedEvent" => {
            let e: OrderCreated = parse(event_type, data)?;
            Notification {
                subject: "Order Confirmation",
                body: format!(
                    "Hi {}, your order {} has been received. Total: ${:.2}",
                    e.user_id, e.order_id, e.total
                ),
            }
        }
        "PaymentProcessedEvent" => {
            let e: PaymentProcessed = parse(event_type, data)?;
            Notification {
                subject: "Payment Confirmation",
                body: format!(
                    "Payment of ${:.2} for order {} has {}.",
                    e.amount, e.order_id, e.status
                ),
            }
        }
        "OrderShippedEvent" => {
            let e: OrderShipped = parse(event_type, data)?;
            Notification {
                subject: "Order Shipped",
                body: format!(
                    "Your order {} has been shipped via {}. Tracking number: {}",
                    e.order_id, e.carrier, e.tracking_number
                ),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(notification))
}

fn parse<'a, T: Deserialize<'a>>(event_type: &str, data: &'a str) -> Result<T, String> {
    serde_json::from_str(data).map_err(|e| format!("malformed {event_type}: {e}"))
}

struct NotificationService;

impl Guest for NotificationService {
    fn handle(event: Event) -> Result<(), Failure> {
        let notification = notification_for(&event.event_type, &event.data)
            .map_err(|e| Failure::Reject(format!("event {}: {e}", event.id)))?;
        let Some(notification) = notification else {
            return Ok(());
        };
        eventhost_plugin::log(
            Level::Info,
            &format!("[{}] {}", notification.subject, notification.body),
        );
        eventhost_plugin::state_increment("notified")?;
        eventhost_plugin::state_increment(&format!("notified:{}", event.event_type))?;
        Ok(())
    }
}

eventhost_plugin::export!(NotificationService);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_confirmation_shows_the_total() {
        let n = notification_for(
            "OrderCreatedEvent",
            r#"{"event_type":"OrderCreatedEvent","event_id":"e1","timestamp":1.0,
               "order_id":"order-1","user_id":"user-7","total":1359.97,"items":[]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.subject, "Order Confirmation");
        assert!(
            n.body.contains("order-1") && n.body.contains("$1359.97"),
            "{}",
            n.body
        );
    }

    #[test]
    fn payment_confirmation_shows_the_amount() {
        let n = notification_for(
            "PaymentProcessedEvent",
            r#"{"payment_id":"payment-1","order_id":"order-1","amount":5,"status":"succeeded"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.subject, "Payment Confirmation");
        assert!(
            n.body.contains("$5.00") && n.body.contains("succeeded"),
            "{}",
            n.body
        );
    }

    #[test]
    fn shipping_notice_shows_carrier_and_tracking() {
        let n = notification_for(
            "OrderShippedEvent",
            r#"{"order_id":"order-1","tracking_number":"TRACK-0000BEEF","carrier":"DHL"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.subject, "Order Shipped");
        assert!(
            n.body.contains("DHL") && n.body.contains("TRACK-0000BEEF"),
            "{}",
            n.body
        );
    }

    #[test]
    fn other_events_need_no_notification() {
        assert_eq!(notification_for("CreateOrderCommand", "{}"), Ok(None));
        assert_eq!(notification_for("Whatever", "not even json"), Ok(None));
    }

    #[test]
    fn malformed_known_events_are_errors() {
        assert!(notification_for("OrderShippedEvent", r#"{"order_id":"o"}"#).is_err());
        assert!(notification_for("OrderCreatedEvent", "not json").is_err());
    }
}
