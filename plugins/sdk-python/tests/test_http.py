"""``eventhost_plugin.http`` outside a component: what a request sends
through the installed transport, and that without one it says why."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pytest

from eventhost_plugin import http


class Recorder:
    """A transport that records each request and answers ``answer``."""

    def __init__(self, answer: http.Response) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str, dict[str, str], bytes, Optional[float]]] = []

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: Optional[float]
    ) -> http.Response:
        self.sent.append((method, url, dict(headers), body, timeout))
        return self.answer


@pytest.fixture
def recorder() -> Any:
    fake = Recorder(http.Response(201, {"content-type": "application/json"}, b'{"id": "c-1"}'))
    previous = http.use_transport(fake)
    yield fake
    http.use_transport(previous)


def test_post_json_sends_the_body_and_its_content_type(recorder: Recorder) -> None:
    answer = http.post("https://api.example.org/v1/charges", json={"order": "o-1"}, timeout=2.5)
    assert answer.status == 201
    assert answer.json() == {"id": "c-1"}
    assert recorder.sent == [
        (
            "POST",
            "https://api.example.org/v1/charges",
            {"content-type": "application/json", "content-length": "15"},
            b'{"order":"o-1"}',
            2.5,
        )
    ]


def test_get_sends_headers_and_no_body(recorder: Recorder) -> None:
    answer = http.get("http://127.0.0.1:8080/x?y=1", headers={"Idempotency-Key": "k-1"})
    assert answer.text() == '{"id": "c-1"}'
    assert recorder.sent == [("GET", "http://127.0.0.1:8080/x?y=1", {"Idempotency-Key": "k-1"}, b"", None)]


def test_without_a_transport_a_request_says_why() -> None:
    previous = http.use_transport(None)
    try:
        with pytest.raises(http.HttpError) as raised:
            http.get("http://127.0.0.1:8080/")
        assert raised.value.code == "Unavailable"
        assert "use_transport" in str(raised.value)
    finally:
        http.use_transport(previous)
