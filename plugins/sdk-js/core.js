// eventhost-plugin for JavaScript: the SDK's logic, with the host injected.
//
// `index.js` wires this to the component's real host imports
// (`eventhost:plugin/host@0.2.0`, which exist only inside a component built by
// componentize-js); tests and `testing.js` inject a fake with `setHost`.

/** The log levels of the WIT contract, in order. */
export const LEVELS = Object.freeze(["trace", "debug", "info", "warn", "error"]);

/** Throw to fail with `failure::retry`: the event may succeed later, so the
 * host retries it with backoff, then dead-letters it after `max_attempts`. */
export class Retry extends Error {
  constructor(reason) {
    super(String(reason));
    this.name = "Retry";
    this.reason = String(reason);
  }
}

/** Throw to fail with `failure::reject`: the event will never succeed (a
 * poison message), so the host dead-letters it at once. */
export class Reject extends Error {
  constructor(reason) {
    super(String(reason));
    this.name = "Reject";
    this.reason = String(reason);
  }
}

let current = null;

/** Installs `host` (an object with the raw binding's functions: `log`,
 * `publish`, `stateGet`, `stateSet`, `stateDelete`, `configGet`,
 * `sendAfterCommit`) and returns the previous one. */
export function setHost(host) {
  const previous = current;
  current = host;
  return previous;
}

function host() {
  if (current === null) {
    throw new Error(
      "eventhost-plugin: no host: import the SDK from index.js inside a component, or call setHost() in tests",
    );
  }
  return current;
}

const absent = (value) => value === undefined || value === null;

/** Builds the SDK's event from the binding's record: frozen, its `data`
 * parsed when first read (a handler that never reads it never pays for it).
 * The host delivers JSON objects only; data that is not one (a test can send
 * it) will never parse, so reading it throws `Reject`. */
export function toEvent(raw) {
  const text = String(raw.data);
  let data;
  return Object.freeze({
    id: String(raw.id),
    eventType: String(raw.eventType),
    streamId: String(raw.streamId),
    timestamp: absent(raw.timestamp) ? null : Number(raw.timestamp),
    attempt: Number(raw.attempt),
    get data() {
      if (data === undefined) data = parseData(text, raw);
      return data;
    },
    raw: text,
  });
}

/** `text` as a JSON object, else `Reject` naming the event. */
function parseData(text, raw) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Reject(`malformed ${raw.eventType} event ${raw.id}: ${err.message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new Reject(`malformed ${raw.eventType} event ${raw.id}: data is not a JSON object`);
  }
  return data;
}

/** Runs `fn` on one raw event and maps its outcome to the export's result:
 * returns for ok; throws the WIT `failure` value (`{tag, val}`) for
 * `Retry`/`Reject`; logs any other error at level `error` and rethrows it,
 * which traps the component. An async handler (one that awaits `fetch`)
 * returns a Promise settled the same way: the component waits for it. */
export function dispatch(fn, raw) {
  let result;
  try {
    result = fn(toEvent(raw));
  } catch (err) {
    fail(err, raw);
  }
  if (result !== null && typeof result === "object" && typeof result.then === "function") {
    return Promise.resolve(result).then(
      () => undefined,
      (err) => fail(err, raw),
    );
  }
  return undefined;
}

/** Throws what `err`, escaping a handler of `raw`, means for the export. */
function fail(err, raw) {
  if (err instanceof Retry) throw { tag: "retry", val: err.reason };
  if (err instanceof Reject) throw { tag: "reject", val: err.reason };
  const name = err instanceof Error ? err.name : typeof err;
  const message = err instanceof Error ? err.message : String(err);
  const stack = err instanceof Error && err.stack ? `\n${err.stack}`.trimEnd() : "";
  try {
    host().log("error", `uncaught ${name} handling ${raw.eventType} event ${raw.id}: ${message}${stack}`);
  } catch {
    // No host to log to: the trap still carries the error.
  }
  throw err;
}

/** Wraps `fn(event)` as the component's `handle` export:
 * `export const handle = handler((event) => { ... });` */
export function handler(fn) {
  if (typeof fn !== "function") throw new TypeError("handler(fn): fn must be a function");
  return (raw) => dispatch(fn, raw);
}

/** This plugin's state: string keys to string values, buffered by the host
 * until the handler returns (a later `get` in the same call sees a `set`). */
export const state = Object.freeze({
  get(key) {
    const value = host().stateGet(key);
    return absent(value) ? null : value;
  },
  set(key, value) {
    if (typeof value !== "string") {
      throw new TypeError(`state value for ${JSON.stringify(key)} must be a string, got ${typeof value}`);
    }
    host().stateSet(key, value);
  },
  delete(key) {
    host().stateDelete(key);
  },
  getJson(key) {
    const raw = state.get(key);
    if (raw === null) return null;
    try {
      return JSON.parse(raw);
    } catch (err) {
      throw new Reject(`state entry \`${key}\` is corrupt: ${err.message}`);
    }
  },
  setJson(key, value) {
    state.set(key, JSON.stringify(value));
  },
  increment(key, by = 1) {
    const raw = state.get(key);
    const current = raw === null ? 0 : /^\s*-?\d+\s*$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(current)) {
      throw new Reject(`state entry \`${key}\` = ${JSON.stringify(raw)} is not a counter`);
    }
    const next = current + by;
    state.set(key, String(next));
    return next;
  },
});

/** This subscriber's `[subscribers.NAME.config]` values (always strings). */
export const config = Object.freeze({
  get(key, fallback = null) {
    const value = host().configGet(key);
    return absent(value) ? fallback : value;
  },
  getInt(key, fallback) {
    const raw = config.get(key);
    if (raw === null) return fallback;
    if (!/^\s*-?\d+\s*$/.test(raw)) {
      throw new Reject(`config key \`${key}\` = ${JSON.stringify(raw)} is not an integer`);
    }
    return Number(raw);
  },
  getBool(key, fallback) {
    const raw = config.get(key);
    if (raw === null) return fallback;
    const value = raw.trim().toLowerCase();
    if (value === "true" || value === "false") return value === "true";
    throw new Reject(`config key \`${key}\` = ${JSON.stringify(raw)} is not true or false`);
  },
});

/** Log lines, forwarded to the host's log with the subscriber and event id. */
export const log = Object.freeze(
  Object.fromEntries(LEVELS.map((level) => [level, (message) => host().log(level, String(message))])),
);

/** Publishes `data` (a JSON object) as an event of `eventType` and returns
 * the new event id. Buffered until the handler returns. A refusal by the
 * host is a property of the event, so retrying would not help: `Reject`. */
export function publish(eventType, data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new Reject(`cannot publish ${eventType} event: data must be a JSON object`);
  }
  let text;
  try {
    text = JSON.stringify(data);
  } catch (err) {
    throw new Reject(`cannot serialise ${eventType} event: ${err.message}`);
  }
  try {
    return host().publish(eventType, text);
  } catch (err) {
    const why = err !== null && typeof err === "object" && "payload" in err ? err.payload : String(err);
    throw new Reject(`cannot publish ${eventType} event: ${why}`);
  }
}

/** Thrown when the host refuses to queue a request (a URL no grant names:
 * `HttpRequestDenied: ...`). Such a request will never be accepted, so it is
 * a `Reject`: uncaught, the event goes to the DLQ with the reason; catch it
 * to carry on without the request. */
export class SendRefused extends Reject {
  constructor(reason, why) {
    super(reason);
    this.name = "SendRefused";
    this.why = why;
  }
}

/** Header pairs for the binding, from an object or a list of `[name, value]`. */
function headerPairs(headers) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers ?? {});
  return pairs.map(([name, value]) => [String(name), String(value)]);
}

/** Queues an HTTP request that the host sends only once this event is
 * committed (never if the handler fails), retrying up to `attempts` times
 * with the same `Idempotency-Key`, and returns that key. Use it for effects
 * that must not happen unless the event's other effects do (a webhook, a
 * notification); `fetch` sends at once instead. `body` is text (or absent).
 * Refused at once unless a grant names the URL: `SendRefused`. */
export function sendAfterCommit({ method = "POST", url, headers = {}, body = null, attempts = null } = {}) {
  if (typeof url !== "string" || url === "") throw new TypeError("sendAfterCommit: url must be a string");
  if (!absent(body) && typeof body !== "string") {
    throw new TypeError(`sendAfterCommit: body must be a string (JSON.stringify it), got ${typeof body}`);
  }
  if (!absent(attempts) && !(Number.isInteger(attempts) && attempts > 0)) {
    throw new TypeError(`sendAfterCommit: attempts must be a positive integer, got ${attempts}`);
  }
  const request = {
    method: String(method).toUpperCase(),
    url,
    headers: headerPairs(headers),
    body: absent(body) ? undefined : body,
    attempts: absent(attempts) ? undefined : attempts,
  };
  try {
    return host().sendAfterCommit(request);
  } catch (err) {
    const why = err !== null && typeof err === "object" && "payload" in err ? err.payload : String(err);
    throw new SendRefused(`cannot queue ${request.method} ${url}: ${why}`, why);
  }
}

/** Queues a `POST` of `value` as JSON to `url`, sent only once this event
 * is committed (see `sendAfterCommit`); returns its `Idempotency-Key`. */
export function postJsonAfterCommit(url, value, { headers = {}, attempts = null } = {}) {
  let body;
  try {
    body = JSON.stringify(value);
  } catch (err) {
    throw new Reject(`cannot serialise the body for ${url}: ${err.message}`);
  }
  return sendAfterCommit({
    method: "POST",
    url,
    headers: [["content-type", "application/json"], ...headerPairs(headers)],
    body,
    attempts,
  });
}
