// An in-memory host, to unit-test handlers in plain Node (no component).
//
//   import { FakeHost } from "./sdk/testing.js";
//   const host = new FakeHost({ state: { count: "41" } });
//   assert.equal(host.run(handle, "Demo", {}).outcome, "ok");
//   assert.equal(host.state.count, "42");
//
// Requests queued with `sendAfterCommit`/`postJsonAfterCommit` are kept in
// `host.queued` ({method, url, headers, body, attempts, key}, `body` parsed
// as `json` too when it is JSON); `grants` (URL prefixes) makes it refuse
// the others as the host does.
//
// Effects land at once, so check the outcome before trusting them (the real
// host discards them unless the outcome is ok).
import { LEVELS, setHost } from "./core.js";

export class FakeHost {
  constructor({ state = {}, config = {}, refusePublish = null, grants = null } = {}) {
    this.state = { ...state };
    this.config = { ...config };
    this.logs = [];
    this.published = [];
    this.queued = [];
    this.refusePublish = refusePublish;
    // null grants every URL; a list grants the URLs starting with one.
    this.grants = grants;
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

  sendAfterCommit({ method, url, headers, body, attempts }) {
    if (this.grants !== null && !this.grants.some((grant) => url.startsWith(grant))) {
      throw { payload: `HttpRequestDenied: no grant of this subscriber names ${url} (grants.http)` };
    }
    const key = `fake-key-${this.nextId++}`;
    let json;
    try {
      json = body === undefined ? undefined : JSON.parse(body);
    } catch {
      json = undefined;
    }
    this.queued.push({ method, url, headers, body, json, attempts, key });
    return key;
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
