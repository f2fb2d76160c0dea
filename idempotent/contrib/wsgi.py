"""WSGI middleware with the ``Idempotency-Key`` contract, for Flask or any WSGI application.

::

    from idempotent.contrib.wsgi import IdempotencyMiddleware

    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, ttl_seconds=24 * 3600)   # Flask
    application = IdempotencyMiddleware(application)                           # any WSGI app

It runs in lease mode: the claim commits at once on the store (default: the engine given to
``idempotent.configure``), the application runs, and its complete response (status, headers,
body) is stored in a second short transaction. A retry with the same key gets that response plus
``Idempotent-Replayed: true``; a duplicate that arrives while the first request is still running
waits up to ``wait`` seconds for it and gets the replay (or a 409 problem with ``Retry-After``).
Requests whose method is not POST, PUT, PATCH or DELETE, and requests without the header, pass
straight through. The request body is read once and handed on as a fresh ``wsgi.input``.

A middleware runs before routing, so the request path stands for the route in the scope; pass
``principal_from`` (called with the WSGI environ) to keep callers' keys apart. A streamed
response (no ``Content-Length`` and an iterable without a length), a 5xx response and an
exception are not stored: the claim is released and a retry runs again.
"""

from __future__ import annotations

import http
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from typing_extensions import Unpack

from idempotent.decorator import Seconds
from idempotent.errors import ConfigurationError
from idempotent.http import HTTPRequest, MiddlewareOptions, Policy, StoredResponse

__all__ = ["IdempotencyMiddleware"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Set in the environ of every request the middleware handles (read by the Flask decorator).
MIDDLEWARE_MARK = "idempotent.middleware"


def _request_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """Header fields from the environ, as ``(Name-Like-This, value)`` pairs."""
    pairs = [
        (name[5:].replace("_", "-").title(), value)
        for name, value in environ.items()
        if name.startswith("HTTP_") and isinstance(value, str)
    ]
    pairs.extend(
        (name.replace("_", "-").title(), environ[name])
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH")
        if environ.get(name)
    )
    return pairs


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, read once; ``wsgi.input`` is replaced by a fresh stream of the same bytes."""
    stream = environ.get("wsgi.input")
    length_text = environ.get("CONTENT_LENGTH") or ""
    body = b""
    if stream is not None:
        if length_text.strip().isdigit():
            body = stream.read(int(length_text))
        elif environ.get("wsgi.input_terminated"):
            body = stream.read()
    environ["wsgi.input"] = io.BytesIO(body)
    if body or length_text:
        environ["CONTENT_LENGTH"] = str(len(body))
    return body


@dataclass
class _Response:
    """What the wrapped application answered: the status line, headers and body so far."""

    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    exc_info: ExcInfo | None = None
    chunks: list[bytes] = field(default_factory=list)
    rest: Iterator[bytes] | None = None  # a streamed body not yet read
    source: Iterable[bytes] | None = None  # the application's iterable, to close

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return self.chunks.append

    @property
    def code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    def stored(self) -> StoredResponse | None:
        """The response to keep; None while the body is streamed."""
        if self.rest is not None:
            return None
        return StoredResponse.capture(self.code, self.headers, b"".join(self.chunks))

    def body(self) -> Iterable[bytes]:
        """The body to send: the buffered chunks, then the streamed rest (closing the source)."""
        if self.rest is None:
            return self.chunks
        return _Streamed(self)


class _Streamed:
    """A streamed body handed on to the server, with the application's ``close()``."""

    def __init__(self, response: _Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        yield from self._response.chunks
        if self._response.rest is not None:
            yield from self._response.rest

    def close(self) -> None:
        _close(self._response.source)


def _close(source: Iterable[bytes] | None) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


def _run(app: WSGIApp, environ: dict[str, Any]) -> _Response:
    """Call the application and read its response: to the end when it has a length, else only up
    to ``start_response`` (a streamed body is not read here). The application's iterable is
    closed once read, or when reading it fails."""
    response = _Response()
    source = app(environ, response.start_response)
    response.source = source
    try:
        iterator = iter(source)
        if not response.status:  # a generator application calls start_response on its first chunk
            for chunk in iterator:
                response.chunks.append(chunk)
                if response.status:
                    break
        declared = any(name.lower() == "content-length" for name, _ in response.headers)
        if response.status and not declared and not _has_length(source):
            response.rest = iterator
            return response
        response.chunks.extend(iterator)
    except BaseException:
        _close(source)
        raise
    _close(source)
    response.source = None
    if not response.status:
        raise RuntimeError("the WSGI application returned without calling start_response")
    return response


def _has_length(value: object) -> bool:
    try:
        len(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _status_line(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


class IdempotencyMiddleware:
    """Wrap a WSGI application so requests carrying an ``Idempotency-Key`` run once.

    ``store`` (default: the ``configure`` store, i.e. the configured engine's keys table) and
    ``ttl_seconds`` (default 24 h) are spelled as in other idempotency middleware, so moving over
    is an import change. ``principal_from(environ)`` names the caller for the scope. The other
    keywords are options of :class:`idempotent.http.Policy` (:class:`~idempotent.http.MiddlewareOptions`:
    ``wait``, ``lease``, ``header``, ``required``, ``key_from_body``, ``methods``,
    ``store_server_errors``, ``problem_base``, ``scope_prefix``, ``max_result_bytes``, ``hooks``).
    """

    def __init__(
        self,
        app: WSGIApp,
        store: Any = None,
        ttl_seconds: Seconds | None = None,
        *,
        principal_from: Callable[[dict[str, Any]], object] | None = None,
        **options: Unpack[MiddlewareOptions],
    ) -> None:
        if not callable(app):
            raise ConfigurationError(
                f"IdempotencyMiddleware wraps a WSGI application (a callable), not {type(app).__name__}"
            )
        self.app = app
        self.policy = Policy.for_middleware(
            type(self).__qualname__,
            options,
            store=store,
            ttl_seconds=ttl_seconds,
            principal_from=principal_from,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = _request_headers(environ)
        method = str(environ.get("REQUEST_METHOD", "GET"))
        if not self.policy.applies(method, headers):
            return self.app(environ, start_response)
        environ[MIDDLEWARE_MARK] = True
        body = _read_body(environ)
        request = HTTPRequest(
            method=method,
            path=str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", "")),
            headers=headers,
            body=body,
            query=str(environ.get("QUERY_STRING", "")),
            principal=self.policy.principal(environ),
        )
        result = self.policy.run(request, lambda: _run(self.app, environ), _Response.stored)
        if isinstance(result, StoredResponse):
            headers = list(result.headers)
            if result.header("content-length") is None:
                headers.append(("Content-Length", str(len(result.body))))
            start_response(_status_line(result.status), headers)
            return [result.body]
        start_response(result.status, result.headers, result.exc_info)
        return result.body()
