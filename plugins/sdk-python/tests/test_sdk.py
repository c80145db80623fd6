"""The SDK's logic against fake hosts: the in-memory FakeHost, and fake
componentize-py modules (``wit_world``, ``componentize_py_types``) for the
real binding and ``export``."""

from __future__ import annotations

import enum
import sys
import types
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

import eventhost_plugin as sdk
from eventhost_plugin import Event, Reject, Retry, config, log, publish, state
from eventhost_plugin.testing import FakeHost, RawEvent


def counting(event: Event) -> None:
    n = state.increment("count")
    log.info(f"{event.event_type} {event.id}: {n}")


def test_ok_parses_data_and_counts_from_absent() -> None:
    host = FakeHost()
    seen: list[Event] = []

    def handler(event: Event) -> None:
        seen.append(event)
        counting(event)

    out = host.run(handler, "Demo", {"a": [1, 2]}, id="e-1", attempt=2, timestamp=1.5)
    assert out.outcome == "ok"
    assert host.state == {"count": "1"}
    assert host.logs == [("info", "Demo e-1: 1")]
    (event,) = seen
    assert (event.id, event.event_type, event.attempt, event.timestamp) == ("e-1", "Demo", 2, 1.5)
    assert event.data == {"a": [1, 2]} and event.raw == '{"a": [1, 2]}'


def test_counter_is_a_decimal_string() -> None:
    host = FakeHost(state={"count": "41"})
    assert host.run(counting, "Demo", {}).outcome == "ok"
    assert host.state["count"] == "42"


def test_a_counter_that_is_not_a_number_rejects() -> None:
    host = FakeHost(state={"count": "many"})
    out = host.run(counting, "Demo", {})
    assert (out.outcome, out.reason) == ("reject", "state entry `count` = 'many' is not a counter")


def test_retry_and_reject_map_to_failures() -> None:
    def retrying(event: Event) -> None:
        raise Retry("db down")

    def rejecting(event: Event) -> None:
        raise Reject("no order id")

    assert FakeHost().run(retrying, "T", {}).__dict__ == {
        "outcome": "retry", "reason": "db down", "exception": None}
    assert FakeHost().run(rejecting, "T", {}).reason == "no order id"
    assert FakeHost().run(rejecting, "T", {}).outcome == "reject"


def test_an_uncaught_exception_is_logged_then_propagates(capsys: pytest.CaptureFixture[str]) -> None:
    def buggy(event: Event) -> None:
        {}["missing"]

    host = FakeHost()
    out = host.run(buggy, "T", {}, id="e-9")
    assert capsys.readouterr().err == "uncaught KeyError handling T event e-9: 'missing'\n"
    assert out.outcome == "crash" and isinstance(out.exception, KeyError)
    ((level, message),) = host.logs
    assert level == "error"
    assert message.startswith("uncaught KeyError handling T event e-9: 'missing'\n")
    assert "Traceback" in message and "buggy" in message


def reading(event: Event) -> None:
    event.data.get("n")
    counting(event)


def test_data_that_is_not_a_json_object_rejects_when_read() -> None:
    host = FakeHost()
    out = host.run(reading, "T", "not json", id="e-2")
    assert out.outcome == "reject"
    assert out.reason is not None and out.reason.startswith("malformed T event e-2: ")
    assert host.run(reading, "T", "[1]").reason == "malformed T event test-1: data is not a JSON object"
    assert host.state == {}, "rejected before it counted"
    # Parsed when first read: a handler that never reads it is not refused.
    assert host.run(counting, "T", "not json").outcome == "ok"


def test_an_event_is_read_only_and_compares_by_value() -> None:
    seen: list[Event] = []
    FakeHost().run(seen.append, "T", {"a": 1}, id="e-3")
    (event,) = seen
    with pytest.raises(AttributeError):
        event.id = "other"  # type: ignore[misc]
    same = Event("e-3", "T", event.stream_id, event.timestamp, event.attempt, {"a": 1})
    assert event == same and "data={'a': 1}" in repr(event) and "raw" not in repr(event)


def test_publish_returns_the_id_and_serialises_compactly() -> None:
    host = FakeHost()
    ids: list[str] = []
    host.run(lambda e: ids.append(publish("Out", {"k": "v", "n": 1})), "T", {})
    assert host.published == [("Out", {"k": "v", "n": 1})] and len(ids[0]) == 36


def test_publish_refused_or_unserialisable_rejects() -> None:
    host = FakeHost(refuse_publish="event_type is empty")
    out = host.run(lambda e: publish("", {}), "T", {})
    assert (out.outcome, out.reason) == ("reject", "cannot publish  event: event_type is empty")
    out = FakeHost().run(lambda e: publish("X", {"s": {1, 2}}), "T", {})
    assert out.outcome == "reject" and out.reason is not None
    assert out.reason.startswith("cannot serialise X event:")
    out = FakeHost().run(lambda e: publish("X", [1]), "T", {})  # type: ignore[arg-type]
    assert out.reason == "cannot publish X event: data must be a JSON object"


def test_state_json_delete_and_type_checks() -> None:
    host = FakeHost(state={"bad": "{", "gone": "x"})

    def handler(event: Event) -> None:
        state.set_json("obj", {"a": 1})
        assert state.get_json("obj") == {"a": 1}
        assert state.get_json("absent") is None
        state.delete("gone")
        state.delete("never")
        with pytest.raises(TypeError):
            state.set("n", 1)  # type: ignore[arg-type]
        state.get_json("bad")

    out = host.run(handler, "T", {})
    assert out.outcome == "reject" and out.reason is not None
    assert out.reason.startswith("state entry `bad` is corrupt")
    assert host.state == {"bad": "{", "obj": '{"a":1}'}


def test_config_values_and_parse_errors() -> None:
    host = FakeHost(config={"region": "eu", "limit": " 5 ", "on": "TRUE", "bad": "x"})
    got: dict[str, Any] = {}

    def handler(event: Event) -> None:
        got["region"] = config.get("region")
        got["missing"] = config.get("missing", "d")
        got["limit"] = config.get_int("limit", 1)
        got["limit_default"] = config.get_int("nope", 7)
        got["on"] = config.get_bool("on", False)
        config.get_int("bad", 0)

    out = host.run(handler, "T", {})
    assert got == {"region": "eu", "missing": "d", "limit": 5, "limit_default": 7, "on": True}
    assert (out.outcome, out.reason) == ("reject", "config key `bad` = 'x' is not an integer")


def test_every_log_level() -> None:
    host = FakeHost()

    def handler(event: Event) -> None:
        log.trace("t"); log.debug("d"); log.info("i"); log.warn("w"); log.warning("w2"); log.error("e")

    host.run(handler, "T", {})
    assert host.logs == [("trace", "t"), ("debug", "d"), ("info", "i"),
                         ("warn", "w"), ("warn", "w2"), ("error", "e")]


def test_dispatch_restores_the_previous_binding() -> None:
    outer = FakeHost()
    previous = sdk.use_binding(outer)
    try:
        FakeHost().run(counting, "T", {})
        state.set("k", "v")
        assert outer.state == {"k": "v"}
    finally:
        sdk.use_binding(previous)


# The real binding, against fake componentize-py modules.

class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


@dataclass
class Failure_Retry:
    value: str


@dataclass
class Failure_Reject:
    value: str


class Err(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


class FakeWitHost(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("wit_world.imports.host")
        self.calls: list[tuple[Any, ...]] = []
        self.store: dict[str, str] = {}

    def log(self, level: Level, message: str) -> None:
        self.calls.append(("log", level, message))

    def publish(self, event_type: str, data: str) -> str:
        if event_type == "bad":
            raise Err("refused")
        self.calls.append(("publish", event_type, data))
        return "new-id"

    def state_get(self, key: str) -> str | None:
        return self.store.get(key)

    def state_set(self, key: str, value: str) -> None:
        self.store[key] = value

    def state_delete(self, key: str) -> None:
        self.store.pop(key, None)

    def config_get(self, key: str) -> str | None:
        return {"who": "me"}.get(key)

    @dataclass
    class OutgoingRequest:
        method: str
        url: str
        headers: list[tuple[str, str]]
        body: str | None
        attempts: int | None

    def send_after_commit(self, request: "FakeWitHost.OutgoingRequest") -> str:
        if "denied" in request.url:
            raise Err("HttpRequestDenied: no grant names it")
        self.calls.append(("send_after_commit", request))
        return "key-1"


@pytest.fixture
def wit() -> Iterator[FakeWitHost]:
    host = FakeWitHost()
    world = types.ModuleType("wit_world")
    world.WitWorld = type("WitWorld", (), {})  # type: ignore[attr-defined]
    imports = types.ModuleType("wit_world.imports")
    imports.host = host  # type: ignore[attr-defined]
    wtypes = types.ModuleType("wit_world.imports.types")
    wtypes.Level = Level  # type: ignore[attr-defined]
    wtypes.Failure_Retry = Failure_Retry  # type: ignore[attr-defined]
    wtypes.Failure_Reject = Failure_Reject  # type: ignore[attr-defined]
    cpt = types.ModuleType("componentize_py_types")
    cpt.Err = Err  # type: ignore[attr-defined]
    fakes = {"wit_world": world, "wit_world.imports": imports,
             "wit_world.imports.host": host, "wit_world.imports.types": wtypes,
             "componentize_py_types": cpt}
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    previous = sdk.use_binding(None)
    try:
        yield host
    finally:
        sdk.use_binding(previous)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def raw(data: str = "{}") -> RawEvent:
    return RawEvent("e-1", "Demo", "1-0", None, 1, data)


def test_export_builds_the_wit_world_over_the_real_binding(wit: FakeWitHost) -> None:
    def handler(event: Event) -> None:
        n = state.increment("count")
        log.warn(f"n={n} who={config.get('who')}")
        assert publish("Out", {"n": n}) == "new-id"

    world_class = sdk.export(handler)
    assert world_class.__name__ == "WitWorld"
    assert issubclass(world_class, sys.modules["wit_world"].WitWorld)  # type: ignore[attr-defined]
    world_class().handle(raw())
    assert wit.store == {"count": "1"}
    assert wit.calls == [("log", Level.WARN, "n=1 who=me"), ("publish", "Out", '{"n":1}')]


def test_failures_become_err_of_the_wit_variant(wit: FakeWitHost) -> None:
    def retrying(event: Event) -> None:
        raise Retry("later")

    with pytest.raises(Err) as caught:
        sdk.export(retrying)().handle(raw())
    assert caught.value.value == Failure_Retry("later")

    with pytest.raises(Err) as caught:
        sdk.export(lambda e: publish("bad", {}))().handle(raw())
    assert caught.value.value == Failure_Reject("cannot publish bad event: refused")


def test_uncaught_exceptions_propagate_out_of_the_component(wit: FakeWitHost) -> None:
    def buggy(event: Event) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sdk.export(buggy)().handle(raw())
    ((kind, level, message),) = wit.calls
    assert (kind, level) == ("log", Level.ERROR)
    assert message.startswith("uncaught RuntimeError handling Demo event e-1: boom\n")


def test_export_works_outside_the_component() -> None:
    assert "wit_world" not in sys.modules
    world_class = sdk.export(counting)
    assert world_class.__bases__ == (object,)
    host = FakeHost(state={"count": "1"})
    previous = sdk.use_binding(host)
    try:
        world_class().handle(raw())
    finally:
        sdk.use_binding(previous)
    assert host.state == {"count": "2"}


def test_inside_the_component_the_binding_is_made_at_import(wit: FakeWitHost) -> None:
    # componentize-py allows imports only while it builds the component, so
    # the SDK must bind when it is imported, not on the first event.
    import importlib.util

    spec = importlib.util.spec_from_file_location("sdk_copy", sdk.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    sys.modules["sdk_copy"] = copy  # dataclasses look their module up
    try:
        spec.loader.exec_module(copy)
    finally:
        del sys.modules["sdk_copy"]
    assert type(copy._binding).__name__ == "_WitBinding"
    copy.state.set("k", "v")
    assert wit.store == {"k": "v"}


def test_the_real_binding_queues_a_request_record_and_maps_refusals(wit: FakeWitHost) -> None:
    assert sdk.post_json_after_commit("https://h.example/in", {"a": 1}, attempts=2) == "key-1"
    ((kind, request),) = wit.calls
    assert kind == "send_after_commit"
    assert request == FakeWitHost.OutgoingRequest(
        "POST", "https://h.example/in", [("content-type", "application/json")], '{"a":1}', 2
    )
    with pytest.raises(sdk.SendRefused) as refused:
        sdk.send_after_commit("get", "https://denied.example/")
    assert refused.value.why == "HttpRequestDenied: no grant names it"
    assert refused.value.reason == "cannot queue GET https://denied.example/: HttpRequestDenied: no grant names it"
