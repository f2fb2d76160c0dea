"""``IdempotencyMiddleware`` around a plain Starlette app, on every database (its SQL store on a sync
or an async engine), through the test client and httpx's ASGI transport."""

import asyncio
import hashlib
import json
import warnings
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from idempotent import SQLStore
from idempotent.events import Event, EventInfo
from idempotent.testing import MemoryStore
from tests.conftest import Db

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotent.contrib.asgi import IdempotencyMiddleware


class Backend:
    """A plain Starlette app counting its runs; ``gate`` holds ``/slow`` until set."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None

    async def create(self, request: Request) -> Response:
        body = await request.body()
        self.runs.append(request.url.path)
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return JSONResponse(
            {"run": len(self.runs), "sha": hashlib.sha256(body).hexdigest(), "size": len(body)},
            status_code=201,
            headers={"Set-Cookie": "s=1", "X-Order": str(len(self.runs))},
        )

    async def stream(self, request: Request) -> Response:
        self.runs.append("stream")

        async def chunks() -> Any:
            yield b"part 1,"
            yield b"part 2"

        return StreamingResponse(chunks(), media_type="text/plain")

    def app(self, **options: Any) -> IdempotencyMiddleware:
        routes = [
            Route("/orders", self.create, methods=["GET", "POST"]),
            Route("/slow", self.create, methods=["POST"]),
            Route("/stream", self.stream, methods=["POST"]),
        ]
        return IdempotencyMiddleware(Starlette(routes=routes), **options)


def _store(db: Db) -> SQLStore:
    if not db.is_async:
        return db.store
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db.async_url, poolclass=NullPool)
    db.cleanups.append(lambda: db.run(engine.dispose()))
    return SQLStore(engine, db.keys.name)


def test_replay_reuse_and_pass_through(db: Db) -> None:
    """A retry replays status, body and headers (never Set-Cookie); another body is 422; GET and
    requests without the key pass straight through; the request body reaches the app intact."""
    backend = Backend()
    app = backend.app(store=_store(db), ttl_seconds=3600)
    payload = json.dumps({"item": "tea", "note": "x" * 70000}).encode()
    with TestClient(app) as client:
        first = client.post("/orders", content=payload, headers={"Idempotency-Key": "m1"})
        again = client.post("/orders", content=payload, headers={"Idempotency-Key": "m1"})
        reused = client.post("/orders", content=b"{}", headers={"Idempotency-Key": "m1"})
        plain = client.post("/orders", content=payload)
        read = client.get("/orders", headers={"Idempotency-Key": "m1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == {"run": 1, "sha": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    assert again.content == first.content
    assert again.headers["x-order"] == "1"
    assert again.headers["idempotent-replayed"] == "true"
    assert "set-cookie" in first.headers and "set-cookie" not in again.headers
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert plain.json()["run"] == 2
    assert read.json()["run"] == 3
    assert "idempotent-replayed" not in read.headers
    assert backend.runs == ["/orders"] * 3
    assert len(db.key_rows()) == 1


def test_in_flight_duplicate_waits_and_gets_the_replay(db: Db) -> None:
    """A duplicate arriving while the first request runs waits for it and replays its response."""
    backend = Backend()
    waited = asyncio.Event()

    def hook(info: EventInfo) -> None:
        if info.event is Event.WAITED:
            waited.set()

    app = backend.app(store=_store(db), wait=30, hooks=[hook])

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        backend.gate = asyncio.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Idempotency-Key": "same"}
            first = asyncio.ensure_future(client.post("/slow", json={"a": 1}, headers=headers))
            second = asyncio.ensure_future(client.post("/slow", json={"a": 1}, headers=headers))
            await waited.wait()  # the duplicate found the claim and is waiting
            backend.gate.set()
            return await first, await second

    loop = db.loop or asyncio.new_event_loop()
    try:
        first, second = loop.run_until_complete(scenario())
    finally:
        if db.loop is None:
            loop.close()
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert sorted(r.headers.get("idempotent-replayed", "") for r in (first, second)) == ["", "true"]
    assert backend.runs == ["/slow"]


def test_streamed_responses_pass_through_unstored() -> None:
    """A streamed body reaches the client whole and is not stored: a retry runs again."""
    backend = Backend()
    store = MemoryStore()
    with TestClient(backend.app(store=store)) as client:
        first = client.post("/stream", headers={"Idempotency-Key": "st"})
        second = client.post("/stream", headers={"Idempotency-Key": "st"})
    assert first.content == second.content == b"part 1,part 2"
    assert backend.runs == ["stream", "stream"]
    assert store.records == {}


def test_principal_from_scope_keeps_callers_apart() -> None:
    """``principal_from(scope)`` puts the caller into the scope: one key, two callers, two runs."""
    backend = Backend()

    def principal(scope: Any) -> str | None:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    store = MemoryStore()
    with TestClient(backend.app(store=store, principal_from=principal)) as client:
        a = client.post("/orders", json={}, headers={"Idempotency-Key": "k", "X-Tenant": "a"})
        b = client.post("/orders", json={}, headers={"Idempotency-Key": "k", "X-Tenant": "b"})
        a_again = client.post("/orders", json={}, headers={"Idempotency-Key": "k", "X-Tenant": "a"})
    assert a.json()["run"] == 1 and b.json()["run"] == 2
    assert a_again.content == a.content
    assert sorted(scope for scope, _ in store.records) == ["http POST /orders @a", "http POST /orders @b"]


def test_multipart_retry_with_a_new_boundary_is_replayed() -> None:
    """httpx draws a new multipart boundary per request: an upload retried with the same key is
    the same request and replays; another file under the same key is 422."""
    backend = Backend()
    with TestClient(backend.app(store=MemoryStore())) as client:

        def send(content: bytes) -> Any:
            files = {"doc": ("report.pdf", content, "application/pdf")}
            return client.post("/orders", data={"title": "r"}, files=files, headers={"Idempotency-Key": "u"})

        first = send(b"%PDF\r\n\x00")
        again = send(b"%PDF\r\n\x00")
        other = send(b"another")
    assert first.status_code == 201
    assert (again.content, again.headers["Idempotent-Replayed"]) == (first.content, "true")
    assert other.status_code == 422
    assert backend.runs == ["/orders"]


def test_default_store_is_the_configured_engine(sync_db: Db) -> None:
    """Without ``store=`` the middleware uses the SQL store ``configure`` set."""
    from idempotent import configure

    backend = Backend()
    configure(sync_db.engine, table=sync_db.keys.name)
    try:
        with TestClient(backend.app()) as client:
            client.post("/orders", json={}, headers={"Idempotency-Key": "cfg"})
            again = client.post("/orders", json={}, headers={"Idempotency-Key": "cfg"})
    finally:
        configure()
    assert again.headers["idempotent-replayed"] == "true"
    with sync_db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_db.keys)).scalar_one() == 1


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_safe_methods_never_touch_the_store(method: str) -> None:
    """HEAD and OPTIONS pass straight through, even with a key."""
    backend = Backend()
    store = MemoryStore()
    with TestClient(backend.app(store=store)) as client:
        client.request(method, "/orders", headers={"Idempotency-Key": "k"})
    assert store.records == {}


def test_constructor_takes_the_usual_arguments_and_names_a_wrong_one() -> None:
    """``store=`` and ``ttl_seconds=`` work positionally or by name; a misspelt option is an error
    listing the options, and the mode cannot be changed from lease."""
    from idempotent.errors import ConfigurationError

    backend = Backend()
    middleware = IdempotencyMiddleware(Starlette(), MemoryStore(), 60)
    assert middleware.policy.mode == "lease"
    assert backend.app(store=MemoryStore(), ttl_seconds=60, wait=1).policy.wait == 1
    with pytest.raises(ConfigurationError, match=r"has no option ttl .*ttl_seconds"):
        backend.app(ttl=60)
    with pytest.raises(ConfigurationError, match="has no option mode"):
        backend.app(mode="transaction")


def test_a_body_in_several_messages_is_read_once_and_handed_on_whole() -> None:
    """A body sent in three ``http.request`` messages is read for the fingerprint and reaches the
    application whole (its digest and size are the sent body's)."""
    backend = Backend()
    app = backend.app(store=MemoryStore())
    parts = [b'{"item": ', b'"tea", "quantity"', b": 2}"]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}
        for index, part in enumerate(parts)
    ]
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"idempotency-key", b"chunks"), (b"content-type", b"application/json")],
        "server": ("test", 80),
        "client": ("test", 1),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    whole = b"".join(parts)
    assert sent[0]["status"] == 201
    assert json.loads(body) == {"run": 1, "sha": hashlib.sha256(whole).hexdigest(), "size": len(whole)}
    assert pending == []


def test_bad_keys_are_400_and_a_busy_key_is_409() -> None:
    """A repeated or malformed key header is a 400 problem before the app runs; with ``wait=0`` a
    duplicate of a running request is a 409 problem with Retry-After."""
    backend = Backend()
    app = backend.app(store=MemoryStore(), wait=0)

    async def scenario() -> tuple[httpx.Response, ...]:
        backend.gate, backend.entered = asyncio.Event(), asyncio.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            twice = await client.post(
                "/orders", json={}, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
            )
            malformed = await client.post("/orders", json={}, headers={"Idempotency-Key": '"open'})
            first = asyncio.ensure_future(client.post("/slow", json={}, headers={"Idempotency-Key": "busy"}))
            await backend.entered.wait()  # the first request is inside the app, holding its claim
            busy = await client.post("/slow", json={}, headers={"Idempotency-Key": "busy"})
            backend.gate.set()
            return twice, malformed, busy, await first

    twice, malformed, busy, first = asyncio.run(scenario())
    for response in (twice, malformed):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("invalid-key")
    assert busy.status_code == 409
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["type"].endswith("in-progress")
    assert first.status_code == 201
    assert backend.runs == ["/slow"]


def test_add_middleware_on_a_fastapi_app() -> None:
    """``app.add_middleware(IdempotencyMiddleware, store=..., ttl_seconds=...)``, as users of other
    idempotency middleware write it, replays a FastAPI route's response."""
    from fastapi import FastAPI

    app = FastAPI()
    runs: list[int] = []

    @app.post("/charges", status_code=201)
    def charge(body: dict[str, int]) -> dict[str, int]:
        runs.append(1)
        return {"charged": body["amount"], "run": len(runs)}

    app.add_middleware(IdempotencyMiddleware, store=MemoryStore(), ttl_seconds=24 * 3600)
    with TestClient(app) as client:
        first = client.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": "ch"})
        again = client.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": "ch"})
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert runs == [1]
