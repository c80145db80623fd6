// JavaScript version of eventhost's data-driven test plugin (plugins/probe).
//
// For every event it first performs a fixed set of effects and only then
// decides the outcome from the event data's "act" field, so a test can prove
// that the host discards the effects whenever the outcome is not ok.
//
// Effects, in order:
// * `seen:<event id>` = the delivery attempt;
// * `count` incremented;
// * `build:<event id>` = BUILD;
// * if config `follow_up` is set, one event of that type with data
//   {"source_id": <event id>, "source_type": <event type>}.
//
// Outcomes by "act": absent/"ok" -> ok; "retry" -> failure::retry;
// "reject" -> failure::reject; "throw"/"raise" -> an uncaught Error (the
// component traps); anything else -> reject. Data that is not a JSON object
// -> reject.
//
// Built with componentize-js against wit/v0.2/eventhost.wit (see build.sh).

import {
  log,
  publish,
  stateGet,
  stateSet,
  configGet,
} from "eventhost:plugin/host@0.1.0";

// Which build handled the event. build.sh rewrites this exact line when
// PROBE_BUILD is set, so hot-reload tests can tell two builds apart.
const BUILD = "js";

// A `result<_, failure>` export returns normally for `ok`; throwing a plain
// (non-Error) object makes it the `err` value. An Error instance is not
// converted: it traps the component.
const retry = (message) => ({ tag: "retry", val: message });
const reject = (message) => ({ tag: "reject", val: message });

export function handle(event) {
  effects(event);
  outcome(event);
}

function effects(event) {
  stateSet(`seen:${event.id}`, String(event.attempt));
  const count = stateGet("count");
  const n = count === undefined || count === null ? 0 : Number(count);
  if (!Number.isSafeInteger(n)) {
    throw reject(`state \`count\` is not an integer: ${JSON.stringify(count)}`);
  }
  stateSet("count", String(n + 1));
  stateSet(`build:${event.id}`, BUILD);
  const followUp = configGet("follow_up");
  if (followUp !== undefined && followUp !== null) {
    const data = JSON.stringify({
      source_id: event.id,
      source_type: event.eventType,
    });
    try {
      publish(followUp, data);
    } catch (err) {
      const why = err && "payload" in err ? err.payload : String(err);
      throw retry(`cannot publish ${followUp}: ${why}`);
    }
  }
}

function outcome(event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch (err) {
    throw reject(`event data is not valid JSON: ${err.message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw reject("event data is not a JSON object");
  }
  const act = data.act === undefined ? "ok" : data.act;
  if (typeof act !== "string") {
    throw reject(`\`act\` must be a string, got ${JSON.stringify(act)}`);
  }
  switch (act) {
    case "ok":
      return;
    case "retry":
      throw retry("asked to retry");
    case "reject":
      throw reject("asked to reject");
    case "throw":
    case "raise":
      throw new Error(`asked to throw on ${event.id}`);
    case "log":
      for (const level of ["trace", "debug", "info", "warn", "error"]) {
        log(level, `js probe ${level} log for ${event.id}`);
      }
      return;
    default:
      throw reject(`unknown act ${JSON.stringify(act)}`);
  }
}
