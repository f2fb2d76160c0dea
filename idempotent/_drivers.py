"""The sync and async drivers: they perform the operations the core's flows yield.

A handle wraps what the caller passed (``Session``, ``Connection``, ``AsyncSession`` or
``AsyncConnection``) behind the few transaction verbs the flows need. Nothing here decides
anything: the decisions live in :mod:`idempotent.core`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import _libpq, core
from idempotent._ticker import Ticker
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


def _joined_bind(session: Session) -> bool:
    """True for a Session bound to a Connection the caller already began a transaction on
    (the "join a session into an external transaction" recipe): that transaction is the caller's."""
    bind = session.bind
    return isinstance(bind, sa.Connection) and bind.in_transaction()


def _autocommit(bind: Any) -> bool:
    level = bind.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(bind.dialect, "_on_connect_isolation_level", None)  # create_engine(isolation_level=)
    return isinstance(level, str) and level.upper() == "AUTOCOMMIT"


def check_atomic(obj: Session | sa.Connection, function: str) -> None:
    """Refuse handles on which the key and the function's writes cannot commit together."""
    bind: Any = obj
    if isinstance(obj, Session):
        # Session(binds=...): public as ``binds`` from SQLAlchemy 2.1, private before it
        by_target = getattr(obj, "binds", None)
        if by_target is None:
            by_target = getattr(obj, "_Session__binds", {})
        binds = {id(b): b for b in by_target.values()}
        if obj.bind is not None:
            binds[id(obj.bind)] = obj.bind
        if len(binds) > 1:
            raise ConfigurationError(
                f"{function} received a Session with binds= to {len(binds)} engines or connections: its key "
                "would be written on one and the function's writes on another, which commit separately. "
                "Pass a Session (or Connection) on the single database that holds both the keys table and "
                "the function's tables, or use mode='lease'"
            )
        bind = next(iter(binds.values()), None)
    if bind is not None and _autocommit(bind):
        raise ConfigurationError(
            f"{function} received a handle in AUTOCOMMIT isolation, which commits every statement on its "
            "own, so the key cannot commit together with the function's writes. Pass a Session or "
            "Connection with a transactional isolation level (drop isolation_level='AUTOCOMMIT' for it), "
            "or use mode='lease'"
        )


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
        if self.obj.in_transaction():
            return True
        return self.is_session and _joined_bind(self.obj)  # type: ignore[arg-type]

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
        if self.obj.in_transaction():
            return True
        return self.is_session and _joined_bind(self.sync)

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
# Reads outside any transaction (core.Peek), on psycopg: through libpq on the idle connection, or
# (when something watches the statements) with autocommit switched on client-side.
# ---------------------------------------------------------------------------------------------
def _peek_sync(handle: SyncHandle, op: core.Peek) -> Any:
    obj = handle.obj
    if handle.is_session:
        obj.begin()  # explicitly: a Session(autobegin=False) begins nothing by itself; ended below
    conn = handle.connection()
    if conn.dialect.name != "postgresql":
        # MySQL/MariaDB: a plain read in a transaction of its own (switching autocommit would
        # cost a round trip each way), ended with ROLLBACK. SQLite: a plain read (the driver
        # begins no transaction for it), then the rollback of SQLAlchemy's transaction.
        try:
            return _exec_sync(conn, core.Exec(op.sql, op.params, fetch=True), _lean_connection(conn, False))
        finally:
            obj.rollback()  # the read began a transaction (SQLAlchemy's, and the server's): end both
    driver = conn.connection.driver_connection
    if driver.info.transaction_status == _idle() and not _observed(conn) and _pq_allowed(conn, driver):  # type: ignore[union-attr]
        # Through libpq on the idle connection: the read is its own transaction, with no
        # autocommit switch around it.
        try:
            return _libpq.read(driver, op.sql, op.params)
        except BaseException as exc:
            _lean_failed_sync(conn, op, exc, driver, pipelined=True)
            raise
        finally:
            handle.obj.rollback()  # ends what a Session began above; the driver is idle: nothing is sent
    try:
        driver.autocommit = True  # type: ignore[union-attr]
    except Exception:  # the driver refuses here (say, mid-transaction): claim as usual instead
        obj.rollback()
        return []
    try:
        if _observed(conn):
            rows = conn.exec_driver_sql(op.sql, op.params).fetchall()
        else:
            with driver.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute(op.sql, op.params)
                rows = cursor.fetchall()
    except BaseException as exc:
        # The read failed or was interrupted, possibly with the connection closed under it: put
        # it back as well as can be, and let the original error (or interruption) through.
        try:
            _end_peek_sync(handle, conn, driver)
        except Exception:
            _logger.debug("could not reset the connection after an interrupted replay read", exc_info=True)
        _raise_wrapped(conn.dialect, op, exc, driver)  # psycopg: the DBAPI connection itself
        raise
    _end_peek_sync(handle, conn, driver)
    return rows


def _observed(conn: sa.Connection) -> bool:
    """True when event listeners (on ``conn``, its engine or its dialect) or ``echo`` watch
    ``conn``'s statements: the library's own statements then go through SQLAlchemy like every
    other statement. Otherwise they run on the DBAPI cursor, which spares the result metadata
    SQLAlchemy rebuilds on every call: most of a replay's Python time (see benchmarks/README.md)."""
    watched = getattr(conn, "_has_events", True) or getattr(conn, "_echo", True)
    return bool(watched) or _engine_observed(conn.engine)


def _raise_wrapped(
    dialect: sa.Dialect,
    op: core.Peek | core.Exec | core.ExecCommit,
    exc: BaseException,
    dbapi_connection: Any,
    dropped: bool | None = None,
) -> None:
    """Raise a driver error of a statement run on the driver's cursor as SQLAlchemy would have
    (what the store translates, and what the retry after a dropped connection looks for)."""
    if isinstance(exc, dialect.loaded_dbapi.Error):
        if dropped is None:
            dropped = dialect.is_disconnect(exc, dbapi_connection, None)
        raise sa.exc.DBAPIError.instance(
            op.sql,
            op.params,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=dropped,
            dialect=dialect,
        ) from exc


def _end_peek_sync(handle: SyncHandle, conn: sa.Connection, driver: Any) -> None:
    # Autocommit off first: a Session hands its connection back to the pool when its
    # transaction ends. The driver is idle, so the rollback sends no statement.
    try:
        driver.autocommit = False
    except Exception:
        conn.invalidate()  # never hand an autocommit connection back to the pool
        raise
    finally:
        handle.obj.rollback()


async def _peek_async(handle: AsyncHandle, op: core.Peek) -> Any:
    obj = handle.obj
    if handle.is_session:
        await obj.begin()  # explicitly: an AsyncSession(autobegin=False) begins nothing by itself
    conn = await obj.connection() if handle.is_session else obj
    if conn.dialect.name != "postgresql":  # see _peek_sync
        try:
            return (await conn.exec_driver_sql(op.sql, op.params)).fetchall()
        finally:
            with anyio.CancelScope(shield=True):
                await obj.rollback()
    raw = await conn.get_raw_connection()
    driver, adapted = raw.driver_connection, raw.dbapi_connection
    sync = conn.sync_connection
    if driver.info.transaction_status == _idle() and not _observed(sync) and _pq_allowed(sync, driver):
        try:  # see _peek_sync
            rows = await _libpq.aread(driver, op.sql, op.params)
        except BaseException as exc:
            try:  # a driver error is raised as SQLAlchemy's; the connection is dropped if need be
                await _lean_failed_async(conn, op, exc, driver, pipelined=True)
            finally:
                with anyio.CancelScope(shield=True):
                    await obj.rollback()
            raise
        await obj.rollback()
        return rows
    try:
        await driver.set_autocommit(True)
    except Exception:  # the driver refuses here (say, mid-transaction): claim as usual instead
        await obj.rollback()
        return []
    try:
        if _observed(conn.sync_connection):
            rows = (await conn.exec_driver_sql(op.sql, op.params)).fetchall()
        else:
            async with driver.cursor() as cursor:
                await cursor.execute(op.sql, op.params)
                rows = await cursor.fetchall()
    except BaseException as exc:
        # Cancelled or failed mid-read (the driver may have closed the connection): reset in a
        # shielded step and let the cancellation or the original error through.
        with anyio.CancelScope(shield=True):
            try:
                await _end_peek_async(obj, conn, driver)
            except Exception:
                _logger.debug(
                    "could not reset the connection after an interrupted replay read", exc_info=True
                )
        _raise_wrapped(conn.dialect, op, exc, adapted)
        raise
    await _end_peek_async(obj, conn, driver)
    return rows


async def _end_peek_async(obj: Any, conn: Any, driver: Any) -> None:
    try:
        await driver.set_autocommit(False)
    except Exception:
        await conn.invalidate()  # never hand an autocommit connection back to the pool
        raise
    finally:
        await obj.rollback()


# ---------------------------------------------------------------------------------------------
# The library's own statements on the driver's connection; on psycopg, BEGIN and COMMIT pipelined.
# ---------------------------------------------------------------------------------------------
#: ``_LEAN``: the library's statements on the DBAPI connection instead of ``exec_driver_sql``.
#: ``_PIPELINE``: on psycopg, BEGIN sent with the claim and the result write with COMMIT, through
#: libpq (``idempotent/_libpq.py``; needs ``_LEAN``); False sends each on psycopg's cursor (for
#: tests and benchmarks/bench_pipeline.py, which measures what each buys).
_LEAN = True
_PIPELINE = True


#: Sync drivers whose cursor runs the library's statements when nothing watches them (psycopg's
#: async connection too): SQLAlchemy's ``exec_driver_sql`` costs more Python than the statement
#: itself on SQLite, and a sizeable share of a loopback round trip on MariaDB.
_LEAN_SYNC_DRIVERS = frozenset({"psycopg", "pysqlite", "pymysql"})


def _lean_connection(conn: Any, is_async: bool) -> Any:
    """The DBAPI connection under the SQLAlchemy ``conn``, when the library may run its own
    statements on it directly: psycopg (sync or async), or sqlite3 or PyMySQL (sync), and nothing
    watching ``conn``'s statements (event listeners, ``echo``: they keep seeing every statement
    through SQLAlchemy). Else None."""
    if not _LEAN or not isinstance(conn, sa.Connection):
        return None
    dialect = conn.dialect
    if bool(getattr(dialect, "is_async", False)) is not is_async:
        return None
    if dialect.driver != "psycopg" and (is_async or dialect.driver not in _LEAN_SYNC_DRIVERS):
        return None
    if conn.invalidated or conn.closed or _observed(conn):
        return None
    return conn.connection.driver_connection


def _begin_due(driver: Any, pipeline: bool) -> bytes | None:
    """The BEGIN psycopg is about to send as its own round trip before the next statement (its
    transaction is idle and it is not in autocommit), so that it may go with that statement
    instead; None when psycopg would send none, or when ``pipeline`` says it may not."""
    if not pipeline or driver.autocommit or driver.info.transaction_status != _idle():
        return None
    return _begin_statement(driver.isolation_level, driver.read_only, driver.deferrable)


@functools.cache
def _begin_statement(isolation_level: Any, read_only: bool | None, deferrable: bool | None) -> bytes:
    """The BEGIN psycopg sends for these transaction characteristics, as psycopg words it."""
    import psycopg  # noqa: PLC0415

    parts = ["BEGIN"]
    if isolation_level is not None:  # create_engine(isolation_level=...)
        level = psycopg.IsolationLevel(isolation_level).name
        parts.append("ISOLATION LEVEL " + level.replace("_", " "))
    if read_only is not None:
        parts.append("READ ONLY" if read_only else "READ WRITE")
    if deferrable is not None:
        parts.append("DEFERRABLE" if deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


@functools.cache
def _idle() -> Any:
    from psycopg.pq import TransactionStatus  # noqa: PLC0415

    return TransactionStatus.IDLE


@functools.cache
def _intrans() -> Any:
    from psycopg.pq import TransactionStatus  # noqa: PLC0415

    return TransactionStatus.INTRANS


def _commit_pipelined(
    handle: SyncHandle | AsyncHandle, conn: sa.Connection, driver: Any, pipeline: bool
) -> bool:
    """True when the result write and COMMIT may go to the server together, bypassing what
    ``Commit`` would call first: ``pipeline`` allows it, the handle's transaction is the root one,
    psycopg's is open and sound, and a Session has nothing left to flush and no ``before_commit``
    listener (its ``commit()`` then only ends the transaction, which it still does afterwards,
    after_commit listeners and expiry included)."""
    if not pipeline or driver.info.transaction_status != _intrans():
        return False
    if conn.in_nested_transaction():
        return False
    if handle.is_session:
        session: Session = handle.sync if isinstance(handle, AsyncHandle) else handle.obj  # type: ignore[assignment]
        if session.twophase or session.get_nested_transaction() is not None:
            return False
        if session.dispatch.before_commit:
            return False
        if session.new or session.deleted or session.identity_map.check_modified():
            return False
    return True


def _gone(dialect: sa.Dialect, exc: BaseException, dbapi_connection: Any) -> bool:
    """True when ``exc`` is a driver error saying the connection is gone (as SQLAlchemy judges it)."""
    return isinstance(exc, dialect.loaded_dbapi.Error) and bool(
        dialect.is_disconnect(exc, dbapi_connection, None)
    )


def _discarded(dialect: sa.Dialect, exc: BaseException, dbapi_connection: Any, *, pipelined: bool) -> bool:
    """Whether a connection whose statement on the driver's cursor failed with ``exc`` must be
    invalidated rather than used on: it is gone, or the statement was interrupted (a cancelled
    task, ``KeyboardInterrupt``) or failed mid-pipeline outside the driver, leaving the
    connection's protocol state unknown."""
    if isinstance(exc, dialect.loaded_dbapi.Error):
        return _gone(dialect, exc, dbapi_connection)
    return pipelined or not isinstance(exc, Exception)


def _lean_failed_sync(
    conn: sa.Connection, op: Any, exc: BaseException, driver: Any, *, pipelined: bool
) -> None:
    """After a statement run on the psycopg cursor failed: a driver error is raised as SQLAlchemy's
    ``DBAPIError`` (the connection invalidated when it is gone, as SQLAlchemy does); an
    interruption leaves the connection's protocol state unknown, so it is invalidated too."""
    if _discarded(conn.dialect, exc, driver, pipelined=pipelined):
        try:
            conn.invalidate(exc if isinstance(exc, Exception) else None)
        except Exception:
            _logger.debug("could not invalidate the connection", exc_info=True)
    _raise_wrapped(conn.dialect, op, exc, driver)


def _pq_allowed(conn: sa.Connection, driver: Any) -> bool:
    """True when the library may send its statements on ``conn`` (sync, or the sync face of an
    async connection) through libpq (see ``_libpq``)."""
    return _PIPELINE and conn.dialect.driver == "psycopg" and _libpq.usable(driver)


def _exec_lean_sync(conn: sa.Connection, driver: Any, op: core.Exec) -> Any:
    """``Exec`` on the DBAPI connection. On psycopg, a BEGIN psycopg would send first goes in the
    same round trip (through libpq); else the statement goes on the driver's cursor."""
    if not conn.in_transaction():
        conn.begin()  # what exec_driver_sql's autobegin does (it sends nothing): SQLAlchemy's commit ends it
    begin = _begin_due(driver, _pq_allowed(conn, driver))
    try:
        if begin is not None:
            transaction = conn.get_transaction()
            return _libpq.begin_and_run(driver, transaction, begin, op.sql, op.params, fetch=op.fetch)
        cur = driver.cursor()
        try:
            cur.execute(op.sql, op.params)
            return cur.fetchall() if op.fetch else cur.rowcount
        finally:
            cur.close()
    except BaseException as exc:
        _lean_failed_sync(conn, op, exc, driver, pipelined=begin is not None)
        raise


def _exec_sync(conn: sa.Connection, op: core.Exec, driver: Any) -> Any:
    """``Exec`` on the caller's connection: on the DBAPI connection ``driver`` when the library
    may use it (see :func:`_lean_connection`), else through SQLAlchemy. Rows or rowcount."""
    if driver is not None:
        return _exec_lean_sync(conn, driver, op)
    result = conn.exec_driver_sql(op.sql, op.params)
    return result.fetchall() if op.fetch else result.rowcount


def _exec_commit_sync(handle: SyncHandle, op: core.ExecCommit) -> int:
    conn = handle.connection()
    driver = _lean_connection(conn, False)
    if driver is None or not _commit_pipelined(handle, conn, driver, _pq_allowed(conn, driver)):
        rowcount = _exec_sync(conn, core.Exec(op.sql, op.params), driver)
        if rowcount == 1:
            handle.obj.commit()
        return int(rowcount)
    try:
        _libpq.run_and_commit(driver, conn.get_transaction(), op.guarded, op.params)
    except BaseException as exc:
        _lean_failed_sync(conn, core.Exec(op.guarded, op.params), exc, driver, pipelined=True)
        raise
    # The driver's transaction is over: SQLAlchemy's commit ends its own and sends nothing.
    handle.obj.commit()
    return 1  # the guarded statement wrote exactly one row, or failed


# ---------------------------------------------------------------------------------------------
# Sync driver.
# ---------------------------------------------------------------------------------------------
class _SyncRenewal:
    """The renewal of one sync lease, run by the process's :class:`_Renewer` every ``lease / 3``."""

    def __init__(self, plan: core.Plan[Any]) -> None:
        self.plan = plan
        self.interval = max(plan.lease / 3.0, 0.01)
        self.since = time.monotonic()
        self.lock = threading.Lock()  # held while renewing: stop() waits for a renewal under way
        self.stopped = False
        self.lost = False

    def renew(self) -> bool:
        """Renew once; False when this lease needs no further renewal."""
        with self.lock:
            if self.stopped:
                return False
            if not _claim_committed(self.plan):
                return True
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
            self.plan.extra.pop("renew_gate", None)  # it holds the caller's session: let it go now
        return not self.lost


class _Renewer:
    """One daemon thread renewing the sync leases of one engine, earliest due first.

    A thread per call would cost its start and join on every lease-mode call; one thread for
    the whole process would let one stalled database stop the renewals of every other engine's
    leases. So each engine has its own (see :func:`_renewer_for`); a thread with nothing left
    to renew for ``IDLE`` seconds ends, and the next lease of its engine starts another.
    """

    IDLE = 5.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, _SyncRenewal]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        #: Renewals handed over by :meth:`watch`, moved onto ``_due`` by the thread.
        self._pending: collections.deque[_SyncRenewal] = collections.deque()
        #: How often the thread looks at ``_pending``: the shortest interval watched so far.
        self._period = math.inf
        #: When the thread, waiting on ``_cond``, wakes by itself (-inf while it is not waiting:
        #: it looks at ``_due`` before it waits again). A renewal due later needs no wake-up.
        self._wake_at = -math.inf

    def watch(self, renewal: _SyncRenewal) -> None:
        """Like :meth:`add`, for renewals that are seldom needed (transaction mode renews only a
        claim the function committed itself): no lock and no wake-up per call; the thread picks
        the renewal up within one period, well before it is due."""
        self._pending.append(renewal)
        thread = self._thread
        crowded = len(self._pending) > _PENDING_MAX  # let the thread drop the finished ones
        if crowded or renewal.interval < self._period or thread is None or not thread.is_alive():
            with self._cond:
                self._period = min(self._period, renewal.interval)
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="idempotent-lease", daemon=True)
                    self._thread.start()
                self._cond.notify()

    def add(self, renewal: _SyncRenewal) -> None:
        with self._cond:
            due = time.monotonic() + renewal.interval
            heapq.heappush(self._due, (due, next(self._order), renewal))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="idempotent-lease", daemon=True)
                self._thread.start()
            if due < self._wake_at:  # the waiting thread would wake too late for it
                self._cond.notify()

    def _next(self) -> _SyncRenewal | None:
        with self._cond:
            while True:
                while self._pending:
                    watched = self._pending.popleft()
                    if not watched.stopped:
                        heapq.heappush(
                            self._due, (watched.since + watched.interval, next(self._order), watched)
                        )
                while self._due and self._due[0][2].stopped:
                    heapq.heappop(self._due)
                period = None if self._period == math.inf else self._period
                if not self._due:
                    idle = self.IDLE if period is None else min(self.IDLE, period)
                    if not self._wait(idle) and not self._due and not self._pending:
                        self._thread = None  # under the lock: add() and watch() start a new thread
                        return None
                    continue
                due, _, renewal = self._due[0]
                delay = due - time.monotonic()
                if delay <= 0:
                    heapq.heappop(self._due)
                    return renewal
                self._wait(delay if period is None else min(delay, period))

    def _wait(self, timeout: float) -> bool:
        """Wait on ``_cond`` (held) for at most ``timeout`` seconds; False when the time ran out."""
        self._wake_at = time.monotonic() + timeout
        try:
            return self._cond.wait(timeout)
        finally:
            self._wake_at = -math.inf

    def _run(self) -> None:
        while True:
            renewal = self._next()
            if renewal is None:
                with self._cond:  # a watch() may have appended after the last look, seeing this thread alive
                    if not self._pending or self._thread is not None:
                        return
                    self._thread = threading.current_thread()
                continue
            if renewal.renew():
                with self._cond:
                    heapq.heappush(
                        self._due, (time.monotonic() + renewal.interval, next(self._order), renewal)
                    )


_renewers: weakref.WeakKeyDictionary[Any, _Renewer] = weakref.WeakKeyDictionary()
_renewers_lock = threading.Lock()


def _renewer_for(engine: Any) -> _Renewer:
    """The renewer of ``engine``'s leases (a store without an engine, such as MemoryStore, shares one)."""
    key = engine if engine is not None else _Renewer
    with _renewers_lock:
        renewer = _renewers.get(key)
        if renewer is None:
            renewer = _renewers[key] = _Renewer()
        return renewer


def _forget_renewals() -> None:
    """In a child process after ``os.fork()``: the parent's leases are the parent's to renew.

    The renewer threads did not survive the fork, but their queues (and possibly a lock held
    at the moment of the fork) did; a child's first lease would otherwise restart a thread that
    goes on renewing the parent's leases for as long as the child lives.
    """
    global _renewers_lock  # noqa: PLW0603  (fresh process state after a fork)
    _renewers.clear()
    _renewers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_renewals)


#: Watched renewals waiting for the renewer thread beyond which it is woken to sort them out.
_PENDING_MAX = 1000


def _rollback_connection(conn: sa.Connection) -> None:
    """Roll back a Connection, and its driver connection too when SQLAlchemy's transaction was no
    longer active: after a COMMIT that failed before it reached the database (or was cancelled),
    SQLAlchemy has ended its transaction while the driver's may still be open, and the caller's
    next commit would commit it."""
    txn = conn.get_transaction()
    conn.rollback()
    if (txn is None or not txn.is_active) and not conn.closed and not conn.invalidated:
        conn.connection.rollback()


def _claim_committed(plan: core.Plan[Any]) -> bool:
    """Whether the claim is visible to a renewal: always in lease mode; in transaction mode only
    once the function ended the transaction that holds it (before, nobody else sees the row)."""
    gate = plan.extra.get("renew_gate")
    return gate is None or bool(gate())


def _watch_transaction(plan: core.Plan[Any], handle: SyncHandle | AsyncHandle, engine: Any) -> None:
    """Transaction mode: renew the claim on ``engine`` once the function committed it itself."""
    marker = handle.marker()
    plan.extra["renew_gate"] = lambda: handle.marker() is not marker
    if plan.extra.get("engine") is None:
        plan.extra["engine"] = engine


_logger = logging.getLogger("idempotent")


#: Dialects whose drivers switch autocommit with a server round trip each way: a short
#: transaction (statement, COMMIT) is cheaper there than AUTOCOMMIT on and off again.
_COMMIT_DIALECTS = frozenset({"mysql", "mariadb"})


def _dropped(exc: BaseException) -> bool:
    """True when the statement failed because its pooled connection had died (the pool has
    invalidated it, so the next checkout connects afresh)."""
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def _exec_own_sync(plan: core.Plan[Any], op: core.Exec) -> Any:
    """Run one of the library's own short statements in its own transaction; once more on a fresh
    connection when the pooled one had died (a brief network drop, a server restart)."""
    try:
        return _exec_own_once_sync(plan, op)
    except sa.exc.DBAPIError as exc:
        if not _dropped(exc):
            raise
        _logger.info("connection lost before %s could run its statement; retrying once", plan.function)
        return _exec_own_once_sync(plan, op)


def _exec_own_once_sync(plan: core.Plan[Any], op: core.Exec) -> Any:
    engine = _lease_engine(plan)
    if engine.dialect.driver == "psycopg" and not engine.dialect.is_async and not _engine_observed(engine):
        return _exec_raw_sync(engine, op)
    if engine.dialect.name in _COMMIT_DIALECTS:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(op.sql, op.params)
            return result.fetchall() if op.fetch else result.rowcount
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        result = conn.exec_driver_sql(op.sql, op.params)
        return result.fetchall() if op.fetch else result.rowcount


def _engine_observed(engine: sa.Engine) -> bool:
    """True when event listeners (on the engine or its dialect) or ``echo`` watch ``engine``'s
    statements: the library's own statements then go through a SQLAlchemy ``Connection``."""
    return bool(
        getattr(engine, "_has_events", True)
        or getattr(engine.dialect, "_has_events", True)
        or engine._should_log_info()
    )


def _exec_raw_sync(engine: sa.Engine, op: core.Exec) -> Any:
    """One of the library's own statements on psycopg's cursor, the connection in autocommit.

    This is what ``execution_options(isolation_level="AUTOCOMMIT")`` and ``exec_driver_sql``
    would do, without the ``Connection``, the autocommit switch through execution options and
    the result metadata SQLAlchemy builds on every call (most of a lease-mode replay's Python
    time; see benchmarks/README.md). The pool is used as usual (pre-ping, pool events, reset on
    return). A driver error is raised as SQLAlchemy's ``DBAPIError``, as a ``Connection`` raises
    it; see :func:`_hand_back_raw` for what becomes of the connection.
    """
    try:
        fairy = engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _connect_error(engine.dialect, exc) from exc
    driver: Any = fairy.driver_connection
    was = True
    try:
        was = driver.autocommit  # an engine made with isolation_level="AUTOCOMMIT" keeps it
        if not was:
            driver.autocommit = True
        with driver.cursor() as cursor:
            cursor.execute(op.sql, op.params)
            value = cursor.fetchall() if op.fetch else cursor.rowcount
        if not was:
            driver.autocommit = False
    except BaseException as exc:
        dropped = _hand_back_raw(engine.dialect, engine.pool, fairy, exc, was)
        _raise_wrapped(engine.dialect, op, exc, fairy.dbapi_connection, dropped)
        raise
    fairy.close()
    return value


def _connect_error(dialect: sa.Dialect, exc: Any) -> BaseException:
    """A failed checkout (say, the server refused the connection) as ``engine.connect()`` raises it."""
    wrapped: BaseException = sa.exc.DBAPIError.instance(
        None,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=dialect.is_disconnect(exc, None, None),
        dialect=dialect,
    )
    return wrapped


def _cancel_statement(dialect: sa.Dialect, fairy: Any) -> None:
    """Ask the server to stop the statement an interrupted call leaves behind on a connection
    about to be discarded: in autocommit (lease mode), a claim still waiting on a lock would
    otherwise commit once it got it, after its call gave up (psycopg before 3.2 leaves a cancelled
    task's statement running). Best effort, psycopg only: a failure is logged."""
    if not dialect.driver.startswith("psycopg"):
        return
    try:
        fairy.driver_connection.cancel()
    except Exception:
        _logger.debug("could not cancel the interrupted statement", exc_info=True)


def _hand_back_raw(dialect: sa.Dialect, pool: Any, fairy: Any, exc: BaseException, was: bool) -> bool:
    """After ``exc`` on a raw pooled connection, as a ``Connection`` would: a dropped connection
    is invalidated with its pool (connections made before it are replaced at their next
    checkout, so the retry of :func:`_exec_own_sync` connects afresh); an interruption
    (``KeyboardInterrupt``, a cancelled task) discards the connection, whose statement may still
    be under way; after any other error the connection goes back to the pool, out of autocommit
    again. True when the connection dropped. Never raises (failing here only invalidates)."""
    dropped = False
    try:
        dropped = _gone(dialect, exc, fairy.dbapi_connection)
        if dropped:
            pool._invalidate(fairy, exc)
        elif not isinstance(exc, Exception):
            _cancel_statement(dialect, fairy)
            fairy.invalidate(exc)
        else:
            if not was:
                fairy.dbapi_connection.autocommit = False  # (async: the adapter awaits psycopg's)
            fairy.close()
    except Exception:
        _logger.debug("could not hand back the connection after a failed statement", exc_info=True)
        try:
            fairy.invalidate(exc)
        except Exception:
            _logger.debug("could not invalidate the connection", exc_info=True)
    return dropped


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
            if type(op) is core.Ask:
                value = op.target.ask(op.name, op.args, op.kwargs)
            else:
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
            if kind is core.Ask:
                value = op.target.ask(op.name, op.args, op.kwargs)  # type: ignore[attr-defined]
            elif kind is core.Exec:
                if op.own:  # type: ignore[attr-defined]
                    value = _exec_own_sync(plan, op)  # type: ignore[arg-type]
                else:
                    if conn is None:
                        conn = handle.connection()  # type: ignore[union-attr]
                    value = _exec_sync(conn, op, _lean_connection(conn, False))  # type: ignore[arg-type]
            elif kind is core.ExecCommit:
                value = _exec_commit_sync(handle, op)  # type: ignore[arg-type]
                conn = None
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
                if handle.is_session:  # type: ignore[union-attr]
                    handle.obj.rollback()  # type: ignore[union-attr]
                else:
                    _rollback_connection(handle.obj)  # type: ignore[union-attr, arg-type]
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
                if handle is not None:  # transaction mode
                    _watch_transaction(plan, handle, handle.connection().engine)
                    renewal = _SyncRenewal(plan)
                    _renewer_for(plan.extra.get("engine")).watch(renewal)
                elif plan.extra.get("renew"):
                    renewal = _SyncRenewal(plan)
                    _renewer_for(plan.extra.get("engine")).add(renewal)
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
    """:func:`_exec_own_sync` for async engines (a sync engine runs in a worker thread)."""
    engine = _lease_engine(plan)
    if isinstance(engine, sa.Engine):
        return await anyio.to_thread.run_sync(_exec_own_sync, plan, op)
    try:
        return await _exec_own_once_async(engine, op)
    except sa.exc.DBAPIError as exc:
        if not _dropped(exc):
            raise
        _logger.info("connection lost before %s could run its statement; retrying once", plan.function)
        return await _exec_own_once_async(engine, op)


async def _exec_own_once_async(engine: Any, op: core.Exec) -> Any:
    if engine.dialect.driver == "psycopg" and not _engine_observed(engine.sync_engine):
        return await _exec_raw_async(engine, op)
    if engine.dialect.name in _COMMIT_DIALECTS:
        async with engine.begin() as conn:
            result = await conn.exec_driver_sql(op.sql, op.params)
            return result.fetchall() if op.fetch else result.rowcount
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        result = await conn.exec_driver_sql(op.sql, op.params)
        return result.fetchall() if op.fetch else result.rowcount


async def _exec_raw_async(engine: Any, op: core.Exec) -> Any:
    """:func:`_exec_raw_sync` on psycopg's async connection. Checkout and checkin run in
    SQLAlchemy's greenlet bridge, as an ``AsyncConnection``'s do; a cancelled statement
    discards its connection in a shielded step and the cancellation propagates."""
    from sqlalchemy.util import greenlet_spawn  # noqa: PLC0415  (the asyncio extra is installed here)

    try:
        fairy = await greenlet_spawn(engine.sync_engine.raw_connection)
    except engine.dialect.loaded_dbapi.Error as exc:
        raise _connect_error(engine.dialect, exc) from exc
    driver: Any = fairy.driver_connection
    was = True
    try:
        was = driver.autocommit
        if not was:
            await driver.set_autocommit(True)
        async with driver.cursor() as cursor:
            await cursor.execute(op.sql, op.params)
            value = await cursor.fetchall() if op.fetch else cursor.rowcount
        if not was:
            await driver.set_autocommit(False)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            dropped = await greenlet_spawn(_hand_back_async, engine, fairy, exc, was)
        _raise_wrapped(engine.dialect, op, exc, fairy.dbapi_connection, dropped)
        raise
    await greenlet_spawn(fairy.close)
    return value


def _hand_back_async(engine: Any, fairy: Any, exc: BaseException, was: bool) -> bool:
    """:func:`_hand_back_raw` for an async engine (run in the greenlet bridge)."""
    return _hand_back_raw(engine.dialect, engine.sync_engine.pool, fairy, exc, was)


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
            if type(op) is core.Ask:
                value = await op.target.ask_async(op.name, op.args, op.kwargs)
            else:
                value = await _exec_own_async(plan, op)  # type: ignore[arg-type]
        except Exception as exc:
            error = exc


def _renew_interval(plan: core.Plan[Any]) -> float:
    return max(plan.lease / 3.0, 0.01)


class _AsyncRenewal:
    def __init__(self, plan: core.Plan[Any]) -> None:
        self.plan = plan
        self.lost = False
        self.stopped = False
        #: Made when :meth:`run` starts (most calls end before a renewal is due and never start it):
        #: ``stop`` wakes the task early, ``done`` is set when it has ended.
        self.stop: anyio.Event | None = None
        self.done: anyio.Event | None = None
        self.created = time.monotonic()
        self.task: Any = None

    def request_stop(self) -> None:
        """Ask the renewal to end: at once when it never started, at its next wake-up otherwise."""
        self.stopped = True
        if self.stop is not None:
            self.stop.set()

    async def run(self) -> None:
        stop = self.stop = anyio.Event()
        done = self.done = anyio.Event()
        interval = _renew_interval(self.plan)
        due = self.created + interval  # (a task started late by _renew_later renews at once)
        try:
            while True:
                if not self.stopped:
                    with anyio.move_on_after(max(0.0, due - time.monotonic())):
                        await stop.wait()
                due = time.monotonic() + interval
                if self.stopped:
                    return
                if not _claim_committed(self.plan):
                    continue
                try:
                    if not await _drive_plain_async(self.plan.store.renew(self.plan.request), self.plan):
                        self.lost = True
                        return
                except Exception:
                    _logger.warning("renewing the lease of %s failed", self.plan.function, exc_info=True)
        finally:
            done.set()


#: ``group`` of a lease-mode run on asyncio: renewals start through :func:`_renew_later`.
_LATER: Any = object()


def _start_renewal(loop: asyncio.AbstractEventLoop, renewal: _AsyncRenewal) -> None:
    renewal.task = loop.create_task(renewal.run())  # kept referenced until stopped


#: Per event loop: starts the renewal of each call still running when its renewal falls due.
_clocks: weakref.WeakKeyDictionary[Any, Ticker[_AsyncRenewal]] = weakref.WeakKeyDictionary()


def _renew_later(plan: core.Plan[Any]) -> tuple[_AsyncRenewal | None, Any]:
    """Transaction mode, and lease mode on asyncio: the call registers with its loop's
    :class:`~idempotent._ticker.Ticker`, which starts a renewal task only for a call still
    running after ``lease / 3`` (a timer per call cost 1-3% of an async lease-mode first call on
    Redis, a task group per call more). A renewal so starts up to a quarter of its interval
    late; it then renews at once (:meth:`_AsyncRenewal.run` counts from the call's start).
    Returns the renewal and what to call to unregister it. Other event loops get no renewal
    here."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None, None
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = Ticker(loop, _start_renewal)
    renewal = _AsyncRenewal(plan)
    clock.add(loop, renewal, _renew_interval(plan))
    return renewal, functools.partial(clock.due.pop, renewal, None)


async def run_async(
    plan: core.Plan[Any],
    flow: core.Steps[Any],
    handle: AsyncHandle | None,
    call: Callable[[], Awaitable[Any]],
) -> Any:
    """Perform the operations of ``flow`` with awaited I/O; cleanup after an error is shielded."""
    if not plan.extra.get("renew"):
        return await _run_async(plan, flow, handle, call, None)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio): a task group
        loop = None
    if loop is not None:  # a timer per call, and a renewal task only once one is due
        return await _run_async(plan, flow, handle, call, _LATER)
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
    timer: Any = None
    obj = handle.obj if handle is not None else None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            if timer is not None:  # a flow that broke off before StopRenewal
                timer()
            return stop.value
        value, error = None, None
        try:
            kind = type(op)
            if kind is core.StartRenewal:
                if handle is not None and not cleaning:
                    conn: Any = await obj.connection() if handle.is_session else obj  # type: ignore[union-attr]
                    _watch_transaction(plan, handle, conn.engine)
                    renewal, timer = _renew_later(plan)
                elif group is _LATER and not cleaning:
                    renewal, timer = _renew_later(plan)
                elif group is not None and not cleaning:
                    renewal = _AsyncRenewal(plan)
                    group.start_soon(renewal.run)
            elif kind is core.StopRenewal:
                if timer is not None:
                    timer()
                    timer = None
                if renewal is not None:
                    renewal.request_stop()
                    if renewal.done is not None:  # a task cancelled before its first step never sets it
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
                renewal.request_stop()


async def _lean_failed_async(conn: Any, op: Any, exc: BaseException, driver: Any, *, pipelined: bool) -> None:
    """:func:`_lean_failed_sync` for an ``AsyncConnection`` (the invalidation shielded)."""
    dialect = conn.dialect
    if _discarded(dialect, exc, driver, pipelined=pipelined):
        with anyio.CancelScope(shield=True):
            try:
                await conn.invalidate(exc if isinstance(exc, Exception) else None)
            except Exception:
                _logger.debug("could not invalidate the connection", exc_info=True)
    _raise_wrapped(dialect, op, exc, driver)


async def _exec_lean_async(conn: Any, driver: Any, op: core.Exec) -> Any:
    """:func:`_exec_lean_sync` on psycopg's ``AsyncConnection``."""
    if not conn.in_transaction():
        conn.sync_connection.begin()  # exec_driver_sql's autobegin (no I/O)
    sync = conn.sync_connection
    begin = _begin_due(driver, _pq_allowed(sync, driver))
    try:
        if begin is not None:
            transaction = sync.get_transaction()
            return await _libpq.abegin_and_run(driver, transaction, begin, op.sql, op.params, fetch=op.fetch)
        async with driver.cursor() as cur:
            await cur.execute(op.sql, op.params)
            return (await cur.fetchall()) if op.fetch else cur.rowcount
    except BaseException as exc:
        await _lean_failed_async(conn, op, exc, driver, pipelined=begin is not None)
        raise


async def _exec_async(conn: Any, op: core.Exec, driver: Any) -> Any:
    """:func:`_exec_sync` on an ``AsyncConnection``."""
    if driver is not None:
        return await _exec_lean_async(conn, driver, op)
    result = await conn.exec_driver_sql(op.sql, op.params)
    return result.fetchall() if op.fetch else result.rowcount


async def _exec_commit_async(handle: AsyncHandle, obj: Any, op: core.ExecCommit) -> int:
    conn = await obj.connection() if handle.is_session else obj
    sync = conn.sync_connection
    driver = _lean_connection(sync, True)
    if driver is None or not _commit_pipelined(handle, sync, driver, _pq_allowed(sync, driver)):
        rowcount = await _exec_async(conn, core.Exec(op.sql, op.params), driver)
        if rowcount == 1:
            await obj.commit()
        return int(rowcount)
    try:
        await _libpq.arun_and_commit(driver, sync.get_transaction(), op.guarded, op.params)
    except BaseException as exc:
        await _lean_failed_async(conn, core.Exec(op.guarded, op.params), exc, driver, pipelined=True)
        raise
    await obj.commit()  # the driver's transaction is over: SQLAlchemy's commit sends nothing
    return 1  # the guarded statement wrote exactly one row, or failed


async def _perform_async(
    plan: core.Plan[Any], op: core.Op, handle: AsyncHandle | None, obj: Any, call: Any, group: Any
) -> Any:
    kind = type(op)
    if kind is core.Ask:
        return await op.target.ask_async(op.name, op.args, op.kwargs)  # type: ignore[attr-defined]
    if kind is core.Exec:
        if op.own:  # type: ignore[attr-defined]
            return await _exec_own_async(plan, op)  # type: ignore[arg-type]
        conn = await obj.connection() if handle is not None and handle.is_session else obj
        return await _exec_async(conn, op, _lean_connection(conn.sync_connection, True))  # type: ignore[arg-type]
    if kind is core.ExecCommit:
        return await _exec_commit_async(handle, obj, op)  # type: ignore[arg-type]
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
        if handle is None or handle.is_session:
            await obj.rollback()
        else:
            await obj.run_sync(_rollback_connection)
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
