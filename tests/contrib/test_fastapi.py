"""``idempotent.contrib.fastapi.idempotent_route`` through FastAPI's test client, on every database
with a sync ``Session`` and an ``AsyncSession`` from a ``Depends`` parameter."""

import importlib
import importlib.util
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from tests.conftest import Db

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # starlette's TestClient on httpx
    from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
    from fastapi.testclient import TestClient
from pydantic import BaseModel

from idempotent.contrib.fastapi import idempotent_route
from idempotent.errors import IdempotencyWarning

REPO = Path(__file__).resolve().parents[2]


class OrderIn(BaseModel):
    """The request body."""

    ref: str
    amount: int


class OrderOut(BaseModel):
    """The response model: ``id`` and ``ref`` only, so extra fields are filtered out."""

    id: int
    ref: str


def _principal(request: Request) -> str | None:
    return request.headers.get("x-user")


def _answer(order: OrderIn, order_id: int, response: Response) -> dict[str, Any]:
    """What both endpoints return after their insert: a 400 for a negative amount (raised after
    the write), else the order plus a field the response model filters out, a Location and a cookie."""
    if order.amount < 0:
        raise HTTPException(status_code=400, detail="negative amount")
    if order.amount == 429:  # a refusal returned, not raised: too many orders for now
        response.status_code = 429
        return {"id": order_id, "ref": order.ref}
    response.headers["Location"] = f"/orders/{order_id}"
    response.set_cookie("session", "secret")
    return {"id": order_id, "ref": order.ref, "internal": "filtered"}


def make_app(db: Db, **options: Any) -> tuple[FastAPI, list[int]]:
    """An app whose ``POST /orders`` inserts one row through the session of a ``Depends``; an
    ``auth`` dependency reads first on the same session, so the transaction is auto-begun."""
    app = FastAPI()
    runs: list[int] = []
    orders = db.orders
    options.setdefault("store", db.store)
    options.setdefault("principal_from", _principal)

    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(db.async_url, poolclass=NullPool)

        async def get_session() -> AsyncIterator[AsyncSession]:
            async with AsyncSession(engine) as session:
                yield session

        async def auth(session: Annotated[AsyncSession, Depends(get_session)]) -> str:
            await session.execute(sa.select(sa.func.count()).select_from(orders))  # auto-begins
            return "ok"

        @app.post("/orders", status_code=201, response_model=OrderOut)
        @idempotent_route(**options)
        async def create_async(
            order: OrderIn,
            response: Response,
            session: Annotated[AsyncSession, Depends(get_session)],
            user: Annotated[str, Depends(auth)],
        ) -> Any:
            runs.append(1)
            result = await session.execute(orders.insert().values(ref=order.ref, amount=order.amount))
            return _answer(order, int(result.inserted_primary_key[0]), response)

        db.cleanups.append(lambda: db.run(engine.dispose()))
        return app, runs

    def get_sync_session() -> Iterator[Session]:
        with Session(db.engine) as session:
            yield session

    def sync_auth(session: Annotated[Session, Depends(get_sync_session)]) -> str:
        session.execute(sa.select(sa.func.count()).select_from(orders))  # auto-begins
        return "ok"

    @app.post("/orders", status_code=201, response_model=OrderOut)
    @idempotent_route(**options)
    def create(
        order: OrderIn,
        response: Response,
        session: Annotated[Session, Depends(get_sync_session)],
        user: Annotated[str, Depends(sync_auth)],
    ) -> Any:
        runs.append(1)
        result = session.execute(orders.insert().values(ref=order.ref, amount=order.amount))
        return _answer(order, int(result.inserted_primary_key[0]), response)

    return app, runs


def _post(client: TestClient, body: dict[str, Any], key: str | None = "k-1", **headers: str) -> Any:
    sent = dict(headers)
    if key is not None:
        sent["Idempotency-Key"] = key
    return client.post("/orders", json=body, headers=sent)


def test_first_response_is_stored_and_replayed_exactly(db: Db) -> None:
    """One row; the retry gets the same status, body bytes and Location plus Idempotent-Replayed,
    never the cookie; the response model filtered the body; the auto-begun transaction committed."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        first = _post(client, {"ref": "a", "amount": 5})
        again = _post(client, {"ref": "a", "amount": 5})
        quoted = _post(client, {"ref": "a", "amount": 5}, key='"k-1"')
    assert first.status_code == again.status_code == quoted.status_code == 201
    assert first.json() == {"id": first.json()["id"], "ref": "a"}
    assert again.content == first.content == quoted.content
    assert again.headers["location"] == first.headers["location"] == f"/orders/{first.json()['id']}"
    assert "set-cookie" in first.headers
    assert "set-cookie" not in again.headers
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert runs == [1]
    assert db.count() == 1
    assert len(db.key_rows()) == 1


def test_errors_are_problem_documents(db: Db) -> None:
    """422 for a reused key, 400 for a repeated or malformed header, as application/problem+json."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        assert _post(client, {"ref": "a", "amount": 5}).status_code == 201
        reused = _post(client, {"ref": "a", "amount": 6})
        twice = client.post(
            "/orders",
            json={"ref": "b", "amount": 1},
            headers=[("Idempotency-Key", "x"), ("Idempotency-Key", "y")],
        )
        malformed = _post(client, {"ref": "c", "amount": 1}, key='"open')
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["type"].endswith("key-reused")
    for response in (twice, malformed):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("invalid-key")
    assert runs == [1]
    assert db.count() == 1


def test_required_key_and_requests_without_one(db: Db) -> None:
    """Without the header a request runs as usual; with ``required=True`` it is a 400 problem."""
    app, runs = make_app(db)
    strict, strict_runs = make_app(db, required=True)
    with TestClient(app) as client, TestClient(strict) as strict_client:
        assert _post(client, {"ref": "a", "amount": 1}, key=None).status_code == 201
        assert _post(client, {"ref": "a", "amount": 1}, key=None).status_code == 201
        missing = _post(strict_client, {"ref": "a", "amount": 1}, key=None)
    assert missing.status_code == 400
    assert missing.json()["type"].endswith("missing-key")
    assert runs == [1, 1]
    assert strict_runs == []
    assert db.count() == 2


def test_principals_never_see_each_others_responses(db: Db) -> None:
    """Two callers sending one key get two orders; each retry replays its own caller's response."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        alice = _post(client, {"ref": "a", "amount": 1}, **{"X-User": "alice"})
        bob = _post(client, {"ref": "a", "amount": 1}, **{"X-User": "bob"})
        alice_again = _post(client, {"ref": "a", "amount": 1}, **{"X-User": "alice"})
        bob_again = _post(client, {"ref": "a", "amount": 1}, **{"X-User": "bob"})
    assert alice.json()["id"] != bob.json()["id"]
    assert alice_again.content == alice.content
    assert bob_again.content == bob.content
    assert runs == [1, 1]
    assert db.count() == 2


def test_raised_http_errors_roll_back_and_are_not_stored(db: Db) -> None:
    """An HTTPException rolls the write and the claim back: the retry runs again."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        first = _post(client, {"ref": "a", "amount": -1})
        second = _post(client, {"ref": "a", "amount": -1})
    assert first.status_code == second.status_code == 400
    assert runs == [1, 1]
    assert db.count() == 0
    assert db.key_rows() == []


def test_returned_refusal_rolls_back_and_is_not_stored(db: Db) -> None:
    """A 429 the endpoint returns (not raises) is sent, its write rolls back with the claim, and
    the retry with the same key runs again instead of getting the refusal back."""
    app, runs = make_app(db)
    with TestClient(app) as client:
        first = _post(client, {"ref": "a", "amount": 429})
        second = _post(client, {"ref": "a", "amount": 429})
    assert first.status_code == second.status_code == 429
    assert "Idempotent-Replayed" not in second.headers
    assert runs == [1, 1]
    assert db.count() == 0
    assert db.key_rows() == []


def test_openapi_keeps_the_route_and_documents_the_header(sync_db: Db) -> None:
    """The response model, the status code and the body model stay; the key header is listed."""
    app, _ = make_app(sync_db)
    strict, _ = make_app(sync_db, required=True, header="X-Idempotency-Key")
    operation = app.openapi()["paths"]["/orders"]["post"]
    assert operation["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderOut"
    }
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    if "allOf" in body:  # older pydantic releases (2.5) wrap a titled reference in allOf
        (body,) = body["allOf"]
    assert body == {"$ref": "#/components/schemas/OrderIn"}
    (parameter,) = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("Idempotency-Key", "header", False)
    (strict_parameter,) = strict.openapi()["paths"]["/orders"]["post"]["parameters"]
    assert strict_parameter["name"] == "X-Idempotency-Key"
    assert "Required" in strict_parameter["description"]


def test_endpoint_without_session_uses_a_lease(sync_db: Db) -> None:
    """An endpoint with no session argument claims in lease mode on the store's engine."""
    app = FastAPI()
    calls: list[int] = []

    @app.put("/things/{thing_id}")
    @idempotent_route(store=sync_db.store)
    async def put_thing(
        thing_id: int, header_value: Annotated[str | None, Header()] = None
    ) -> dict[str, int]:
        calls.append(thing_id)
        return {"thing": thing_id, "calls": len(calls)}

    with TestClient(app) as client:
        first = client.put("/things/7", headers={"Idempotency-Key": "t"})
        again = client.put("/things/7", headers={"Idempotency-Key": "t"})
        other = client.put("/things/8", headers={"Idempotency-Key": "t"})
    assert first.json() == again.json() == {"thing": 7, "calls": 1}
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422  # same route template and key, another path
    assert calls == [7]
    assert [row.scope for row in sync_db.key_rows()] == ["http PUT /things/{thing_id}"]


@pytest.mark.parametrize(("module", "extra"), [("fastapi", "fastapi"), ("starlette", "starlette")])
def test_missing_framework_names_the_extra(module: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing an integration without its framework raises ImportError naming the extra."""
    for name in list(sys.modules):
        if name == module or name.startswith((f"{module}.", "idempotent.contrib.")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"pip install 'idempotent\[{extra}\]'"):
        importlib.import_module(f"idempotent.contrib.{module}")


def run_check(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m idempotent check ARGS`` in ``cwd``, with this checkout importable."""
    return subprocess.run(
        [sys.executable, "-m", "idempotent", "check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def import_file(path: Path) -> Any:
    """Import the module at ``path`` under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNPROTECTED = '''\
"""A FastAPI app as written before idempotency."""
from typing import Annotated, Iterator

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from idempotent import configure

engine = sa.create_engine("sqlite:///{db}")
orders = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("item", sa.String(50)))
app = FastAPI()


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@app.post("/orders", status_code=201)
def create_order(body: dict, session: Annotated[Session, Depends(get_session)]) -> dict:
    session.execute(orders.insert().values(item=body["item"]))
    session.commit()
    return {{"item": body["item"]}}
'''


def test_check_fix_output_imports_runs_and_checks_clean(tmp_path: Path) -> None:
    """``idempotent check --fix`` on a FastAPI app inserts ``@idempotent_route()``; the result imports,
    replays a retried POST on a real SQLite database, and checks clean."""
    from idempotent.schema import make_table

    database = tmp_path / "app.db"
    source = tmp_path / "shop_app.py"
    source.write_text(UNPROTECTED.format(db=database), encoding="utf-8")
    engine = sa.create_engine(f"sqlite:///{database}")
    metadata = sa.MetaData()
    make_table(metadata)
    sa.Table(
        "orders", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("item", sa.String(50))
    )
    metadata.create_all(engine)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_check(tmp_path, *args, "shop_app.py")

    assert cli().returncode == 1
    fixed = cli("--fix")
    assert "Fixed 1 finding" in fixed.stderr, fixed.stderr
    text = source.read_text(encoding="utf-8")
    assert "from idempotent.contrib.fastapi import idempotent_route\n" in text
    assert '@app.post("/orders", status_code=201)\n@idempotent_route()\ndef create_order' in text
    assert cli().returncode == 0

    module = import_file(source)
    module.configure(engine)
    try:
        with TestClient(module.app) as client:
            # the handler still commits itself, as before the fix: that works, with a warning
            with pytest.warns(IdempotencyWarning, match="ended the transaction"):
                first = client.post("/orders", json={"item": "tea"}, headers={"Idempotency-Key": "fixed"})
            again = client.post("/orders", json={"item": "tea"}, headers={"Idempotency-Key": "fixed"})
    finally:
        from idempotent import configure

        configure()
        module.engine.dispose()
        engine.dispose()
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    with sa.create_engine(f"sqlite:///{database}").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 1


def test_header_value_round_trips_in_problem_json(sync_db: Db) -> None:
    """The problem document is valid JSON with type, title, status and detail."""
    app, _ = make_app(sync_db)
    with TestClient(app) as client:
        response = _post(client, {"ref": "a", "amount": 1}, key="x" * 256)
    document = json.loads(response.content)
    assert set(document) == {"type", "title", "status", "detail"}
    assert document["status"] == 400


def test_in_flight_duplicate_gets_409_with_retry_after(sync_db: Db) -> None:
    """While the first request runs, a duplicate past ``wait`` gets 409 with Retry-After; the first
    completes and later retries replay it."""
    app = FastAPI()
    inside, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @app.post("/charges", status_code=201)
    @idempotent_route(store=sync_db.store, wait=0, lease=30)
    def charge(body: dict[str, int]) -> dict[str, int]:
        calls.append(1)
        inside.set()
        release.wait(30)
        return {"charged": body["amount"]}

    results: list[Any] = []
    with TestClient(app) as client:
        first = threading.Thread(
            target=lambda: results.append(
                client.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": "c"})
            )
        )
        first.start()
        inside.wait(30)
        busy = client.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": "c"})
        release.set()
        first.join(30)
        later = client.post("/charges", json={"amount": 5}, headers={"Idempotency-Key": "c"})
    assert busy.status_code == 409
    assert busy.headers["content-type"] == "application/problem+json"
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["type"].endswith("in-progress")
    assert results[0].status_code == 201
    assert later.content == results[0].content
    assert later.headers["idempotent-replayed"] == "true"
    assert calls == [1]
