"""Transaction mode when the unit breaks around the call: a result write that lands nowhere, a
step after the call that fails or is cancelled, a session joined into an outer transaction, and
handles that cannot be atomic.

Every test runs on SQLite, PostgreSQL and MariaDB, through the sync and the async driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import TransactionAborted, idempotent
from idempotent.errors import ConfigurationError
from tests.conftest import Db


class Injected(Exception):
    """A failure injected into one driver step (the database itself is real)."""


def _place(db: Db, scope: str, body: Callable[[Any, str], Any] | None = None, **options: Any) -> Any:
    """``place(conn, ref, how)``: insert one order, run ``body`` (sync or awaited), return 1."""
    orders = db.orders
    options.setdefault("store", db.store)
    if db.is_async:

        @idempotent(key_from="ref", scope=scope, **options)
        async def aplace(conn: Any, ref: str, how: str = "") -> int:
            await conn.execute(orders.insert().values(ref=ref))
            if body is not None:
                await body(conn, how)
            return 1

        return aplace

    @idempotent(key_from="ref", scope=scope, **options)
    def place(conn: Any, ref: str, how: str = "") -> int:
        conn.execute(orders.insert().values(ref=ref))
        if body is not None:
            body(conn, how)
        return 1

    return place


def _open(db: Db, handle: str) -> Any:
    """A context manager for a fresh Connection or Session (async twins on the async driver)."""
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession

        return AsyncSession(db.async_engine) if handle == "session" else db.async_engine.connect()
    return Session(db.engine) if handle == "session" else db.engine.connect()


def _refs(db: Db) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(r for (r,) in conn.execute(sa.select(db.orders.c.ref)))


def _sync_engine(db: Db) -> sa.Engine:
    return db.async_engine.sync_engine if db.is_async else db.engine


def _scenario(db: Db, handle: str, joined: bool, call: Callable[[Any], Any]) -> tuple[Any, bool]:
    """Run ``call(obj)`` (awaited on async) on a fresh handle; when ``joined``, inside a transaction
    the caller began after writing an order ``before``. The caller catches any error and commits
    anyway. Returns (the call's result or error, whether the handle was still in a transaction)."""

    async def arun() -> tuple[Any, bool]:
        async with _open(db, handle) as obj:
            if joined:
                await obj.begin()
                await obj.execute(db.orders.insert().values(ref="before"))
            try:
                outcome: Any = await call(obj)
            except (Exception, asyncio.CancelledError) as exc:
                outcome = exc
            still = bool(obj.in_transaction())
            if joined or not isinstance(outcome, int):
                await obj.execute(sa.select(1))  # the caller goes on using the handle
                await obj.commit()
            return outcome, still

    if db.is_async:
        return db.run(arun())
    with _open(db, handle) as obj:
        if joined:
            obj.begin()
            obj.execute(db.orders.insert().values(ref="before"))
        try:
            outcome = call(obj)
        except Exception as exc:
            outcome = exc
        still = obj.in_transaction()
        if joined or not isinstance(outcome, int):
            obj.execute(sa.select(1))  # the caller goes on using the handle
            obj.commit()
        return outcome, still


# ---------------------------------------------------------------------------------------------
# 1. The function rolls back (or closes) its transaction, then writes again.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("handle", "how", "joined"),
    [("connection", "rollback", False), ("session", "rollback", False), ("session", "close", False),
     ("connection", "rollback", True)],
)  # fmt: skip
def test_function_that_ends_its_transaction_and_writes_again_is_undone(
    db: Db, handle: str, how: str, joined: bool
) -> None:
    """The claim went with the function's rollback: the later write is undone, TransactionAborted
    is raised, no key is left, and a retry runs."""
    orders = db.orders

    def sync_body(conn: Any, how: str) -> None:
        if how:
            getattr(conn, how)()
            conn.execute(orders.insert().values(ref="after"))

    async def async_body(conn: Any, how: str) -> None:
        if how:
            await getattr(conn, how)()
            await conn.execute(orders.insert().values(ref="after"))

    place = _place(db, "tests.h.rollback", async_body if db.is_async else sync_body)
    outcome, still = _scenario(db, handle, joined, lambda obj: place(obj, "r-1", how))
    assert isinstance(outcome, TransactionAborted), outcome
    assert "ended while" in str(outcome)
    assert not still
    assert "after" not in _refs(db)
    assert db.key_rows() == []
    outcome, _ = _scenario(db, handle, False, lambda obj: place(obj, "r-1", ""))
    assert outcome == 1
    (row,) = db.key_rows()
    assert row.status == "completed"


# ---------------------------------------------------------------------------------------------
# 3. A step after the call fails or is cancelled.
# ---------------------------------------------------------------------------------------------
def _is_result_write(statement: str, db: Db) -> bool:
    return (
        statement.lstrip().upper().startswith("UPDATE")
        and db.keys.name in statement
        and "result" in statement
    )


def _inject(db: Db, event: str, action: Callable[[], None], statement_filter: bool = False) -> None:
    """Run ``action`` once, at the first ``event`` of the engine (for ``before_cursor_execute``:
    the statement that stores the result)."""
    engine = _sync_engine(db)
    fired: list[bool] = []

    def hook(*args: Any) -> None:
        if fired or (statement_filter and not _is_result_write(args[2], db)):
            return
        fired.append(True)
        action()

    sa.event.listen(engine, event, hook)
    db.cleanups.append(lambda: sa.event.remove(engine, event, hook))


def _raise() -> None:
    raise Injected("injected")


def _cancel() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()


STEPS = [("store", "before_cursor_execute"), ("release", "release_savepoint"), ("commit", "commit")]


def _fail_after_the_call(db: Db, handle: str, step: str, event: str, how: str) -> None:
    joined = step == "release"  # a savepoint is released only inside the caller's transaction
    place = _place(db, "tests.h.after")
    _inject(db, event, _cancel if how == "cancel" else _raise, statement_filter=step == "store")
    outcome, still = _scenario(db, handle, joined, lambda obj: place(obj, "a-1"))
    expected = asyncio.CancelledError if how == "cancel" else Injected
    assert isinstance(outcome, expected), outcome
    if not joined:
        assert not still
    rows = db.key_rows()
    if step == "commit" and how == "cancel" and rows:
        # cancelled while COMMIT was on its way: it landed, key and write together
        assert (rows[0].status, _refs(db)) == ("completed", ["a-1"])
    else:  # a failed RELEASE may have merged the unit into the caller's transaction: all of it is rolled back
        assert (rows, _refs(db)) == ([], [])


@pytest.mark.parametrize(("step", "event"), STEPS, ids=[s for s, _ in STEPS])
@pytest.mark.parametrize("handle", ["connection", "session"])
def test_failure_after_the_call_undoes_the_unit(db: Db, handle: str, step: str, event: str) -> None:
    """Storing the result, releasing the savepoint or committing fails: the error propagates, the
    handle is out of the decorator's transaction, and a caller that goes on, catches it and
    commits commits neither the key nor the function's write."""
    _fail_after_the_call(db, handle, step, event, "raise")


@pytest.mark.parametrize(("step", "event"), STEPS, ids=[s for s, _ in STEPS])
@pytest.mark.parametrize("handle", ["connection", "session"])
def test_cancellation_after_the_call_undoes_the_unit(
    async_db: Db, handle: str, step: str, event: str
) -> None:
    """The task is cancelled while the result is stored, the savepoint released or the unit
    committed: the undo is shielded, the cancellation propagates, and the AsyncSession or
    AsyncConnection is not left inside the decorator's transaction."""
    _fail_after_the_call(async_db, handle, step, event, "cancel")


class LoneSurrogate:
    """A serializer whose text the database driver cannot encode."""

    name = "lone"

    def dumps(self, value: Any, hint: Any) -> str:
        return "\udcff" + str(value)

    def loads(self, text: str, hint: Any) -> Any:
        return int(text[1:])


@pytest.mark.parametrize("joined", [False, True])
def test_result_text_the_driver_cannot_encode_is_serialization_error(db: Db, joined: bool) -> None:
    """A serializer producing a lone surrogate gets SerializationError before anything is stored;
    a caller that catches it and commits keeps only its own write."""
    from idempotent import SerializationError

    place = _place(db, "tests.h.surrogate", serializer=LoneSurrogate())
    outcome, _ = _scenario(db, "connection", joined, lambda obj: place(obj, "u-1"))
    assert isinstance(outcome, SerializationError), outcome
    assert "lone surrogate" in str(outcome)
    assert db.key_rows() == []
    assert _refs(db) == (["before"] if joined else [])


# ---------------------------------------------------------------------------------------------
# 4. A Session joined into an external transaction (the test-suite recipe).
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["conditional_savepoint", "create_savepoint", "rollback_only"])
def test_session_bound_to_a_connection_in_a_transaction_is_joined(db: Db, mode: str) -> None:
    """``Session(bind=conn)`` on a connection the caller began: the decorator never commits or rolls
    back that outer transaction, so a replay keeps the caller's and the first call's writes."""
    place = _place(db, "tests.h.recipe")
    orders = db.orders

    async def arun() -> tuple[list[int], list[str], int]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with db.async_engine.connect() as conn:
            outer = await conn.begin()
            await conn.execute(orders.insert().values(ref="outer"))
            session = AsyncSession(bind=conn, join_transaction_mode=mode)  # type: ignore[arg-type]
            got = [await place(session, "j-1"), await place(session, "j-1")]
            await session.commit()  # the caller commits its session; the outer transaction stays open
            await session.close()
            refs = sorted(r for (r,) in await conn.execute(sa.select(orders.c.ref)))
            keys = len((await conn.execute(sa.select(db.keys))).all())
            await outer.rollback()
            return got, refs, keys

    def run() -> tuple[list[int], list[str], int]:
        with db.engine.connect() as conn:
            outer = conn.begin()
            conn.execute(orders.insert().values(ref="outer"))
            session = Session(bind=conn, join_transaction_mode=mode)  # type: ignore[arg-type]
            got = [place(session, "j-1"), place(session, "j-1")]
            session.commit()  # the caller commits its session; the outer transaction stays open
            session.close()
            refs = sorted(r for (r,) in conn.execute(sa.select(orders.c.ref)))
            keys = len(conn.execute(sa.select(db.keys)).all())
            outer.rollback()
            return got, refs, keys

    got, refs, keys = db.run(arun()) if db.is_async else run()
    assert got == [1, 1]
    assert refs == ["j-1", "outer"]
    assert keys == 1
    assert (db.count(), db.key_rows()) == (0, [])  # the caller's rollback discarded everything


# ---------------------------------------------------------------------------------------------
# 5. Handles that cannot be atomic.
# ---------------------------------------------------------------------------------------------
def test_autocommit_handle_is_refused(db: Db) -> None:
    """A connection in AUTOCOMMIT commits every statement alone: ConfigurationError, nothing written."""
    place = _place(db, "tests.h.autocommit")

    async def arun() -> Any:
        async with db.async_engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await place(conn, "ac-1")

    def run() -> Any:
        with db.engine.connect() as conn:
            return place(conn.execution_options(isolation_level="AUTOCOMMIT"), "ac-1")

    with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
        db.run(arun()) if db.is_async else run()
    assert (db.count(), db.key_rows()) == (0, [])


@pytest.mark.parametrize(
    ("kind", "message"),
    [("autocommit-engine", "AUTOCOMMIT"), ("binds", "binds= to 2 engines")],
    ids=["autocommit-engine", "binds"],
)
def test_session_that_cannot_be_atomic_is_refused(db: Db, kind: str, message: str) -> None:
    """A Session on an engine created with isolation_level='AUTOCOMMIT', or with ``binds=`` spanning
    two engines (the key and the write would commit separately): ConfigurationError, nothing written."""
    place = _place(db, f"tests.h.refused-{kind}")
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        make_engine: Any = create_async_engine
        url, make_session, ours = db.async_url, AsyncSession, db.async_engine
    else:
        make_engine, url, make_session, ours = sa.create_engine, db.url, Session, db.engine
    if kind == "binds":
        other = make_engine(url)
        options: dict[str, Any] = {"bind": ours, "binds": {db.orders: other}}
    else:
        other = make_engine(url, isolation_level="AUTOCOMMIT")
        options = {"bind": other}

    async def arun() -> Any:
        try:
            async with make_session(**options) as session:
                return await place(session, "x-1")
        finally:
            await other.dispose()

    def run() -> Any:
        try:
            with make_session(**options) as session:
                return place(session, "x-1")
        finally:
            other.dispose()

    with pytest.raises(ConfigurationError, match=message):
        db.run(arun()) if db.is_async else run()
    assert (db.count(), db.key_rows()) == (0, [])


# ---------------------------------------------------------------------------------------------
# 6. PostgreSQL REPEATABLE READ / SERIALIZABLE: the owned unit is run again.
# ---------------------------------------------------------------------------------------------
def _strict(
    db: Db, level: str, ref: str, body: Callable[[Any, int], Any], joined: bool = False, **options: Any
) -> Any:
    """Call ``body(conn, run)`` under ``@idempotent`` on a connection at ``level``; returns its result
    or the error raised, and the number of runs. ``body`` is a coroutine function on the async
    driver. ``joined``: inside a transaction the caller began, which it commits even after an error."""
    scope = f"tests.h.strict.{level}"
    runs: list[int] = []

    if db.is_async:

        @idempotent(key_from="ref", scope=scope, store=db.store, **options)
        async def aunit(conn: Any, ref: str) -> int:
            runs.append(1)
            return int(await body(conn, len(runs)))

        async def arun() -> Any:
            async with db.async_engine.connect() as conn:
                conn = await conn.execution_options(isolation_level=level)
                if joined:
                    await conn.begin()
                try:
                    return await aunit(conn, ref)
                except Exception as exc:
                    return exc
                finally:
                    if joined:
                        await conn.commit()

        return db.run(arun()), len(runs)

    @idempotent(key_from="ref", scope=scope, store=db.store, **options)
    def unit(conn: Any, ref: str) -> int:
        runs.append(1)
        return int(body(conn, len(runs)))

    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level=level)
        if joined:
            conn.begin()
        try:
            return unit(conn, ref), len(runs)
        except Exception as exc:
            return exc, len(runs)
        finally:
            if joined:
                conn.commit()


def _bump_elsewhere(db: Db, by: int) -> None:
    with db.engine.begin() as other:
        other.execute(db.orders.update().where(db.orders.c.id == 1).values(amount=db.orders.c.amount + by))


def _concurrent_update_body(db: Db, every_run: bool) -> Callable[[Any, int], Any]:
    """Read the order, let another transaction update it, then update it too: under REPEATABLE READ
    the function's own UPDATE fails with a serialization failure."""
    orders = db.orders
    read = sa.select(orders.c.amount).where(orders.c.id == 1)
    write = orders.update().where(orders.c.id == 1).values(amount=orders.c.amount + 1)

    def sync_body(conn: Any, run: int) -> int:
        amount = int(conn.execute(read).scalar_one())
        if run == 1 or every_run:
            _bump_elsewhere(db, 100)
        conn.execute(write)
        return amount

    async def async_body(conn: Any, run: int) -> int:
        amount = int((await conn.execute(read)).scalar_one())
        if run == 1 or every_run:
            _bump_elsewhere(db, 100)
        await conn.execute(write)
        return amount

    return async_body if db.is_async else sync_body


def _one_order(db: Db) -> None:
    with db.engine.begin() as conn:
        conn.execute(db.orders.insert().values(id=1, ref="o", amount=0))


def _amount(db: Db) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(db.orders.c.amount)).scalar_one())


def test_serialization_failure_in_the_function_runs_the_unit_again(pg_db: Db) -> None:
    """REPEATABLE READ: the function's UPDATE loses to a concurrent one; the decorator owns the unit,
    so it rolls back and runs it again, which succeeds on a fresh snapshot."""
    db = pg_db
    _one_order(db)
    result, runs = _strict(db, "REPEATABLE READ", "rr-1", _concurrent_update_body(db, every_run=False))
    assert (result, runs) == (100, 2)
    assert _amount(db) == 101
    (row,) = db.key_rows()
    assert row.status == "completed"


def test_unit_that_keeps_aborting_raises_transaction_aborted(pg_db: Db) -> None:
    """When every attempt aborts, ``retries`` bounds the attempts and TransactionAborted (never the raw
    driver error) says to retry the unit; nothing of it is left."""
    db = pg_db
    _one_order(db)
    result, runs = _strict(
        db, "REPEATABLE READ", "rr-2", _concurrent_update_body(db, every_run=True), retries=1
    )
    assert isinstance(result, TransactionAborted), result
    assert "after 2 attempts" in str(result)
    assert runs == 2
    assert _amount(db) == 200  # only the other transactions' updates
    assert db.key_rows() == []


def test_serialization_failure_at_commit_runs_the_unit_again(pg_db: Db) -> None:
    """SERIALIZABLE write skew: the function reads and writes, another transaction reads and writes
    the same set and commits first; the unit fails at COMMIT (or its next statement) and is run again."""
    db = pg_db
    orders = db.orders
    count = sa.select(sa.func.count()).select_from(orders)

    def skew(conn: Any) -> None:
        with db.engine.connect() as raw:
            other = raw.execution_options(isolation_level="SERIALIZABLE")
            with other.begin():
                other.execute(count).scalar_one()
                other.execute(orders.insert().values(ref="other"))

    def sync_body(conn: Any, run: int) -> int:
        seen = int(conn.execute(count).scalar_one())
        conn.execute(orders.insert().values(ref=f"mine-{run}"))
        if run == 1:
            skew(conn)
        return seen

    async def async_body(conn: Any, run: int) -> int:
        seen = int((await conn.execute(count)).scalar_one())
        await conn.execute(orders.insert().values(ref=f"mine-{run}"))
        if run == 1:
            skew(conn)
        return seen

    result, runs = _strict(db, "SERIALIZABLE", "sz-1", async_body if db.is_async else sync_body)
    assert (result, runs) == (1, 2)
    assert _refs(db) == ["mine-2", "other"]
    (row,) = db.key_rows()
    assert row.status == "completed"


# ---------------------------------------------------------------------------------------------
# 2. MariaDB rolls the whole transaction back on a deadlock the function catches.
# ---------------------------------------------------------------------------------------------
def _wait_for_lock_wait(db: Db, table: str) -> None:
    """Block until a session waits on a row lock of ``table`` (bounded polling, no timing assumption)."""
    import threading

    pause = threading.Event()
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(400):
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM information_schema.processlist WHERE command = 'Query' "
                    "AND info LIKE :pattern"
                ),
                {"pattern": f"UPDATE {table}%"},
            ).scalar_one()
            if int(waiting):
                return
            pause.wait(0.025)
    raise AssertionError("the other transaction never waited")


@pytest.mark.parametrize("joined", [False, True])
def test_deadlock_caught_inside_the_function_is_not_committed(maria_db: Db, joined: bool) -> None:
    """The function swallows a deadlock (which rolled its whole transaction back, claim included) and
    writes again: that write is undone; an owned unit runs again instead of committing keyless, a
    joined one raises TransactionAborted and the caller's commit commits nothing of it."""
    import threading

    db = maria_db
    orders = db.orders
    with db.engine.begin() as conn:
        conn.execute(orders.insert(), [{"id": 1, "ref": "x"}, {"id": 2, "ref": "y"}])
    other_done = threading.Event()

    def other() -> None:
        with db.engine.begin() as conn:  # heavier than the function's transaction: InnoDB picks the function
            conn.execute(orders.insert(), [{"ref": f"heavy-{i}"} for i in range(30)])
            conn.execute(orders.update().where(orders.c.id == 2).values(amount=2))
            conn.execute(orders.update().where(orders.c.id == 1).values(amount=2))
        other_done.set()

    lock_x = orders.update().where(orders.c.id == 1).values(amount=1)
    lock_y = orders.update().where(orders.c.id == 2).values(amount=1)
    thread = threading.Thread(target=other)
    seen: list[str] = []

    def sync_body(conn: Any, run: int) -> int:
        conn.execute(lock_x)
        if run == 1:
            thread.start()
            _wait_for_lock_wait(db, orders.name)
            try:
                conn.execute(lock_y)
            except sa.exc.OperationalError as exc:
                seen.append(str(exc.orig))
            conn.execute(orders.insert().values(ref="after-deadlock"))
        return run

    async def async_body(conn: Any, run: int) -> int:
        await conn.execute(lock_x)
        if run == 1:
            thread.start()
            await asyncio.to_thread(_wait_for_lock_wait, db, orders.name)
            try:
                await conn.execute(lock_y)
            except sa.exc.OperationalError as exc:
                seen.append(str(exc.orig))
            await conn.execute(orders.insert().values(ref="after-deadlock"))
        return run

    try:
        result, runs = _strict(
            db, "REPEATABLE READ", "dl-1", async_body if db.is_async else sync_body, joined=joined
        )
    finally:
        thread.join()
    assert seen and "1213" in seen[0], seen
    assert "after-deadlock" not in _refs(db)
    if joined:
        assert isinstance(result, TransactionAborted), result
        assert (runs, db.key_rows()) == (1, [])
    else:
        assert (result, runs) == (2, 2)
        (row,) = db.key_rows()
        assert row.status == "completed"


# ---------------------------------------------------------------------------------------------
# 7. A duplicate that waited past the ttl; a self-committing function running past its lease.
# ---------------------------------------------------------------------------------------------
def test_duplicate_that_waited_past_the_ttl_replays(db: Db) -> None:
    """The first call outlives its ttl while a duplicate waits for it: the duplicate wakes to the
    result that was just stored and replays it instead of running again."""
    import threading

    from tests.waiting import wait_for_blocked

    orders = db.orders
    runs: list[str] = []
    entered = threading.Event()
    db.cleanups.append(lambda: setattr(db.store, "clock_offset", 0))

    def first_run_outlives_ttl() -> None:
        runs.append("run")
        if len(runs) == 1:
            entered.set()
            wait_for_blocked(db, 1)  # PostgreSQL/MariaDB: until the duplicate waits on the key
            db.store.clock_offset = 61  # the call has now run for longer than its 60 s ttl

    if db.is_async:

        @idempotent(key_from="ref", scope="tests.h.ttl-wait", store=db.store, ttl=60)
        async def aplace(conn: Any, ref: str) -> int:
            await conn.execute(orders.insert().values(ref=ref))
            await asyncio.to_thread(first_run_outlives_ttl)
            return len(runs)

        async def one() -> int:
            async with db.async_engine.connect() as conn:
                return int(await aplace(conn, "t-1"))

        async def arun() -> list[int]:
            first = asyncio.ensure_future(one())
            await asyncio.to_thread(entered.wait)
            return (
                [await first, await one()]
                if db.name == "sqlite"
                else list(await asyncio.gather(first, one()))
            )

        results = db.run(arun())
    else:

        @idempotent(key_from="ref", scope="tests.h.ttl-wait", store=db.store, ttl=60)
        def place(conn: Any, ref: str) -> int:
            conn.execute(orders.insert().values(ref=ref))
            first_run_outlives_ttl()
            return len(runs)

        def one() -> int:
            with db.engine.connect() as conn:
                return int(place(conn, "t-1"))

        got: list[int] = []
        thread = threading.Thread(target=lambda: got.append(one()))
        thread.start()
        entered.wait()
        got.append(one())
        thread.join()
        results = got
    assert results == [1, 1]
    assert runs == ["run"]
    assert db.count() == 1


def _renewed_past(db: Db, offset_ms: int) -> None:
    """Block until the key's lease was renewed after the clock moved ``offset_ms`` forward (bounded polling)."""
    import threading

    pause = threading.Event()
    for _ in range(400):
        rows = db.key_rows()
        if rows and rows[0].locked_until > rows[0].created_at + offset_ms:
            return
        pause.wait(0.025)
    raise AssertionError("the lease was never renewed")


def test_self_committing_function_running_past_its_lease_is_not_taken_over(db: Db) -> None:
    """A function commits its claim itself and goes on running past its lease: the decorator keeps
    renewing the lease while it runs, so a duplicate gets InProgress instead of running beside it,
    and replays once it finished."""
    import threading
    import warnings

    from idempotent import InProgress
    from idempotent.errors import IdempotencyWarning

    orders = db.orders
    runs: list[str] = []
    committed, finish = threading.Event(), threading.Event()
    db.cleanups.append(lambda: setattr(db.store, "clock_offset", 0))
    options: dict[str, Any] = {"scope": "tests.h.lease-alive", "store": db.store, "lease": 0.3, "wait": 0}

    def outlive_lease() -> None:
        if len(runs) == 1:
            committed.set()
            finish.wait(30)

    def duplicate_while_alive() -> Any:
        committed.wait(30)
        db.store.clock_offset = 5  # the 0.3 s lease has long passed on the database clock
        _renewed_past(db, 5000)
        return None

    if db.is_async:

        @idempotent(key_from="ref", **options)
        async def aplace(conn: Any, ref: str) -> int:
            runs.append(ref)
            await conn.execute(orders.insert().values(ref=ref))
            await conn.commit()
            await asyncio.to_thread(outlive_lease)
            return 7

        async def one() -> Any:
            async with db.async_engine.connect() as conn:
                try:
                    return await aplace(conn, "l-1")
                except InProgress as exc:
                    return exc

        async def arun() -> list[Any]:
            first = asyncio.ensure_future(one())
            await asyncio.to_thread(duplicate_while_alive)
            during = await one()
            finish.set()
            return [during, await first, await one()]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IdempotencyWarning)
            results = db.run(arun())
    else:

        @idempotent(key_from="ref", **options)
        def place(conn: Any, ref: str) -> int:
            runs.append(ref)
            conn.execute(orders.insert().values(ref=ref))
            conn.commit()
            outlive_lease()
            return 7

        def one() -> Any:
            with db.engine.connect() as conn:
                try:
                    return place(conn, "l-1")
                except InProgress as exc:
                    return exc

        got: list[Any] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IdempotencyWarning)
            thread = threading.Thread(target=lambda: got.append(one()))
            thread.start()
            duplicate_while_alive()
            during = one()
            finish.set()
            thread.join()
            results = [during, got[0], one()]
    assert isinstance(results[0], InProgress), results
    assert results[1:] == [7, 7]
    assert runs == ["l-1"]
    assert db.count() == 1


def test_memory_store_keeps_a_result_the_call_outlived_its_ttl_for() -> None:
    """The in-memory test store behaves as the SQL store: a result stored after the call outlived its
    ttl is kept at least ``wait``, so a duplicate right after it replays."""
    from idempotent.testing import MemoryStore

    store = MemoryStore()
    runs: list[int] = []

    @idempotent(key_from="ref", scope="tests.h.memory-keep", store=store, ttl=60, wait=10)
    def place(ref: str) -> int:
        runs.append(1)
        store.clock_offset = 61
        return len(runs)

    assert [place("m-1"), place("m-1")] == [1, 1]
    store.clock_offset = 72  # past ttl and past the 10 s kept after the result: absent again
    assert place("m-1") == 2


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_retries_must_be_a_non_negative_int(bad: Any) -> None:
    """``retries=`` (decorator or configure) takes an int >= 0; anything else is a ConfigurationError."""
    from idempotent import configure

    with pytest.raises(ConfigurationError, match="retries must be an int >= 0"):
        idempotent(key_from="k", scope="tests.h.retries", retries=bad)(lambda k: None)
    with pytest.raises(ConfigurationError, match="retries must be an int >= 0"):
        configure(retries=bad)
