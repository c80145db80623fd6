"""Shipping service of the orders example, in Python (LeanMQ's event-driven
microservices example rebuilt as eventhost plugins).

Subscribes to ``PaymentProcessedEvent``; for every successful payment it
"ships" the order (state ``shipment:<order_id>``) and publishes
``OrderShippedEvent``. Tracking number and carrier come from a stable hash of
the order id, so a replay ships exactly the same way, and the same way the
Rust version of this service did.

The SDK comes from the repository's ``plugins/sdk-python`` (see
``[tool.eventhost] python-path`` in ``pyproject.toml``); a project made by
``eventhost new`` carries a copy in ``src/``.
"""

from __future__ import annotations

from eventhost_plugin import Event, Reject, export, log, publish, state

CARRIERS = ("FedEx", "UPS", "USPS", "DHL")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    """64-bit FNV-1a: a stable hash, so every run ships the same way."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h


def shipment_for(order_id: str) -> dict[str, str]:
    """The shipment for an order. Tracking number and carrier come from two
    differently salted hashes, each using the hash's low bits (FNV-1a's high
    bits barely change between ids that differ only at the end)."""
    tracking = fnv1a(f"tracking:{order_id}".encode()) & 0xFFFFFFFF
    carrier = fnv1a(f"carrier:{order_id}".encode()) % len(CARRIERS)
    return {
        "order_id": order_id,
        "tracking_number": f"TRACK-{tracking:08X}",
        "carrier": CARRIERS[carrier],
    }


def handle(event: Event) -> None:
    order_id = event.data.get("order_id")
    if not isinstance(order_id, str):
        raise Reject(f"PaymentProcessedEvent {event.id} has no order_id")
    if event.data.get("status") != "succeeded":
        return
    key = f"shipment:{order_id}"
    # One shipment per order, however often the payment is delivered.
    if state.get(key) is not None:
        return
    shipment = shipment_for(order_id)
    state.set_json(key, shipment)
    publish("OrderShippedEvent", shipment)
    log.info(f"order {order_id} shipped with {shipment['carrier']} ({shipment['tracking_number']})")


WitWorld = export(handle)
