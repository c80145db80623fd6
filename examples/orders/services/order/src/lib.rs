//! Order service of the orders example (LeanMQ's event-driven microservices
//! example rebuilt as eventhost plugins).
//!
//! Subscribes to `CreateOrderCommand`, `PaymentProcessedEvent` and
//! `OrderShippedEvent`. A command creates the order (state `order:<id>`) and
//! publishes `OrderCreatedEvent`; payment and shipping events advance the
//! order's status. Payment and shipping run in parallel services, so their
//! events can arrive in either order: status only ever moves forward.

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde::{Deserialize, Serialize};

/// One line of an order, as sent by the user and carried in events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Catalogue id of the product.
    pub product_id: String,
    /// Display name, for notifications.
    pub name: String,
    /// Unit price.
    pub price: f64,
    /// Number of units.
    pub quantity: u32,
}

/// `CreateOrderCommand` data: what a user publishes to place an order.
#[derive(Debug, Deserialize)]
pub struct CreateOrderCommand {
    /// Who places the order.
    pub user_id: String,
    /// What is ordered; must not be empty.
    pub items: Vec<Item>,
    /// Lets the caller choose the id; when absent or empty it is derived
    /// from the command's event id.
    #[serde(default)]
    pub order_id: Option<String>,
}

/// `OrderCreatedEvent` data, published once per new order.
#[derive(Debug, Serialize)]
pub struct OrderCreated<'a> {
    /// Id of the new order.
    pub order_id: &'a str,
    /// Who placed it.
    pub user_id: &'a str,
    /// Sum of price × quantity, in cents precision.
    pub total: f64,
    /// The order lines.
    pub items: &'a [Item],
}

/// `PaymentProcessedEvent` data, as far as this service needs it.
#[derive(Debug, Deserialize)]
pub struct PaymentProcessed {
    /// Which order was paid.
    pub order_id: String,
    /// The payment's id, recorded on the order.
    pub payment_id: String,
    /// `"succeeded"` for a completed payment.
    pub status: String,
}

/// `OrderShippedEvent` data.
#[derive(Debug, Deserialize)]
pub struct OrderShipped {
    /// Which order shipped.
    pub order_id: String,
    /// Carrier's tracking number.
    pub tracking_number: String,
    /// Carrier name.
    pub carrier: String,
}

/// Lifecycle of an order. The derived ordering is the lifecycle order, which
/// is what makes "never move backwards" a simple `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Placed, waiting for payment.
    Created,
    /// Payment succeeded.
    Paid,
    /// Handed to a carrier.
    Shipped,
}

/// An order as stored in state under `order:<order_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub order_id: String,
    /// Who placed it.
    pub user_id: String,
    /// The order lines.
    pub items: Vec<Item>,
    /// Sum of price × quantity, rounded to cents.
    pub total: f64,
    /// Where the order is in its lifecycle.
    pub status: Status,
    /// Set once the payment event has been seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Set once the shipping event has been seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Set once the shipping event has been seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

impl Order {
    /// Records a successful payment. Status moves to `paid` unless the order
    /// already shipped (the shipping event overtook this one).
    pub fn record_payment(&mut self, payment_id: &str) {
        self.payment_id = Some(payment_id.to_owned());
        self.status = self.status.max(Status::Paid);
    }

    /// Records the shipment and moves status to `shipped`.
    pub fn record_shipment(&mut self, tracking_number: &str, carrier: &str) {
        self.tracking_number = Some(tracking_number.to_owned());
        self.carrier = Some(carrier.to_owned());
        self.status = self.status.max(Status::Shipped);
    }
}

/// 64-bit FNV-1a: a stable hash, so re-running a command derives the same id.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The id of an order whose command did not name one: derived from the
/// command's event id, so redelivering the command finds the same order.
pub fn derive_order_id(command_event_id: &str) -> String {
    // The low 48 bits: FNV-1a's high bits barely change between ids that
    // differ only in their last characters, like consecutive stream ids.
    let hash = fnv1a(command_event_id.as_bytes()) & 0xffff_ffff_ffff;
    format!("order-{hash:012x}")
}

/// Sum of price × quantity, rounded to cents.
pub fn order_total(items: &[Item]) -> f64 {
    let sum: f64 = items.iter().map(|i| i.price * f64::from(i.quantity)).sum();
    (sum * 100.0).round() / 100.0
}

/// Turns a command into a new order, or explains why it can never be one.
pub fn new_order(command: CreateOrderCommand, command_event_id: &str) -> Result<Order, String> {
    let order_id = command
        .order_id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| derive_order_id(command_event_id));
    if command.items.is_empty() {
        return Err(format!("order {order_id} has no items"));
    }
    let total = order_total(&command.items);
    if !(total.is_finite() && total > 0.0) {
        return Err(format!(
            "order {order_id} has a non-positive total ({total})"
        ));
    }
    Ok(Order {
        order_id,
        user_id: command.user_id,
        items: command.items,
        total,
        status: Status::Created,
        payment_id: None,
        tracking_number: None,
        carrier: None,
    })
}

fn order_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

struct OrderService;

impl Guest for OrderService {
    fn handle(event: Event) -> Result<(), Failure> {
        match event.event_type.as_str() {
            "CreateOrderCommand" => create_order(&event),
            "PaymentProcessedEvent" => {
                let payment: PaymentProcessed = eventhost_plugin::data(&event)?;
                if payment.status != "succeeded" {
                    eventhost_plugin::log(
                        Level::Info,
                        &format!(
                            "payment for order {} is {}: order unchanged",
                            payment.order_id, payment.status
                        ),
                    );
                    return Ok(());
                }
                update_order(&payment.order_id, |order| {
                    order.record_payment(&payment.payment_id)
                })
            }
            "OrderShippedEvent" => {
                let shipped: OrderShipped = eventhost_plugin::data(&event)?;
                update_order(&shipped.order_id, |order| {
                    order.record_shipment(&shipped.tracking_number, &shipped.carrier)
                })
            }
            // Only reachable if the subscription lists more types than this
            // service understands: a configuration mistake, not a retryable one.
            other => Err(Failure::Reject(format!(
                "order-service does not handle {other}"
            ))),
        }
    }
}

eventhost_plugin::export!(OrderService);

fn create_order(event: &Event) -> Result<(), Failure> {
    let command: CreateOrderCommand = eventhost_plugin::data(event)?;
    let order = new_order(command, &event.id).map_err(Failure::Reject)?;
    let key = order_key(&order.order_id);
    // A redelivered command (or a repeated explicit order_id) must not create
    // the order, or publish OrderCreatedEvent, a second time.
    if eventhost_plugin::state_get(&key).is_some() {
        eventhost_plugin::log(
            Level::Info,
            &format!(
                "order {} already exists: command {} ignored",
                order.order_id, event.id
            ),
        );
        return Ok(());
    }
    eventhost_plugin::state_set_json(&key, &order)?;
    eventhost_plugin::publish_json(
        "OrderCreatedEvent",
        &OrderCreated {
            order_id: &order.order_id,
            user_id: &order.user_id,
            total: order.total,
            items: &order.items,
        },
    )?;
    eventhost_plugin::log(
        Level::Info,
        &format!(
            "created order {} for {} (total {:.2})",
            order.order_id, order.user_id, order.total
        ),
    );
    Ok(())
}

fn update_order(order_id: &str, change: impl FnOnce(&mut Order)) -> Result<(), Failure> {
    let key = order_key(order_id);
    // The event can overtake the commit of the order it refers to; by the
    // time it is retried the order will be there.
    let Some(mut order) = eventhost_plugin::state_get_json::<Order>(&key)? else {
        return Err(Failure::Retry(format!("order {order_id} is not known yet")));
    };
    let before = order.clone();
    change(&mut order);
    if order != before {
        eventhost_plugin::state_set_json(&key, &order)?;
        eventhost_plugin::log(
            Level::Info,
            &format!("order {order_id} is now {:?}", order.status),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(price: f64, quantity: u32) -> Item {
        Item {
            product_id: "p".into(),
            name: "thing".into(),
            price,
            quantity,
        }
    }

    fn command(items: Vec<Item>, order_id: Option<&str>) -> CreateOrderCommand {
        CreateOrderCommand {
            user_id: "user-1".into(),
            items,
            order_id: order_id.map(String::from),
        }
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn derived_order_id_is_stable_and_short() {
        let id = derive_order_id("1700000000000-0");
        assert_eq!(id, derive_order_id("1700000000000-0"));
        assert_ne!(id, derive_order_id("1700000000000-1"));
        assert_eq!(id.len(), "order-".len() + 12);
        assert!(id.starts_with("order-"));
    }

    #[test]
    fn derived_order_ids_do_not_collide_for_consecutive_ids() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|n| derive_order_id(&format!("1700000000000-{n}")))
            .collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn total_is_rounded_to_cents() {
        assert_eq!(order_total(&[item(0.1, 3), item(0.2, 1)]), 0.5);
        assert_eq!(order_total(&[item(19.999, 1)]), 20.0);
        assert_eq!(order_total(&[item(1299.99, 1), item(29.99, 2)]), 1359.97);
    }

    #[test]
    fn new_order_uses_given_id_or_derives_one() {
        let given = new_order(command(vec![item(1.0, 1)], Some("order-42")), "ev").unwrap();
        assert_eq!(given.order_id, "order-42");
        let derived = new_order(command(vec![item(1.0, 1)], None), "ev").unwrap();
        assert_eq!(derived.order_id, derive_order_id("ev"));
        assert_eq!(derived.status, Status::Created);
    }

    #[test]
    fn new_order_rejects_empty_and_free_orders() {
        assert!(new_order(command(vec![], None), "ev").is_err());
        assert!(new_order(command(vec![item(0.0, 3)], None), "ev").is_err());
        assert!(new_order(command(vec![item(-5.0, 1)], None), "ev").is_err());
        assert!(new_order(command(vec![item(5.0, 0)], None), "ev").is_err());
    }

    #[test]
    fn status_never_moves_backwards() {
        let mut in_order = new_order(command(vec![item(1.0, 1)], None), "ev").unwrap();
        in_order.record_payment("pay-1");
        assert_eq!(in_order.status, Status::Paid);
        in_order.record_shipment("TRACK-1", "UPS");
        assert_eq!(in_order.status, Status::Shipped);

        // Shipping overtakes payment: the late payment keeps `shipped`.
        let mut overtaken = new_order(command(vec![item(1.0, 1)], None), "ev").unwrap();
        overtaken.record_shipment("TRACK-1", "UPS");
        overtaken.record_payment("pay-1");
        assert_eq!(overtaken.status, Status::Shipped);
        assert_eq!(overtaken, in_order);
    }

    #[test]
    fn stored_order_round_trips_with_lowercase_status() {
        let order = new_order(command(vec![item(2.5, 2)], Some("o1")), "ev").unwrap();
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["status"], "created");
        assert_eq!(json["total"], 5.0);
        assert!(json.get("payment_id").is_none());
        let back: Order = serde_json::from_value(json).unwrap();
        assert_eq!(back, order);
    }
}
