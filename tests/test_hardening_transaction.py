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
            if joined:
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
        if joined:
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


@pytest.mark.parametrize(("step", "event"), STEPS, ids=[s for s, _ in STEPS])
@pytest.mark.parametrize("handle", ["connection", "session"])
def test_failure_after_the_call_undoes_the_unit(db: Db, handle: str, step: str, event: str) -> None:
    """Storing the result, releasing the savepoint or committing fails (cancelled, on async): the
    error propagates, the handle is out of the decorator's transaction, and a caller that
    catches it and commits commits neither the key nor the function's write."""
    joined = step == "release"  # a savepoint is released only inside the caller's transaction
    place = _place(db, "tests.h.after")
    _inject(db, event, _cancel if db.is_async else _raise, statement_filter=step == "store")
    outcome, still = _scenario(db, handle, joined, lambda obj: place(obj, "a-1"))
    expected = asyncio.CancelledError if db.is_async else Injected
    assert isinstance(outcome, expected), outcome
    if not joined:
        assert not still
    rows = db.key_rows()
    if step == "commit" and db.is_async and rows:
        # cancelled while COMMIT was on its way: it landed, key and write together
        assert (rows[0].status, _refs(db)) == ("completed", ["a-1"])
    else:  # a failed RELEASE may have merged the unit into the caller's transaction: all of it is rolled back
        assert (rows, _refs(db)) == ([], [])


@pytest.mark.parametrize("handle", ["connection", "session"])
def test_failure_storing_the_result_when_owned(db: Db, handle: str) -> None:
    """The result write fails in a transaction the decorator owns: the unit is rolled back and the
    handle is left in no transaction (cancellation included, on async)."""
    place = _place(db, "tests.h.owned")
    _inject(db, "before_cursor_execute", _cancel if db.is_async else _raise, statement_filter=True)
    outcome, still = _scenario(db, handle, False, lambda obj: place(obj, "o-1"))
    assert isinstance(outcome, asyncio.CancelledError if db.is_async else Injected), outcome
    assert not still
    assert (db.key_rows(), db.count()) == ([], 0)


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
def test_session_bound_to_a_connection_in_a_transaction_is_joined(db: Db) -> None:
    """``Session(bind=conn)`` on a connection the caller began: the decorator never commits or rolls
    back that outer transaction, so a replay keeps the caller's and the first call's writes."""
    place = _place(db, "tests.h.recipe")
    orders = db.orders

    async def arun() -> tuple[list[int], list[str], int]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with db.async_engine.connect() as conn:
            outer = await conn.begin()
            await conn.execute(orders.insert().values(ref="outer"))
            session = AsyncSession(bind=conn)
            got = [await place(session, "j-1"), await place(session, "j-1")]
            await session.close()
            refs = sorted(r for (r,) in await conn.execute(sa.select(orders.c.ref)))
            keys = len((await conn.execute(sa.select(db.keys))).all())
            await outer.rollback()
            return got, refs, keys

    def run() -> tuple[list[int], list[str], int]:
        with db.engine.connect() as conn:
            outer = conn.begin()
            conn.execute(orders.insert().values(ref="outer"))
            session = Session(bind=conn)
            got = [place(session, "j-1"), place(session, "j-1")]
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


def test_autocommit_engine_is_refused(db: Db) -> None:
    """An engine created with isolation_level='AUTOCOMMIT' is refused the same way."""
    place = _place(db, "tests.h.autocommit-engine")
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        engine = create_async_engine(db.async_url, isolation_level="AUTOCOMMIT")

        async def arun() -> Any:
            try:
                async with AsyncSession(engine) as session:
                    return await place(session, "ae-1")
            finally:
                await engine.dispose()

        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            db.run(arun())
    else:
        engine = sa.create_engine(db.url, isolation_level="AUTOCOMMIT")
        try:
            with Session(engine) as session, pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
                place(session, "ae-1")
        finally:
            engine.dispose()
    assert (db.count(), db.key_rows()) == (0, [])


def test_session_with_binds_to_several_engines_is_refused(db: Db) -> None:
    """``Session(binds=...)`` spanning two engines would commit the key and the write separately."""
    place = _place(db, "tests.h.binds")
    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        other = create_async_engine(db.async_url)

        async def arun() -> Any:
            try:
                async with AsyncSession(bind=db.async_engine, binds={db.orders: other}) as session:
                    return await place(session, "b-1")
            finally:
                await other.dispose()

        with pytest.raises(ConfigurationError, match="binds"):
            db.run(arun())
    else:
        other = sa.create_engine(db.url)
        try:
            with (
                Session(bind=db.engine, binds={db.orders: other}) as session,
                pytest.raises(ConfigurationError, match="binds"),
            ):
                place(session, "b-1")
        finally:
            other.dispose()
    assert (db.count(), db.key_rows()) == (0, [])
