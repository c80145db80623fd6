"""An in-memory host, to unit-test handlers in plain Python (no component).

    from eventhost_plugin.testing import FakeHost

    host = FakeHost(state={"count": "41"})
    outcome = host.run(handle, "Demo", {"x": 1})
    assert outcome.outcome == "ok" and host.state["count"] == "42"

Requests queued with ``send_after_commit`` / ``post_json_after_commit`` are
kept in ``queued`` (:class:`Queued`); ``grants`` (URL prefixes) makes the
fake refuse the others, as the host does.

It behaves like the host with one difference: effects land in ``state``,
``published`` and ``queued`` immediately, so check ``outcome`` before trusting them (the real
host discards them unless the outcome is ``ok``). For the real sandbox, build
the component and use ``eventhost invoke``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from . import LEVELS, Handler, PublishError, QueueError, dispatch


class FailureRaised(Exception):
    """What the fake binding raises for a ``failure``: ``kind`` is
    ``"retry"`` or ``"reject"``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass
class RawEvent:
    """The record the component's ``handle`` receives, field for field."""

    id: str
    event_type: str
    stream_id: str
    timestamp: Optional[float]
    attempt: int
    data: str


@dataclass
class Outcome:
    """What one ``run`` ended with: ``outcome`` is ``ok``, ``retry``,
    ``reject`` or ``crash`` (an uncaught exception: a trap in the component)."""

    outcome: str
    reason: Optional[str] = None
    exception: Optional[BaseException] = None


@dataclass
class Queued:
    """One request a handler queued to be sent after the commit."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: Optional[str]
    attempts: Optional[int]
    key: str
    """The ``Idempotency-Key`` the call returned."""

    @property
    def json(self) -> Any:
        """``body`` parsed as JSON (``None`` without a body)."""
        return None if self.body is None else json.loads(self.body)


@dataclass
class FakeHost:
    """A :class:`eventhost_plugin.Binding` that keeps everything in memory."""

    state: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    queued: list[Queued] = field(default_factory=list)
    refuse_publish: Optional[str] = None
    """When set, ``publish`` fails with this message, as the host does for
    an invalid event."""
    grants: Optional[list[str]] = None
    """URL prefixes ``send_after_commit`` accepts; ``None`` accepts all."""

    def log(self, level: str, message: str) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        self.logs.append((level, message))

    def publish(self, event_type: str, data: str) -> str:
        if self.refuse_publish is not None:
            raise PublishError(self.refuse_publish)
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise PublishError("data is not a JSON object")
        self.published.append((event_type, parsed))
        return str(uuid.uuid4())

    def send_after_commit(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: Optional[str],
        attempts: Optional[int],
    ) -> str:
        if self.grants is not None and not any(url.startswith(g) for g in self.grants):
            raise QueueError(f"HttpRequestDenied: no grant of this subscriber names {url} (grants.http)")
        key = str(uuid.uuid4())
        self.queued.append(Queued(method, url, list(headers), body, attempts, key))
        return key

    def state_get(self, key: str) -> Optional[str]:
        return self.state.get(key)

    def state_set(self, key: str, value: str) -> None:
        self.state[key] = value

    def state_delete(self, key: str) -> None:
        self.state.pop(key, None)

    def config_get(self, key: str) -> Optional[str]:
        return self.config.get(key)

    def retry(self, reason: str) -> BaseException:
        return FailureRaised("retry", reason)

    def reject(self, reason: str) -> BaseException:
        return FailureRaised("reject", reason)

    def run(
        self,
        handler: Handler,
        event_type: str,
        data: Mapping[str, Any] | str,
        *,
        id: str = "test-1",
        stream_id: str = "0-1",
        timestamp: Optional[float] = None,
        attempt: int = 1,
    ) -> Outcome:
        """Runs ``handler`` on one event through the SDK's dispatch, as the
        component would, and says how it ended."""
        text = data if isinstance(data, str) else json.dumps(dict(data))
        raw = RawEvent(id, event_type, stream_id, timestamp, attempt, text)
        try:
            dispatch(handler, raw, self)
        except FailureRaised as failure:
            return Outcome(failure.kind, failure.reason)
        except Exception as crash:
            return Outcome("crash", str(crash), crash)
        return Outcome("ok")
