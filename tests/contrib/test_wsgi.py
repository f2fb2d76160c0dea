"""The WSGI middleware (lease mode) on a plain WSGI application and on Flask.

Lease mode runs on the store's sync engine, so these run on each database through its sync
driver; requests go through werkzeug's test client and a real threaded server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import flask
import httpx
import pytest
import sqlalchemy as sa
from werkzeug.test import Client

from idempotent import configure
from idempotent.contrib.wsgi import IdempotencyMiddleware
from idempotent.decorator import default_store
from idempotent.errors import ConfigurationError
from idempotent.events import Event, EventInfo
from idempotent.testing import MemoryStore
from tests.conftest import Db
from tests.contrib.test_flask import burst, serve

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


class OrderApp:
    """A plain WSGI application: POST inserts an order and echoes the body it received."""

    def __init__(self, db: Db, gate: threading.Event | None = None) -> None:
        self.db = db
        self.runs = 0
        self.gate = gate
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        if environ["REQUEST_METHOD"] in ("GET", "HEAD", "OPTIONS"):
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        with self.lock:
            self.runs += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        with self.db.engine.begin() as conn:
            order_id = conn.execute(self.db.orders.insert().values(ref="wsgi")).inserted_primary_key[0]
        payload = json.dumps(
            {"id": order_id, "echo": body.decode(), "length": environ.get("CONTENT_LENGTH")}
        ).encode()
        start_response(
            "201 Created",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Location", f"/orders/{order_id}"),
                ("Set-Cookie", "seen=1"),
                ("Connection", "close"),
            ],
        )
        return [payload]


def _post(client: Client, key: str | None, body: bytes = b'{"item": "x"}', **headers: str) -> Any:
    sent = dict(headers)
    if key is not None:
        sent[KEY] = key
    return client.post("/orders", data=body, headers=sent, content_type="application/json")


def test_plain_wsgi_app_runs_once_and_replays(sync_db: Db) -> None:
    """The first request runs and its response is stored; a retry gets it byte for byte with the
    replay marker and without Set-Cookie or hop-by-hop headers; the app got the body intact."""
    app = OrderApp(sync_db)
    client = Client(IdempotencyMiddleware(app, store=sync_db.store, ttl_seconds=3600))
    first = _post(client, "k")
    assert first.status_code == 201
    assert first.json["echo"] == '{"item": "x"}'
    assert first.json["length"] == "13"
    again = _post(client, "k")
    assert (again.status_code, again.get_data()) == (201, first.get_data())
    assert again.headers[REPLAYED] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert "Set-Cookie" not in again.headers
    assert "Connection" not in again.headers
    assert (app.runs, sync_db.count()) == (1, 1)


def test_status_codes_of_the_contract(sync_db: Db) -> None:
    """422 for the key with another body, 400 for a bad key (or a missing one when required),
    problem+json with the configured type."""
    app = OrderApp(sync_db)
    client = Client(IdempotencyMiddleware(app, store=sync_db.store, problem_base="https://e.example/p/"))
    assert _post(client, "k").status_code == 201
    reused = _post(client, "k", b'{"item": "y"}')
    assert reused.status_code == 422
    assert reused.headers["Content-Type"] == "application/problem+json"
    assert reused.json["type"] == "https://e.example/p/key-reused"
    assert reused.headers["Content-Length"] == str(len(reused.get_data()))
    assert _post(client, "x" * 256).status_code == 400
    strict = Client(IdempotencyMiddleware(app, store=sync_db.store, required=True))
    assert _post(strict, None).json["type"].endswith("missing-key")
    assert (app.runs, sync_db.count()) == (1, 1)


def test_get_and_requests_without_key_pass_through(sync_db: Db) -> None:
    """GET/HEAD/OPTIONS and requests without the header reach the app untouched, every time."""
    app = OrderApp(sync_db)
    client = Client(IdempotencyMiddleware(app, store=sync_db.store))
    assert client.get("/orders", headers={KEY: "k"}).get_data() == b"ok"
    assert client.head("/orders", headers={KEY: "k"}).status_code == 200
    assert client.options("/orders", headers={KEY: "k"}).status_code == 200
    assert _post(client, None).status_code == 201
    assert _post(client, None).status_code == 201
    assert (app.runs, sync_db.count(), sync_db.key_rows()) == (2, 2, [])


def test_principals_are_kept_apart(sync_db: Db) -> None:
    """``principal_from(environ)`` scopes the key: two callers with one key each run once."""
    app = OrderApp(sync_db)
    middleware = IdempotencyMiddleware(
        app, store=sync_db.store, principal_from=lambda environ: environ.get("HTTP_AUTHORIZATION")
    )
    client = Client(middleware)
    alice = _post(client, "k", Authorization="Bearer alice")
    bob = _post(client, "k", b'{"item": "other"}', Authorization="Bearer bob")
    assert alice.json["id"] != bob.json["id"]
    assert _post(client, "k", Authorization="Bearer alice").get_data() == alice.get_data()
    assert (app.runs, sync_db.count()) == (2, 2)


def test_ttl_seconds_expires_the_stored_response(sync_db: Db) -> None:
    """After ``ttl_seconds`` the key is free again (time moved with the store's clock offset)."""
    app = OrderApp(sync_db)
    client = Client(IdempotencyMiddleware(app, store=sync_db.store, ttl_seconds=60))
    _post(client, "k")
    sync_db.store.clock_offset = 59
    assert _post(client, "k").headers[REPLAYED] == "true"
    sync_db.store.clock_offset = 61
    assert REPLAYED not in _post(client, "k").headers
    assert app.runs == 2


def test_streamed_failed_and_raising_responses_are_not_stored(sync_db: Db) -> None:
    """A generator body without Content-Length, a 5xx and an exception release the claim: a retry
    runs the application again; the streamed body still reaches the client whole."""
    runs: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        path = environ["PATH_INFO"]
        runs.append(path)
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/fail":
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"part-1,"
        yield b"part-2"

    client = Client(IdempotencyMiddleware(app, store=sync_db.store))
    for _ in range(2):
        assert client.post("/stream", headers={KEY: "s"}).get_data() == b"part-1,part-2"
        assert client.post("/fail", headers={KEY: "f"}).status_code == 503
        with pytest.raises(RuntimeError, match="boom"):
            client.post("/raise", headers={KEY: "r"})
    assert sorted(runs) == ["/fail", "/fail", "/raise", "/raise", "/stream", "/stream"]
    assert sync_db.key_rows() == []


def test_the_applications_iterable_is_closed(sync_db: Db) -> None:
    """``close()`` of the application's iterable is called once: after a stored response is read,
    after a streamed one is sent, and when reading it fails."""
    closed: list[str] = []

    class Body:
        def __init__(self, name: str, chunks: list[bytes], fail: bool = False) -> None:
            self.name, self.chunks, self.fail = name, chunks, fail

        def __iter__(self) -> Iterator[bytes]:
            yield from self.chunks
            if self.fail:
                raise OSError("disk gone")

        def close(self) -> None:
            closed.append(self.name)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        name = environ["PATH_INFO"].strip("/")
        headers = [("Content-Length", "2")] if name != "streamed" else []
        start_response("200 OK", headers)
        return Body(name, [b"o", b"k"], fail=name == "failing")

    client = Client(IdempotencyMiddleware(app, store=sync_db.store))
    assert client.post("/stored", headers={KEY: "a"}).get_data() == b"ok"
    assert client.post("/streamed", headers={KEY: "b"}, buffered=True).get_data() == b"ok"
    with pytest.raises(OSError, match="disk gone"):
        client.post("/failing", headers={KEY: "c"})
    assert closed == ["stored", "streamed", "failing"]
    assert [row.key for row in sync_db.key_rows()] == ["a"]


def test_flask_app_behind_the_middleware(sync_db: Db) -> None:
    """On ``app.wsgi_app`` the Flask view still reads its JSON body; a retry replays."""
    app = flask.Flask(__name__)
    runs: list[int] = []

    @app.post("/orders")
    def create() -> Any:
        runs.append(1)
        with sync_db.engine.begin() as conn:
            order_id = conn.execute(sync_db.orders.insert().values(ref="flask")).inserted_primary_key[0]
        return {"id": order_id, "got": flask.request.get_json()}, 201, {"Location": f"/orders/{order_id}"}

    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, store=sync_db.store, ttl_seconds=3600)  # type: ignore[method-assign]
    client = app.test_client()
    first = client.post("/orders", json={"item": "b"}, headers={KEY: "k"})
    assert (first.status_code, first.json["got"]) == (201, {"item": "b"})
    again = client.post("/orders", json={"item": "b"}, headers={KEY: "k"})
    assert (again.get_data(), again.headers[REPLAYED]) == (first.get_data(), "true")
    assert (len(runs), sync_db.count()) == (1, 1)


def test_a_duplicate_in_flight_waits_then_replays(sync_db: Db) -> None:
    """Through a real server: a duplicate arriving while the first request runs waits for it and
    gets its response; with ``wait=0`` it gets 409 with Retry-After at once."""
    gate = threading.Event()
    app = OrderApp(sync_db, gate)
    waiting = threading.Event()

    def hook(info: EventInfo) -> None:
        if info.event is Event.WAITED:
            waiting.set()

    patient = IdempotencyMiddleware(app, store=sync_db.store, wait=30, hooks=[hook])
    impatient = IdempotencyMiddleware(app, store=sync_db.store, wait=0)
    results: dict[str, httpx.Response] = {}

    def send(base: str, name: str) -> None:
        results[name] = httpx.post(f"{base}/orders", content=b"{}", headers={KEY: "k"}, timeout=60)

    with serve(patient) as base, serve(impatient) as other:
        first = threading.Thread(target=send, args=(base, "first"))
        first.start()
        assert app.started.wait(30)
        busy = httpx.post(f"{other}/orders", content=b"{}", headers={KEY: "k"}, timeout=60)
        second = threading.Thread(target=send, args=(base, "second"))
        second.start()
        try:
            assert waiting.wait(30)
        finally:
            gate.set()
            first.join()
            second.join()
    assert busy.status_code == 409
    assert int(busy.headers["Retry-After"]) >= 1
    assert busy.headers["Content-Type"] == "application/problem+json"
    assert results["first"].status_code == 201
    assert results["second"].content == results["first"].content
    assert results["second"].headers[REPLAYED] == "true"
    assert (app.runs, sync_db.count()) == (1, 1)


def test_concurrent_duplicates_through_a_real_server(sync_db: Db) -> None:
    """50 simultaneous same-key requests: the app runs once, 50 identical 201 bodies, 49 replays;
    a chunked request body reaches the app intact."""
    app = OrderApp(sync_db)

    def chunks() -> Iterator[bytes]:
        yield b'{"item": '
        yield b'"chunked"}'

    def send(base: str) -> httpx.Response:
        return httpx.post(f"{base}/orders", content=chunks(), headers={KEY: "burst"}, timeout=60)

    responses = burst(IdempotencyMiddleware(app, store=sync_db.store, wait=60), 50, send)
    assert [r.status_code for r in responses] == [201] * 50
    assert len({r.content for r in responses}) == 1
    assert responses[0].json()["echo"] == '{"item": "chunked"}'
    assert sum(r.headers.get(REPLAYED) == "true" for r in responses) == 49
    assert (app.runs, sync_db.count()) == (1, 1)


def test_memory_store_for_unit_tests() -> None:
    """``idempotent.testing.MemoryStore`` works as the middleware's store, with no database."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "2")])
        return [b"ok"]

    client = Client(IdempotencyMiddleware(app, store=MemoryStore(), ttl_seconds=60))
    assert client.post("/", headers={KEY: "k"}).get_data() == b"ok"
    assert client.post("/", headers={KEY: "k"}).headers[REPLAYED] == "true"
    assert len(runs) == 1


def test_store_defaults_to_the_configured_engine(sync_db: Db) -> None:
    """Without ``store=`` the middleware uses what ``configure`` set; bad options are refused."""
    previous = default_store()
    configure(engine=sync_db.engine, table=sync_db.keys.name)
    try:
        app = OrderApp(sync_db)
        client = Client(IdempotencyMiddleware(app))
        _post(client, "k")
        assert _post(client, "k").headers[REPLAYED] == "true"
    finally:
        configure(store=previous)
    with sync_db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_db.keys)).scalar_one() == 1
    for wrong in ("mode", "ttl", "ttl_second"):
        with pytest.raises(ConfigurationError, match=f"has no option {wrong} .*ttl_seconds, principal_from"):
            IdempotencyMiddleware(app, **{wrong: 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="WSGI application"):
        IdempotencyMiddleware(None)  # type: ignore[arg-type]


def test_the_checker_counts_the_middleware_as_handling(tmp_path: Any) -> None:
    """``idempotent check`` reports nothing for a Flask app whose WSGI app is wrapped in the
    middleware, and reports the same route without it."""
    from idempotent.check import check
    from idempotent.check.config import CheckConfig

    route = '\n\n@app.post("/orders")\ndef create():\n    return {}, 201\n'
    wrapped = (
        "from flask import Flask\nfrom idempotent.contrib.wsgi import IdempotencyMiddleware\n\n"
        "app = Flask(__name__)\napp.wsgi_app = IdempotencyMiddleware(app.wsgi_app, ttl_seconds=3600)\n"
        + route
    )
    (tmp_path / "wrapped.py").write_text(wrapped, encoding="utf-8")
    (tmp_path / "bare.py").write_text(
        "from flask import Flask\n\napp = Flask(__name__)\n" + route, encoding="utf-8"
    )
    report = check(["."], CheckConfig(root=tmp_path), cwd=tmp_path)
    assert [(f.path, f.code) for f in report.findings] == [("bare.py", "IDEM001")]
