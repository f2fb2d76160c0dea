"""Transaction mode on real databases: run once, replay, roll back together, refuse reuse."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import KeyReused, SerializationError, TransactionAborted, idempotent
from idempotent.errors import ConfigurationError, IdempotencyWarning, TableMissing
from tests.conftest import Db
from tests.shop import Boom, Receipt, Shop

HANDLES = ["connection", "session"]


@pytest.mark.parametrize("handle", HANDLES)
def test_first_call_runs_and_retry_replays(db: Db, handle: str) -> None:
    """The first call writes one order; the retry returns an equal Receipt without running again."""
    shop = Shop(db)
    first = shop.call("order-1", 25, handle=handle)
    again = shop.call("order-1", 25, handle=handle)
    assert again == first
    assert type(again) is Receipt
    assert shop.executions == 1
    assert db.count() == 1
    (row,) = db.key_rows()
    assert row.status == "completed"
    assert row.fingerprint.startswith("v1:")


@pytest.mark.parametrize("handle", HANDLES)
def test_joined_transaction_commits_with_caller(db: Db, handle: str) -> None:
    """Inside the caller's transaction the key commits when the caller commits."""
    shop = Shop(db)
    first = shop.call("order-2", handle=handle, joined=True)
    assert shop.call("order-2", handle=handle, joined=True) == first
    assert (shop.executions, db.count(), len(db.key_rows())) == (1, 1, 1)


@pytest.mark.parametrize("handle", HANDLES)
def test_function_error_leaves_no_key_and_no_order(db: Db, handle: str) -> None:
    """A failing function rolls back its order and its claim; the retry runs again."""
    shop = Shop(db)
    with pytest.raises(Boom):
        shop.call("order-3", fail=True, handle=handle)
    assert (db.count(), db.key_rows()) == (0, [])
    receipt = shop.call("order-3", handle=handle)
    assert shop.executions == 2
    assert db.count() == 1
    assert receipt.ref == "order-3"


@pytest.mark.parametrize("handle", HANDLES)
def test_caller_catches_error_and_commits_anyway(db: Db, handle: str) -> None:
    """A caller that swallows the error and commits never commits a half-claimed key."""
    shop = Shop(db)
    if db.is_async:

        async def scenario() -> None:
            from sqlalchemy.ext.asyncio import AsyncSession

            engine = db.async_engine
            ctx: Any = AsyncSession(engine) if handle == "session" else engine.connect()
            async with ctx as obj:
                await obj.begin()
                await obj.execute(db.orders.insert().values(ref="before", amount=1))
                with pytest.raises(Boom):
                    await shop.aplace(obj, "order-4", 5, fail=True)
                await obj.commit()

        db.run(scenario())
    else:
        ctx: Any = Session(db.engine) if handle == "session" else db.engine.connect()
        with ctx as obj:
            obj.begin()
            obj.execute(db.orders.insert().values(ref="before", amount=1))
            with pytest.raises(Boom):
                shop.place(obj, "order-4", 5, fail=True)
            obj.commit()
    with db.engine.connect() as conn:
        refs = [r for (r,) in conn.execute(sa.select(db.orders.c.ref))]
    assert refs == ["before"]  # the caller's own write survived, the function's did not
    assert db.key_rows() == []
    shop.call("order-4", 5)
    assert shop.executions == 2


def test_caller_rollback_discards_joined_key(db: Db) -> None:
    """When the caller rolls back after a joined call, the key and order go with it, and it is reported."""
    shop = Shop(db)
    if db.is_async:

        async def scenario() -> None:
            async with db.async_engine.connect() as conn:
                await conn.begin()
                await shop.aplace(conn, "order-5", 1)
                await conn.rollback()

        with pytest.warns(IdempotencyWarning, match="ended without a commit"):
            db.run(scenario())
    else:

        def sync_scenario() -> None:
            with db.engine.connect() as conn:
                conn.begin()
                shop.place(conn, "order-5", 1)
                conn.rollback()

        with pytest.warns(IdempotencyWarning, match="ended without a commit"):
            sync_scenario()
    assert (db.count(), db.key_rows()) == (0, [])
    shop.call("order-5", 1)
    assert (shop.executions, db.count()) == (2, 1)


def test_same_key_other_arguments_is_key_reused(db: Db) -> None:
    """Reusing a key with another amount raises KeyReused: nothing runs, nothing is replayed."""
    shop = Shop(db)
    shop.call("order-6", 10)
    with pytest.raises(KeyReused) as info:
        shop.call("order-6", 11)
    assert info.value.key == "order-6"
    assert (shop.executions, db.count()) == (1, 1)


def test_sync_and_async_functions_sharing_a_scope_share_keys(db: Db) -> None:
    """Two entry points with one explicit scope replay each other's results."""
    shop = Shop(db)
    first = shop.call("order-7")
    with db.engine.connect() as conn:
        assert shop.place(conn, "order-7", 10) == first
    assert shop.executions == 1


@pytest.mark.parametrize("handle", HANDLES)
def test_commit_true_commits_autobegun_transaction(db: Db, handle: str) -> None:
    """commit=True commits a transaction SQLAlchemy auto-began for an earlier read."""
    shop = Shop(db, commit=True)
    if db.is_async:

        async def scenario() -> bool:
            from sqlalchemy.ext.asyncio import AsyncSession

            ctx: Any = AsyncSession(db.async_engine) if handle == "session" else db.async_engine.connect()
            async with ctx as obj:
                await obj.execute(sa.select(1))
                await shop.aplace(obj, "order-8", 3)
                return bool(obj.in_transaction())

        still_open = db.run(scenario())
    else:
        ctx: Any = Session(db.engine) if handle == "session" else db.engine.connect()
        with ctx as obj:
            obj.execute(sa.select(1))
            shop.place(obj, "order-8", 3)
            still_open = obj.in_transaction()
    assert not still_open
    assert (db.count(), len(db.key_rows())) == (1, 1)  # committed although the caller never did


def test_autobegun_without_commit_true_leaves_commit_to_caller(db: Db) -> None:
    """Without commit=True, an auto-begun transaction is joined; closing without commit discards it, reported."""
    shop = Shop(db)
    if db.is_async:

        async def scenario() -> None:
            async with db.async_engine.connect() as conn:
                await conn.execute(sa.select(1))
                await shop.aplace(conn, "order-9", 3)

        with pytest.warns(IdempotencyWarning, match="ended without a commit"):
            db.run(scenario())
    else:

        def sync_scenario() -> None:
            with db.engine.connect() as conn:
                conn.execute(sa.select(1))
                shop.place(conn, "order-9", 3)

        with pytest.warns(IdempotencyWarning, match="ended without a commit"):
            sync_scenario()
    assert (db.count(), db.key_rows()) == (0, [])


def test_unencodable_result_rolls_back_business_write(db: Db) -> None:
    """A result with no stable encoding raises SerializationError before commit; the order is gone."""
    orders = db.orders

    class Opaque:
        pass

    if db.is_async:

        @idempotent(key_from="ref", scope="tests.opaque", store=db.store)
        async def aplace(conn: Any, ref: str) -> Any:
            await conn.execute(orders.insert().values(ref=ref))
            return Opaque()

        async def scenario() -> None:
            async with db.async_engine.connect() as conn:
                await aplace(conn, "o-1")

        with pytest.raises(SerializationError, match="return annotation"):
            db.run(scenario())
    else:

        @idempotent(key_from="ref", scope="tests.opaque", store=db.store)
        def place(conn: Any, ref: str) -> Any:
            conn.execute(orders.insert().values(ref=ref))
            return Opaque()

        with db.engine.connect() as conn, pytest.raises(SerializationError, match="return annotation"):
            place(conn, "o-1")
    assert (db.count(), db.key_rows()) == (0, [])


def test_result_over_size_limit_rolls_back(sync_db: Db) -> None:
    """A result over max_result_bytes is refused before commit, never stored truncated."""
    db = sync_db
    orders = db.orders

    @idempotent(key_from="ref", scope="tests.big", store=db.store, max_result_bytes=1000)
    def place(conn: Any, ref: str) -> str:
        conn.execute(orders.insert().values(ref=ref))
        return "x" * 2000

    with db.engine.connect() as conn, pytest.raises(SerializationError, match="1000-byte limit"):
        place(conn, "big")
    assert (db.count(), db.key_rows()) == (0, [])


def test_missing_table_names_the_command(sync_db: Db) -> None:
    """Without the keys table the error says how to create it, and the business write is rolled back."""
    db = sync_db
    from idempotent import SQLStore

    shop = Shop(db, store=SQLStore(db.engine, "no_such_keys_table"))
    with pytest.raises(TableMissing, match="idempotent migrate"):
        shop.call("order-10")
    assert db.count() == 0


def test_no_session_argument_is_a_clear_error(sync_db: Db) -> None:
    """A transaction-mode function called without any session says what to pass."""

    @idempotent(key_from="ref", scope="tests.nosession", store=sync_db.store)
    def handler(ref: str) -> int:
        return 1

    with pytest.raises(ConfigurationError, match="session="):
        handler("k")


@pytest.mark.parametrize("handle", HANDLES)
def test_self_committing_function_warns_and_still_replays(sync_db: Db, handle: str) -> None:
    """A function that commits itself keeps its key with its write; the result is stored after, with a warning."""
    db = sync_db
    orders = db.orders
    runs = []

    @idempotent(key_from="ref", scope="tests.selfcommit", store=db.store)
    def place(conn: Any, ref: str) -> int:
        runs.append(ref)
        conn.execute(orders.insert().values(ref=ref))
        conn.commit()
        return 7

    ctx: Any = Session(db.engine) if handle == "session" else db.engine.connect()
    with ctx as obj:
        with pytest.warns(IdempotencyWarning, match="ended the transaction itself"):
            assert place(obj, "s-1") == 7
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert place(obj, "s-1") == 7
    assert runs == ["s-1"]
    (row,) = db.key_rows()
    assert (row.status, db.count()) == ("completed", 1)


def test_nested_idempotent_calls_join_the_outer_transaction(sync_db: Db) -> None:
    """An idempotent function called inside another's transaction commits or rolls back with it."""
    db = sync_db
    orders = db.orders
    inner_runs = []

    @idempotent(key_from="ref", scope="tests.inner", store=db.store)
    def inner(conn: Any, ref: str) -> int:
        inner_runs.append(ref)
        conn.execute(orders.insert().values(ref="inner-" + ref))
        return 1

    @idempotent(key_from="ref", scope="tests.outer", store=db.store)
    def outer(conn: Any, ref: str, fail: bool) -> int:
        inner(conn, ref)
        if fail:
            raise Boom(ref)
        return 2

    with db.engine.connect() as conn, pytest.raises(Boom):
        outer(conn, "n-1", True)
    assert (db.count(), db.key_rows()) == (0, [])
    with db.engine.connect() as conn:
        assert outer(conn, "n-1", False) == 2
        assert outer(conn, "n-1", False) == 2
    assert inner_runs == ["n-1", "n-1"]
    assert (db.count(), len(db.key_rows())) == (1, 2)


def test_expired_key_runs_again(sync_db: Db) -> None:
    """A key past its ttl counts as absent: the next call runs and replaces the row."""
    db = sync_db
    shop = Shop(db, ttl=60)
    shop.call("e-1")
    db.store.clock_offset = 61
    try:
        shop.call("e-1")
    finally:
        db.store.clock_offset = 0
    assert (shop.executions, db.count(), len(db.key_rows())) == (2, 2, 1)


def test_store_errors_recorded_when_owned(sync_db: Db) -> None:
    """store_errors in an owned transaction: the error is recorded, the order rolled back, replay re-raises."""
    db = sync_db
    shop = Shop(db, store_errors=[Boom])
    for _ in range(2):
        with pytest.raises(Boom, match="f-1"):
            shop.call("f-1", fail=True)
    assert shop.executions == 1
    assert db.count() == 0
    (row,) = db.key_rows()
    assert row.status == "failed"


def test_wrong_session_type_for_async_function(sync_db: Db) -> None:
    """An async function given a sync Connection gets an error naming what it needs."""
    shop = Shop(sync_db)
    import asyncio

    with sync_db.engine.connect() as conn, pytest.raises(ConfigurationError, match="AsyncSession"):
        asyncio.run(shop.aplace(conn, "w-1", 1))


def test_transaction_aborted_is_public() -> None:
    """TransactionAborted is part of the public error family."""
    from idempotent import IdempotencyError

    assert issubclass(TransactionAborted, IdempotencyError)


def test_self_committing_function_that_fails_releases_its_key(sync_db: Db) -> None:
    """A function that commits and then raises (or returns something unstorable) leaves no key: a retry runs."""
    db = sync_db
    orders = db.orders
    runs = []

    class Opaque:
        pass

    @idempotent(key_from="ref", scope="tests.selfcommit-fail", store=db.store)
    def place(conn: Any, ref: str, how: str) -> Any:
        runs.append(how)
        conn.execute(orders.insert().values(ref=ref))
        conn.commit()
        if how == "raise":
            raise Boom(ref)
        if how == "opaque":
            return Opaque()
        return 1

    with db.engine.connect() as conn:
        with pytest.raises(Boom):
            place(conn, "sf-1", "raise")
        assert db.key_rows() == []
        with pytest.raises(SerializationError):
            place(conn, "sf-2", "opaque")
        assert db.key_rows() == []
        with pytest.warns(IdempotencyWarning):
            assert place(conn, "sf-1", "ok") == 1
    assert runs == ["raise", "opaque", "ok"]
    assert len(db.key_rows()) == 1
    assert db.count() == 3  # the function's own commits stand: it chose to commit them
