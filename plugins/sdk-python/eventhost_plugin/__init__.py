"""Python SDK for eventhost plugins (WebAssembly components built with componentize-py).

A plugin is a module whose ``WitWorld`` class implements the ``subscriber``
world of ``wit/eventhost.wit`` (``eventhost:plugin@0.2.0``). This SDK writes that class for you and gives
the handler a friendlier shape than the raw bindings::

    from eventhost_plugin import Event, Reject, export, log, publish, state

    def handle(event: Event) -> None:
        order_id = event.data.get("order_id")
        if not order_id:
            raise Reject("order_id missing")
        count = state.increment("count")
        log.info(f"order {order_id}, {count} so far")
        publish("OrderSeenEvent", {"order_id": order_id})

    WitWorld = export(handle)

Outcomes: returning normally is ``ok``; ``raise Retry(reason)`` is
``failure::retry`` (retried with backoff, then the DLQ); ``raise
Reject(reason)`` is ``failure::reject`` (the DLQ at once). Any other
exception escaping the handler is a bug: the SDK logs it (type, message and
traceback, at level ``error``) and lets it propagate, which traps the
component; the host dead-letters the event at once with kind ``trap`` and
throws the instance away, exactly like a panic in a Rust plugin.

Everything a handler publishes, writes to state or queues with
:func:`send_after_commit` / :func:`post_json_after_commit` is buffered by the
host and committed only if it returns ``ok`` (queued requests are sent only
then); :mod:`eventhost_plugin.http` sends a request at once instead.

Import everything the handler needs at the top of its module: inside the
component, modules can be imported only while componentize-py builds it, not
while an event is handled.

The host functions are reached through a *binding*. Inside the component it
is built, when this module is imported, from the componentize-py bindings
(``wit_world``); outside,
tests install another one with :func:`use_binding` (see
:mod:`eventhost_plugin.testing` for an in-memory host).
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable, Mapping, Optional, Protocol

__all__ = [
    "Binding",
    "Event",
    "PublishError",
    "QueueError",
    "Reject",
    "Retry",
    "SendRefused",
    "config",
    "dispatch",
    "export",
    "log",
    "post_json_after_commit",
    "publish",
    "send_after_commit",
    "state",
    "use_binding",
]

__version__ = "0.1.0"

LEVELS = ("trace", "debug", "info", "warn", "error")


class Retry(Exception):
    """Raise to fail with ``failure::retry``: the event may succeed later, so
    the host retries it with backoff, then dead-letters it after
    ``max_attempts``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)


class Reject(Exception):
    """Raise to fail with ``failure::reject``: the event will never succeed
    (a poison message), so the host dead-letters it at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)


class PublishError(Exception):
    """What a binding raises when the host refuses an event to publish."""


class Binding(Protocol):
    """The host functions, as the SDK needs them. The real one wraps the
    componentize-py bindings; tests provide a fake."""

    def log(self, level: str, message: str) -> None: ...
    def publish(self, event_type: str, data: str) -> str: ...
    def state_get(self, key: str) -> Optional[str]: ...
    def state_set(self, key: str, value: str) -> None: ...
    def state_delete(self, key: str) -> None: ...
    def config_get(self, key: str) -> Optional[str]: ...
    def send_after_commit(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: Optional[str],
        attempts: Optional[int],
    ) -> str: ...
    def retry(self, reason: str) -> BaseException: ...
    def reject(self, reason: str) -> BaseException: ...


class _WitBinding:
    """The binding inside the component: the componentize-py generated
    modules (they exist only inside the component, and only import while
    componentize-py builds it: this module creates the binding when it is
    imported)."""

    def __init__(self) -> None:
        from componentize_py_types import Err
        from wit_world.imports import host
        from wit_world.imports.types import Failure_Reject, Failure_Retry, Level

        self._err = Err
        self._host = host
        self._retry = Failure_Retry
        self._reject = Failure_Reject
        self._levels = {name: getattr(Level, name.upper()) for name in LEVELS}

    def log(self, level: str, message: str) -> None:
        self._host.log(self._levels[level], message)

    def publish(self, event_type: str, data: str) -> str:
        try:
            return str(self._host.publish(event_type, data))
        except self._err as err:
            raise PublishError(str(err.value)) from None

    def state_get(self, key: str) -> Optional[str]:
        return self._host.state_get(key)

    def state_set(self, key: str, value: str) -> None:
        self._host.state_set(key, value)

    def state_delete(self, key: str) -> None:
        self._host.state_delete(key)

    def config_get(self, key: str) -> Optional[str]:
        return self._host.config_get(key)

    def send_after_commit(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: Optional[str],
        attempts: Optional[int],
    ) -> str:
        request = self._host.OutgoingRequest(method, url, headers, body, attempts)
        try:
            return str(self._host.send_after_commit(request))
        except self._err as err:
            raise QueueError(str(err.value)) from None

    def retry(self, reason: str) -> BaseException:
        return self._err(self._retry(reason))

    def reject(self, reason: str) -> BaseException:
        return self._err(self._reject(reason))


_binding: Optional[Binding] = None

# Inside the component, bind now: componentize-py only lets modules be
# imported while it builds the component (it runs this import then), not
# later while an event is handled. Outside, there is nothing to bind.
try:
    _binding = _WitBinding()
except ImportError:
    pass


def use_binding(binding: Optional[Binding]) -> Optional[Binding]:
    """Installs ``binding`` as the host (``None``: back to the component's
    own bindings, built on first use) and returns the previous one, so
    tests can run handlers without a component."""
    global _binding
    previous, _binding = _binding, binding
    return previous


def _host() -> Binding:
    global _binding
    if _binding is None:
        _binding = _WitBinding()
    return _binding


class Event:
    """One event delivered to this plugin: read-only, its JSON ``data``
    parsed when first read (a handler that never reads it, never pays for
    it)."""

    # Slots and properties, not a frozen dataclass: built once per event,
    # inside the component, where a frozen dataclass's ``__init__`` costs
    # several times this one's.
    __slots__ = ("_id", "_event_type", "_stream_id", "_timestamp", "_attempt", "_data", "_raw")

    def __init__(
        self,
        id: str,
        event_type: str,
        stream_id: str,
        timestamp: Optional[float],
        attempt: int,
        data: Optional[dict[str, Any]] = None,
        raw: str = "",
    ) -> None:
        self._id = id
        self._event_type = event_type
        self._stream_id = stream_id
        self._timestamp = timestamp
        self._attempt = attempt
        self._data = data
        self._raw = raw

    @property
    def id(self) -> str:
        """``event_id`` of the JSON, else ``_metadata.id``, else the stream id."""
        return self._id

    @property
    def event_type(self) -> str:
        return self._event_type

    @property
    def stream_id(self) -> str:
        """Entry id in the subscriber's stream."""
        return self._stream_id

    @property
    def timestamp(self) -> Optional[float]:
        """Seconds since the epoch, from the JSON."""
        return self._timestamp

    @property
    def attempt(self) -> int:
        """1 on the first delivery."""
        return self._attempt

    @property
    def raw(self) -> str:
        """``data`` as the host sent it (a JSON text)."""
        return self._raw

    @property
    def data(self) -> dict[str, Any]:
        """The JSON object as published, without ``_metadata``/``_failures``.
        The host delivers JSON objects only; data that is not one (a test
        can send it) will never parse, so reading it raises
        :class:`Reject`."""
        data = self._data
        if data is None:
            try:
                data = json.loads(self._raw)
            except ValueError as err:
                raise Reject(f"malformed {self._event_type} event {self._id}: {err}") from None
            if not isinstance(data, dict):
                raise Reject(f"malformed {self._event_type} event {self._id}: data is not a JSON object")
            self._data = data
        return data

    def __repr__(self) -> str:
        return (
            f"Event(id={self._id!r}, event_type={self._event_type!r}, stream_id={self._stream_id!r}, "
            f"timestamp={self._timestamp!r}, attempt={self._attempt!r}, data={self.data!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self._id, self._event_type, self._stream_id, self._timestamp, self._attempt, self.data) == (
            other._id,
            other._event_type,
            other._stream_id,
            other._timestamp,
            other._attempt,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable data

    @classmethod
    def from_raw(cls, raw: Any) -> "Event":
        """Builds an Event from the binding's record (anything with the WIT
        field names); ``data`` is parsed when first read."""
        timestamp = raw.timestamp
        return cls(
            raw.id,
            raw.event_type,
            raw.stream_id,
            None if timestamp is None else float(timestamp),
            raw.attempt,
            None,
            raw.data,
        )


Handler = Callable[[Event], Any]


def dispatch(handler: Handler, raw_event: Any, binding: Optional[Binding] = None) -> None:
    """Runs ``handler`` on one raw event and maps its outcome to the WIT
    result: returns for ``ok``, raises the binding's ``failure`` error for
    :class:`Retry`/:class:`Reject`, and re-raises any other exception after
    logging it (inside the component, that traps)."""
    b = binding if binding is not None else _host()
    previous = use_binding(b) if binding is not None else None
    try:
        try:
            event = Event.from_raw(raw_event)
            handler(event)
        except Retry as failure:
            raise b.retry(failure.reason) from None
        except Reject as failure:
            raise b.reject(failure.reason) from None
        except Exception as crash:
            what = f"{getattr(raw_event, 'event_type', '?')} event {getattr(raw_event, 'id', '?')}"
            summary = f"uncaught {type(crash).__name__} handling {what}: {crash}"
            b.log("error", summary + "\n" + "".join(traceback.format_exception(crash)).rstrip())
            # Printed first, so it leads what the host quotes from a crashed
            # plugin's output in the trap's DLQ reason.
            print(summary, file=sys.stderr, flush=True)
            raise
    finally:
        if binding is not None:
            use_binding(previous)


def export(handler: Handler) -> type:
    """Returns the ``WitWorld`` class componentize-py looks for, calling
    ``handler`` once per event: ``WitWorld = export(handle)`` in the app
    module. Outside the component (no ``wit_world``) the class has no base,
    so the app module still imports in plain Python tests."""
    try:
        import wit_world

        base: type = wit_world.WitWorld
    except ImportError:
        base = object

    class WitWorld(base):  # type: ignore[misc, valid-type]
        def handle(self, event: Any) -> None:
            dispatch(handler, event)

    WitWorld.__qualname__ = "WitWorld"
    return WitWorld


class _State:
    """This plugin's state: string keys to string values, buffered by the
    host until the handler returns ok (a later ``get`` in the same call sees
    a ``set``)."""

    def get(self, key: str) -> Optional[str]:
        """The value of ``key``, ``None`` if absent."""
        return _host().state_get(key)

    def set(self, key: str, value: str) -> None:
        """Writes ``value`` (a ``str``; use :meth:`set_json` for the rest)."""
        if not isinstance(value, str):
            raise TypeError(f"state value for {key!r} must be a str, got {type(value).__name__}")
        _host().state_set(key, value)

    def delete(self, key: str) -> None:
        """Deletes ``key`` (nothing if absent)."""
        _host().state_delete(key)

    def get_json(self, key: str) -> Any:
        """The JSON value stored under ``key``, ``None`` if absent. A value
        that does not parse means a bug or an incompatible upgrade:
        :class:`Reject`."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            raise Reject(f"state entry `{key}` is corrupt: {err}") from None

    def set_json(self, key: str, value: Any) -> None:
        """Writes ``value`` as compact JSON."""
        self.set(key, json.dumps(value, separators=(",", ":")))

    def increment(self, key: str, by: int = 1) -> int:
        """Adds ``by`` to the counter under ``key`` (absent counts as 0,
        stored as a decimal string) and returns the new value. A value that
        is not an integer: :class:`Reject`."""
        raw = self.get(key)
        try:
            current = 0 if raw is None else int(raw.strip())
        except ValueError:
            raise Reject(f"state entry `{key}` = {raw!r} is not a counter") from None
        value = current + by
        self.set(key, str(value))
        return value


class _Config:
    """This subscriber's ``[subscribers.NAME.config]`` values (always strings)."""

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key``, else ``default``."""
        value = _host().config_get(key)
        return default if value is None else value

    def get_int(self, key: str, default: int) -> int:
        """``key`` parsed as an integer, else ``default``. A value that does
        not parse is a deployment mistake: :class:`Reject` naming the key."""
        raw = _host().config_get(key)
        if raw is None:
            return default
        try:
            return int(raw.strip())
        except ValueError:
            raise Reject(f"config key `{key}` = {raw!r} is not an integer") from None

    def get_bool(self, key: str, default: bool) -> bool:
        """``key`` as a boolean (``true``/``false``), else ``default``;
        anything else: :class:`Reject`."""
        raw = _host().config_get(key)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in ("true", "false"):
            return value == "true"
        raise Reject(f"config key `{key}` = {raw!r} is not true or false")


class _Log:
    """Log lines, forwarded to the host's log with the subscriber and event id."""

    def trace(self, message: str) -> None:
        _host().log("trace", str(message))

    def debug(self, message: str) -> None:
        _host().log("debug", str(message))

    def info(self, message: str) -> None:
        _host().log("info", str(message))

    def warn(self, message: str) -> None:
        _host().log("warn", str(message))

    warning = warn

    def error(self, message: str) -> None:
        _host().log("error", str(message))


state = _State()
config = _Config()
log = _Log()


def publish(event_type: str, data: Mapping[str, Any]) -> str:
    """Publishes ``data`` (a JSON object) as an event of ``event_type`` and
    returns the new event id. Buffered until the handler returns ok. The
    host checks the event while buffering it, so a refusal is a property of
    the event and retrying would not help: :class:`Reject`."""
    if not isinstance(data, Mapping):
        raise Reject(f"cannot publish {event_type} event: data must be a JSON object")
    try:
        text = json.dumps(dict(data), separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise Reject(f"cannot serialise {event_type} event: {err}") from None
    try:
        return _host().publish(event_type, text)
    except PublishError as err:
        raise Reject(f"cannot publish {event_type} event: {err}") from None


# After the names it uses: it imports `Reject` and `_host` from here.
from .after_commit import (  # noqa: E402
    QueueError,
    SendRefused,
    post_json_after_commit,
    send_after_commit,
)
