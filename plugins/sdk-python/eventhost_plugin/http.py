"""Outbound HTTP for eventhost plugins, through the host's ``wasi:http``.

A request reaches only what the subscriber's ``grants.http`` names; any
other fails with :class:`HttpError` whose ``code`` is ``HttpRequestDenied``,
before a byte leaves::

    from eventhost_plugin import Retry, http

    def handle(event):
        try:
            answer = http.post("https://api.example.org/v1/charges",
                               json={"order": event.data["order_id"]})
        except http.HttpError as err:
            raise Retry(f"provider unreachable: {err}")
        if answer.status >= 500:
            raise Retry(f"provider answered {answer.status}")
        state.set("charge", answer.json()["id"])

Calls block until the whole response is read (the host bounds the time and
the size). The host adds an ``Idempotency-Key`` header, the same on every
run of the event, unless the request sets its own.

Import this module at the top of the app module, as the rest of the SDK:
inside the component it binds to the ``wasi:http`` bindings that
``eventhost build`` generates. Outside a component, tests install a fake
with :func:`use_transport`.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlsplit

__all__ = ["HttpError", "Response", "get", "post", "request", "use_transport"]

# Bytes read or written per call on a body's stream (wasi:io allows 4096 a
# blocking write).
_CHUNK = 4096
_READ = 64 * 1024


class HttpError(Exception):
    """A request that got no response: refused by the host
    (``HttpRequestDenied``), unreachable, timed out, or a response that
    could not be read. ``code`` is the ``wasi:http`` error code's name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Response:
    """A response, read whole."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    """Names in lower case; repeated headers joined with ``", "``."""
    body: bytes = b""

    def text(self) -> str:
        """The body as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not)."""
        return _json.loads(self.body)


Transport = Callable[[str, str, Mapping[str, str], bytes, Optional[float]], Response]


class _WitTransport:
    """Requests through the componentize-py bindings of
    ``wasi:http/outgoing-handler`` (they exist only inside the component)."""

    def __init__(self) -> None:
        from componentize_py_types import Err, Ok
        from wit_world.imports import outgoing_handler, streams
        from wit_world.imports import wasi_http_types as types

        self._err, self._ok = Err, Ok
        self._handler = outgoing_handler
        self._closed = streams.StreamError_Closed
        self._t = types

    def __call__(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: Optional[float],
    ) -> Response:
        t = self._t
        parts = urlsplit(url)
        schemes = {"http": t.Scheme_Http(), "https": t.Scheme_Https()}
        if parts.scheme not in schemes or not parts.netloc:
            raise HttpError("HttpRequestUriInvalid", f"{method} {url}: not an http(s) URL")
        try:
            fields = t.Fields.from_list([(k, str(v).encode()) for k, v in headers.items()])
        except self._err as err:
            raise HttpError("HttpRequestHeaderInvalid", f"{method} {url}: {err.value}") from None
        request = t.OutgoingRequest(fields)
        methods = {
            "GET": t.Method_Get(), "HEAD": t.Method_Head(), "POST": t.Method_Post(),
            "PUT": t.Method_Put(), "DELETE": t.Method_Delete(), "PATCH": t.Method_Patch(),
            "OPTIONS": t.Method_Options(),
        }
        request.set_method(methods.get(method.upper(), t.Method_Other(method)))
        request.set_scheme(schemes[parts.scheme])
        request.set_authority(parts.netloc)
        request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        options = None
        if timeout is not None:
            options = t.RequestOptions()
            nanos = int(timeout * 1e9)
            options.set_connect_timeout(nanos)
            options.set_first_byte_timeout(nanos)
            options.set_between_bytes_timeout(nanos)
        outgoing = request.body()
        try:
            future = self._handler.handle(request, options)
        except self._err as err:
            raise self._failure(method, url, err.value) from None
        # The body is written while the host sends: it waits for it.
        with outgoing.write() as stream:
            for at in range(0, len(body), _CHUNK):
                try:
                    stream.blocking_write_and_flush(body[at : at + _CHUNK])
                except self._err:
                    break  # the request failed: its future says why
        try:
            t.OutgoingBody.finish(outgoing, None)
        except self._err:
            pass  # the request failed: its future says why
        with future:
            with future.subscribe() as ready:
                ready.block()
            got = future.get()
        if got is None or not isinstance(got, self._ok):
            raise HttpError("InternalError", f"{method} {url}: the response was already taken")
        if not isinstance(got.value, self._ok):
            raise self._failure(method, url, got.value.value)
        with got.value.value as response:
            with response.headers() as fields:
                names: dict[str, str] = {}
                for name, value in fields.entries():
                    text = value.decode("latin-1")
                    key = name.lower()
                    names[key] = f"{names[key]}, {text}" if key in names else text
            status = response.status()
            incoming = response.consume()
            return Response(status, names, self._read(method, url, incoming))

    def _read(self, method: str, url: str, incoming: Any) -> bytes:
        chunks = []
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(_READ))
                except self._err as err:
                    if isinstance(err.value, self._closed):
                        break
                    code = self._t.http_error_code(err.value.value)
                    raise self._failure(method, url, code, "reading the response failed") from None
        self._t.IncomingBody.finish(incoming).__exit__(None, None, None)
        return b"".join(chunks)

    @staticmethod
    def _failure(method: str, url: str, code: Any, what: str = "failed") -> HttpError:
        name = type(code).__name__.removeprefix("ErrorCode_") if code is not None else "Unknown"
        detail = getattr(code, "value", None)
        more = f" ({detail})" if detail is not None else ""
        return HttpError(name, f"{method} {url} {what}: {name}{more}")


_transport: Optional[Transport] = None

# Inside the component, bind now: componentize-py lets modules be imported
# only while it builds the component. Outside, there is nothing to bind.
try:
    _transport = _WitTransport()
except ImportError:
    pass


def use_transport(transport: Optional[Transport]) -> Optional[Transport]:
    """Installs ``transport`` (``transport(method, url, headers, body,
    timeout) -> Response``) for requests and returns the previous one, so
    plain-Python tests can answer a handler's requests."""
    global _transport
    previous, _transport = _transport, transport
    return previous


def request(
    method: str,
    url: str,
    *,
    headers: Optional[Mapping[str, str]] = None,
    body: bytes | str = b"",
    json: Any = None,
    timeout: Optional[float] = None,
) -> Response:
    """Sends a request and returns its response, read whole; raises
    :class:`HttpError` if none came (``HttpRequestDenied`` if no grant names
    the URL). ``json`` sends that value as the body with its content type;
    ``timeout`` (seconds) bounds connecting and each wait for bytes, within
    the host's own bounds."""
    sent = dict(headers or {})
    if json is not None:
        body = _json.dumps(json, separators=(",", ":"))
        if not any(k.lower() == "content-type" for k in sent):
            sent["content-type"] = "application/json"
    data = body.encode() if isinstance(body, str) else bytes(body)
    if data and not any(k.lower() == "content-length" for k in sent):
        # Else the body goes out chunked, which not every server reads.
        sent["content-length"] = str(len(data))
    if _transport is None:
        raise HttpError(
            "Unavailable",
            "no wasi:http outside a component built by `eventhost build` "
            "(tests: eventhost_plugin.http.use_transport)",
        )
    return _transport(method, url, sent, data, timeout)


def get(url: str, **kwargs: Any) -> Response:
    """``request("GET", url, ...)``."""
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> Response:
    """``request("POST", url, ...)``."""
    return request("POST", url, **kwargs)
