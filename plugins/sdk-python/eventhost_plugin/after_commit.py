"""Requests the host sends only after the event is committed
(``send-after-commit`` of ``eventhost:plugin@0.2.0``).

A request queued here is an effect of the call, like a publish: committed
with the event's acknowledgement and sent only then, never if the handler
fails, retried with the same ``Idempotency-Key`` (which it returns). Use it
for effects that must not happen unless the event's others do (a webhook, a
notification); :mod:`eventhost_plugin.http` sends at once instead::

    from eventhost_plugin import post_json_after_commit

    key = post_json_after_commit("https://hooks.example/orders", {"order_id": "o-1"})
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional, Union

from . import Reject, _host

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


class QueueError(Exception):
    """What a binding raises when the host refuses to queue a request; the
    message is the host's (``HttpRequestDenied: ...`` for a URL no grant
    names)."""


class SendRefused(Reject):
    """The host refused to queue a request. It will never be accepted, so it
    is a :class:`Reject`: uncaught, the event goes to the DLQ with the
    reason; catch it to carry on without the request. ``why`` is the host's
    message."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(reason)
        self.why = why


def _pairs(headers: Optional[Headers]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return [(str(name), str(value)) for name, value in items]


def send_after_commit(
    method: str,
    url: str,
    *,
    headers: Optional[Headers] = None,
    body: Optional[str] = None,
    attempts: Optional[int] = None,
) -> str:
    """Queues ``method url`` (with ``headers`` and a text ``body``) to be
    sent once this event is committed, at most ``attempts`` times (the
    host's default when ``None``), and returns its ``Idempotency-Key``.
    Refused at once unless a grant names the URL: :class:`SendRefused`."""
    if body is not None and not isinstance(body, str):
        raise TypeError(f"body must be a str (json.dumps it), got {type(body).__name__}")
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise TypeError(f"attempts must be a positive int, got {attempts!r}")
    method = method.upper()
    try:
        return _host().send_after_commit(method, url, _pairs(headers), body, attempts)
    except QueueError as err:
        raise SendRefused(f"cannot queue {method} {url}: {err}", str(err)) from None


def post_json_after_commit(
    url: str,
    value: Any,
    *,
    headers: Optional[Headers] = None,
    attempts: Optional[int] = None,
) -> str:
    """Queues a ``POST`` of ``value`` as JSON to ``url``, sent once this
    event is committed (see :func:`send_after_commit`); returns its
    ``Idempotency-Key``. A value that does not serialise: :class:`Reject`."""
    try:
        body = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise Reject(f"cannot serialise the body for {url}: {err}") from None
    pairs = [("content-type", "application/json"), *_pairs(headers)]
    return send_after_commit("POST", url, headers=pairs, body=body, attempts=attempts)
