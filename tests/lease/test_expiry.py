"""Expired keys count as absent in both modes: the next call runs again and replaces the row.

Time is moved past the TTL with the store's ``clock_offset``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import idempotent
from tests.lease.conftest import LeaseDb, Recorder

TTL = 3600.0


class DeclinedError(Exception):
    """A recorded failure."""


def test_lease_mode_expired_result_runs_again(ldb: LeaseDb, recorder: Recorder) -> None:
    """A completed key past its TTL is replaced by a new run; before the TTL it replays."""
    runs: list[int] = []

    def sync_contacts(account_id: str) -> int:
        runs.append(1)
        return len(runs)

    store = ldb.store()
    fn = ldb.idempotent(sync_contacts, key_from="account_id", store=store, ttl=TTL, hooks=[recorder])
    assert ldb.call(fn, "a-1") == 1
    store.clock_offset = TTL - 5
    assert ldb.call(fn, "a-1") == 1
    store.clock_offset = TTL + 1
    assert ldb.call(fn, "a-1") == 2
    store.clock_offset = TTL + 2
    assert ldb.call(fn, "a-1") == 2
    assert recorder.names() == ["executed", "replayed", "executed", "replayed"]
    (row,) = ldb.rows()
    assert row.result == "2"


def test_lease_mode_expired_failure_runs_again(ldb: LeaseDb) -> None:
    """A recorded failure expires like a result: after the TTL the function runs again."""
    runs: list[int] = []

    def charge(payment_id: str) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise DeclinedError("no")
        return "charged"

    store = ldb.store()
    fn = ldb.idempotent(charge, key_from="payment_id", store=store, ttl=TTL, store_errors=[DeclinedError])
    with pytest.raises(DeclinedError):
        ldb.call(fn, "p-1")
    with pytest.raises(DeclinedError):
        ldb.call(fn, "p-1")
    store.clock_offset = TTL + 1
    assert ldb.call(fn, "p-1") == "charged"
    assert len(runs) == 2


def test_transaction_mode_expired_key_runs_again(ldb: LeaseDb) -> None:
    """In transaction mode too, a key past its TTL counts as absent: the function and its write run again."""
    payments = ldb.payments
    store = ldb.store()
    options: dict[str, Any] = {
        "key_from": "ref",
        "scope": "tests.lease.tx_expiry",
        "store": store,
        "ttl": TTL,
    }
    if not ldb.is_async:

        @idempotent(**options)
        def pay(session: Session, ref: str) -> int:
            session.execute(payments.insert().values(ref=ref))
            return int(session.execute(sa.select(sa.func.max(payments.c.id))).scalar_one())

        def call(ref: str) -> Any:
            with Session(ldb.engine) as session:
                return pay(session, ref)

    else:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = ldb.driver_engine()

        @idempotent(**options)
        async def apay(session: AsyncSession, ref: str) -> int:
            await session.execute(payments.insert().values(ref=ref))
            return int((await session.execute(sa.select(sa.func.max(payments.c.id)))).scalar_one())

        async def acall(ref: str) -> Any:
            async with AsyncSession(engine) as session:
                return await apay(session, ref)

        def call(ref: str) -> Any:
            return asyncio.run(acall(ref))

    first = call("o-1")
    assert call("o-1") == first
    store.clock_offset = TTL + 1
    second = call("o-1")
    assert second != first
    assert call("o-1") == second
    assert ldb.payment_count() == 2
