// An in-memory host, to unit-test handlers in plain Node (no component).
//
//   import { FakeHost } from "./sdk/testing.js";
//   const host = new FakeHost({ state: { count: "41" } });
//   assert.equal(host.run(handle, "Demo", {}).outcome, "ok");
//   assert.equal(host.state.count, "42");
//
// Effects land at once, so check the outcome before trusting them (the real
// host discards them unless the outcome is ok).
import { LEVELS, setHost } from "./core.js";

export class FakeHost {
  constructor({ state = {}, config = {}, refusePublish = null } = {}) {
    this.state = { ...state };
    this.config = { ...config };
    this.logs = [];
    this.published = [];
    this.refusePublish = refusePublish;
    this.nextId = 1;
  }

  log(level, message) {
    if (!LEVELS.includes(level)) throw new Error(`unknown level ${level}`);
    this.logs.push({ level, message });
  }

  publish(eventType, data) {
    if (this.refusePublish !== null) throw { payload: this.refusePublish };
    this.published.push({ eventType, data: JSON.parse(data) });
    return `published-${this.nextId++}`;
  }

  stateGet(key) {
    return Object.hasOwn(this.state, key) ? this.state[key] : undefined;
  }

  stateSet(key, value) {
    this.state[key] = value;
  }

  stateDelete(key) {
    delete this.state[key];
  }

  configGet(key) {
    return Object.hasOwn(this.config, key) ? this.config[key] : undefined;
  }

  /** Runs `handle` (the export built by `handler(fn)`) on one event and says
   * how it ended: {outcome: "ok"|"retry"|"reject"|"crash", reason, error}.
   * For an async handler, a Promise of that, settled once the handler's is
   * (`await host.run(...)`); this host is installed until then. */
  run(handle, eventType, data, { id = "test-1", streamId = "0-1", timestamp, attempt = 1 } = {}) {
    const raw = { id, eventType, streamId, timestamp, attempt, data: typeof data === "string" ? data : JSON.stringify(data) };
    const previous = setHost(this);
    let pending = false;
    try {
      const result = handle(raw);
      if (result !== null && typeof result === "object" && typeof result.then === "function") {
        pending = true;
        return Promise.resolve(result)
          .then(() => ({ outcome: "ok", reason: null }), outcomeOf)
          .finally(() => setHost(previous));
      }
      return { outcome: "ok", reason: null };
    } catch (err) {
      return outcomeOf(err);
    } finally {
      if (!pending) setHost(previous);
    }
  }
}

/** The outcome a value thrown by a `handler(fn)` export stands for. */
function outcomeOf(err) {
  if (err !== null && typeof err === "object" && (err.tag === "retry" || err.tag === "reject")) {
    return { outcome: err.tag, reason: err.val };
  }
  return { outcome: "crash", reason: err instanceof Error ? err.message : String(err), error: err };
}
