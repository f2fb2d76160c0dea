"""``IdempotencyMiddleware``: the Idempotency-Key contract around any ASGI application.

::

    from idempotent import configure
    from idempotent.contrib.asgi import IdempotencyMiddleware

    configure(engine=engine)
    app.add_middleware(IdempotencyMiddleware, ttl_seconds=24 * 3600)   # Starlette / FastAPI
    app = IdempotencyMiddleware(app)                                    # any ASGI app

For applications that cannot decorate each view. The middleware runs in lease mode: the claim
commits at once in the store (by default the SQL store on the engine given to ``configure``),
the application runs, and its complete response is stored before it is sent. Requests without
the key header, and GET/HEAD/OPTIONS, pass straight through untouched; a duplicate arriving while
the first is still running waits up to ``wait`` seconds and then gets the stored response (or a
409 problem). The request body is read once, for the fingerprint, and handed on to the
application intact. A streamed response (several body messages) is passed through and not
stored. The scope has no route template before routing: it is method + path + principal.

Pure ASGI: no framework is imported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from typing_extensions import Unpack

from idempotent.decorator import Seconds
from idempotent.http import HTTPRequest, MiddlewareOptions, Policy, StoredResponse

__all__ = ["IdempotencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _latin1(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1")) for name, value in pairs]


@dataclass
class _Exchange:
    """One run of the application: the messages it sent, and how far it got."""

    send: Send
    start: Message | None = None
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # the last body message was seen
    streamed: bool = False  # a body came in several messages: passed through, not stored
    error: BaseException | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)

    async def capture(self, message: Message) -> None:
        """The ``send`` the application gets: buffer a complete response, pass a streamed one on."""
        if self.streamed:
            await self.send(message)
            return
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.complete:
            await self.send(message)
            return
        body = bytes(message.get("body", b""))
        if message.get("more_body", False):
            if self.start is not None:
                await self.send(self.start)
            for chunk in self.chunks:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.streamed = True
            self.ready.set()
            await self.send(message)
            return
        self.chunks.append(body)
        self.complete = True
        self.ready.set()

    def stored(self) -> StoredResponse | None:
        if self.streamed or self.start is None:
            return None
        return StoredResponse.capture(
            self.start["status"], _latin1(self.start.get("headers", [])), b"".join(self.chunks)
        )

    async def flush(self) -> None:
        """Send what was buffered (a response that was not streamed)."""
        if self.streamed or self.start is None:
            return
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": b"".join(self.chunks), "more_body": False})


async def _send_stored(send: Send, stored: StoredResponse) -> None:
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers]
    if stored.header("content-length") is None:
        headers.append((b"content-length", str(len(stored.body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})


class IdempotencyMiddleware:
    """Make every POST/PUT/PATCH/DELETE that carries an ``Idempotency-Key`` run once.

    ``store`` and ``ttl_seconds`` are the arguments users of other idempotency middleware
    already pass (``store`` is any store of this library: ``SQLStore(engine)``, the default being
    the one ``configure`` set). ``principal_from(scope)`` receives the ASGI scope and names the
    caller, e.g. from a header or ``scope["user"]``: set it on multi-tenant APIs, so one caller's
    key never replays another's response. ``wait`` bounds how long a duplicate waits for the first
    request, ``lease`` how long a crashed request holds its key. The other options are
    :class:`idempotent.http.Policy`'s.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Any = None,
        ttl_seconds: Seconds | None = None,
        *,
        principal_from: Callable[[Scope], object] | None = None,
        **options: Unpack[MiddlewareOptions],
    ) -> None:
        self.app = app
        self.policy = Policy.for_middleware(
            type(self).__qualname__,
            options,
            store=store,
            ttl_seconds=ttl_seconds,
            principal_from=principal_from,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _latin1(scope.get("headers", []))
        if not self.policy.applies(scope["method"], headers):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if messages[-1]["type"] != "http.request":  # the client left before sending the whole body
            await self.app(scope, _replaying(messages, receive), send)
            return
        request = HTTPRequest(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            body=bytes(body),
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            principal=self.policy.principal(scope),
        )
        exchange = _Exchange(send)
        async with anyio.create_task_group() as group:

            async def run_app() -> None:
                try:
                    await self.app(scope, _replaying(messages, receive), exchange.capture)
                except BaseException as exc:
                    exchange.error = exc
                finally:
                    exchange.ready.set()

            async def call() -> _Exchange:
                group.start_soon(run_app)
                await exchange.ready.wait()  # the whole response, a stream's start, or an error
                if exchange.error is not None and not exchange.complete and not exchange.streamed:
                    raise exchange.error
                return exchange

            result = await self.policy.run_async(request, call, _Exchange.stored)
            if isinstance(result, StoredResponse):
                await _send_stored(send, result)
            else:
                await result.flush()
        if exchange.error is not None and (exchange.complete or exchange.streamed):
            raise exchange.error  # failed after its response (a background task): as without us


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands the application the request messages already read, then the
    server's own ``receive`` (for ``http.disconnect``)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
