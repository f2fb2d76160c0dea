"""The example's order API with an ``AsyncSession`` and an ``async def`` route, under a real uvicorn
server on every database: 50 concurrent duplicates make one order.

``create_app`` is the app factory the child server imports (``uvicorn --factory``)."""

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from idempotent.contrib.fastapi import idempotent_route
from tests.conftest import Db
from tests.contrib.child_server import ChildServer

REPO = Path(__file__).resolve().parents[2]
_makers: dict[str, async_sessionmaker[AsyncSession]] = {}


async def get_session() -> AsyncIterator[AsyncSession]:
    """One ``AsyncSession`` per request."""
    async with _makers["orders"]() as session:
        yield session


def create_app() -> FastAPI:
    """The example's tables and models, served by an async route on ``ASYNC_DATABASE_URL``."""
    from examples import fastapi_app as example

    example.metadata.create_all(example.engine)
    url = os.environ["ASYNC_DATABASE_URL"]
    # a pool for fifty concurrent requests (SQLAlchemy 2.0 gives aiosqlite a pool without sizes)
    sized = {} if url.startswith("sqlite") else {"pool_size": 20, "max_overflow": 40}
    engine = create_async_engine(url, **sized)
    _makers["orders"] = async_sessionmaker(engine)
    orders = example.orders
    app = FastAPI()

    @app.post("/orders", status_code=201)
    @idempotent_route(principal_from=example.caller)
    async def create_order(
        order: example.OrderIn,
        request: Request,
        response: Response,
        session: Annotated[AsyncSession, Depends(get_session)],
    ) -> example.Order:
        owner = example.caller(request)
        values = {"item": order.item, "quantity": order.quantity, "owner": owner}
        result = await session.execute(orders.insert().values(**values))
        order_id = int(result.inserted_primary_key[0])
        response.headers["Location"] = f"/orders/{order_id}"
        return example.Order(id=order_id, **values)

    return app


@pytest.fixture
def async_site(async_db: Db, tmp_path: Path) -> Iterator[tuple[Db, dict[str, str], str]]:
    """Environment for the child server on random table names, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    orders, keys = f"fa_async_orders_{suffix}", f"fa_async_keys_{suffix}"
    env = dict(
        os.environ,
        DATABASE_URL=async_db.url,
        ASYNC_DATABASE_URL=async_db.async_url,
        ORDERS_TABLE=orders,
        IDEMPOTENCY_TABLE=keys,
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    yield async_db, env, orders
    metadata = sa.MetaData()
    metadata.reflect(async_db.engine, only=lambda name, _: name in (orders, keys))
    metadata.drop_all(async_db.engine)


def test_fifty_concurrent_duplicates_on_an_async_route(
    async_site: tuple[Db, dict[str, str], str], tmp_path: Path
) -> None:
    """50 concurrent requests with one key to an ``async def`` route on an ``AsyncSession``: one
    order row, 50 identical 201 bodies, 49 of them marked replayed."""
    db, env, orders = async_site
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "tests.contrib.test_fastapi_async_server:create_app",
        "--host", "127.0.0.1", "--port", "{port}",
    ]  # fmt: skip
    server = ChildServer(command, "Application startup complete", env, tmp_path)
    headers = {"Idempotency-Key": "burst", "Authorization": "Bearer alice"}

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=120) as client:
            body = {"item": "tea", "quantity": 2}
            return await asyncio.gather(
                *(client.post("/orders", json=body, headers=headers) for _ in range(50))
            )

    try:
        responses = asyncio.run(burst())
    finally:
        server.stop()
    statuses: list[Any] = [r.status_code for r in responses]
    assert statuses == [201] * 50, [r.text for r in responses if r.status_code != 201][:3]
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    with db.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.text(f"SELECT id FROM {orders}"))]
    assert ids == [responses[0].json()["id"]]
