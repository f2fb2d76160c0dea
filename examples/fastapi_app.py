"""An order API whose ``POST /orders`` is safe to retry, with FastAPI and SQLAlchemy.

Run it (tables are created at start-up, on an empty database too)::

    pip install 'idempotent[fastapi]' uvicorn
    uvicorn examples.fastapi_app:app

    curl -i -X POST localhost:8000/orders -H 'Authorization: Bearer alice' \\
         -H 'Idempotency-Key: 5b0c1c9e' -H 'Content-Type: application/json' \\
         -d '{"item": "tea", "quantity": 2}'

Send the same request again: the same ``201`` comes back, marked ``Idempotent-Replayed: true``,
and ``GET /orders`` still lists one order. ``DATABASE_URL`` names the database (default: the
SQLite file ``orders.db``); ``ORDERS_TABLE`` and ``IDEMPOTENCY_TABLE`` rename the two tables, so
several copies can share one database server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from idempotent import configure
from idempotent.contrib.fastapi import idempotent_route
from idempotent.schema import make_table

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///orders.db")
KEYS_TABLE = os.environ.get("IDEMPOTENCY_TABLE", "idempotency_keys")

engine = sa.create_engine(DATABASE_URL, pool_size=20, max_overflow=40, pool_timeout=60)
metadata = sa.MetaData()
orders = sa.Table(
    os.environ.get("ORDERS_TABLE", "orders"),
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(200)),
)
make_table(metadata, KEYS_TABLE)  # the keys table lives beside the business tables
configure(engine, table=KEYS_TABLE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create the orders and keys tables when they are missing."""
    metadata.create_all(engine)
    yield
    engine.dispose()


app = FastAPI(title="Orders", lifespan=lifespan)


def get_session() -> Iterator[Session]:
    """One session per request; the idempotent route commits it with the stored response."""
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def caller(request: Request) -> str | None:
    """The principal: ``Authorization: Bearer <name>`` (a real API would verify a token here)."""
    scheme, _, name = request.headers.get("authorization", "").partition(" ")
    return name.strip() or None if scheme.lower() == "bearer" else None


class OrderIn(BaseModel):
    """What a client sends to place an order."""

    item: str
    quantity: int


class Order(BaseModel):
    """An order as the API returns it."""

    id: int
    item: str
    quantity: int
    owner: str | None


@app.post("/orders", status_code=201)
@idempotent_route(principal_from=caller)
def create_order(order: OrderIn, request: Request, response: Response, session: SessionDep) -> Order:
    """Place an order: one row, whatever the number of retries with the same key."""
    owner = caller(request)
    result = session.execute(orders.insert().values(item=order.item, quantity=order.quantity, owner=owner))
    order_id = int(result.inserted_primary_key[0])
    response.headers["Location"] = f"/orders/{order_id}"
    return Order(id=order_id, item=order.item, quantity=order.quantity, owner=owner)


@app.get("/orders")
def list_orders(session: SessionDep) -> list[Order]:
    """Every order, oldest first."""
    rows = session.execute(sa.select(orders).order_by(orders.c.id)).mappings()
    return [Order(**row) for row in rows]
