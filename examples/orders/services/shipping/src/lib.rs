//! Shipping service of the orders example (LeanMQ's event-driven microservices
//! example rebuilt as eventhost plugins).
//!
//! Subscribes to `PaymentProcessedEvent`; for every successful payment it
//! "ships" the order (state `shipment:<order_id>`) and publishes
//! `OrderShippedEvent`. Tracking number and carrier come from a stable hash
//! of the order id, so a replay ships exactly the same way.

use eventhost_plugin::{Event, Failure, Guest, Level};
use serde::{Deserialize, Serialize};

/// The carriers a shipment is spread over.
pub const CARRIERS: [&str; 4] = ["FedEx", "UPS", "USPS", "DHL"];

/// `PaymentProcessedEvent` data, as far as this service needs it.
#[derive(Debug, Deserialize)]
pub struct PaymentProcessed {
    /// The order that was paid.
    pub order_id: String,
    /// Only `"succeeded"` payments are shipped.
    pub status: String,
}

/// A shipment: stored under `shipment:<order_id>` and published as
/// `OrderShippedEvent` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    /// The order shipped.
    pub order_id: String,
    /// `TRACK-` and 8 hex digits.
    pub tracking_number: String,
    /// One of [`CARRIERS`].
    pub carrier: String,
}

/// 64-bit FNV-1a: a stable hash, so every run ships the same way.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shipment for an order. Tracking number and carrier come from two
/// differently salted hashes, each using the hash's low bits: FNV-1a's high
/// bits barely change between ids that differ only in their last characters.
pub fn shipment_for(order_id: &str) -> Shipment {
    let tracking = fnv1a(format!("tracking:{order_id}").as_bytes()) & 0xffff_ffff;
    let carrier = fnv1a(format!("carrier:{order_id}").as_bytes()) % CARRIERS.len() as u64;
    Shipment {
        order_id: order_id.to_owned(),
        tracking_number: format!("TRACK-{tracking:08X}"),
        // Lossless: the remainder is below `CARRIERS.len()`.
        carrier: CARRIERS[carrier as usize].to_owned(),
    }
}

struct ShippingService;

impl Guest for ShippingService {
    fn handle(event: Event) -> Result<(), Failure> {
        let payment: PaymentProcessed = eventhost_plugin::data(&event)?;
        if payment.status != "succeeded" {
            return Ok(());
        }
        let key = format!("shipment:{}", payment.order_id);
        // One shipment per order, however often the payment is delivered.
        if eventhost_plugin::state_get(&key).is_some() {
            return Ok(());
        }
        let shipment = shipment_for(&payment.order_id);
        eventhost_plugin::state_set_json(&key, &shipment)?;
        eventhost_plugin::publish_json("OrderShippedEvent", &shipment)?;
        eventhost_plugin::log(
            Level::Info,
            &format!(
                "order {} shipped with {} ({})",
                shipment.order_id, shipment.carrier, shipment.tracking_number
            ),
        );
        Ok(())
    }
}

eventhost_plugin::export!(ShippingService);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn tracking_number_has_the_documented_shape() {
        let shipment = shipment_for("order-1");
        let hex = shipment
            .tracking_number
            .strip_prefix("TRACK-")
            .expect("TRACK- prefix");
        assert_eq!(hex.len(), 8);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(shipment.order_id, "order-1");
    }

    #[test]
    fn shipment_is_stable_per_order() {
        assert_eq!(shipment_for("order-1"), shipment_for("order-1"));
        assert_ne!(
            shipment_for("order-1").tracking_number,
            shipment_for("order-2").tracking_number
        );
    }

    #[test]
    fn every_carrier_gets_used() {
        let used: std::collections::BTreeSet<String> = (0..200)
            .map(|n| shipment_for(&format!("order-{n}")).carrier)
            .collect();
        assert_eq!(used.len(), CARRIERS.len());
    }
}
