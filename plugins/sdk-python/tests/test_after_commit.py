"""``send_after_commit`` / ``post_json_after_commit`` against the in-memory
FakeHost: what a handler queues is recorded; refusals and bad arguments."""

from __future__ import annotations

import pytest

from eventhost_plugin import (
    Event,
    Reject,
    SendRefused,
    post_json_after_commit,
    send_after_commit,
)
from eventhost_plugin.testing import FakeHost


def test_a_queued_request_is_recorded_with_the_key_the_call_returned() -> None:
    host = FakeHost()
    keys: list[str] = []

    def handler(event: Event) -> None:
        keys.append(
            send_after_commit(
                "put",
                "https://hooks.example/orders/o-1",
                headers={"x-source": "orders"},
                body="shipped",
                attempts=3,
            )
        )

    assert host.run(handler, "Demo", {}).outcome == "ok"
    (queued,) = host.queued
    assert queued.key == keys[0]
    assert (queued.method, queued.url, queued.body, queued.attempts) == (
        "PUT",
        "https://hooks.example/orders/o-1",
        "shipped",
        3,
    )
    assert queued.headers == [("x-source", "orders")]


def test_post_json_after_commit_sends_json() -> None:
    host = FakeHost()

    def handler(event: Event) -> None:
        post_json_after_commit("https://hooks.example/in", {"order_id": event.data["order_id"]})

    assert host.run(handler, "Demo", {"order_id": "o-7"}).outcome == "ok"
    (queued,) = host.queued
    assert queued.json == {"order_id": "o-7"}
    assert queued.headers == [("content-type", "application/json")]
    assert queued.method == "POST" and queued.attempts is None


def test_an_ungranted_url_is_refused_with_the_hosts_reason() -> None:
    host = FakeHost(grants=["https://hooks.example/"])
    caught: list[SendRefused] = []

    def handler(event: Event) -> None:
        try:
            post_json_after_commit("https://elsewhere.example/", {})
        except SendRefused as refused:
            caught.append(refused)
        post_json_after_commit("https://elsewhere.example/", {})

    outcome = host.run(handler, "Demo", {})
    assert isinstance(caught[0], Reject)
    assert caught[0].why.startswith("HttpRequestDenied: ")
    assert outcome.outcome == "reject"
    assert outcome.reason is not None
    assert outcome.reason.startswith("cannot queue POST https://elsewhere.example/: HttpRequestDenied")
    assert host.queued == []


@pytest.mark.parametrize("kwargs", [{"body": b"bytes"}, {"attempts": 0}])
def test_bad_arguments_are_a_bug_in_the_plugin(kwargs: dict) -> None:
    host = FakeHost()
    outcome = host.run(lambda e: send_after_commit("POST", "https://a/", **kwargs), "Demo", {})
    assert outcome.outcome == "crash"
    assert isinstance(outcome.exception, TypeError)
    assert host.queued == []


def test_a_body_that_does_not_serialise_rejects() -> None:
    host = FakeHost()
    outcome = host.run(lambda e: post_json_after_commit("https://a/", {"x": object()}), "Demo", {})
    assert outcome.outcome == "reject"
    assert host.queued == []
