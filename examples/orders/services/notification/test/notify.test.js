// The notification service's rules in plain Node, against the SDK's
// in-memory host (the orders example's end-to-end test runs the built
// component). Run with `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { handler } from "../sdk/core.js";
import { FakeHost } from "../sdk/testing.js";
import { handleEvent, notificationFor } from "../notify.js";

const handle = handler(handleEvent);

test("order confirmation shows the total", () => {
  const n = notificationFor("OrderCreatedEvent", { order_id: "order-1", user_id: "user-7", total: 1359.97, items: [] });
  assert.equal(n.subject, "Order Confirmation");
  assert.equal(n.body, "Hi user-7, your order order-1 has been received. Total: $1359.97");
});

test("payment confirmation shows the amount", () => {
  const n = notificationFor("PaymentProcessedEvent", { payment_id: "p", order_id: "order-1", amount: 5, status: "succeeded" });
  assert.equal(n.body, "Payment of $5.00 for order order-1 has succeeded.");
});

test("shipping notice shows carrier and tracking", () => {
  const n = notificationFor("OrderShippedEvent", { order_id: "order-1", tracking_number: "TRACK-0000BEEF", carrier: "DHL" });
  assert.equal(n.body, "Your order order-1 has been shipped via DHL. Tracking number: TRACK-0000BEEF");
});

test("every notification is logged and counted, other events are not", () => {
  const host = new FakeHost({ state: { notified: "2", "notified:OrderShippedEvent": "1" } });
  const shipped = { order_id: "o", tracking_number: "TRACK-1", carrier: "UPS" };
  assert.equal(host.run(handle, "OrderShippedEvent", shipped).outcome, "ok");
  assert.equal(host.run(handle, "CreateOrderCommand", { order_id: "o" }).outcome, "ok");
  assert.equal(host.run(handle, "toString", {}).outcome, "ok");
  assert.deepEqual(host.state, { notified: "3", "notified:OrderShippedEvent": "2" });
  assert.deepEqual(host.logs, [
    { level: "info", message: "[Order Shipped] Your order o has been shipped via UPS. Tracking number: TRACK-1" },
  ]);
});

test("with webhook_url, each notification queues one webhook; other events none", () => {
  const url = "http://127.0.0.1:9/hooks";
  const host = new FakeHost({ config: { webhook_url: url } });
  const paid = { payment_id: "p", order_id: "o-2", amount: 5, status: "succeeded" };
  assert.equal(host.run(handle, "PaymentProcessedEvent", paid).outcome, "ok");
  assert.equal(host.run(handle, "CreateOrderCommand", { order_id: "o-2" }).outcome, "ok");
  assert.equal(host.queued.length, 1);
  const [hook] = host.queued;
  assert.equal(hook.method, "POST");
  assert.equal(hook.url, url);
  assert.deepEqual(hook.json, { event_type: "PaymentProcessedEvent", order_id: "o-2", subject: "Payment Confirmation" });
  assert.deepEqual(hook.headers, [["content-type", "application/json"]]);
});

test("without webhook_url nothing is queued", () => {
  const host = new FakeHost();
  const created = { order_id: "o-3", user_id: "u", total: 1 };
  assert.equal(host.run(handle, "OrderCreatedEvent", created).outcome, "ok");
  assert.deepEqual(host.queued, []);
  assert.equal(host.state.notified, "1");
});

test("an ungranted webhook_url rejects the event with the host's reason", () => {
  const host = new FakeHost({ config: { webhook_url: "http://elsewhere.example/hooks" }, grants: ["http://127.0.0.1:"] });
  const created = { order_id: "o-4", user_id: "u", total: 1 };
  const out = host.run(handle, "OrderCreatedEvent", created);
  assert.equal(out.outcome, "reject");
  assert.match(out.reason, /HttpRequestDenied/);
  assert.deepEqual(host.queued, []);
});

test("a known event with the wrong data is rejected", () => {
  const host = new FakeHost();
  const out = host.run(handle, "OrderCreatedEvent", { order_id: "o" }, { id: "e-9" });
  assert.deepEqual(out, { outcome: "reject", reason: "event e-9: malformed OrderCreatedEvent: `user_id` is not a string" });
  assert.deepEqual(host.state, {});
});
