"""Flask views with ``idempotent_route``, end to end on SQLite, PostgreSQL and MariaDB.

Flask runs views, ``async def`` ones included, on a sync request thread with a sync session, so
these run on each database through its sync driver. Requests go through Flask's test client and,
for the concurrency test, through a real threaded WSGI server on a loopback port.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import flask
import httpx
import pytest
import sqlalchemy as sa
from flask.views import MethodView
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import scoped_session, sessionmaker
from werkzeug.serving import make_server

from idempotent.contrib.flask import idempotent_route
from idempotent.errors import ConfigurationError, IdempotencyWarning
from tests.conftest import Db

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` on a threaded WSGI server on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _insert(session: Any, db: Db, ref: str, amount: int = 0) -> int:
    result = session.execute(db.orders.insert().values(ref=ref, amount=amount))
    return int(result.inserted_primary_key[0])


def _headers(response: Any) -> list[tuple[str, str]]:
    """The response's headers without the replay marker (and without what a server adds)."""
    return [(k, v) for k, v in response.headers.items() if k not in (REPLAYED, "Date", "Server")]


def _fsa_app(db: Db, sqlite_timeout: float = 5.0, **route_options: Any) -> tuple[flask.Flask, SQLAlchemy]:
    """An order API on Flask-SQLAlchemy's ``db.session`` (found by the decorator on its own);
    ``sqlite_timeout`` is the SQLite driver's busy timeout (how long a writer waits for another)."""
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = db.url
    if db.name != "sqlite":
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 10, "max_overflow": 60}
    else:
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": sqlite_timeout}}
    ext = SQLAlchemy(app)
    options = {"store": db.store, **route_options}

    @app.post("/orders")
    @idempotent_route(principal_from=lambda request: request.headers.get("X-User"), **options)
    def create_order() -> Any:
        data = flask.request.get_json()
        order_id = _insert(ext.session, db, data["item"], data["quantity"])
        body = {"id": order_id, "item": data["item"], "quantity": data["quantity"]}
        return body, 201, {"Location": f"/orders/{order_id}"}

    db.cleanups.append(lambda: _dispose(app, ext))
    return app, ext


def _dispose(app: flask.Flask, ext: SQLAlchemy) -> None:
    with app.app_context():
        for engine in ext.engines.values():
            engine.dispose()


def _post(client: Any, key: str | None, body: Any, **headers: str) -> Any:
    sent = dict(headers)
    if key is not None:
        sent[KEY] = key
    return client.post("/orders", json=body, headers=sent)


# -- the order API on Flask-SQLAlchemy ----------------------------------------------------------


def test_first_request_runs_and_retries_replay_it(sync_db: Db) -> None:
    """A retry with the same key gets the first 201 byte for byte, Location included, and no row."""
    app, _ = _fsa_app(sync_db)
    client = app.test_client()
    first = _post(client, "k-1", {"item": "book", "quantity": 2})
    assert first.status_code == 201
    assert first.headers["Location"] == f"/orders/{first.json['id']}"
    assert REPLAYED not in first.headers
    again = _post(client, "k-1", {"item": "book", "quantity": 2})
    assert again.status_code == 201
    assert again.headers[REPLAYED] == "true"
    assert again.get_data() == first.get_data()
    assert _headers(again) == _headers(first)
    assert sync_db.count() == 1
    other = _post(client, "k-2", {"item": "book", "quantity": 2})
    assert other.status_code == 201
    assert other.json["id"] != first.json["id"]
    assert sync_db.count() == 2


def test_same_key_with_another_body_is_422_not_a_replay(sync_db: Db) -> None:
    """A view without parameters still fingerprints the body: another body (or query) under the
    same key is a 422 problem, never the first response."""
    app, _ = _fsa_app(sync_db)
    client = app.test_client()
    assert _post(client, "k", {"item": "book", "quantity": 1}).status_code == 201
    reused = _post(client, "k", {"item": "book", "quantity": 5})
    assert reused.status_code == 422
    assert reused.headers["Content-Type"] == "application/problem+json"
    assert reused.json["status"] == 422
    assert reused.json["type"].endswith("key-reused")
    assert REPLAYED not in reused.headers
    query = client.post("/orders?dry=1", json={"item": "book", "quantity": 1}, headers={KEY: "k"})
    assert query.status_code == 422
    assert sync_db.count() == 1


def test_form_posts_still_parse_after_the_body_is_fingerprinted(sync_db: Db) -> None:
    """The decorator reads the body for the fingerprint; ``request.form`` (urlencoded and
    multipart) still parses, and another form value under the same key is 422."""
    app, ext = _fsa_app(sync_db)

    @app.post("/form")
    @idempotent_route(store=sync_db.store)
    def form() -> Any:
        upload = flask.request.files.get("doc")
        ref = flask.request.form["item"] + (upload.read().decode() if upload else "")
        return {"id": _insert(ext.session, sync_db, ref), "ref": ref}, 201

    client = app.test_client()
    assert client.post("/form", data={"item": "pen"}, headers={KEY: "f"}).json["ref"] == "pen"
    assert client.post("/form", data={"item": "pen"}, headers={KEY: "f"}).headers[REPLAYED] == "true"
    assert client.post("/form", data={"item": "ink"}, headers={KEY: "f"}).status_code == 422
    multipart = {"item": "doc:", "doc": (io.BytesIO(b"text"), "a.txt")}
    assert client.post("/form", data=multipart, headers={KEY: "m"}).json["ref"] == "doc:text"
    assert sync_db.count() == 2


def test_key_errors_are_400_problems(sync_db: Db) -> None:
    """An invalid key (too long, malformed quoted string) is 400; so is no key when required."""
    app, _ = _fsa_app(sync_db)
    client = app.test_client()
    for bad in ("x" * 256, '"unterminated', '"a","b"'):
        response = _post(client, bad, {"item": "book", "quantity": 1})
        assert response.status_code == 400, bad
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json["type"].endswith("invalid-key")
    quoted = _post(client, '"8e03978e"', {"item": "book", "quantity": 1})
    assert quoted.status_code == 201
    assert _post(client, "8e03978e", {"item": "book", "quantity": 1}).headers[REPLAYED] == "true"
    assert sync_db.count() == 1

    strict, _ = _fsa_app(sync_db, required=True, problem_base="https://api.example/problems/")
    missing = _post(strict.test_client(), None, {"item": "book", "quantity": 1})
    assert missing.status_code == 400
    assert missing.json["type"] == "https://api.example/problems/missing-key"
    assert sync_db.count() == 1


def test_without_header_or_for_get_the_view_runs_every_time(sync_db: Db) -> None:
    """Clients opt in per request: no header means no idempotency; GET is never intercepted."""
    app, ext = _fsa_app(sync_db)

    @app.route("/orders", methods=["GET", "POST"], endpoint="list_orders")
    @idempotent_route(store=sync_db.store)
    def list_orders() -> Any:
        return [row.ref for row in ext.session.execute(sa.select(sync_db.orders)).all()]

    client = app.test_client()
    assert _post(client, None, {"item": "a", "quantity": 1}).status_code == 201
    assert _post(client, None, {"item": "a", "quantity": 1}).status_code == 201
    assert sync_db.count() == 2
    listed = client.get("/orders", headers={KEY: "k"})
    assert listed.json == ["a", "a"]
    assert REPLAYED not in listed.headers
    assert sync_db.key_rows() == []


def test_key_from_body_makes_identical_requests_without_header_one(sync_db: Db) -> None:
    """With ``key_from_body`` a client that sends no header still gets one order per distinct
    request: the same body again is a replay, another body a new order."""
    app, _ = _fsa_app(sync_db, key_from_body=True)
    client = app.test_client()
    first = _post(client, None, {"item": "a", "quantity": 1})
    again = _post(client, None, {"item": "a", "quantity": 1})
    other = _post(client, None, {"item": "b", "quantity": 1})
    assert (again.get_data(), again.headers[REPLAYED]) == (first.get_data(), "true")
    assert REPLAYED not in other.headers
    assert sync_db.count() == 2


def test_scope_is_method_route_template_and_principal(sync_db: Db) -> None:
    """The stored scope names the method, the blueprint route's template (with its prefix) and
    the principal; two paths of that route share the key space (another path is 422)."""
    app, ext = _fsa_app(sync_db)
    shop = flask.Blueprint("shop", __name__, url_prefix="/shops")

    @shop.post("/<int:shop_id>/orders")
    @idempotent_route(store=sync_db.store, principal_from=lambda request: request.headers.get("X-User"))
    def shop_order(shop_id: int) -> Any:
        return {"id": _insert(ext.session, sync_db, f"shop-{shop_id}")}, 201

    app.register_blueprint(shop)
    client = app.test_client()
    assert client.post("/shops/7/orders", headers={KEY: "k", "X-User": "ann"}).status_code == 201
    assert client.post("/shops/8/orders", headers={KEY: "k", "X-User": "ann"}).status_code == 422
    assert [row.scope for row in sync_db.key_rows()] == ["http POST /shops/<int:shop_id>/orders @ann"]


def test_two_principals_with_one_key_never_share_a_response(sync_db: Db) -> None:
    """The principal is part of the scope: alice's key is not bob's, and each replays their own."""
    app, _ = _fsa_app(sync_db)
    client = app.test_client()
    alice = _post(client, "same", {"item": "apples", "quantity": 1}, X_User="alice")
    bob = _post(client, "same", {"item": "pears", "quantity": 9}, X_User="bob")
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json["item"] == "apples"
    assert bob.json["item"] == "pears"
    assert _post(client, "same", {"item": "pears", "quantity": 9}, X_User="bob").get_data() == bob.get_data()
    assert _post(client, "same", {"item": "pears", "quantity": 9}, X_User="alice").status_code == 422
    assert sync_db.count() == 2


def test_a_request_still_running_gets_409_with_retry_after(sync_db: Db) -> None:
    """While the first request runs, a duplicate that may not wait gets 409 and Retry-After; once
    the first has committed, the retry replays it."""
    started, release = threading.Event(), threading.Event()
    app, ext = _fsa_app(sync_db, sqlite_timeout=0.2)  # SQLite: the duplicate waits for the write lock

    @app.post("/slow")
    @idempotent_route(store=sync_db.store, wait=0)
    def slow() -> Any:
        order_id = _insert(ext.session, sync_db, "slow")
        started.set()
        assert release.wait(30)
        return {"id": order_id}, 201

    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(app.test_client().post("/slow", headers={KEY: "s"}))
    )
    first.start()
    try:
        assert started.wait(30)
        busy = app.test_client().post("/slow", headers={KEY: "s"})
    finally:
        release.set()
        first.join()
    assert busy.status_code == 409
    assert busy.headers["Content-Type"] == "application/problem+json"
    assert int(busy.headers["Retry-After"]) >= 1
    assert results[0].status_code == 201
    retry = app.test_client().post("/slow", headers={KEY: "s"})
    assert retry.status_code == 201
    assert retry.headers[REPLAYED] == "true"
    assert retry.get_data() == results[0].get_data()
    assert sync_db.count() == 1


# -- return forms, sessions, commit -------------------------------------------------------------

RETURN_FORMS: dict[str, Callable[[int], Any]] = {
    "str": lambda i: f"créé {i}",
    "bytes": lambda i: bytes([0, 255, i % 256]) + "ü".encode(),
    "dict": lambda i: {"id": i, "名前": "注文"},
    "list": lambda i: [i, "x"],
    "body-status": lambda i: ({"id": i}, 202),
    "body-status-headers": lambda i: ("made", 201, {"Location": f"/o/{i}", "X-Extra": "1"}),
    "body-headers": lambda i: ({"id": i}, [("X-Trace", "t"), ("X-Trace", "u")]),
    "response": lambda i: flask.Response(f"<b>{i}</b>", status=203, mimetype="text/html"),
    "jsonify": lambda i: flask.jsonify(id=i, ok=True),
    "cookie": lambda i: _with_cookie(flask.make_response(({"id": i}, 201))),
}


def _with_cookie(response: flask.Response) -> flask.Response:
    response.set_cookie("session_hint", "abc")
    return response


def test_every_return_form_is_stored_and_replayed_byte_for_byte(sync_db: Db) -> None:
    """str, bytes, dict, list, the tuple forms, Response and jsonify replay with status, headers and
    body as first sent (non-Latin and binary bodies too); Set-Cookie is never replayed."""
    app, ext = _fsa_app(sync_db)
    for name, form in RETURN_FORMS.items():

        def view(form: Callable[[int], Any] = form, name: str = name) -> Any:
            return form(_insert(ext.session, sync_db, name))

        app.add_url_rule(
            f"/forms/{name}", name, idempotent_route(store=sync_db.store)(view), methods=["POST"]
        )
    client = app.test_client()
    for name in RETURN_FORMS:
        first = client.post(f"/forms/{name}", headers={KEY: name})
        again = client.post(f"/forms/{name}", headers={KEY: name})
        assert first.status_code < 300, name
        assert (again.status_code, again.get_data()) == (first.status_code, first.get_data()), name
        assert again.headers[REPLAYED] == "true", name
        expected = [(k, v) for k, v in _headers(first) if k != "Set-Cookie"]
        assert _headers(again) == expected, name
    assert client.post("/forms/cookie", headers={KEY: "cookie"}).headers.get("Set-Cookie") is None
    assert sync_db.count() == len(RETURN_FORMS)


@pytest.mark.parametrize("kind", ["scoped_session", "zero-arg callable", "connection"])
def test_plain_sqlalchemy_sessions_and_connections(sync_db: Db, kind: str) -> None:
    """Without Flask-SQLAlchemy, ``session=`` names the view's Session (a scoped_session, a
    callable returning a Session) or a Connection; the key commits with the view's write."""
    app = flask.Flask(__name__)
    factory = scoped_session(sessionmaker(sync_db.engine))
    holder: dict[str, Any] = {}

    def connection() -> sa.Connection:
        if "conn" not in flask.g:
            flask.g.conn = sync_db.engine.connect()
        conn: sa.Connection = flask.g.conn
        return conn

    @app.teardown_appcontext
    def close(_: BaseException | None) -> None:
        factory.remove()
        conn = flask.g.pop("conn", None)
        if conn is not None:
            conn.close()

    def current_session() -> Any:
        return factory()

    given: Any = {"scoped_session": factory, "zero-arg callable": current_session, "connection": connection}
    target = factory if kind != "connection" else connection

    @app.post("/orders")
    @idempotent_route(session=given[kind], store=sync_db.store)
    def create() -> Any:
        handle = target()
        holder["handle"] = handle
        return {"id": _insert(handle, sync_db, flask.request.get_json()["item"])}, 201

    client = app.test_client()
    first = client.post("/orders", json={"item": "a"}, headers={KEY: "k"})
    assert first.status_code == 201
    assert sync_db.count() == 1
    assert len(sync_db.key_rows()) == 1
    again = client.post("/orders", json={"item": "a"}, headers={KEY: "k"})
    assert (again.get_data(), again.headers[REPLAYED]) == (first.get_data(), "true")
    assert sync_db.count() == 1


def test_a_failing_view_leaves_neither_row_nor_key(sync_db: Db) -> None:
    """A view that raises (abort included) rolls back its writes with the claim; the retry runs.
    A 5xx response is not kept either: its writes roll back and a retry runs again."""
    app, ext = _fsa_app(sync_db)
    attempts: list[int] = []

    @app.post("/flaky")
    @idempotent_route(store=sync_db.store)
    def flaky() -> Any:
        attempts.append(1)
        _insert(ext.session, sync_db, "flaky")
        if len(attempts) == 1:
            flask.abort(503)
        if len(attempts) == 2:
            return {"error": "upstream down"}, 502
        return {"ok": True}, 201

    client = app.test_client()
    assert client.post("/flaky", headers={KEY: "f"}).status_code == 503
    assert client.post("/flaky", headers={KEY: "f"}).status_code == 502
    assert (sync_db.count(), sync_db.key_rows()) == (0, [])
    assert client.post("/flaky", headers={KEY: "f"}).status_code == 201
    assert client.post("/flaky", headers={KEY: "f"}).headers[REPLAYED] == "true"
    assert (len(attempts), sync_db.count()) == (3, 1)


@pytest.mark.parametrize("status", [401, 403, 429])
def test_a_refusal_is_not_stored(sync_db: Db, status: int) -> None:
    """A refusal for who sent the request or when (401, 403, 429) is sent but not kept, and its
    writes roll back: the same request with the same key, once the client has credentials or
    has waited, runs the view."""
    app, ext = _fsa_app(sync_db)
    attempts: list[int] = []

    @app.post("/guarded")
    @idempotent_route(store=sync_db.store)
    def guarded() -> Any:
        attempts.append(1)
        _insert(ext.session, sync_db, f"try-{len(attempts)}")
        if len(attempts) == 1:
            return {"error": "refused"}, status
        return {"ok": True}, 201

    client = app.test_client()
    assert client.post("/guarded", headers={KEY: "g"}).status_code == status
    assert (sync_db.count(), sync_db.key_rows()) == (0, [])
    assert client.post("/guarded", headers={KEY: "g"}).status_code == 201
    replay = client.post("/guarded", headers={KEY: "g"})
    assert (replay.status_code, replay.headers[REPLAYED]) == (201, "true")
    assert (len(attempts), sync_db.count()) == (2, 1)


def test_a_multipart_upload_retried_with_a_new_boundary_is_replayed(sync_db: Db) -> None:
    """The test client, like browsers and HTTP libraries, draws a new multipart boundary per
    request: the retry of an upload with the same key replays (it is the same form), while the
    same key with another file is 422."""
    app, ext = _fsa_app(sync_db)
    runs: list[int] = []

    @app.post("/upload")
    @idempotent_route(store=sync_db.store)
    def upload() -> Any:
        runs.append(1)
        data = flask.request.files["doc"].read()
        return {"id": _insert(ext.session, sync_db, flask.request.form["title"], len(data))}, 201

    client = app.test_client()

    def send(content: bytes) -> Any:
        form = {"title": "report", "doc": (io.BytesIO(content), "report.pdf")}
        return client.post("/upload", data=form, headers={KEY: "u"}, content_type="multipart/form-data")

    first = send(b"%PDF-1.7\r\n\x00\x01")
    assert first.status_code == 201
    again = send(b"%PDF-1.7\r\n\x00\x01")
    assert (again.status_code, again.headers.get(REPLAYED)) == (201, "true")
    assert again.get_data() == first.get_data()
    assert send(b"another file").status_code == 422
    assert (len(runs), sync_db.count()) == (1, 1)


def test_a_session_auto_begun_before_the_view_is_committed(sync_db: Db) -> None:
    """An auth lookup in before_request auto-begins the session's transaction; the decorator still
    commits it with the key (the request is the unit of work)."""
    app, ext = _fsa_app(sync_db)

    @app.before_request
    def authenticate() -> None:
        ext.session.execute(sa.select(sa.func.count()).select_from(sync_db.orders)).scalar_one()

    client = app.test_client()
    response = _post(client, "k", {"item": "a", "quantity": 1})
    assert response.status_code == 201
    assert sync_db.count() == 1
    assert [row.status for row in sync_db.key_rows()] == ["completed"]
    replay = _post(client, "k", {"item": "a", "quantity": 1})
    assert (replay.get_data(), replay.headers[REPLAYED]) == (response.get_data(), "true")
    assert _post(client, None, {"item": "b", "quantity": 1}).status_code == 201
    assert sync_db.count() == 2


def test_streamed_responses_are_sent_but_not_stored(sync_db: Db) -> None:
    """A generator body cannot be stored: it is sent as is and a retry runs the view again."""
    app = flask.Flask(__name__)
    runs: list[int] = []

    @app.post("/stream")
    @idempotent_route(store=sync_db.store, mode="lease")
    def stream() -> Any:
        runs.append(1)
        return flask.Response(iter([b"a", b"b"]), mimetype="text/plain")

    client = app.test_client()
    assert client.post("/stream", headers={KEY: "k"}).get_data() == b"ab"
    assert client.post("/stream", headers={KEY: "k"}).get_data() == b"ab"
    assert len(runs) == 2
    assert sync_db.key_rows() == []


def test_without_a_session_the_route_runs_in_lease_mode(sync_db: Db) -> None:
    """An app without Flask-SQLAlchemy and no ``session=``: the claim is a lease on the store's
    engine, the view runs once and a retry replays (for effects outside the database)."""
    app = flask.Flask(__name__)
    charges: list[str] = []

    @app.post("/charge")
    @idempotent_route(store=sync_db.store)
    def charge() -> Any:
        charges.append(flask.request.get_data(as_text=True))
        return {"charged": len(charges)}, 201

    client = app.test_client()
    first = client.post("/charge", data="10 EUR", headers={KEY: "c"})
    again = client.post("/charge", data="10 EUR", headers={KEY: "c"})
    assert (first.status_code, again.get_data(), again.headers[REPLAYED]) == (201, first.get_data(), "true")
    assert charges == ["10 EUR"]
    assert [row.status for row in sync_db.key_rows()] == ["completed"]


def test_method_view_methods(sync_db: Db) -> None:
    """``MethodView`` methods take the decorator like functions, each method with its own scope;
    so does the whole class through ``decorators``. The route template is the scope: another
    path of the same route under the same key is 422."""
    app, ext = _fsa_app(sync_db)

    class OrderAPI(MethodView):
        @idempotent_route(store=sync_db.store)
        def post(self) -> Any:
            return {"id": _insert(ext.session, sync_db, "post")}, 201

        @idempotent_route(store=sync_db.store)
        def put(self) -> Any:
            return {"id": _insert(ext.session, sync_db, "put")}, 200

    class WholeView(MethodView):
        decorators: ClassVar[list[Any]] = [idempotent_route(store=sync_db.store)]

        def post(self, ref: str) -> Any:
            return {"id": _insert(ext.session, sync_db, ref)}, 201

    app.add_url_rule("/api", view_func=OrderAPI.as_view("api"))
    app.add_url_rule("/whole/<ref>", view_func=WholeView.as_view("whole"))
    client = app.test_client()
    post = client.post("/api", headers={KEY: "k"})
    put = client.put("/api", headers={KEY: "k"})
    assert (post.status_code, put.status_code) == (201, 200)
    assert client.post("/api", headers={KEY: "k"}).get_data() == post.get_data()
    assert client.put("/api", headers={KEY: "k"}).get_data() == put.get_data()
    whole = client.post("/whole/a", headers={KEY: "k"})
    assert client.post("/whole/a", headers={KEY: "k"}).headers[REPLAYED] == "true"
    assert client.post("/whole/b", headers={KEY: "k"}).status_code == 422
    assert whole.status_code == 201
    assert sync_db.count() == 3


def burst(app: Any, count: int, send: Callable[[str], httpx.Response]) -> list[httpx.Response]:
    """Serve ``app`` on a real threaded server and make ``count`` requests at once (each thread
    calls ``send(base_url)`` as soon as all are ready); return their responses."""
    barrier = threading.Barrier(count)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one(base: str) -> None:
        barrier.wait()
        response = send(base)
        with lock:
            responses.append(response)

    with serve(app) as base:
        threads = [threading.Thread(target=one, args=(base,)) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return responses


def test_concurrent_duplicates_through_a_real_server(sync_db: Db) -> None:
    """50 simultaneous requests with one key through a threaded server: one order row, 50
    identical 201 bodies, 49 of them replays."""
    app, _ = _fsa_app(sync_db)

    def send(base: str) -> httpx.Response:
        body = {"item": "x", "quantity": 1}
        return httpx.post(f"{base}/orders", json=body, headers={KEY: "burst"}, timeout=60)

    responses = burst(app, 50, send)
    assert [r.status_code for r in responses] == [201] * 50
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get(REPLAYED) == "true" for r in responses) == 49
    assert sync_db.count() == 1


# -- configuration errors -----------------------------------------------------------------------


def test_async_views_run_inside_the_guarded_transaction(sync_db: Db) -> None:
    """An ``async def`` view (function or MethodView method) runs to completion inside the
    decorator, as Flask runs async views; its write commits with the key and a retry replays."""
    app, ext = _fsa_app(sync_db)

    @app.post("/async")
    @idempotent_route(store=sync_db.store)
    async def create() -> Any:
        await asyncio.sleep(0)
        return {"id": _insert(ext.session, sync_db, "async")}, 201

    class AsyncAPI(MethodView):
        @idempotent_route(store=sync_db.store)
        async def post(self) -> Any:
            return {"id": _insert(ext.session, sync_db, "async-method")}, 201

    app.add_url_rule("/async-api", view_func=AsyncAPI.as_view("async_api"))
    client = app.test_client()
    for path in ("/async", "/async-api"):
        first = client.post(path, headers={KEY: "k"})
        again = client.post(path, headers={KEY: "k"})
        assert first.status_code == 201
        assert (again.get_data(), again.headers[REPLAYED]) == (first.get_data(), "true")
    assert sync_db.count() == 2


def test_misspelt_options_and_missing_sessions_are_refused(sync_db: Db) -> None:
    """A misspelt option names the options; transaction mode without any session says how to
    give one."""
    with pytest.raises(
        ConfigurationError, match="idempotent_route has no option princpal_from; its options are session, "
    ):
        idempotent_route(princpal_from=str)  # type: ignore[call-arg]

    app = flask.Flask(__name__)

    @app.post("/x")
    @idempotent_route(mode="transaction", store=sync_db.store)
    def x() -> Any:  # pragma: no cover - refused before it runs
        return {}

    app.testing = True
    with pytest.raises(ConfigurationError, match=r"session=db\.session"):
        app.test_client().post("/x", headers={KEY: "k"})


def test_decorator_and_wsgi_middleware_on_one_request_is_an_error(sync_db: Db) -> None:
    """Both would claim the same key (the middleware's lease would make the view wait for itself):
    the decorated view says so instead; requests without a key still run."""
    from idempotent.contrib.wsgi import IdempotencyMiddleware

    app, _ = _fsa_app(sync_db)
    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, store=sync_db.store)  # type: ignore[method-assign]
    app.testing = True
    with pytest.raises(ConfigurationError, match="IdempotencyMiddleware"):
        _post(app.test_client(), "k", {"item": "a", "quantity": 1})
    assert _post(app.test_client(), None, {"item": "a", "quantity": 1}).status_code == 201
    assert sync_db.count() == 1


def test_import_error_names_the_extra() -> None:
    """Without Flask the module says which extra to install."""
    code = (
        "import sys; sys.modules['flask'] = None\n"
        "try:\n    import idempotent.contrib.flask\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'idempotent[flask]'" in out.stdout


# -- the checker's fix --------------------------------------------------------------------------

UNFIXED_APP = '''\
"""An app written before idempotency keys."""

import os

import flask
from flask_sqlalchemy import SQLAlchemy
import sqlalchemy as sa

app = flask.Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DB"]
db = SQLAlchemy(app)


@app.post("/orders")
def create_order():
    db.session.execute(sa.text(f"INSERT INTO {os.environ['APP_TABLE']} (ref, amount) VALUES ('a', 1)"))
    db.session.commit()
    return {"created": True}, 201
'''


def test_check_fix_on_a_flask_app_imports_runs_and_rechecks_clean(
    sync_db: Db, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``idempotent check --fix`` decorates the Flask view; the fixed app imports, replays a retry
    (one row) and checks clean."""
    from idempotent import configure
    from idempotent.cli import main
    from idempotent.decorator import default_store

    source = tmp_path / "shop_app.py"
    source.write_text(UNFIXED_APP, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix", "-q"]) == 0
    fixed = source.read_text(encoding="utf-8")
    assert "from idempotent.contrib.flask import idempotent_route" in fixed
    assert '@app.post("/orders")\n@idempotent_route()\ndef create_order' in fixed
    assert main(["check", "-q"]) == 0

    monkeypatch.setenv("APP_DB", sync_db.url)
    monkeypatch.setenv("APP_TABLE", sync_db.orders.name)
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = default_store()
    configure(engine=sync_db.engine, table=sync_db.keys.name)
    try:
        import importlib

        module = importlib.import_module("shop_app")
        client = module.app.test_client()
        with pytest.warns(IdempotencyWarning, match="commit"):
            first = client.post("/orders", headers={KEY: "k"}, json={})
        again = client.post("/orders", headers={KEY: "k"}, json={})
    finally:
        if "shop_app" in sys.modules:
            _dispose(sys.modules["shop_app"].app, sys.modules["shop_app"].db)
        configure(store=previous)
        sys.modules.pop("shop_app", None)
    assert first.status_code == 201
    assert (again.get_data(), again.headers[REPLAYED]) == (first.get_data(), "true")
    assert sync_db.count() == 1


def test_a_streamed_response_in_transaction_mode_is_refused(sync_db: Db) -> None:
    """In transaction mode a generator body cannot be stored; rather than send it while its writes
    roll back, the view fails with an error saying so, and nothing is kept."""
    app, ext = _fsa_app(sync_db)

    @app.post("/stream")
    @idempotent_route(store=sync_db.store)
    def stream() -> Any:
        _insert(ext.session, sync_db, "streamed")
        return flask.Response(iter([b"a"]))

    app.testing = True
    with pytest.raises(ConfigurationError, match="streamed response"):
        app.test_client().post("/stream", headers={KEY: "k"})
    assert (sync_db.count(), sync_db.key_rows()) == (0, [])
