"""The sync and async drivers: they perform the operations the core's flows yield.

A handle wraps what the caller passed (``Session``, ``Connection``, ``AsyncSession`` or
``AsyncConnection``) behind the few transaction verbs the flows need. Nothing here decides
anything: the decisions live in :mod:`idempotent.core`.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import core
from idempotent.errors import ConfigurationError

__all__ = ["AsyncHandle", "SyncHandle", "async_handle_for", "run_async", "run_sync", "sync_handle_for"]


@functools.cache
def _async_classes() -> tuple[type, type] | None:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession  # noqa: PLC0415  (optional extra)
    except ImportError:  # pragma: no cover - sqlalchemy without its asyncio extra
        return None
    return AsyncSession, AsyncConnection


@functools.cache
def _handle_classes() -> tuple[type, ...]:
    return (Session, sa.Connection, *(_async_classes() or ()))


def is_handle(value: object) -> bool:
    """True for the objects a decorated function may receive its transaction through."""
    return isinstance(value, _handle_classes())


def _sqlite_legacy_begin(dbapi_connection: Any) -> bool:
    """True when the sqlite3 driver (legacy transaction control) has not begun its transaction yet.

    With its default settings the sqlite3 module emits BEGIN only before INSERT/UPDATE/DELETE,
    so a SAVEPOINT issued first would itself become the outermost transaction and its RELEASE
    would commit. The drivers then begin the driver's transaction explicitly.
    """
    level = getattr(dbapi_connection, "isolation_level", None)
    in_txn = getattr(dbapi_connection, "in_transaction", True)
    return level is not None and not in_txn


class SyncHandle:
    """A ``Session`` or ``Connection`` seen through the verbs the flows use."""

    __slots__ = ("is_session", "obj")

    def __init__(self, obj: Session | sa.Connection) -> None:
        self.obj = obj
        self.is_session = isinstance(obj, Session)

    def connection(self) -> sa.Connection:
        if isinstance(self.obj, Session):
            return self.obj.connection()
        return self.obj

    @property
    def dialect(self) -> sa.Dialect:
        if self.is_session:
            bind = self.obj.get_bind()  # type: ignore[union-attr]
            return bind.dialect
        return self.obj.dialect  # type: ignore[union-attr]

    def in_transaction(self) -> bool:
        return self.obj.in_transaction()

    def autobegun(self) -> bool:
        if not self.is_session:
            return False
        from sqlalchemy.orm import SessionTransactionOrigin  # noqa: PLC0415  (SQLAlchemy 2.0+)

        txn = self.obj.get_transaction()
        return getattr(txn, "origin", None) is SessionTransactionOrigin.AUTOBEGIN

    def marker(self) -> object:
        return self.obj.get_transaction()


class AsyncHandle:
    """An ``AsyncSession`` or ``AsyncConnection`` seen through the verbs the flows use."""

    __slots__ = ("is_session", "obj", "sync")

    def __init__(self, obj: Any) -> None:
        classes = _async_classes()
        assert classes is not None  # noqa: S101  (only built after is_handle() matched an async class)
        self.obj = obj
        self.is_session = isinstance(obj, classes[0])
        self.sync = obj.sync_session if self.is_session else obj.sync_connection

    @property
    def dialect(self) -> sa.Dialect:
        if self.is_session:
            return self.sync.get_bind().dialect  # type: ignore[no-any-return]
        return self.obj.dialect  # type: ignore[no-any-return]

    def in_transaction(self) -> bool:
        return bool(self.obj.in_transaction())

    def autobegun(self) -> bool:
        if not self.is_session:
            return False
        return SyncHandle(self.sync).autobegun()

    def marker(self) -> object:
        return self.sync.get_transaction()


def sync_handle_for(obj: object) -> SyncHandle:
    if isinstance(obj, (Session, sa.Connection)):
        return SyncHandle(obj)
    adapt = getattr(obj, "idempotent_handle", None)  # another transaction API (Django's)
    if adapt is not None:
        return adapt()  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"a sync function needs a Session or Connection for its transaction, got {type(obj).__name__}; "
        "pass one as an argument or name it with session=..."
    )


def async_handle_for(obj: object) -> AsyncHandle:
    classes = _async_classes()
    if classes is not None and isinstance(obj, classes):
        return AsyncHandle(obj)
    raise ConfigurationError(
        f"an async function needs an AsyncSession or AsyncConnection for its transaction, got "
        f"{type(obj).__name__}; pass one as an argument or name it with session=..."
    )


def missing_lease_engine(function: str) -> ConfigurationError:
    """The error for lease mode on a SQL store without an engine (checked before the call starts)."""
    return ConfigurationError(
        f"{function} uses lease mode, which commits its claim on its own connection: give the "
        "store an engine with configure(engine=...) or store=SQLStore(engine)"
    )


def _lease_engine(plan: core.Plan[Any]) -> Any:
    engine = plan.extra.get("engine")
    if engine is None:
        raise missing_lease_engine(plan.function)
    return engine


# ---------------------------------------------------------------------------------------------
# Reads outside any transaction (core.Peek), on drivers that toggle autocommit client-side.
# ---------------------------------------------------------------------------------------------
def _peek_sync(handle: SyncHandle, op: core.Peek) -> Any:
    conn = handle.connection()  # a Session begins its transaction here; it is ended below
    driver = conn.connection.driver_connection
    try:
        driver.autocommit = True  # type: ignore[union-attr]
    except Exception:  # the driver refuses here (say, mid-transaction): claim as usual instead
        handle.obj.rollback()
        return []
    try:
        return conn.exec_driver_sql(op.sql, op.params).fetchall()
    finally:
        # Autocommit off first: a Session hands its connection back to the pool when its
        # transaction ends. The driver is idle, so the rollback sends no statement.
        try:
            driver.autocommit = False  # type: ignore[union-attr]
        finally:
            handle.obj.rollback()


async def _peek_async(handle: AsyncHandle, op: core.Peek) -> Any:
    obj = handle.obj
    conn = await obj.connection() if handle.is_session else obj
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    try:
        await driver.set_autocommit(True)
    except Exception:  # the driver refuses here (say, mid-transaction): claim as usual instead
        await obj.rollback()
        return []
    try:
        return (await conn.exec_driver_sql(op.sql, op.params)).fetchall()
    finally:
        try:
            await driver.set_autocommit(False)
        finally:
            await obj.rollback()


# ---------------------------------------------------------------------------------------------
# Sync driver.
# ---------------------------------------------------------------------------------------------
class _SyncRenewal:
    """The renewal of one sync lease, run by the process's :class:`_Renewer` every ``lease / 3``."""

    def __init__(self, plan: core.Plan[Any]) -> None:
        self.plan = plan
        self.interval = max(plan.lease / 3.0, 0.01)
        self.lock = threading.Lock()  # held while renewing: stop() waits for a renewal under way
        self.stopped = False
        self.lost = False

    def renew(self) -> bool:
        """Renew once; False when this lease needs no further renewal."""
        with self.lock:
            if self.stopped:
                return False
            try:
                if not _drive_plain_sync(self.plan.store.renew(self.plan.request), self.plan):
                    self.lost = True
                    return False
            except Exception:
                _logger.warning("renewing the lease of %s failed", self.plan.function, exc_info=True)
            return True

    def stop(self) -> bool:
        """Stop renewing; True while the lease was never found lost."""
        with self.lock:
            self.stopped = True
        return not self.lost


class _Renewer:
    """One daemon thread renewing every sync lease of the process, earliest due first.

    A thread per call would cost its start and join on every lease-mode call.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, _SyncRenewal]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, renewal: _SyncRenewal) -> None:
        with self._cond:
            heapq.heappush(self._due, (time.monotonic() + renewal.interval, next(self._order), renewal))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="idempotent-lease", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _next(self) -> _SyncRenewal:
        with self._cond:
            while True:
                while self._due and self._due[0][2].stopped:
                    heapq.heappop(self._due)
                if not self._due:
                    self._cond.wait()
                    continue
                due, _, renewal = self._due[0]
                delay = due - time.monotonic()
                if delay <= 0:
                    heapq.heappop(self._due)
                    return renewal
                self._cond.wait(delay)

    def _run(self) -> None:
        while True:
            renewal = self._next()
            if renewal.renew():
                with self._cond:
                    heapq.heappush(
                        self._due, (time.monotonic() + renewal.interval, next(self._order), renewal)
                    )


_renewer = _Renewer()


_logger = logging.getLogger("idempotent")


#: Dialects whose drivers switch autocommit with a server round trip each way: a short
#: transaction (statement, COMMIT) is cheaper there than AUTOCOMMIT on and off again.
_COMMIT_DIALECTS = frozenset({"mysql", "mariadb"})


def _exec_own_sync(plan: core.Plan[Any], op: core.Exec) -> Any:
    engine = _lease_engine(plan)
    if engine.dialect.name in _COMMIT_DIALECTS:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(op.sql, op.params)
            return result.fetchall() if op.fetch else result.rowcount
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        result = conn.exec_driver_sql(op.sql, op.params)
        return result.fetchall() if op.fetch else result.rowcount


def _drive_plain_sync(steps: core.Steps[Any], plan: core.Plan[Any]) -> Any:
    """Drive a store generator that only yields own-transaction Exec operations."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = _exec_own_sync(plan, op)  # type: ignore[arg-type]
        except Exception as exc:
            error = exc


def run_sync(
    plan: core.Plan[Any],
    flow: core.Steps[Any],
    handle: SyncHandle | None,
    call: Callable[[], Any],
) -> Any:
    """Perform the operations of ``flow`` with blocking I/O."""
    value: Any = None
    error: BaseException | None = None
    renewal: _SyncRenewal | None = None
    conn: sa.Connection | None = None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        except BaseException:
            if renewal is not None:  # the flow stops its renewal itself; this covers a flow that broke
                renewal.stop()
            raise
        value, error = None, None
        try:
            kind = type(op)
            if kind is core.Exec:
                if op.own:  # type: ignore[attr-defined]
                    value = _exec_own_sync(plan, op)  # type: ignore[arg-type]
                else:
                    if conn is None:
                        conn = handle.connection()  # type: ignore[union-attr]
                    result = conn.exec_driver_sql(op.sql, op.params)  # type: ignore[attr-defined]
                    value = result.fetchall() if op.fetch else result.rowcount  # type: ignore[attr-defined]
            elif kind is core.Peek:
                value = _peek_sync(handle, op)  # type: ignore[arg-type]
                conn = None
            elif kind is core.Call:
                value = call()
            elif kind is core.Begin:
                handle.obj.begin()  # type: ignore[union-attr]
                conn = None
            elif kind is core.Commit:
                handle.obj.commit()  # type: ignore[union-attr]
                conn = None
            elif kind is core.Rollback:
                handle.obj.rollback()  # type: ignore[union-attr]
                conn = None
            elif kind is core.EndUnwritten:
                token = op.token  # type: ignore[attr-defined]
                if token is not None:
                    token.commit()  # RELEASE SAVEPOINT: nothing was written since it began
                elif handle.is_session:  # type: ignore[union-attr]
                    handle.obj.rollback()  # type: ignore[union-attr]  # a commit would flush the caller's objects
                else:
                    handle.obj.commit()  # type: ignore[union-attr]
                conn = None
            elif kind is core.Savepoint:
                assert handle is not None  # noqa: S101  (transaction flows always have a handle)
                c = handle.connection()
                if c.dialect.name == "sqlite" and _sqlite_legacy_begin(c.connection.driver_connection):
                    c.exec_driver_sql("BEGIN")
                value = handle.obj.begin_nested()
                conn = None
            elif kind is core.EndSavepoint:
                token = op.token  # type: ignore[attr-defined]
                if op.commit:  # type: ignore[attr-defined]
                    token.commit()
                else:
                    try:
                        if token.is_active:
                            token.rollback()
                    except sa.exc.DBAPIError:  # the database already ended the transaction
                        _logger.debug("savepoint rollback failed", exc_info=True)
                conn = None
            elif kind is core.Flush:
                if handle is not None and handle.is_session:
                    handle.obj.flush()  # type: ignore[union-attr]
            elif kind is core.Marker:
                value = handle.marker() if handle is not None else None
                conn = None
            elif kind is core.Sleep:
                time.sleep(op.seconds)  # type: ignore[attr-defined]
            elif kind is core.StartRenewal:
                if plan.extra.get("renew"):
                    renewal = _SyncRenewal(plan)
                    _renewer.add(renewal)
            elif kind is core.StopRenewal:
                if renewal is not None:
                    value = renewal.stop()
                    renewal = None
            else:  # pragma: no cover - a new operation without a driver branch
                raise AssertionError(f"unknown operation {op!r}")  # noqa: TRY301  (handed to the flow like any error)
        except BaseException as exc:
            error = exc


# ---------------------------------------------------------------------------------------------
# Async driver.
# ---------------------------------------------------------------------------------------------
async def _exec_own_async(plan: core.Plan[Any], op: core.Exec) -> Any:
    engine = _lease_engine(plan)
    if isinstance(engine, sa.Engine):  # a sync engine in an async function: run it in a thread
        return await anyio.to_thread.run_sync(_exec_own_sync, plan, op)
    if engine.dialect.name in _COMMIT_DIALECTS:
        async with engine.begin() as conn:
            result = await conn.exec_driver_sql(op.sql, op.params)
            return result.fetchall() if op.fetch else result.rowcount
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        result = await conn.exec_driver_sql(op.sql, op.params)
        return result.fetchall() if op.fetch else result.rowcount


async def _drive_plain_async(steps: core.Steps[Any], plan: core.Plan[Any]) -> Any:
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = await _exec_own_async(plan, op)  # type: ignore[arg-type]
        except Exception as exc:
            error = exc


class _AsyncRenewal:
    def __init__(self, plan: core.Plan[Any]) -> None:
        self.plan = plan
        self.stop = anyio.Event()
        self.lost = False
        self.started = False
        self.done = anyio.Event()

    async def run(self) -> None:
        self.started = True
        interval = max(self.plan.lease / 3.0, 0.01)
        try:
            while True:
                with anyio.move_on_after(interval):
                    await self.stop.wait()
                if self.stop.is_set():
                    return
                try:
                    if not await _drive_plain_async(self.plan.store.renew(self.plan.request), self.plan):
                        self.lost = True
                        return
                except Exception:
                    _logger.warning("renewing the lease of %s failed", self.plan.function, exc_info=True)
        finally:
            self.done.set()


async def run_async(
    plan: core.Plan[Any],
    flow: core.Steps[Any],
    handle: AsyncHandle | None,
    call: Callable[[], Awaitable[Any]],
) -> Any:
    """Perform the operations of ``flow`` with awaited I/O; cleanup after an error is shielded."""
    if not plan.extra.get("renew"):
        return await _run_async(plan, flow, handle, call, None)
    result: Any = None
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        try:
            result = await _run_async(plan, flow, handle, call, group)
        except BaseException as exc:  # re-raised outside the group, which would wrap it in an ExceptionGroup
            failure = exc
        finally:
            group.cancel_scope.cancel()
    if failure is not None:
        try:
            raise failure
        finally:
            del failure
    return result


async def _run_async(
    plan: core.Plan[Any],
    flow: core.Steps[Any],
    handle: AsyncHandle | None,
    call: Callable[[], Awaitable[Any]],
    group: Any,
) -> Any:
    value: Any = None
    error: BaseException | None = None
    cleaning = False
    renewal: _AsyncRenewal | None = None
    obj = handle.obj if handle is not None else None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            kind = type(op)
            if kind is core.StartRenewal:
                if group is not None and not cleaning:
                    renewal = _AsyncRenewal(plan)
                    group.start_soon(renewal.run)
            elif kind is core.StopRenewal:
                if renewal is not None:
                    renewal.stop.set()
                    if renewal.started:  # a task cancelled before its first step never sets ``done``
                        with anyio.CancelScope(shield=True):
                            await renewal.done.wait()
                    value = not renewal.lost
                    renewal = None
            elif cleaning:
                with anyio.CancelScope(shield=True):
                    value = await _perform_async(plan, op, handle, obj, call, group)
            else:
                value = await _perform_async(plan, op, handle, obj, call, group)
        except BaseException as exc:
            error = exc
            cleaning = True
            if renewal is not None:
                renewal.stop.set()


async def _perform_async(
    plan: core.Plan[Any], op: core.Op, handle: AsyncHandle | None, obj: Any, call: Any, group: Any
) -> Any:
    kind = type(op)
    if kind is core.Exec:
        if op.own:  # type: ignore[attr-defined]
            return await _exec_own_async(plan, op)  # type: ignore[arg-type]
        conn = await obj.connection() if handle is not None and handle.is_session else obj
        result = await conn.exec_driver_sql(op.sql, op.params)  # type: ignore[attr-defined]
        return result.fetchall() if op.fetch else result.rowcount  # type: ignore[attr-defined]
    if kind is core.Peek:
        return await _peek_async(handle, op)  # type: ignore[arg-type]
    if kind is core.Call:
        return await call()
    if kind is core.Begin:
        await obj.begin()
        return None
    if kind is core.Commit:
        await obj.commit()
        return None
    if kind is core.Rollback:
        await obj.rollback()
        return None
    if kind is core.EndUnwritten:
        token = op.token  # type: ignore[attr-defined]
        if token is not None:
            await token.commit()  # RELEASE SAVEPOINT: nothing was written since it began
        elif handle is not None and handle.is_session:
            await obj.rollback()  # a commit would flush the caller's pending objects
        else:
            await obj.commit()
        return None
    if kind is core.Savepoint:
        conn = await obj.connection() if handle is not None and handle.is_session else obj
        if conn.dialect.name == "sqlite":
            raw = await conn.get_raw_connection()
            if _sqlite_legacy_begin(raw.driver_connection):
                await conn.exec_driver_sql("BEGIN")
        return await obj.begin_nested()
    if kind is core.EndSavepoint:
        token = op.token  # type: ignore[attr-defined]
        if op.commit:  # type: ignore[attr-defined]
            await token.commit()
        else:
            try:
                if token.is_active:
                    await token.rollback()
            except sa.exc.DBAPIError:  # the database already ended the transaction
                _logger.debug("savepoint rollback failed", exc_info=True)
        return None
    if kind is core.Flush:
        if handle is not None and handle.is_session:
            await obj.flush()
        return None
    if kind is core.Marker:
        return handle.marker() if handle is not None else None
    if kind is core.Sleep:
        await anyio.sleep(op.seconds)  # type: ignore[attr-defined]
        return None
    if kind is core.StopRenewal or kind is core.StartRenewal:
        return True
    raise AssertionError(f"unknown operation {op!r}")  # pragma: no cover
