"""Python version of eventhost's data-driven test plugin (plugins/probe).

For every event it first performs a fixed set of effects and only then
decides the outcome from the event data's ``"act"`` field, so a test can
prove that the host discards the effects whenever the outcome is not ok.

Effects, in order:
* ``seen:<event id>`` = the delivery attempt;
* ``count`` incremented;
* ``build:<event id>`` = ``BUILD``;
* if config ``follow_up`` is set, one event of that type with data
  ``{"source_id": <event id>, "source_type": <event type>}``.

Outcomes by ``"act"``: absent/``"ok"`` -> ok; ``"retry"`` -> failure::retry;
``"reject"`` -> failure::reject; ``"raise"``/``"throw"`` -> an uncaught
exception (componentize-py turns it into a trap); anything else -> reject.
Data that is not a JSON object -> reject.

Built with componentize-py against wit/v0.2/eventhost.wit (see build.sh).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Event, Failure_Reject, Failure_Retry, Level

# Which build handled the event. build.sh rewrites this exact line when
# PROBE_BUILD is set, so hot-reload tests can tell two builds apart.
BUILD = "py"


class WitWorld(wit_world.WitWorld):
    def handle(self, event: Event) -> None:
        effects(event)
        outcome(event)


def effects(event: Event) -> None:
    host.state_set(f"seen:{event.id}", str(event.attempt))
    count = host.state_get("count")
    try:
        n = int(count) if count is not None else 0
    except ValueError:
        raise Err(Failure_Reject(f"state `count` is not an integer: {count!r}"))
    host.state_set("count", str(n + 1))
    host.state_set(f"build:{event.id}", BUILD)
    follow_up = host.config_get("follow_up")
    if follow_up is not None:
        data = json.dumps(
            {"source_id": event.id, "source_type": event.event_type},
            separators=(",", ":"),
        )
        try:
            host.publish(follow_up, data)
        except Err as err:
            raise Err(Failure_Retry(f"cannot publish {follow_up}: {err.value}"))


def outcome(event: Event) -> None:
    try:
        data = json.loads(event.data)
    except ValueError as err:
        raise Err(Failure_Reject(f"event data is not valid JSON: {err}"))
    if not isinstance(data, dict):
        raise Err(Failure_Reject("event data is not a JSON object"))
    act = data.get("act", "ok")
    if not isinstance(act, str):
        raise Err(Failure_Reject(f"`act` must be a string, got {json.dumps(act)}"))
    if act == "ok":
        return
    if act == "retry":
        raise Err(Failure_Retry("asked to retry"))
    if act == "reject":
        raise Err(Failure_Reject("asked to reject"))
    if act in ("raise", "throw"):
        raise RuntimeError(f"asked to raise on {event.id}")
    if act == "log":
        for level in Level:
            host.log(level, f"python probe {level.name.lower()} log for {event.id}")
        return
    raise Err(Failure_Reject(f"unknown act {act!r}"))
