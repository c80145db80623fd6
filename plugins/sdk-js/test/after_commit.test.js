import assert from "node:assert/strict";
import { test } from "node:test";

import { Reject, SendRefused, handler, postJsonAfterCommit, sendAfterCommit } from "../core.js";
import { FakeHost } from "../testing.js";

test("sendAfterCommit queues the request and returns its key", () => {
  const host = new FakeHost();
  let key;
  const handle = handler(() => {
    key = sendAfterCommit({
      method: "put",
      url: "https://hooks.example/orders/o-1",
      headers: { "x-source": "orders" },
      body: "shipped",
      attempts: 3,
    });
  });
  assert.equal(host.run(handle, "Demo", {}).outcome, "ok");
  assert.equal(host.queued.length, 1);
  const [queued] = host.queued;
  assert.equal(queued.key, key);
  assert.equal(queued.method, "PUT");
  assert.equal(queued.url, "https://hooks.example/orders/o-1");
  assert.deepEqual(queued.headers, [["x-source", "orders"]]);
  assert.equal(queued.body, "shipped");
  assert.equal(queued.attempts, 3);
});

test("postJsonAfterCommit sends JSON with its content type", () => {
  const host = new FakeHost();
  const handle = handler((event) => {
    postJsonAfterCommit("https://hooks.example/in", { order_id: event.data.order_id });
  });
  assert.equal(host.run(handle, "Demo", { order_id: "o-7" }).outcome, "ok");
  assert.deepEqual(host.queued[0].json, { order_id: "o-7" });
  assert.deepEqual(host.queued[0].headers, [["content-type", "application/json"]]);
  assert.equal(host.queued[0].method, "POST");
  assert.equal(host.queued[0].attempts, undefined);
});

test("a refused URL throws SendRefused, a Reject naming why", () => {
  const host = new FakeHost({ grants: ["https://hooks.example/"] });
  let caught;
  const handle = handler(() => {
    try {
      postJsonAfterCommit("https://elsewhere.example/", {});
    } catch (err) {
      caught = err;
    }
    postJsonAfterCommit("https://elsewhere.example/", {});
  });
  const result = host.run(handle, "Demo", {});
  assert.ok(caught instanceof SendRefused && caught instanceof Reject);
  assert.match(caught.why, /^HttpRequestDenied: /);
  assert.equal(result.outcome, "reject");
  assert.match(result.reason, /cannot queue POST https:\/\/elsewhere\.example\/: HttpRequestDenied/);
  assert.deepEqual(host.queued, []);
});

test("bad arguments are the plugin's bug: TypeError", () => {
  const host = new FakeHost();
  for (const request of [{}, { url: "https://a/", body: { x: 1 } }, { url: "https://a/", attempts: 0 }]) {
    const result = host.run(handler(() => sendAfterCommit(request)), "Demo", {});
    assert.equal(result.outcome, "crash");
    assert.ok(result.error instanceof TypeError, String(result.error));
  }
  assert.deepEqual(host.queued, []);
});
