"""A tiny order-placing application used by the database tests, in sync and async flavours.

``Shop.call`` runs the decorated function the way a user would: on a ``Connection`` or a
``Session`` (or their async twins), with the decorator owning the transaction or joining one
the caller began, and returns what the caller got back.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import idempotent
from tests.conftest import Db


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What placing an order returns."""

    order_id: int
    ref: str
    amount: int


class Boom(Exception):
    """The function failed after its business write."""


class Shop:
    """``place(conn, ref, amount, fail=False) -> Receipt`` under ``@idempotent``, sync and async."""

    def __init__(self, db: Db, scope: str = "tests.shop.place", **options: Any) -> None:
        self.db = db
        self.executions = 0
        self._lock = threading.Lock()
        self.before_write: threading.Event | None = None  # set by concurrency tests
        self.release_write: threading.Event | None = None
        orders = db.orders
        shop = self
        options.setdefault("store", db.store)

        @idempotent(key_from="ref", scope=scope, **options)
        def place(conn: Any, ref: str, amount: int, fail: bool = False) -> Receipt:
            shop._executed()
            result = conn.execute(orders.insert().values(ref=ref, amount=amount))
            order_id = int(result.inserted_primary_key[0])
            if fail:
                raise Boom(ref)
            return Receipt(order_id, ref, amount)

        @idempotent(key_from="ref", scope=scope, **options)
        async def aplace(conn: Any, ref: str, amount: int, fail: bool = False) -> Receipt:
            shop._executed()
            result = await conn.execute(orders.insert().values(ref=ref, amount=amount))
            order_id = int(result.inserted_primary_key[0])
            if fail:
                raise Boom(ref)
            return Receipt(order_id, ref, amount)

        self.place = place
        self.aplace = aplace

    def _executed(self) -> None:
        with self._lock:
            self.executions += 1

    def call(
        self,
        ref: str,
        amount: int = 10,
        *,
        fail: bool = False,
        handle: str = "connection",
        joined: bool = False,
        read_first: bool = False,
    ) -> Receipt:
        """Place an order as a caller would; ``joined`` begins (and commits) the transaction around it."""
        if self.db.is_async:
            return self.db.run(
                self.acall(ref, amount, fail=fail, handle=handle, joined=joined, read_first=read_first)
            )
        if handle == "session":
            with Session(self.db.engine) as session:
                return self._sync_body(session, ref, amount, fail, joined, read_first)
        with self.db.engine.connect() as conn:
            return self._sync_body(conn, ref, amount, fail, joined, read_first)

    def _sync_body(
        self, obj: Any, ref: str, amount: int, fail: bool, joined: bool, read_first: bool
    ) -> Receipt:
        if read_first:
            obj.execute(sa.select(1))  # auto-begins the transaction
        if joined and not obj.in_transaction():
            obj.begin()
        receipt = self.place(obj, ref, amount, fail)
        if obj.in_transaction():
            obj.commit()
        return receipt

    async def acall(
        self,
        ref: str,
        amount: int = 10,
        *,
        fail: bool = False,
        handle: str = "connection",
        joined: bool = False,
        read_first: bool = False,
    ) -> Receipt:
        """The async twin of :meth:`call`."""
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = self.db.async_engine
        if handle == "session":
            async with AsyncSession(engine) as session:
                return await self._async_body(session, ref, amount, fail, joined, read_first)
        async with engine.connect() as conn:
            return await self._async_body(conn, ref, amount, fail, joined, read_first)

    async def _async_body(
        self, obj: Any, ref: str, amount: int, fail: bool, joined: bool, read_first: bool
    ) -> Receipt:
        if read_first:
            await obj.execute(sa.select(1))
        if joined and not obj.in_transaction():
            await obj.begin()
        receipt = await self.aplace(obj, ref, amount, fail)
        if obj.in_transaction():
            await obj.commit()
        return receipt
