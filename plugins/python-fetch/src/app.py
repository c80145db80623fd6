"""Sends the HTTP request its event names through the SDK's ``http``
(``wasi:http``), and records what came back in its state:
``status:<event id>`` and ``body:<event id>``, or ``error:<event id>`` with
the error's code and message. Event data: ``{"url": ..., "body"?: ...}``
(a POST with a body, else a GET); ``"strict": true`` lets an error escape
the handler instead (a trap: the DLQ reason carries it).

Queue mode, ``{"queue": url, "fail"?: true}``: queues a JSON POST of
``{"event": <event id>, "n": 0, "lang": "python"}`` to be sent after the
commit and records its key as ``key:<event id>`` (a refusal as
``error:<event id>``); ``"fail": true`` then rejects the event, so nothing
is sent.

Built by ``eventhost build`` (tests/outbound_polyglot.rs,
tests/after_commit_polyglot.rs).
"""

from eventhost_plugin import (
    Event,
    Reject,
    SendRefused,
    export,
    http,
    post_json_after_commit,
    state,
)


def queue(event: Event) -> None:
    """Queue mode: one request after the commit, or a failure after queueing."""
    try:
        key = post_json_after_commit(
            event.data["queue"], {"event": event.id, "n": 0, "lang": "python"}
        )
    except SendRefused as refused:
        state.set(f"error:{event.id}", refused.reason)
        return
    state.set(f"key:{event.id}", key)
    if event.data.get("fail"):
        raise Reject("asked to fail after queueing")


def handle(event: Event) -> None:
    if "queue" in event.data:
        queue(event)
        return
    url = event.data["url"]
    body = event.data.get("body")
    try:
        if body is None:
            answer = http.get(url)
        else:
            answer = http.post(url, body=body)
    except http.HttpError as err:
        if event.data.get("strict"):
            raise
        state.set(f"error:{event.id}", str(err))
        return
    state.set(f"status:{event.id}", str(answer.status))
    state.set(f"body:{event.id}", answer.text())


WitWorld = export(handle)
