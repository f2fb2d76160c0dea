"""A call completed in the caller's transaction that then ends without commit is reported."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import idempotent
from idempotent.errors import IdempotencyWarning
from tests.conftest import Db
from tests.shop import Shop


def _scenario(db: Db, shop: Shop, ref: str, *, end: str, handle: str = "session") -> None:
    """Read first (SQLAlchemy auto-begins), place an order, then end the session (or connection)
    as ``end`` says."""
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession

        async def run() -> None:
            session: Any = (
                AsyncSession(db.async_engine) if handle == "session" else await db.async_engine.connect()
            )
            await session.execute(sa.select(1))
            await shop.aplace(session, ref, 5)
            if end == "commit":
                await session.commit()
            elif end == "rollback":
                await session.rollback()
            await session.close()

        db.run(run())
        return
    session: Any = Session(db.engine) if handle == "session" else db.engine.connect()
    session.execute(sa.select(1))
    shop.place(session, ref, 5)
    if end == "commit":
        session.commit()
    elif end == "rollback":
        session.rollback()
    session.close()  # the line a warning points at (sync): see test below


@pytest.mark.parametrize(
    ("handle", "end"), [("session", "close"), ("session", "rollback"), ("connection", "close")]
)
def test_closing_without_commit_warns_and_logs(
    db: Db, handle: str, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing or rolling back an auto-begun session (or a connection) after a completed call loses
    order and key: an IdempotencyWarning and an ERROR log name the function, the key and the fix."""
    shop = Shop(db)
    with caplog.at_level(logging.ERROR, logger="idempotent"), pytest.warns(IdempotencyWarning) as caught:
        _scenario(db, shop, "order-lost", end=end, handle=handle)
    assert (db.count(), db.key_rows()) == (0, [])  # what the warning is about really happened
    lost = [w for w in caught if "ended without a commit" in str(w.message)]
    assert len(lost) == 1
    text = str(lost[0].message)
    assert "tests.shop" in text and "place" in text and "'order-lost'" in text and "commit=True" in text
    assert lost[0].filename == __file__  # the user's line (async too), not SQLAlchemy's
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "order-lost" in r.getMessage()]
    assert len(errors) == 1


@pytest.mark.parametrize("handle", ["session", "connection"])
def test_commit_after_the_call_is_silent(db: Db, handle: str) -> None:
    """The caller commits the auto-begun transaction: order and key are saved, nothing is reported."""
    shop = Shop(db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)
        _scenario(db, shop, "order-kept", end="commit", handle=handle)
    assert (db.count(), len(db.key_rows())) == (1, 1)


def test_rollback_because_of_an_error_is_silent(sync_db: Db) -> None:
    """A session closed while the caller's own exception propagates rolls back as asked: no warning."""
    shop = Shop(sync_db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)

        def caller() -> None:
            with Session(sync_db.engine) as session:
                session.execute(sa.select(1))
                shop.place(session, "order-failed-later", 5)
                raise LookupError("the caller failed after the call")

        with pytest.raises(LookupError):
            caller()
    assert sync_db.count() == 0


def test_explicit_session_begin_is_not_watched(sync_db: Db) -> None:
    """A session transaction the caller began with begin() is the caller's to end: no warning."""
    shop = Shop(sync_db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)
        session = Session(sync_db.engine)
        session.begin()
        shop.place(session, "order-explicit", 5)
        session.close()
    assert sync_db.count() == 0


def test_nested_call_rolled_back_by_a_failing_outer_call_is_silent(db: Db) -> None:
    """An inner call joined the transaction an outer decorated call owns; the outer function then
    fails and the decorator rolls back: that is the outer call's error, not a forgotten commit."""
    inner = Shop(db, scope="tests.unsaved.inner")
    orders = db.orders

    @idempotent(key_from="ref", scope="tests.unsaved.outer", store=db.store)
    def outer(conn: Any, ref: str) -> None:
        inner.place(conn, ref + "-inner", 1)
        conn.execute(orders.insert().values(ref=ref, amount=2))
        raise LookupError("the outer function fails after the inner call")

    @idempotent(key_from="ref", scope="tests.unsaved.outer", store=db.store)
    async def aouter(conn: Any, ref: str) -> None:
        await inner.aplace(conn, ref + "-inner", 1)
        await conn.execute(orders.insert().values(ref=ref, amount=2))
        raise LookupError("the outer function fails after the inner call")

    def scenario() -> None:
        if db.is_async:

            async def run() -> None:
                async with db.async_engine.connect() as conn:
                    await aouter(conn, "order-outer")

            db.run(run())
        else:
            with db.engine.connect() as conn:
                outer(conn, "order-outer")

    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)
        with pytest.raises(LookupError):
            scenario()
    assert (db.count(), db.key_rows()) == (0, [])
