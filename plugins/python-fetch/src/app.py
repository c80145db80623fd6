"""Sends the HTTP request its event names through the SDK's ``http``
(``wasi:http``), and records what came back in its state:
``status:<event id>`` and ``body:<event id>``, or ``error:<event id>`` with
the error's code and message. Event data: ``{"url": ..., "body"?: ...}``
(a POST with a body, else a GET); ``"strict": true`` lets an error escape
the handler instead (a trap: the DLQ reason carries it).

Built by ``eventhost build`` (outbound HTTP tests, tests/outbound_polyglot.rs).
"""

from eventhost_plugin import Event, export, http, state


def handle(event: Event) -> None:
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
