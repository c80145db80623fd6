// Sends the HTTP request its event names with `fetch` (over wasi:http), and
// records what came back in its state: `status:<event id>` and
// `body:<event id>`, or `error:<event id>` with the error. Event data:
// {"url": ..., "body"?: ...} (a POST with a body, else a GET); `"strict":
// true` lets an error escape the handler instead (a trap: the DLQ reason
// carries it).
//
// Queue mode, {"queue": url, "fail"?: true}: queues a JSON POST of
// {"event": <event id>, "n": 0, "lang": "js"} to be sent after the commit
// and records its key as `key:<event id>` (a refusal as `error:<event id>`);
// `"fail": true` then rejects the event, so nothing is sent.
//
// Built by `eventhost build` (tests/outbound_polyglot.rs,
// tests/after_commit_polyglot.rs).
import { Reject, SendRefused, handler, postJsonAfterCommit, state } from "./sdk/index.js";

/** Queue mode: one request after the commit, or a failure after queueing. */
function queue(event) {
  const { queue: url, fail } = event.data;
  try {
    const key = postJsonAfterCommit(url, { event: event.id, n: 0, lang: "js" });
    state.set(`key:${event.id}`, key);
  } catch (err) {
    if (!(err instanceof SendRefused)) throw err;
    state.set(`error:${event.id}`, err.reason);
    return;
  }
  if (fail) throw new Reject("asked to fail after queueing");
}

export const handle = handler(async (event) => {
  if (event.data.queue !== undefined) return queue(event);
  const { url, body, strict } = event.data;
  const init = body === undefined ? {} : { method: "POST", body };
  let answer;
  try {
    answer = await fetch(url, init);
  } catch (err) {
    if (strict) throw err;
    state.set(`error:${event.id}`, `${err.name}: ${err.message}`);
    return;
  }
  state.set(`status:${event.id}`, String(answer.status));
  state.set(`body:${event.id}`, await answer.text());
});
