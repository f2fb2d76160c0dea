"""Concurrent duplicates: exactly one execution, every caller the same result.

Threads, asyncio tasks and separate processes race on one key against real databases; the
assertions count executions and business rows, never timings.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent import InProgress, idempotent
from tests.conftest import Db
from tests.proc_worker import place_in_process
from tests.shop import Boom, Receipt, Shop
from tests.waiting import wait_for_blocked

WORKERS = 5


def _race_threads(db: Db, shop: Shop, ref: str, first_fails: bool = False) -> list[Any]:
    """Start WORKERS threads on one key; the first executor waits until the others are blocked."""
    barrier = threading.Barrier(WORKERS)
    gate = threading.Lock()
    state = {"first": True}
    orders = db.orders

    @idempotent(key_from="ref", scope="tests.race", store=db.store)
    def place(conn: Any, ref: str) -> Receipt:
        with gate:
            first, state["first"] = state["first"], False
        shop._executed()
        result = conn.execute(orders.insert().values(ref=ref, amount=1))
        if first:
            wait_for_blocked(db, WORKERS - 1)
            if first_fails:
                raise Boom(ref)
        return Receipt(int(result.inserted_primary_key[0]), ref, 1)

    def worker() -> Any:
        barrier.wait()
        try:
            with db.engine.connect() as conn:
                return place(conn, ref)
        except Exception as exc:  # collected and asserted by the test
            return exc

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda _: worker(), range(WORKERS)))


def test_threads_execute_once(sync_db: Db) -> None:
    """Five threads with one key: one execution, one order, five equal receipts."""
    shop = Shop(sync_db)
    results = _race_threads(sync_db, shop, "t-1")
    assert all(isinstance(r, Receipt) for r in results), results
    assert len(set(results)) == 1
    assert (shop.executions, sync_db.count(), len(sync_db.key_rows())) == (1, 1, 1)


def test_threads_take_over_after_holder_rolls_back(sync_db: Db) -> None:
    """When the first executor fails, exactly one waiter runs it and the rest replay that result."""
    shop = Shop(sync_db)
    results = _race_threads(sync_db, shop, "t-2", first_fails=True)
    errors = [r for r in results if isinstance(r, Exception)]
    receipts = [r for r in results if isinstance(r, Receipt)]
    assert len(errors) == 1 and isinstance(errors[0], Boom), results
    assert len(receipts) == WORKERS - 1
    assert len(set(receipts)) == 1
    assert shop.executions == 2
    assert (sync_db.count(), len(sync_db.key_rows())) == (1, 1)


def test_asyncio_tasks_execute_once(async_db: Db) -> None:
    """Concurrent asyncio tasks on the async drivers, one key: one execution, equal results."""
    db = async_db
    orders = db.orders
    executions = []
    first_started = asyncio.Event()

    @idempotent(key_from="ref", scope="tests.arace", store=db.store)
    async def place(conn: Any, ref: str) -> Receipt:
        executions.append(ref)
        result = await conn.execute(orders.insert().values(ref=ref, amount=1))
        first_started.set()
        if len(executions) == 1:
            await asyncio.to_thread(wait_for_blocked, db, WORKERS - 1)
        return Receipt(int(result.inserted_primary_key[0]), ref, 1)

    async def one() -> Receipt:
        async with db.async_engine.connect() as conn:
            return await place(conn, "a-1")

    async def scenario() -> list[Any]:
        return list(await asyncio.gather(*(one() for _ in range(WORKERS)), return_exceptions=True))

    results = db.run(scenario())
    assert all(isinstance(r, Receipt) for r in results), results
    assert len(set(results)) == 1
    assert executions == ["a-1"]
    assert (db.count(), len(db.key_rows())) == (1, 1)


def test_processes_execute_once(sync_db: Db) -> None:
    """Separate processes with one key: exactly one order row, every process the same receipt."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=place_in_process,
            args=(sync_db.url, sync_db.keys.name, sync_db.orders.name, "p-1", start, results),
        )
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=120)
    assert all(o[0] == "ok" for o in outcomes), outcomes
    assert len(set(outcomes)) == 1
    assert (sync_db.count(), len(sync_db.key_rows())) == (1, 1)


def test_duplicate_past_wait_gets_in_progress(sync_db: Db) -> None:
    """A duplicate that waits longer than `wait` gets InProgress, and the first call still completes."""
    db = sync_db
    orders = db.orders
    inside = threading.Event()
    release = threading.Event()

    @idempotent(key_from="ref", scope="tests.slow", store=db.store, wait=0)
    def place(conn: Any, ref: str) -> int:
        conn.execute(orders.insert().values(ref=ref, amount=1))
        inside.set()
        release.wait(60)
        return 1

    def first() -> int:
        with db.engine.connect() as conn:
            return place(conn, "w-1")

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(first)
        assert inside.wait(60)
        try:
            with db.engine.connect() as conn, pytest.raises(InProgress) as info:
                place(conn, "w-1")
            assert info.value.retry_after >= 0
        finally:
            release.set()
        assert future.result() == 1
    assert (db.count(), len(db.key_rows())) == (1, 1)
    with db.engine.connect() as conn:
        assert place(conn, "w-1") == 1  # now it replays


def test_wait_does_not_leak_into_function_statements(pg_db: Db) -> None:
    """PostgreSQL: the claim's lock_timeout is set back before the function runs, on every path."""
    db = pg_db
    seen = []

    if db.is_async:

        @idempotent(key_from="ref", scope="tests.lt", store=db.store, wait=3)
        async def alook(conn: Any, ref: str) -> str:
            value = (await conn.execute(sa.text("SELECT current_setting('lock_timeout')"))).scalar_one()
            seen.append(value)
            return str(value)

        async def scenario() -> None:
            async with db.async_engine.connect() as conn:
                await conn.execute(sa.text("SET lock_timeout = '42s'"))
                await conn.commit()
                await alook(conn, "l-1")
                await conn.begin()
                await alook(conn, "l-2")
                await conn.commit()
                after = (await conn.execute(sa.text("SELECT current_setting('lock_timeout')"))).scalar_one()
                seen.append(after)

        db.run(scenario())
    else:

        @idempotent(key_from="ref", scope="tests.lt", store=db.store, wait=3)
        def look(conn: Any, ref: str) -> str:
            value = conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one()
            seen.append(value)
            return str(value)

        with db.engine.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '42s'"))
            conn.commit()
            look(conn, "l-1")
            with conn.begin():
                look(conn, "l-2")
            seen.append(conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar_one())
    assert seen == ["42s", "42s", "42s"]


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_postgresql_strict_isolation_owned(isolation: str, tmp_path: Any) -> None:
    """PostgreSQL REPEATABLE READ/SERIALIZABLE, decorator-owned: racing threads still execute once."""
    from tests.conftest import _make_db

    gen = _make_db("postgresql", "sync", tmp_path)
    db = next(gen)
    try:
        db.engine = db.engine.execution_options(isolation_level=isolation)
        shop = Shop(db)
        results = _race_threads(db, shop, "iso-1")
        assert all(isinstance(r, Receipt) for r in results), results
        assert len(set(results)) == 1
        assert (shop.executions, db.count()) == (1, 1)
    finally:
        db.engine = db.engine.engine if hasattr(db.engine, "engine") else db.engine
        gen.close()


def test_mariadb_waiters_after_rollback(tmp_path: Any) -> None:
    """MariaDB, several waiters, holder rolls back: deadlock victims are retried; one execution wins."""
    from tests.conftest import _make_db

    gen = _make_db("mariadb", "sync", tmp_path)
    db = next(gen)
    try:
        for attempt in range(3):
            shop = Shop(db)
            results = _race_threads(db, shop, f"m-{attempt}", first_fails=True)
            receipts = [r for r in results if isinstance(r, Receipt)]
            errors = [r for r in results if not isinstance(r, Receipt)]
            assert len(errors) == 1 and isinstance(errors[0], Boom), results
            assert len(set(receipts)) == 1 and len(receipts) == WORKERS - 1
    finally:
        gen.close()


def test_mariadb_joined_waiters_get_transaction_aborted_or_replay(tmp_path: Any) -> None:
    """MariaDB, joined transactions, holder rolls back: a deadlock victim gets TransactionAborted
    (its whole transaction is gone), the others run once or replay; one order in the end."""
    from idempotent import TransactionAborted
    from tests.conftest import _make_db

    gen = _make_db("mariadb", "sync", tmp_path)
    db = next(gen)
    try:
        orders = db.orders
        barrier = threading.Barrier(WORKERS)
        gate = threading.Lock()
        state = {"first": True}
        executions = []

        @idempotent(key_from="ref", scope="tests.joined-race", store=db.store)
        def place(conn: Any, ref: str) -> Receipt:
            with gate:
                first, state["first"] = state["first"], False
            executions.append(ref)
            result = conn.execute(orders.insert().values(ref=ref, amount=1))
            if first:
                wait_for_blocked(db, WORKERS - 1)
                raise Boom(ref)
            return Receipt(int(result.inserted_primary_key[0]), ref, 1)

        def worker() -> Any:
            barrier.wait()
            try:
                with db.engine.connect() as conn, conn.begin():
                    return place(conn, "j-1")
            except Exception as exc:  # collected and asserted below
                return exc

        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(lambda _: worker(), range(WORKERS)))
        receipts = [r for r in results if isinstance(r, Receipt)]
        aborted = [r for r in results if isinstance(r, TransactionAborted)]
        booms = [r for r in results if isinstance(r, Boom)]
        assert len(booms) == 1
        assert len(receipts) + len(aborted) == WORKERS - 1, results
        assert len(receipts) >= 1
        assert len(set(receipts)) == 1
        assert len(executions) == 2  # the failed holder and the one winner
        assert (db.count(), len(db.key_rows())) == (1, 1)
    finally:
        gen.close()
