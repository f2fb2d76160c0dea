"""PostgreSQL with psycopg: a decorator-owned unit sends BEGIN with its claim and its result write
with COMMIT (pipeline mode), so a first call costs two round trips besides the function's own.

The result write is guarded: it fails when it matches no row, so the COMMIT queued behind it
never runs then. These tests pin the round trips, the cases that keep the SQLAlchemy path, and
every failure around the two pipelined steps (sync and async): the function ending the
transaction behind SQLAlchemy's back, an error at COMMIT, a dropped connection, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import SQLStore, TransactionAborted, idempotent
from idempotent import _drivers as drivers
from tests.conftest import Db
from tests.proxy import Proxy


@pytest.fixture(autouse=True)
def _pipelined(monkeypatch: Any) -> None:
    """Pipeline, whatever another test module set."""
    monkeypatch.setattr(drivers, "_PIPELINE", True)


def _place(db: Db, scope: str, body: Callable[[Any], Any] | None = None, store: Any = None) -> Any:
    """``place(conn, ref)``: insert one order, run ``body(conn)`` (awaited on async), return 1."""
    orders = db.orders
    store = store or db.store
    if db.is_async:

        @idempotent(key_from="ref", scope=scope, store=store)
        async def aplace(conn: Any, ref: str) -> int:
            await conn.execute(orders.insert().values(ref=ref))
            if body is not None:
                await body(conn)
            return 1

        return aplace

    @idempotent(key_from="ref", scope=scope, store=store)
    def place(conn: Any, ref: str) -> int:
        conn.execute(orders.insert().values(ref=ref))
        if body is not None:
            body(conn)
        return 1

    return place


def _refs(db: Db) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(r for (r,) in conn.execute(sa.select(db.orders.c.ref)))


def _call(
    db: Db, call: Callable[[Any], Any], *, session: bool = False, engine: Any = None
) -> tuple[Any, bool]:
    """``call(handle)`` on a fresh Connection (or Session); returns its result or the error it
    raised, and whether the handle was still in a transaction afterwards. The caller then goes
    on with the handle and commits, as an application catching the error might."""

    async def arun() -> tuple[Any, bool]:
        from sqlalchemy.ext.asyncio import AsyncSession

        bind = engine or db.async_engine
        async with AsyncSession(bind) if session else bind.connect() as obj:
            try:
                outcome: Any = await call(obj)
            except (Exception, asyncio.CancelledError) as exc:
                outcome = exc
            still = bool(obj.in_transaction())
            with contextlib.suppress(sa.exc.DBAPIError):
                await obj.execute(sa.select(1))
                await obj.commit()
            return outcome, still

    if db.is_async:
        return db.run(arun())
    bind = engine or db.engine
    with Session(bind) if session else bind.connect() as obj:
        try:
            outcome = call(obj)
        except Exception as exc:
            outcome = exc
        still = obj.in_transaction()
        with contextlib.suppress(sa.exc.DBAPIError):
            obj.execute(sa.select(1))
            obj.commit()
        return outcome, still


@contextlib.contextmanager
def _traced(driver: Any) -> Iterator[list[int]]:
    """Count the round trips of psycopg connection ``driver``: every Sync or simple Query the
    client sends ends one (libpq's protocol trace)."""
    fd, path = tempfile.mkstemp()
    found: list[int] = []
    driver.pgconn.trace(fd)
    try:
        yield found
    finally:
        driver.pgconn.untrace()
        os.close(fd)
        with open(path) as trace:
            lines = trace.read().splitlines()
        os.unlink(path)
        found.append(sum(1 for line in lines if "\tF\t" in line and ("\tSync" in line or "\tQuery" in line)))


def _round_trips(db: Db, call: Callable[[Any], Any], *, session: bool = False) -> tuple[Any, int]:
    """``call(handle)`` on a fresh handle whose connection is traced; (result, round trips)."""

    async def arun() -> tuple[Any, int]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with db.async_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            obj: Any = AsyncSession(bind=conn) if session else conn
            with _traced(driver) as found:
                result = await call(obj)
            return result, found[0]

    if db.is_async:
        return db.run(arun())
    with db.engine.connect() as conn:
        obj: Any = Session(bind=conn) if session else conn
        with _traced(conn.connection.driver_connection) as found:
            result = call(obj)
        return result, found[0]


# ---------------------------------------------------------------------------------------------
# 1. Round trips, and where the SQLAlchemy path is kept.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("handle", ["connection", "session"])
def test_first_call_is_two_round_trips_besides_the_function(pg_db: Db, handle: str) -> None:
    """BEGIN goes with the claim, the result write with COMMIT: the function's INSERT plus two."""
    db = pg_db
    place = _place(db, "tests.pipe.rt")
    result, trips = _round_trips(db, lambda obj: place(obj, "rt-1"), session=handle == "session")
    assert result == 1
    assert trips == 3  # [BEGIN + claim], the INSERT, [result + COMMIT]
    (row,) = db.key_rows()
    assert (row.status, _refs(db)) == ("completed", ["rt-1"])


def test_without_the_pipeline_a_first_call_is_four_round_trips(pg_db: Db, monkeypatch: Any) -> None:
    """The reference the test above improves on: BEGIN, claim, INSERT, result, COMMIT."""
    monkeypatch.setattr(drivers, "_PIPELINE", False)
    db = pg_db
    place = _place(db, "tests.pipe.rt-off")
    result, trips = _round_trips(db, lambda obj: place(obj, "rt-1"))
    assert (result, trips) == (1, 5)
    assert db.key_rows()[0].status == "completed"


def test_loopback_server_is_pipelined_by_default(pg_db: Db, monkeypatch: Any) -> None:
    """In use, a first call pipelines wherever the server is (a loopback one here), sync and async."""
    monkeypatch.undo()  # the module's own setting, not this file's fixture
    assert drivers._PIPELINE is True
    db = pg_db
    place = _place(db, "tests.pipe.auto")
    assert _round_trips(db, lambda obj: place(obj, "a-1")) == (1, 3)


def test_session_with_a_before_commit_listener_commits_through_the_session(pg_db: Db) -> None:
    """A ``before_commit`` listener runs before the COMMIT and may write: the result write and the
    COMMIT are then sent apart, through ``Session.commit()``, and the listener's write commits."""
    db = pg_db
    place = _place(db, "tests.pipe.listener")
    seen: list[str] = []

    def before_commit(session: Any) -> None:
        seen.append("before_commit")
        session.execute(db.orders.insert().values(ref="listener"))

    async def acall(obj: Any) -> int:
        sa.event.listen(obj.sync_session, "before_commit", before_commit)
        return int(await place(obj, "l-1"))

    def call(obj: Any) -> int:
        sa.event.listen(obj, "before_commit", before_commit)
        return int(place(obj, "l-1"))

    result, trips = _round_trips(db, acall if db.is_async else call, session=True)
    assert (result, seen) == (1, ["before_commit"])
    assert trips == 5  # [BEGIN + claim], INSERT, result, the listener's INSERT, COMMIT
    assert _refs(db) == ["l-1", "listener"]
    assert db.key_rows()[0].status == "completed"


@pytest.mark.parametrize("event", ["before_cursor_execute", "do_execute"])
def test_engine_with_listeners_sees_the_library_statements(pg_db: Db, event: str) -> None:
    """Event listeners on the engine, or on its dialect (``do_execute``), see the claim and the
    result write, as before."""
    db = pg_db
    engine = db.async_engine.sync_engine if db.is_async else db.engine
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def seen_by_dialect(cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    listener = seen if event == "before_cursor_execute" else seen_by_dialect
    sa.event.listen(engine, event, listener)
    try:
        outcome, _ = _call(db, lambda obj: _place(db, "tests.pipe.observed")(obj, "o-1"))
    finally:
        sa.event.remove(engine, event, listener)
    assert outcome == 1
    keys = [s for s in statements if db.keys.name in s]
    assert len(keys) == 2  # the claim and the (guarded) result write
    assert keys[0].lstrip().startswith("WITH") and keys[1].lstrip().startswith("UPDATE")
    assert db.key_rows()[0].status == "completed"


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_begin_sent_with_the_claim_keeps_the_isolation_level(pg_db: Db, level: str) -> None:
    """The BEGIN that goes with the claim is the one psycopg would have sent: same isolation level."""
    db = pg_db
    got: list[str] = []
    show = sa.text("SHOW transaction_isolation")

    async def abody(conn: Any) -> None:
        got.append((await conn.execute(show)).scalar_one())

    def body(conn: Any) -> None:
        got.append(conn.execute(show).scalar_one())

    place = _place(db, "tests.pipe.level", abody if db.is_async else body)

    async def acall(obj: Any) -> Any:
        return await place(await obj.execution_options(isolation_level=level), "lv-1")

    def call(obj: Any) -> Any:
        return place(obj.execution_options(isolation_level=level), "lv-1")

    outcome, _ = _call(db, acall if db.is_async else call)
    assert outcome == 1
    assert got == [level.lower()]


# ---------------------------------------------------------------------------------------------
# 2. The function ended the transaction behind SQLAlchemy's back: the result write matches no row.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "apart"])
def test_result_write_matching_no_row_never_commits(pg_db: Db, pipeline: bool, monkeypatch: Any) -> None:
    """The function rolls back with a raw ROLLBACK (SQLAlchemy still sees its transaction) and
    writes again: the result write matches no row (pipelined: the guarded write fails and the
    COMMIT sent behind it does not run; apart: no COMMIT is sent), the later write is undone and
    TransactionAborted is raised; no key is left, and a retry runs."""
    monkeypatch.setattr(drivers, "_PIPELINE", pipeline)
    db = pg_db
    orders = db.orders
    rolled = [True]

    async def abody(conn: Any) -> None:
        if rolled[0]:
            await conn.exec_driver_sql("ROLLBACK")
            await conn.execute(orders.insert().values(ref="after"))

    def body(conn: Any) -> None:
        if rolled[0]:
            conn.exec_driver_sql("ROLLBACK")
            conn.execute(orders.insert().values(ref="after"))

    place = _place(db, "tests.pipe.lost", abody if db.is_async else body)
    outcome, still = _call(db, lambda obj: place(obj, "n-1"))
    assert isinstance(outcome, TransactionAborted), outcome
    assert "ended while" in str(outcome)
    assert not still
    assert (_refs(db), db.key_rows()) == ([], [])
    rolled[0] = False
    outcome, _ = _call(db, lambda obj: place(obj, "n-1"))
    assert outcome == 1
    assert _refs(db) == ["n-1"]
    assert db.key_rows()[0].status == "completed"


def test_guarded_result_write_fails_only_without_a_row(pg_db: Db) -> None:
    """The guard itself: the statement raises when no row of the owner is in progress (and the
    store answers False), and writes the result when there is one."""
    from idempotent.core import ClaimRequest, ExecCommit

    db = pg_db
    bound = db.store.for_dialect(db.engine.dialect)
    assert bound.pipelined  # type: ignore[attr-defined]
    request = ClaimRequest("tests.pipe.guard", "g-1", None, "owner-1", 60_000, 60_000, 0)
    with db.engine.connect() as conn:
        for own_row in (False, True):
            if own_row:
                rows = conn.exec_driver_sql(bound._claim_pg.sql, bound._claim_pg.bind(  # type: ignore[attr-defined]
                    {"scope": request.scope, "key": request.key, "owner": request.owner,
                     "clock_offset": 0, "fingerprint": None, "status": "in_progress",
                     "lease_ms": 60_000, "ttl_ms": 60_000, "lock_ms": "1000"})).all()  # fmt: skip
                assert rows[0][0] == 1
            steps = bound.complete_commit(request, "json", "1")  # type: ignore[attr-defined]
            op = next(steps)
            assert isinstance(op, ExecCommit)
            try:
                conn.exec_driver_sql(op.guarded, op.params)
            except sa.exc.DBAPIError as exc:
                conn.rollback()
                with pytest.raises(StopIteration) as stop:
                    steps.throw(exc)
            else:
                conn.commit()
                with pytest.raises(StopIteration) as stop:
                    steps.send(1)
            assert stop.value.value is own_row
    (row,) = db.key_rows()
    assert (row.status, row.result) == ("completed", "1")
    steps = bound.complete_commit(request, "json", "2")  # type: ignore[attr-defined]
    next(steps)
    with pytest.raises(StopIteration) as stop:
        steps.send(0)  # the plain statement, sent alone, wrote no row: nothing was committed
    assert stop.value.value is False


# ---------------------------------------------------------------------------------------------
# 3. An error at COMMIT.
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def deferred(pg_db: Db) -> Iterator[sa.Table]:
    """A table whose foreign key is checked only at COMMIT."""
    suffix = uuid.uuid4().hex[:10]
    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE parents_{suffix} (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            f"CREATE TABLE children_{suffix} (id INTEGER PRIMARY KEY, parent INTEGER "
            f"REFERENCES parents_{suffix} (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    yield sa.table(f"children_{suffix}", sa.column("id"), sa.column("parent"))
    with pg_db.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE children_{suffix}, parents_{suffix}")


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipeline", "apart"])
def test_error_at_commit_undoes_the_unit(
    pg_db: Db, deferred: sa.Table, pipeline: bool, monkeypatch: Any
) -> None:
    """A deferred constraint fails at COMMIT: SQLAlchemy's IntegrityError propagates (the same
    with the result write and COMMIT pipelined or sent apart), nothing is committed, the handle
    is out of the transaction, and the key is free for a retry."""
    monkeypatch.setattr(drivers, "_PIPELINE", pipeline)
    db = pg_db
    orphan = [True]

    async def abody(conn: Any) -> None:
        if orphan[0]:
            await conn.execute(deferred.insert().values(id=1, parent=42))

    def body(conn: Any) -> None:
        if orphan[0]:
            conn.execute(deferred.insert().values(id=1, parent=42))

    place = _place(db, "tests.pipe.commit", abody if db.is_async else body)
    outcome, still = _call(db, lambda obj: place(obj, "c-1"))
    assert isinstance(outcome, sa.exc.IntegrityError), outcome
    assert "foreign key" in str(outcome).lower()
    assert not still
    assert (_refs(db), db.key_rows()) == ([], [])
    orphan[0] = False
    outcome, _ = _call(db, lambda obj: place(obj, "c-1"))
    assert outcome == 1
    assert db.key_rows()[0].status == "completed"


# ---------------------------------------------------------------------------------------------
# 4. The connection drops during a pipelined step.
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _proxied(db: Db) -> Iterator[tuple[Proxy, Any, SQLStore]]:
    """A proxy to the server, an engine (async on the async driver) through it, and a store."""
    with Proxy.for_url(db.url) as proxy:
        if db.is_async:
            from sqlalchemy.ext.asyncio import create_async_engine

            engine: Any = create_async_engine(proxy.url(db.async_url))
        else:
            engine = sa.create_engine(proxy.url(db.url))
        try:
            yield proxy, engine, SQLStore(engine, db.keys.name)
        finally:
            if db.is_async:
                db.run(engine.dispose())
            else:
                engine.dispose()


@pytest.mark.parametrize(
    ("step", "drop"),
    [("claim", "request"), ("claim", "reply"), ("result", "request"), ("result", "reply")],
)
def test_connection_drop_in_a_pipelined_step(pg_db: Db, step: str, drop: str) -> None:
    """The connection drops while BEGIN + claim or result + COMMIT are on their way (the request
    lost, or the server acted and its reply lost): a DBAPIError saying the connection is gone
    propagates, the key and the write are committed together or not at all, the pool forgets the
    connection, and a retry runs or replays."""
    db = pg_db
    with _proxied(db) as (proxy, engine, store):
        arm = proxy.drop_next_request if drop == "request" else proxy.drop_next_reply
        armed = [True]

        async def abody(conn: Any) -> None:
            if step == "result" and armed[0]:
                armed[0] = False
                arm()

        def body(conn: Any) -> None:
            if step == "result" and armed[0]:
                armed[0] = False
                arm()

        place = _place(db, "tests.pipe.drop", abody if db.is_async else body, store=store)

        def call(obj: Any) -> Any:
            if step == "claim" and armed[0]:
                armed[0] = False
                arm()
            return place(obj, "d-1")

        outcome, still = _call(db, call, engine=engine)
        assert isinstance(outcome, sa.exc.DBAPIError), outcome
        assert outcome.connection_invalidated
        assert not still
        rows, refs = db.key_rows(), _refs(db)
        if rows:  # the server committed before the reply was lost
            assert (step, drop) == ("result", "reply")
            assert (rows[0].status, refs) == ("completed", ["d-1"])
        else:
            assert refs == []
        outcome, _ = _call(db, lambda obj: place(obj, "d-1"), engine=engine)
        assert outcome == 1
        assert _refs(db) == ["d-1"]
        assert db.key_rows()[0].status == "completed"


# ---------------------------------------------------------------------------------------------
# 5. Cancellation (async).
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def pg_async(pg_db: Db) -> Db:
    if not pg_db.is_async:
        pytest.skip("cancellation is an asyncio matter")
    return pg_db


@pytest.mark.parametrize("handle", ["connection", "session"])
@pytest.mark.parametrize("step", ["claim", "result"])
def test_cancellation_in_a_pipelined_step(pg_async: Db, step: str, handle: str) -> None:
    """The task is cancelled while BEGIN + claim or result + COMMIT are on their way: the
    cancellation propagates, the handle is out of the decorator's transaction, the key and the
    write are committed together or not at all, and a retry runs or replays."""
    db = pg_async
    armed = [True]

    def cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    async def body(conn: Any) -> None:
        if step == "result" and armed[0]:
            armed[0] = False
            cancel()  # delivered at the next suspension: the pipelined result write and COMMIT

    place = _place(db, "tests.pipe.cancel", body)

    async def call(obj: Any) -> Any:
        if step == "claim" and armed[0]:
            armed[0] = False
            cancel()  # delivered at the first suspension: the pipelined BEGIN and claim
        return await place(obj, "x-1")

    outcome, still = _call(db, call, session=handle == "session")
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert not still
    rows, refs = db.key_rows(), _refs(db)
    if rows:  # cancelled after COMMIT was on its way: it landed, key and write together
        assert step == "result"
        assert (rows[0].status, refs) == ("completed", ["x-1"])
    else:
        assert refs == []
    outcome, _ = _call(db, call, session=handle == "session")
    assert outcome == 1
    assert _refs(db) == ["x-1"]
