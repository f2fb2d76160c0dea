"""Lease mode on PostgreSQL with psycopg: the library's own statements on the driver's cursor.

Without event listeners or ``echo`` on the store's engine, the claim, the result, the release,
the renewal and the replay read run on psycopg's cursor of a pooled connection switched to
autocommit, instead of through a SQLAlchemy ``Connection``. These tests pin what must not change
with that: the pool gets its connections back as they were, driver errors are SQLAlchemy's
errors (translated, and retried once when the connection dropped), an interrupted statement
never returns its connection to the pool, and an observed engine still sees every statement.
A second part covers the replay read lease mode makes first once a function replays often.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent import InProgress, KeyReused, SQLStore, _drivers, idempotent
from idempotent.decorator import PEEK_AT
from idempotent.errors import TableMissing
from tests.lease.conftest import LeaseDb, make_ldb
from tests.proxy import Proxy

TTL = 3600.0


@pytest.fixture(params=["sync", "async"])
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL through psycopg, sync and async."""
    yield from make_ldb("postgresql", request.param, tmp_path)


@pytest.fixture
def raw(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements that ran on the driver's cursor (sync and async)."""
    seen: list[str] = []
    run_sync, run_async = _drivers._exec_raw_sync, _drivers._exec_raw_async

    def counted_sync(engine: Any, op: Any) -> Any:
        seen.append(op.sql)
        return run_sync(engine, op)

    async def counted_async(engine: Any, op: Any) -> Any:
        seen.append(op.sql)
        return await run_async(engine, op)

    monkeypatch.setattr(_drivers, "_exec_raw_sync", counted_sync)
    monkeypatch.setattr(_drivers, "_exec_raw_async", counted_async)
    return seen


def pooled(engine: sa.Engine) -> list[Any]:
    """The (DBAPI) connections idle in ``engine``'s pool; an invalidated one is not among them."""
    queue: Any = engine.pool._pool  # type: ignore[attr-defined]
    records = queue.queue if hasattr(queue, "queue") else queue._queue._queue  # asyncio's queue
    return [rec.dbapi_connection for rec in list(records) if rec.dbapi_connection is not None]


class Pg:
    """An engine of the test's driver made by the test (async: one event loop for the whole test)."""

    def __init__(self, ldb: LeaseDb, url: str | None = None, **options: Any) -> None:
        self.ldb = ldb
        self.is_async = ldb.is_async
        if self.is_async:
            from sqlalchemy.ext.asyncio import create_async_engine

            self.loop = asyncio.new_event_loop()
            self.engine: Any = create_async_engine(url or ldb.async_url, **options)
            self.sync_engine: sa.Engine = self.engine.sync_engine
        else:
            self.engine = self.sync_engine = sa.create_engine(url or ldb.sync_url, **options)

    def store(self, table: str | None = None, **options: Any) -> SQLStore:
        return SQLStore(self.engine, table or self.ldb.table, **options)

    def decorate(self, body: Callable[..., Any], **options: Any) -> Any:
        options.setdefault("scope", f"tests.lease.raw.{body.__name__}")
        options.setdefault("mode", "lease")
        options.setdefault("store", self.store())
        if not self.is_async:
            return idempotent(**options)(body)

        @functools.wraps(body)
        async def run(*args: Any, **kwargs: Any) -> Any:
            return body(*args, **kwargs)

        return idempotent(**options)(run)

    def call(self, fn: Any, *args: Any) -> Any:
        if self.is_async:
            return self.loop.run_until_complete(fn(*args))
        return fn(*args)

    def pooled(self) -> list[Any]:
        return pooled(self.sync_engine)

    def close(self) -> None:
        if self.is_async:
            self.loop.run_until_complete(self.engine.dispose())
            self.loop.close()
        else:
            self.engine.dispose()


@pytest.fixture
def make(pg: LeaseDb) -> Iterator[Callable[..., Pg]]:
    made: list[Pg] = []

    def build(url: str | None = None, **options: Any) -> Pg:
        made.append(Pg(pg, url, **options))
        return made[-1]

    yield build
    for each in made:
        each.close()


def test_lease_statements_run_on_the_driver_cursor(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str]
) -> None:
    """Claim and result on the cursor; the pooled connection comes back out of autocommit and
    outside any transaction; a replay returns the stored result."""
    h = make()
    runs: list[str] = []

    def ship(order_id: str) -> dict[str, Any]:
        runs.append(order_id)
        return {"order": order_id, "shipped": True}

    fn = h.decorate(ship, key_from="order_id")
    assert h.call(fn, "o-1") == {"order": "o-1", "shipped": True}
    assert h.call(fn, "o-1") == {"order": "o-1", "shipped": True}
    assert runs == ["o-1"]
    assert len(raw) == 3  # claim + result, then the replay's claim
    assert h.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    pooled = h.pooled()
    assert pooled and all(c.autocommit is False for c in pooled)
    assert all(c.info.transaction_status.name == "IDLE" for c in pooled)
    (row,) = pg.rows()
    assert (row.status, row.result) == ("completed", '{"order":"o-1","shipped":true}')


def test_failure_releases_the_claim_on_the_driver_cursor(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str]
) -> None:
    """A function that raises releases its claim (a DELETE on the cursor): the next call runs."""
    h = make()
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        if len(runs) == 1:
            raise RuntimeError("declined")
        return "charged"

    fn = h.decorate(charge, key_from="payment_id")
    with pytest.raises(RuntimeError):
        h.call(fn, "p-1")
    assert pg.rows() == []
    assert h.call(fn, "p-1") == "charged"
    assert any(sql.startswith("DELETE") for sql in raw)


def test_engine_in_autocommit_stays_in_autocommit(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str]
) -> None:
    """An engine made with isolation_level='AUTOCOMMIT' gets its connections back in autocommit."""
    h = make(isolation_level="AUTOCOMMIT")
    fn = h.decorate(lambda key: key.upper(), key_from="key", scope="tests.lease.raw.autocommit")
    assert h.call(fn, "k") == "K"
    assert h.call(fn, "k") == "K"
    assert raw
    pooled = h.pooled()
    assert pooled and all(c.autocommit is True for c in pooled)


@pytest.mark.parametrize("watcher", ["listener", "dialect listener", "echo"])
def test_observed_engine_sees_every_statement(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str], watcher: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Event listeners (on the engine or its dialect) or echo: every statement goes through
    SQLAlchemy, so what traces or logs statements still sees the claim, the result and the read."""
    h = make()
    seen: list[str] = []
    if watcher == "listener":
        sa.event.listen(h.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    elif watcher == "dialect listener":
        sa.event.listen(h.sync_engine, "do_execute", lambda cursor, statement, *a: seen.append(statement))
    else:
        h.sync_engine.echo = True
        caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    fn = h.decorate(lambda key: key.upper(), key_from="key", scope="tests.lease.raw.observed")
    assert h.call(fn, "k") == "K"
    replays = 0
    while fn.__idempotent__.replay_rate < PEEK_AT:
        assert h.call(fn, "k") == "K"
        replays += 1
    assert h.call(fn, "k") == "K"  # now through the replay read
    if watcher == "echo":
        seen = [r.getMessage() for r in caplog.records if pg.table in r.getMessage()]
    assert raw == []
    assert sum("INSERT INTO" in s for s in seen) == 1 + replays  # every claim
    assert sum(s.lstrip().startswith("UPDATE") for s in seen) == 1
    assert seen[-1].lstrip().startswith("SELECT")


@pytest.mark.parametrize("drop", ["cut", "lost reply"])
def test_dropped_connection_is_retried_once_on_a_fresh_one(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str], drop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pooled connection dies between two calls ("cut"), or the claim reaches the server but
    its answer never comes back ("lost reply"): the error is SQLAlchemy's with the connection
    marked invalidated, the statement runs once more on a fresh connection, the function once."""
    runs: list[str] = []
    with Proxy.for_url(pg.sync_url) as proxy:
        h = make(proxy.url(pg.url))

        def refund(refund_id: str) -> str:
            runs.append(refund_id)
            return f"refunded {refund_id}"

        fn = h.decorate(refund, key_from="refund_id")
        assert h.call(fn, "r-1") == "refunded r-1"
        if drop == "cut":
            proxy.cut()
        else:
            proxy.drop_next_reply()
        with caplog.at_level(logging.INFO, logger="idempotent"):
            assert h.call(fn, "r-2") == "refunded r-2"
        assert h.call(fn, "r-2") == "refunded r-2"
    assert runs == ["r-1", "r-2"]
    assert any("retrying once" in r.getMessage() for r in caplog.records)
    assert len(raw) >= 6
    assert [(r.key, r.status) for r in pg.rows()] == [("r-1", "completed"), ("r-2", "completed")]


def test_driver_errors_are_translated(pg: LeaseDb, make: Callable[..., Pg], raw: list[str]) -> None:
    """A missing table is TableMissing caused by SQLAlchemy's error; a claim that waits longer
    than ``wait`` on another transaction is InProgress. The connection goes back to the pool
    each time, out of autocommit."""
    h = make()
    missing = h.decorate(lambda key: key, key_from="key", store=h.store("idem_no_such_table_raw"))
    with pytest.raises(TableMissing) as caught:
        h.call(missing, "k")
    assert isinstance(caught.value.__cause__, sa.exc.ProgrammingError)

    fn = h.decorate(lambda key: key.upper(), key_from="key", scope="tests.lease.raw.blocked", wait=0.2)
    with pg.engine.connect() as blocker:
        blocker.execute(
            pg.keys.insert().values(row("tests.lease.raw.blocked", "k", 0))
        )  # uncommitted: the claim waits for this transaction
        with pytest.raises(InProgress):
            h.call(fn, "k")
        blocker.rollback()
    assert h.call(fn, "k") == "K"
    assert len(raw) == 4  # the claim on no table, the blocked claim, then claim and result
    assert h.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    pooled = h.pooled()
    assert pooled and all(c.autocommit is False for c in pooled)


def row(scope: str, key: str, until: int) -> dict[str, Any]:
    """An in-progress row of another caller, its lease and expiry at ``until`` (ms)."""
    return {
        "scope": scope,
        "key": key,
        "status": "in_progress",
        "owner": "other",
        "locked_until": until,
        "created_at": 0,
        "expires_at": until,
    }


def blocked_on_lock(ldb: LeaseDb) -> bool:
    """True while some session waits for a lock on a statement touching this test's keys table."""
    with ldb.engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"%{ldb.table}%",),
            ).scalar_one()
        )


@pytest.fixture
def pg_async(tmp_path: Path) -> Iterator[LeaseDb]:
    yield from make_ldb("postgresql", "async", tmp_path)


def test_cancelled_statement_discards_its_connection(pg_async: LeaseDb, raw: list[str]) -> None:
    """Async: a task cancelled while its claim waits (on a table lock) ends with CancelledError;
    the connection, whose statement may still be under way, is not handed back to the pool;
    the next call claims and runs normally."""
    ldb = pg_async
    runs: list[str] = []

    async def main() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(ldb.async_url)

        @idempotent(
            key_from="key", scope="tests.lease.raw.cancel", mode="lease", store=SQLStore(engine, ldb.table)
        )
        async def job(key: str) -> str:
            runs.append(key)
            return key.upper()

        assert await job("warm") == "WARM"  # one pooled connection
        async with engine.connect() as locker:
            await locker.exec_driver_sql(f"LOCK TABLE {ldb.table} IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(job("k"))
            while True:  # until the claim waits for the lock
                waiting = await asyncio.to_thread(blocked_on_lock, ldb)
                if waiting or task.done():
                    break
                await asyncio.sleep(0.02)
            assert not task.done(), task
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert engine.sync_engine.pool.checkedout() == 1  # only the locker
            assert pooled(engine.sync_engine) == []  # the cancelled claim's connection was discarded
            await locker.rollback()
        assert await job("k") == "K"
        await engine.dispose()

    asyncio.run(main())
    assert runs == ["warm", "k"]
    assert len(raw) >= 4


@pytest.fixture
def pg_sync(tmp_path: Path) -> Iterator[LeaseDb]:
    yield from make_ldb("postgresql", "sync", tmp_path)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signals to the main thread")
def test_interrupted_statement_discards_its_connection(pg_sync: LeaseDb, raw: list[str]) -> None:
    """Sync: Ctrl-C (SIGINT) while the claim waits on a lock reaches the caller as
    KeyboardInterrupt (psycopg cancels the statement on the server first); the connection is
    invalidated, not pooled; the next call claims and runs."""
    ldb = pg_sync
    engine = sa.create_engine(ldb.sync_url)
    runs: list[str] = []

    @idempotent(
        key_from="key", scope="tests.lease.raw.interrupt", mode="lease", store=SQLStore(engine, ldb.table)
    )
    def job(key: str) -> str:
        runs.append(key)
        return key.upper()

    main = threading.get_ident()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert job("warm") == "WARM"
        with ldb.engine.connect() as locker:
            locker.exec_driver_sql(f"LOCK TABLE {ldb.table} IN ACCESS EXCLUSIVE MODE")

            def interrupt_when_blocked() -> None:
                while not blocked_on_lock(ldb):
                    threading.Event().wait(0.02)
                signal.pthread_kill(main, signal.SIGINT)

            sender = threading.Thread(target=interrupt_when_blocked)
            sender.start()
            with pytest.raises(KeyboardInterrupt):
                job("k")
            sender.join()
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            assert pooled(engine) == []  # discarded, not pooled
            locker.rollback()
        assert job("k") == "K"
    finally:
        signal.signal(signal.SIGINT, previous)
        engine.dispose()
    assert runs == ["warm", "k"]
    assert raw


# -- the replay read lease mode makes first once a function replays often ------------------------------
def test_frequent_replays_read_first(pg: LeaseDb, make: Callable[..., Pg]) -> None:
    """Once the replay rate reaches PEEK_AT, a replay is one SELECT (no claim statement); a new
    key is still claimed, run and stored; the statements go through SQLAlchemy here (counted
    with a listener) and run on the cursor without one."""
    h = make()
    seen: list[str] = []
    sa.event.listen(h.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2].lstrip()[:6]))
    runs: list[str] = []

    def pack(parcel_id: str) -> str:
        runs.append(parcel_id)
        return f"packed {parcel_id}"

    fn = h.decorate(pack, key_from="parcel_id")
    assert h.call(fn, "p-1") == "packed p-1"
    while fn.__idempotent__.replay_rate < PEEK_AT:
        assert h.call(fn, "p-1") == "packed p-1"
    del seen[:]
    assert h.call(fn, "p-1") == "packed p-1"
    assert seen == ["SELECT"]
    del seen[:]
    assert h.call(fn, "p-2") == "packed p-2"
    assert seen == ["SELECT", "WITH c", "UPDATE"]
    assert runs == ["p-1", "p-2"]


def replaying(ldb: LeaseDb, body: Callable[..., Any], store: SQLStore, **options: Any) -> Any:
    """``body`` decorated in lease mode and called with key "k" until its replay rate reaches PEEK_AT,
    then set to 1.0: the calls of a test stay above PEEK_AT even when several of them do not replay."""
    fn = ldb.idempotent(body, store=store, ttl=TTL, **options)
    assert ldb.call(fn, "k") is not None
    while fn.__idempotent__.replay_rate < PEEK_AT:
        assert ldb.call(fn, "k") is not None
    fn.__idempotent__.replay_rate = 1.0
    return fn


class DeclinedError(Exception):
    """A failure the decorator records."""


def test_read_first_refuses_reuse_replays_failures_and_runs_expired_keys(ldb: LeaseDb) -> None:
    """With the replay read in front (PostgreSQL) or without it (elsewhere): a reused key with
    other arguments is refused, a recorded failure is raised again, an expired result runs again."""
    runs: list[tuple[str, int]] = []

    def settle(key: str, amount: int = 1) -> int:
        runs.append((key, amount))
        if key == "fails":
            raise DeclinedError("declined")
        return amount * 10

    store = ldb.store()
    fn = replaying(ldb, settle, store, key_from="key", store_errors=[DeclinedError])
    with pytest.raises(KeyReused):
        ldb.call(fn, "k", 2)
    assert ldb.call(fn, "k") == 10
    with pytest.raises(DeclinedError):
        ldb.call(fn, "fails")
    with pytest.raises(DeclinedError):
        ldb.call(fn, "fails")
    store.clock_offset = TTL + 1
    assert ldb.call(fn, "k", 3) == 30
    assert ldb.call(fn, "k", 3) == 30
    assert runs == [("k", 1), ("fails", 1), ("k", 3)]


def test_read_first_leaves_a_running_call_to_the_claim(ldb: LeaseDb) -> None:
    """An in-progress key found by the replay read is not settled by it: the claim decides (here:
    the holder's lease is live and ``wait`` is zero, so InProgress)."""
    store = ldb.store()
    fn = replaying(ldb, lambda key: key, store, key_from="key", scope="tests.lease.raw.running")
    with ldb.engine.begin() as conn:
        conn.execute(ldb.keys.insert().values(row("tests.lease.raw.running", "busy", ldb.now_ms() + 600_000)))
    slow = ldb.idempotent(
        lambda key: key, key_from="key", store=store, scope="tests.lease.raw.running", wait=0
    )
    slow.__idempotent__.replay_rate = fn.__idempotent__.replay_rate
    with pytest.raises(InProgress):
        ldb.call(slow, "busy")


def test_unreachable_server_raises_sqlalchemys_error(
    pg: LeaseDb, make: Callable[..., Pg], raw: list[str]
) -> None:
    """A checkout that cannot connect raises SQLAlchemy's OperationalError, as engine.connect() does."""
    with socket.socket() as sock:  # a loopback port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    h = make(sa.make_url(pg.url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False))
    fn = h.decorate(lambda key: key, key_from="key", scope="tests.lease.raw.unreachable")
    with pytest.raises(sa.exc.OperationalError):
        h.call(fn, "k")
    assert raw
