import assert from "node:assert/strict";
import { test } from "node:test";

import { Reject, Retry, config, handler, log, publish, setHost, state } from "../core.js";
import { FakeHost } from "../testing.js";

const counting = handler((event) => {
  const n = state.increment("count");
  log.info(`${event.eventType} ${event.id}: ${n}`);
});

test("ok: data parsed, the counter starts from absent", () => {
  const host = new FakeHost();
  let seen;
  const handle = handler((event) => { seen = event; state.increment("count"); });
  const out = host.run(handle, "Demo", { a: [1, 2] }, { id: "e-1", attempt: 2, timestamp: 1.5 });
  assert.deepEqual(out, { outcome: "ok", reason: null });
  assert.deepEqual(host.state, { count: "1" });
  assert.deepEqual(seen, { id: "e-1", eventType: "Demo", streamId: "0-1", timestamp: 1.5, attempt: 2, data: { a: [1, 2] }, raw: '{"a":[1,2]}' });
  assert.ok(Object.isFrozen(seen));
});

test("the counter is a decimal string; a bad one rejects", () => {
  const host = new FakeHost({ state: { count: "41" } });
  assert.equal(host.run(counting, "Demo", {}).outcome, "ok");
  assert.equal(host.state.count, "42");
  assert.deepEqual(host.logs, [{ level: "info", message: "Demo test-1: 42" }]);
  const bad = new FakeHost({ state: { count: "4x" } });
  assert.deepEqual(bad.run(counting, "Demo", {}), { outcome: "reject", reason: 'state entry `count` = "4x" is not a counter' });
});

test("Retry and Reject become the WIT failure variant", () => {
  assert.throws(() => handler(() => { throw new Retry("db down"); })({ id: "1", eventType: "T", streamId: "0-1", attempt: 1, data: "{}" }),
    (err) => assert.deepEqual(err, { tag: "retry", val: "db down" }) ?? true);
  assert.deepEqual(new FakeHost().run(handler(() => { throw new Reject("no id"); }), "T", {}), { outcome: "reject", reason: "no id" });
});

test("an uncaught error is logged, then rethrown (a trap in the component)", () => {
  const host = new FakeHost();
  const boom = new TypeError("x is undefined");
  const out = host.run(handler(() => { throw boom; }), "T", {}, { id: "e-9" });
  assert.equal(out.outcome, "crash");
  assert.equal(out.error, boom);
  assert.equal(host.logs.length, 1);
  assert.equal(host.logs[0].level, "error");
  assert.match(host.logs[0].message, /^uncaught TypeError handling T event e-9: x is undefined\nTypeError: x is undefined\n\s+at /);
  const thrown = host.run(handler(() => { throw "a string"; }), "T", {});
  assert.deepEqual([thrown.outcome, thrown.reason], ["crash", "a string"]);
});

test("an async handler's outcome is its Promise's", async () => {
  const host = new FakeHost();
  const tick = () => new Promise((resolve) => setTimeout(resolve, 1));
  const ok = await host.run(handler(async () => { await tick(); state.set("k", "v"); }), "T", {});
  assert.deepEqual(ok, { outcome: "ok", reason: null });
  assert.equal(host.state.k, "v", "the host stays installed across the await");
  const retried = await host.run(handler(async () => { await tick(); throw new Retry("later"); }), "T", {});
  assert.deepEqual(retried, { outcome: "retry", reason: "later" });
  const boom = new TypeError("late");
  const crashed = await host.run(handler(async () => { await tick(); throw boom; }), "T", {}, { id: "e-7" });
  assert.deepEqual([crashed.outcome, crashed.error], ["crash", boom]);
  assert.match(host.logs.at(-1).message, /^uncaught TypeError handling T event e-7: late/);
});

test("data that is not a JSON object rejects when read", () => {
  const host = new FakeHost();
  const reading = handler((event) => { event.data.n; state.increment("count"); });
  const out = host.run(reading, "T", "nope", { id: "e-2" });
  assert.equal(out.outcome, "reject");
  assert.match(out.reason, /^malformed T event e-2: /);
  assert.deepEqual(host.run(reading, "T", "[1]").reason, "malformed T event test-1: data is not a JSON object");
  assert.deepEqual(host.state, {});
  // Parsed when first read: a handler that never reads it is not refused.
  assert.equal(host.run(counting, "T", "nope").outcome, "ok");
});

test("publish returns the id; refused, not an object or unserialisable rejects", () => {
  const host = new FakeHost();
  let id;
  host.run(handler(() => { id = publish("Out", { k: "v", n: 1 }); }), "T", {});
  assert.equal(id, "published-1");
  assert.deepEqual(host.published, [{ eventType: "Out", data: { k: "v", n: 1 } }]);
  const refused = new FakeHost({ refusePublish: "event_type is empty" });
  assert.deepEqual(refused.run(handler(() => publish("", {})), "T", {}), { outcome: "reject", reason: "cannot publish  event: event_type is empty" });
  assert.equal(new FakeHost().run(handler(() => publish("X", [1])), "T", {}).reason, "cannot publish X event: data must be a JSON object");
  const cyclic = {}; cyclic.self = cyclic;
  assert.match(new FakeHost().run(handler(() => publish("X", cyclic)), "T", {}).reason, /^cannot serialise X event: /);
});

test("state: json, delete, string values only", () => {
  const host = new FakeHost({ state: { bad: "{", gone: "x" } });
  const out = host.run(handler(() => {
    state.setJson("obj", { a: 1 });
    assert.deepEqual(state.getJson("obj"), { a: 1 });
    assert.equal(state.getJson("absent"), null);
    assert.equal(state.get("absent"), null);
    state.delete("gone");
    assert.throws(() => state.set("n", 1), TypeError);
    state.getJson("bad");
  }), "T", {});
  assert.equal(out.outcome, "reject");
  assert.match(out.reason, /^state entry `bad` is corrupt/);
  assert.deepEqual(host.state, { bad: "{", obj: '{"a":1}' });
});

test("config values and parse errors", () => {
  const host = new FakeHost({ config: { region: "eu", limit: " 5 ", on: "TRUE", bad: "x" } });
  const got = {};
  const out = host.run(handler(() => {
    got.region = config.get("region");
    got.missing = config.get("missing", "d");
    got.none = config.get("none");
    got.limit = config.getInt("limit", 1);
    got.dflt = config.getInt("nope", 7);
    got.on = config.getBool("on", false);
    config.getInt("bad", 0);
  }), "T", {});
  assert.deepEqual(got, { region: "eu", missing: "d", none: null, limit: 5, dflt: 7, on: true });
  assert.deepEqual(out, { outcome: "reject", reason: "config key `bad` = \"x\" is not an integer" });
});

test("every log level", () => {
  const host = new FakeHost();
  host.run(handler(() => { for (const l of ["trace", "debug", "info", "warn", "error"]) log[l](l); }), "T", {});
  assert.deepEqual(host.logs.map((l) => l.level), ["trace", "debug", "info", "warn", "error"]);
});

test("without a host, calls fail clearly; setHost returns the previous host", () => {
  assert.throws(() => state.get("k"), /no host/);
  const a = new FakeHost();
  assert.equal(setHost(a), null);
  state.set("k", "v");
  assert.equal(setHost(null), a);
  assert.deepEqual(a.state, { k: "v" });
});
