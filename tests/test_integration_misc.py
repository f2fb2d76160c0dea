"""Cancellation, process-wide configuration and sessions obtained from a callable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker

import idempotent as idem
from idempotent import idempotent
from idempotent.decorator import default_store
from tests.conftest import Db


def test_cancellation_rolls_back_and_reraises(async_db: Db) -> None:
    """Cancelling an async call mid-function rolls back its claim and write; the retry runs."""
    db = async_db
    orders = db.orders
    inside = asyncio.Event()
    runs = []

    @idempotent(key_from="ref", scope="tests.cancel", store=db.store)
    async def place(conn: Any, ref: str, hang: bool) -> int:
        runs.append(ref)
        await conn.execute(orders.insert().values(ref=ref))
        if hang:
            inside.set()
            await asyncio.Event().wait()  # never set: only cancellation ends this
        return 1

    async def scenario() -> int:
        async with db.async_engine.connect() as conn:
            task = asyncio.ensure_future(place(conn, "c-1", True))
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not conn.in_transaction()
            return await place(conn, "c-1", False)

    assert db.run(scenario()) == 1
    assert runs == ["c-1", "c-1"]
    assert (db.count(), len(db.key_rows())) == (1, 1)


def test_configure_sets_the_default_store(sync_db: Db) -> None:
    """configure(table=...) points every decorator without store= at that table."""
    previous = default_store()
    idem.configure(engine=sync_db.engine, table=sync_db.keys.name)
    try:
        runs = []

        @idempotent(key_from="ref", scope="tests.configured")
        def place(conn: Any, ref: str) -> str:
            runs.append(ref)
            return ref.upper()

        with sync_db.engine.connect() as conn:
            assert place(conn, "x") == place(conn, "x") == "X"
        assert runs == ["x"]
        assert len(sync_db.key_rows()) == 1
    finally:
        idem.configure(store=previous)


def test_session_from_zero_argument_callable(sync_db: Db) -> None:
    """session=callable works with a scoped_session, as Flask-SQLAlchemy's db.session is."""
    db = sync_db
    registry = scoped_session(sessionmaker(db.engine))
    orders = db.orders
    runs = []

    @idempotent(key_from="ref", scope="tests.scoped", store=db.store, session=lambda: registry)
    def create(ref: str) -> int:
        runs.append(ref)
        registry.execute(orders.insert().values(ref=ref))
        return 5

    try:
        assert create("s-1") == create("s-1") == 5
    finally:
        registry.remove()
    assert runs == ["s-1"]
    assert (db.count(), len(db.key_rows())) == (1, 1)


def test_repeatable_read_joined_loser_gets_transaction_aborted(tmp_path: Any) -> None:
    """PostgreSQL REPEATABLE READ, joined: a loser whose snapshot cannot see the winner gets TransactionAborted."""
    from tests.conftest import _make_db

    gen = _make_db("postgresql", "sync", tmp_path)
    db = next(gen)
    try:

        @idempotent(key_from="ref", scope="tests.rr", store=db.store)
        def place(conn: Any, ref: str) -> int:
            conn.execute(db.orders.insert().values(ref=ref))
            return 1

        with db.engine.connect() as loser:
            loser = loser.execution_options(isolation_level="REPEATABLE READ")
            loser.begin()
            loser.execute(sa.select(1))  # the snapshot is taken here
            with db.engine.connect() as winner:
                assert place(winner, "rr-1") == 1
            with pytest.raises(idem.TransactionAborted, match="retry the whole unit"):
                place(loser, "rr-1")
            loser.rollback()
            assert place(loser, "rr-1") == 1  # a fresh transaction replays
        assert db.count() == 1
    finally:
        gen.close()
