"""``idempotent.contrib.starlette.idempotent_route`` on Starlette function endpoints (transaction mode,
session from the request) and ``HTTPEndpoint`` methods (lease mode), through the test client."""

import subprocess
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tests.conftest import Db
from tests.contrib.test_fastapi import import_file, run_check

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from idempotent.contrib.starlette import idempotent_route, route_template

Scope = MutableMapping[str, Any]
REPO = Path(__file__).resolve().parents[2]


def session_middleware(app: Any, db: Db) -> Callable[[Scope, Any, Any], Awaitable[None]]:
    """A pure ASGI middleware giving each request ``request.state.db`` (sync or async session)."""
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(db.async_url, poolclass=NullPool)
        db.cleanups.append(lambda: db.run(engine.dispose()))

        async def with_async(scope: Scope, receive: Any, send: Any) -> None:
            async with AsyncSession(engine) as session:
                scope.setdefault("state", {})["db"] = session
                await app(scope, receive, send)

        return with_async

    async def with_sync(scope: Scope, receive: Any, send: Any) -> None:
        with Session(db.engine) as session:
            scope.setdefault("state", {})["db"] = session
            await app(scope, receive, send)

    return with_sync


def make_app(db: Db) -> tuple[Any, list[int]]:
    """``POST /orders/{shop}`` inserting one row through ``request.state.db``."""
    runs: list[int] = []
    orders = db.orders
    options: dict[str, Any] = {"store": db.store, "session": lambda request: request.state.db}

    if db.is_async:

        @idempotent_route(**options)
        async def create(request: Request) -> Response:
            runs.append(1)
            body = await request.json()
            result = await request.state.db.execute(orders.insert().values(ref=body["ref"], amount=1))
            order_id = int(result.inserted_primary_key[0])
            return JSONResponse(
                {"id": order_id}, status_code=201, headers={"Location": f"/orders/{order_id}"}
            )

    else:

        @idempotent_route(**options)
        def create(request: Request) -> Response:
            runs.append(1)
            ref = request.path_params["shop"]
            result = request.state.db.execute(orders.insert().values(ref=ref, amount=1))
            order_id = int(result.inserted_primary_key[0])
            return JSONResponse(
                {"id": order_id}, status_code=201, headers={"Location": f"/orders/{order_id}"}
            )

    app = Starlette(
        routes=[
            Route("/orders/{shop}", create, methods=["POST"]),
            Mount("/regions/{region}", routes=[Route("/orders/{shop}", create, methods=["POST"])]),
        ]
    )
    return session_middleware(app, db), runs


def test_function_endpoint_commits_with_the_stored_response(db: Db) -> None:
    """One row per key, committed with the response; the retry is replayed; the scope holds the
    route template; a request without a key runs and commits as usual."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        first = client.post("/orders/s1", json={"ref": "s1"}, headers={"Idempotency-Key": "a"})
        again = client.post("/orders/s1", json={"ref": "s1"}, headers={"Idempotency-Key": "a"})
        other_body = client.post("/orders/s1", json={"ref": "xx"}, headers={"Idempotency-Key": "a"})
        unkeyed = client.post("/orders/s2", json={"ref": "s2"})
    assert first.status_code == again.status_code == unkeyed.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other_body.status_code == 422
    assert runs == [1, 1]
    assert db.count() == 2
    assert [row.scope for row in db.key_rows()] == ["http POST /orders/{shop}"]


def test_under_a_mount_the_scope_holds_the_mounts_template(db: Db) -> None:
    """Under ``Mount("/regions/{region}")`` the scope is the whole template, not the matched mount
    path: the same key and body on another region is the same request with another path, a 422,
    and the endpoint runs once."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        first = client.post("/regions/eu/orders/s1", json={"ref": "s1"}, headers={"Idempotency-Key": "m"})
        other = client.post("/regions/us/orders/s1", json={"ref": "s1"}, headers={"Idempotency-Key": "m"})
    assert (first.status_code, other.status_code) == (201, 422)
    assert runs == [1]
    assert [row.scope for row in db.key_rows()] == ["http POST /regions/{region}/orders/{shop}"]


def test_route_template_without_the_route_in_the_scope() -> None:
    """Starlette before 1.0 records no matched route in the scope: the template is found by
    matching the application's routes again, mounts and ``root_path`` included, and agrees with
    the one read from a recorded route."""
    seen: list[tuple[str | None, str | None]] = []

    async def endpoint(request: Request) -> Response:
        without = {name: value for name, value in request.scope.items() if name != "route"}
        seen.append((route_template(request.scope), route_template(without)))
        return Response("ok")

    app = Starlette(
        routes=[
            Route("/health", endpoint),
            Mount("/shops/{shop}", routes=[Route("/orders/{order_id}", endpoint, methods=["POST"])]),
        ]
    )
    with TestClient(app) as client:
        assert client.post("/shops/s1/orders/7").status_code == 200
        assert client.get("/health").status_code == 200
    with TestClient(app, root_path="/api") as client:
        assert client.get("/health").status_code == 200
    assert seen == [
        ("/shops/{shop}/orders/{order_id}",) * 2,
        ("/health",) * 2,
        ("/api/health",) * 2,
    ]


class Things(HTTPEndpoint):
    """A class-based endpoint; its ``put`` runs once per key."""

    calls: ClassVar[list[str]] = []

    @idempotent_route()
    async def put(self, request: Request) -> Response:
        self.calls.append(request.path_params["name"])
        return JSONResponse({"name": request.path_params["name"], "calls": len(self.calls)})

    @idempotent_route()
    def delete(self, request: Request) -> Response:
        self.calls.append("deleted")
        return Response(status_code=204)


def test_http_endpoint_methods_use_a_lease(sync_db: Db) -> None:
    """``HTTPEndpoint`` methods, async and sync, replay in lease mode on the configured engine."""
    from idempotent import configure

    Things.calls = []
    configure(sync_db.engine, table=sync_db.keys.name)
    try:
        with TestClient(Starlette(routes=[Route("/things/{name}", Things)])) as client:
            first = client.put("/things/a", headers={"Idempotency-Key": "t"})
            again = client.put("/things/a", headers={"Idempotency-Key": "t"})
            gone = client.delete("/things/a", headers={"Idempotency-Key": "t"})
            gone_again = client.delete("/things/a", headers={"Idempotency-Key": "t"})
    finally:
        configure()
    assert first.json() == again.json() == {"name": "a", "calls": 1}
    assert again.headers["idempotent-replayed"] == "true"
    assert gone.status_code == gone_again.status_code == 204
    assert gone_again.headers["idempotent-replayed"] == "true"
    assert Things.calls == ["a", "deleted"]
    with sync_db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_db.keys)).scalar_one() == 2


UNPROTECTED = '''\
"""A Starlette app as written before idempotency."""
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

CALLS = []


async def create_order(request):
    CALLS.append("order")
    return JSONResponse({"order": len(CALLS)}, status_code=201)


class Payments(HTTPEndpoint):
    async def post(self, request):
        CALLS.append("payment")
        return JSONResponse({"payment": len(CALLS)}, status_code=201)


app = Starlette(routes=[Route("/orders", create_order, methods=["POST"]), Route("/payments", Payments)])
'''


def test_check_fix_output_imports_runs_and_checks_clean(sync_db: Db, tmp_path: Path) -> None:
    """``idempotent check --fix`` decorates a Starlette function endpoint and an ``HTTPEndpoint``
    method with ``@idempotent_route()``; the result imports, replays retries (lease mode on the
    configured engine) and checks clean."""
    from idempotent import configure

    source = tmp_path / "site_app.py"
    source.write_text(UNPROTECTED, encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_check(tmp_path, *args, "site_app.py")

    assert cli().returncode == 1
    assert "Fixed 2 findings" in cli("--fix").stderr
    text = source.read_text(encoding="utf-8")
    assert "@idempotent_route()\nasync def create_order" in text
    assert "    @idempotent_route()\n    async def post" in text
    assert cli().returncode == 0

    module = import_file(source)
    configure(sync_db.engine, table=sync_db.keys.name)
    try:
        with TestClient(module.app) as client:
            for path in ("/orders", "/payments"):
                first = client.post(path, headers={"Idempotency-Key": "fixed"})
                again = client.post(path, headers={"Idempotency-Key": "fixed"})
                assert first.status_code == again.status_code == 201
                assert again.content == first.content
                assert again.headers["idempotent-replayed"] == "true"
    finally:
        configure()
    assert module.CALLS == ["order", "payment"]
