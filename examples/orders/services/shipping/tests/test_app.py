"""The shipping service's rules, in plain Python against the SDK's in-memory
host (the orders example's end-to-end test runs the built component)."""

from __future__ import annotations

import json

from app import CARRIERS, fnv1a, handle, shipment_for
from eventhost_plugin.testing import FakeHost


def test_fnv1a_matches_reference_vectors() -> None:
    assert fnv1a(b"") == 0xCBF29CE484222325
    assert fnv1a(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a(b"foobar") == 0x85944171F73967E8


def test_shipments_match_the_rust_service() -> None:
    # Computed by the Rust version of this service, which this one replaces:
    # a replay after the switch ships exactly the same way.
    assert shipment_for("order-by-hand") == {
        "order_id": "order-by-hand",
        "tracking_number": "TRACK-6976A752",
        "carrier": "UPS",
    }


def test_every_carrier_gets_used() -> None:
    assert {shipment_for(f"order-{n}")["carrier"] for n in range(200)} == set(CARRIERS)


def test_a_succeeded_payment_ships_once() -> None:
    host = FakeHost()
    paid = {"order_id": "order-1", "status": "succeeded", "amount": 5}
    assert host.run(handle, "PaymentProcessedEvent", paid).outcome == "ok"
    shipment = json.loads(host.state["shipment:order-1"])
    assert shipment == shipment_for("order-1")
    assert host.published == [("OrderShippedEvent", shipment)]
    # Delivered again: nothing new.
    assert host.run(handle, "PaymentProcessedEvent", paid).outcome == "ok"
    assert len(host.published) == 1


def test_a_failed_payment_ships_nothing() -> None:
    host = FakeHost()
    outcome = host.run(handle, "PaymentProcessedEvent", {"order_id": "o", "status": "failed"})
    assert outcome.outcome == "ok"
    assert host.state == {} and host.published == []


def test_a_payment_without_an_order_is_rejected() -> None:
    outcome = FakeHost().run(handle, "PaymentProcessedEvent", {"status": "succeeded"})
    assert outcome.outcome == "reject"
