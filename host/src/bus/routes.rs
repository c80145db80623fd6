//! Which subscriber streams each event type goes to, and changing that
//! safely while the fan-out runs.
//!
//! A subscriber removed from the config must receive nothing more once its
//! removal is applied: a batch holds the table it was planned with until it
//! is written, and a change waits for that.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::keys::{Keys, OrderKeys};
use crate::config::{EventFilter, OrderBy};

/// Which subscriber streams each event type goes to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Routes {
    /// The subscriber streams; targets are indexes into this list.
    pub streams: Vec<String>,
    /// On a cluster, the seen set of each stream's subscriber (see
    /// `scripts/copy.lua`), in the same order.
    pub seen: Vec<String>,
    /// Each stream's subscriber's order keys, and how it orders (`None`:
    /// it keeps no order), in the same order.
    pub order: Vec<(OrderKeys, Option<OrderBy>)>,
    /// [`OrderKeys::held`] and [`OrderKeys::lists`] of each, as the
    /// fan-out script takes them.
    pub held: Vec<String>,
    pub lists: Vec<String>,
    by_type: HashMap<String, Vec<usize>>,
    /// Subscribers of every type: the targets of a type nobody names.
    everything: Vec<usize>,
}

impl Routes {
    /// Routes for `subscribers` (name, filter, order) under `keys`.
    pub fn new<'a>(
        keys: &Keys,
        subscribers: impl IntoIterator<Item = (&'a str, &'a EventFilter, Option<&'a OrderBy>)>,
    ) -> Self {
        let mut routes = Routes::default();
        let mut named: Vec<(&str, usize)> = Vec::new();
        for (i, (name, filter, order)) in subscribers.into_iter().enumerate() {
            routes.streams.push(keys.subscriber(name).stream);
            routes.seen.push(keys.seen(name));
            let order_keys = keys.order(name);
            routes.held.push(order_keys.held.clone());
            routes.lists.push(order_keys.lists.clone());
            routes.order.push((order_keys, order.cloned()));
            match filter {
                EventFilter::All => routes.everything.push(i),
                EventFilter::Types(types) => named.extend(types.iter().map(|t| (t.as_str(), i))),
            }
        }
        for (event_type, i) in named {
            routes
                .by_type
                .entry(event_type.to_string())
                .or_insert_with(|| routes.everything.clone())
                .push(i);
        }
        for targets in routes.by_type.values_mut() {
            targets.sort_unstable();
            targets.dedup();
        }
        routes
    }

    /// Whether a subscriber keeps order per key: then a batch is routed
    /// only after every older one.
    pub fn keeps_order(&self) -> bool {
        self.order.iter().any(|(_, order)| order.is_some())
    }

    /// The streams (as indexes) an event of `event_type` is copied to.
    pub fn targets(&self, event_type: &str) -> &[usize] {
        self.by_type.get(event_type).unwrap_or(&self.everything)
    }
}

/// The routing table the fan-out reads, shared with whoever changes it.
#[derive(Clone, Default)]
pub struct RouteTable {
    current: Arc<ArcSwap<Routes>>,
    /// Read-held by the fan-out from planning a batch until it is written.
    in_use: Arc<RwLock<()>>,
}

impl RouteTable {
    /// Replaces the table; returns once no batch routed by the old one is
    /// still being written, so a subscriber no longer routed to receives
    /// nothing more from this process.
    pub async fn replace(&self, routes: Routes) {
        self.current.store(Arc::new(routes));
        drop(self.in_use.write().await);
    }

    /// The current table, held for one batch. Held before it is read, so a
    /// [`replace`](Self::replace) either waits for this batch or is seen
    /// by it.
    pub(super) async fn hold(&self) -> HeldRoutes {
        let in_use = self.in_use.clone().read_owned().await;
        HeldRoutes {
            routes: self.current.load_full(),
            _in_use: in_use,
        }
    }
}

/// A routing table in use by one batch, until the batch is written.
pub(super) struct HeldRoutes {
    pub routes: Arc<Routes>,
    _in_use: OwnedRwLockReadGuard<()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> EventFilter {
        EventFilter::Types(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn routes_by_type_and_wildcard() {
        let keys = Keys::new("events:");
        let pay = types(&["OrderCreatedEvent"]);
        let ship = types(&["PaymentProcessedEvent"]);
        let order = types(&["PaymentProcessedEvent", "OrderShippedEvent"]);
        let notify = EventFilter::All;
        let routes = Routes::new(
            &keys,
            [
                ("pay", &pay, None),
                ("ship", &ship, None),
                ("order", &order, None),
                ("notify", &notify, None),
            ],
        );
        assert_eq!(routes.streams[0], "events:sub:pay");
        assert_eq!(routes.targets("OrderCreatedEvent"), &[0, 3]);
        assert_eq!(routes.targets("PaymentProcessedEvent"), &[1, 2, 3]);
        assert_eq!(routes.targets("OrderShippedEvent"), &[2, 3]);
        assert_eq!(routes.targets("SomethingElse"), &[3]);
        let none = Routes::new(&keys, [("pay", &pay, None)]);
        assert!(none.targets("Other").is_empty());
    }
}
