// Sends the HTTP request its event names with `fetch` (over wasi:http), and
// records what came back in its state: `status:<event id>` and
// `body:<event id>`, or `error:<event id>` with the error. Event data:
// {"url": ..., "body"?: ...} (a POST with a body, else a GET); `"strict":
// true` lets an error escape the handler instead (a trap: the DLQ reason
// carries it).
//
// Built by `eventhost build` (outbound HTTP tests, tests/outbound_polyglot.rs).
import { handler, state } from "./sdk/index.js";

export const handle = handler(async (event) => {
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
