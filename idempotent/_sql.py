"""The SQL store: statements built once per dialect with SQLAlchemy Core, compiled ahead of time.

Statements are compiled for the connection's dialect on first use and then sent with
``exec_driver_sql`` in the driver's own parameter style, so the hot path does no statement
compilation or cache-key generation. Driver errors are translated here, in :func:`classify`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

from idempotent.core import (
    ClaimAborted,
    ClaimBlocked,
    ClaimRequest,
    Exec,
    ExecCommit,
    Existing,
    Peek,
    Record,
    Status,
    Steps,
)
from idempotent.errors import ConfigurationError, IdempotencyError, TableMissing
from idempotent.schema import DEFAULT_TABLE, make_table
from idempotent.stores import SQLLeaseMethods

__all__ = ["SQLStore", "classify", "now_sql"]

_READ_COLUMNS = (
    "fingerprint",
    "status",
    "owner",
    "locked_until",
    "created_at",
    "expires_at",
    "result_codec",
    "result",
    "error_type",
)

#: Claims that found a row that vanished before it could be read are retried this often.
_VANISHED_RETRIES = 3
_COMPLETED = Status.COMPLETED.value
#: In the error of the guarded result write (PostgreSQL) when it matched no row: see
#: :meth:`BoundSQLStore.complete_commit`.
_NO_ROW = "idempotent: the result write matched no row"
_FAILED = Status.FAILED.value


def now_sql(dialect: Dialect) -> str:
    """The database server's clock in epoch milliseconds, read per statement."""
    name = dialect.name
    if name == "postgresql":
        return "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"
    if name in ("mysql", "mariadb"):
        return "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) DIV 1000)"
    if name == "sqlite":
        return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
    raise ConfigurationError(
        f"idempotent supports SQLite, PostgreSQL and MySQL/MariaDB, not {name!r}; "
        "use one of those for the keys table"
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled for one dialect: SQL text in the driver's parameter style."""

    sql: str
    order: tuple[str, ...] | None  # parameter names in order, for positional parameter styles

    def bind(self, values: dict[str, Any]) -> Any:
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


def prepare(statement: sa.sql.ClauseElement, dialect: Dialect, prefix: str = "") -> Prepared:
    compiled = statement.compile(dialect=dialect)
    positions = getattr(compiled, "positiontup", None)  # SQLCompiler only
    order = tuple(positions) if dialect.positional and positions else None
    if dialect.positional and order is None:
        order = ()
    return Prepared(prefix + compiled.string, order)


# ---------------------------------------------------------------------------------------------
# Error translation: the only place that reads driver error codes.
# ---------------------------------------------------------------------------------------------
DUPLICATE = "duplicate"
BLOCKED = "blocked"
ABORTED = "aborted"
NO_TABLE = "no_table"


def _codes(exc: BaseException) -> tuple[str | None, int | None, str]:
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    errno = None
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        errno = args[0]
    return sqlstate, errno, str(orig).lower()


def classify(exc: BaseException) -> str | None:
    """Name what a driver error means to the claim, or None for anything else."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    sqlstate, errno, text = _codes(exc)
    if errno is not None:  # MySQL/MariaDB drivers: (errno, message); their sqlstate is too coarse
        return {1062: DUPLICATE, 1205: BLOCKED, 1213: ABORTED, 1146: NO_TABLE}.get(errno)
    if sqlstate is not None:
        return {
            "23505": DUPLICATE,
            "55P03": BLOCKED,
            "40P01": ABORTED,
            "40001": ABORTED,
            "42P01": NO_TABLE,
        }.get(sqlstate)
    if "database is locked" in text or "database table is locked" in text:
        return BLOCKED
    if "unique constraint failed" in text:
        return DUPLICATE
    if "no such table" in text:
        return NO_TABLE
    return None


# ---------------------------------------------------------------------------------------------
# The store.
# ---------------------------------------------------------------------------------------------
def _existing(request: ClaimRequest, rows: Any) -> Existing | None:
    """The record of a read (its columns, then the database clock), or None without a row."""
    if not rows:
        return None
    row = rows[0]
    record = Record(request.scope, request.key, *row[: len(_READ_COLUMNS)])
    return Existing(record, int(row[len(_READ_COLUMNS)]))


class SQLStore(SQLLeaseMethods):
    """Keys in a SQL table; atomic with the caller's writes in transaction mode.

    It also implements the lease-store protocol on its ``engine`` (``claim``, ``aclaim``, ...;
    see :mod:`idempotent.stores`).

    ``engine`` is needed only for lease mode (claims commit on their own connection) and the
    command line. ``clock_offset`` (seconds) is added to the database clock: tests use it to
    move time forward instead of sleeping.
    """

    atomic = True

    def __init__(
        self,
        engine: sa.Engine | Any | None = None,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        *,
        clock_offset: float = 0.0,
    ) -> None:
        self.engine = engine
        self.table = make_table(sa.MetaData(), table, schema)
        self.clock_offset = clock_offset
        self._bound: dict[tuple[Any, ...], BoundSQLStore] = {}
        self._lock = threading.Lock()

    @property
    def clock_offset(self) -> float:
        return self.clock_offset_ms / 1000.0

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        self.clock_offset_ms = round(seconds * 1000)

    def __repr__(self) -> str:
        return f"SQLStore(table={self.table.fullname!r}, engine={self.engine!r})"

    def for_dialect(self, dialect: Dialect) -> BoundSQLStore:
        key = (type(dialect), getattr(dialect, "is_mariadb", False), dialect.paramstyle)
        bound = self._bound.get(key)
        if bound is None:
            with self._lock:
                bound = self._bound.get(key)
                if bound is None:
                    bound = self._bound[key] = BoundSQLStore(self, dialect)
        return bound


class BoundSQLStore:
    """The SQL store's statements compiled for one dialect."""

    atomic = True

    def __init__(self, store: SQLStore, dialect: Dialect) -> None:
        self.store = store
        self.dialect = dialect
        self.name = dialect.name
        self.mysql = dialect.name in ("mysql", "mariadb")
        psycopg = dialect.name == "postgresql" and dialect.driver in ("psycopg", "psycopg_async")
        # A decorator-owned call of a function that replays often looks for a stored result
        # before it claims. psycopg reads outside any transaction (one round trip instead of
        # three); MySQL/MariaDB read in a transaction of their own (a plain read, then ROLLBACK),
        # which spares a replay the claim's duplicate-key error and the locking read after it;
        # SQLite reads without the claim's write transaction, so a replay neither takes the
        # database's write lock nor waits for another connection's.
        self.peek_first = psycopg or self.mysql or self.name == "sqlite"
        # psycopg can send a decorator-owned unit's result write and its COMMIT in one round trip
        # (pipeline mode): the flow then uses :meth:`complete_commit`.
        self.pipelined = psycopg
        t = store.table
        c = t.c
        bp = sa.bindparam
        clock_ms: sa.ColumnElement[int] = sa.literal_column(now_sql(dialect), sa.BigInteger)
        offset = bp("clock_offset", type_=sa.BigInteger)
        now_once = clock_ms + offset  # for statements that read the clock in one place only
        clock = None
        if self.name == "postgresql":
            # clock_timestamp() moves on within one statement: read it once per statement (a CTE),
            # so the times written into one row agree with each other.
            clock = sa.select(clock_ms.label("ms")).cte("idem_clock")
            clock_ms = sa.select(clock.c.ms).scalar_subquery()

        def clocked(statement: Any) -> Any:
            return statement.add_cte(clock) if clock is not None else statement

        now = clock_ms + offset
        ident = sa.and_(c.scope == bp("scope"), c.key == bp("key"))
        in_progress: sa.ColumnElement[str] = sa.literal_column(f"'{Status.IN_PROGRESS.value}'")
        owned = sa.and_(ident, c.owner == bp("owner"), c.status == in_progress)
        claim_values = {
            "scope": bp("scope"),
            "key": bp("key"),
            "fingerprint": bp("fingerprint"),
            "status": bp("status"),
            "owner": bp("owner"),
            "locked_until": now + bp("lease_ms", type_=sa.BigInteger),
            "created_at": now,
            "expires_at": now + bp("ttl_ms", type_=sa.BigInteger),
        }
        if self.name == "postgresql":
            self._claim_pg = self._pg_claim(dialect)
        elif self.name == "sqlite":
            stmt = sqlite.insert(t).values(claim_values)
            stmt = stmt.on_conflict_do_nothing(index_elements=["scope", "key"])
            self._claim_plain = prepare(stmt, dialect)
        else:
            self._claim_plain = prepare(sa.insert(t).values(claim_values), dialect)
        self._mysql_prefix: dict[int, str] = {}
        read = sa.select(*[c[name] for name in _READ_COLUMNS], now_once.label("now")).where(ident)
        self._read = prepare(read, dialect)
        # MySQL/MariaDB REPEATABLE READ: only a locking read is sure to see a row committed after
        # this transaction's snapshot; it is used only after a duplicate-key error (no gap locks).
        self._read_locking = Prepared(self._read.sql + " LOCK IN SHARE MODE", self._read.order)
        stale = [
            ident,
            c.owner == bp("seen_owner"),
            # A live lease wins over expiry: a running call is taken over only once its lease ends.
            sa.or_(
                sa.and_(c.status != in_progress, c.expires_at <= now),
                sa.and_(c.status == in_progress, c.locked_until <= now),
            ),
        ]
        cfg = None
        if self.name == "postgresql":
            # Bound the wait for a row another takeover holds by the caller's ``wait`` (lock_timeout
            # set within the statement, the previous value set back at its end, as the claim does).
            setting: sa.ColumnElement[str] = sa.literal_column("'lock_timeout'")
            cfg = (
                sa.select(
                    sa.func.current_setting(setting).label("prev"),
                    sa.func.set_config(setting, bp("lock_ms", type_=sa.String), sa.true()).label("cur"),
                )
                .cte("idem_cfg")
                .prefix_with("MATERIALIZED")
            )
            stale.append(sa.select(cfg.c.cur).scalar_subquery().is_not(None))
        takeover = clocked(
            sa.update(t)
            .where(*stale)
            .values(
                fingerprint=bp("fingerprint"),
                status=bp("status"),
                owner=bp("owner"),
                locked_until=now + bp("lease_ms", type_=sa.BigInteger),
                created_at=now,
                expires_at=now + bp("ttl_ms", type_=sa.BigInteger),
                result_codec=sa.null(),
                result=sa.null(),
                error_type=sa.null(),
            )
        )
        if cfg is not None:
            changed = takeover.returning(sa.literal_column("1")).cte("idem_upd")
            takeover = sa.select(
                sa.select(sa.func.count()).select_from(changed).scalar_subquery(),
                sa.func.set_config(sa.literal_column("'lock_timeout'"), cfg.c.prev, sa.true()),
            ).select_from(cfg)
        self._takeover = prepare(takeover, dialect)
        # A duplicate may have waited up to ``wait`` for this result: it is kept at least that long
        # after it was stored, even when the call outlived its ttl, so that waiter replays it.
        kept = now_once + bp("keep_ms", type_=sa.BigInteger)
        self._complete = prepare(
            sa.update(t)
            .where(owned)
            .values(
                status=bp("new_status"),
                result_codec=bp("codec"),
                result=bp("result"),
                error_type=bp("error_type"),
                expires_at=sa.case((c.expires_at < kept, kept), else_=c.expires_at),
            ),
            dialect,
        )
        if self.pipelined:
            # The result write that fails when it matches no row: a COMMIT sent right behind it
            # is then skipped by the server. The error is a cast of a text built at run time
            # (a constant one would be evaluated, and fail, when the statement is planned).
            complete = self._complete
            self._complete_guarded = Prepared(
                f"WITH idem_done AS ({complete.sql} RETURNING 1) "
                "SELECT CASE WHEN count(*) = 1 THEN 1 "
                f"ELSE CAST('{_NO_ROW}: ' || count(*) AS INTEGER) END FROM idem_done",
                complete.order,
            )
        self._release = prepare(sa.delete(t).where(owned), dialect)
        renew = sa.update(t).where(owned).values(locked_until=now_once + bp("lease_ms", type_=sa.BigInteger))
        if self.name == "postgresql":
            # The renewal's own lock timeout, set within the statement (its transaction ends with it).
            limit = sa.func.set_config(
                sa.literal_column("'lock_timeout'"), bp("lock_ms", type_=sa.String), sa.true()
            )
            renew = renew.where(limit.is_not(None))
        self._renew = prepare(renew, dialect)

    def _pg_claim(self, dialect: Dialect) -> Prepared:
        """One round trip on PostgreSQL: set lock_timeout, claim, set the previous value back, and
        return the row the statement's snapshot shows for the key (NULLs when there is none).

        The snapshot is taken when the statement starts, so it does not show a row committed by
        a transaction the claim waited for: :meth:`claim` trusts it only for a final record.
        """
        t = self.store.table
        q = dialect.identifier_preparer
        table = q.format_table(t)
        scope, key = q.quote("scope"), q.quote("key")
        cols = (
            f"{scope}, {key}, "
            + ", ".join(q.quote(n) for n in ("fingerprint", "status", "owner"))
            + (", locked_until, created_at, expires_at")
        )
        now = "cfg.now"  # read once: clock_timestamp() moves on within a statement
        found = ", ".join(f"k.{q.quote(n)}" for n in _READ_COLUMNS)
        text = sa.text(
            "WITH cfg AS MATERIALIZED (SELECT current_setting('lock_timeout') AS prev, "
            "set_config('lock_timeout', :lock_ms, true) AS cur, "
            f"{now_sql(dialect)} + CAST(:clock_offset AS BIGINT) AS now), "
            f"ins AS (INSERT INTO {table} ({cols}) "
            f"SELECT :scope, :key, :fingerprint, :status, :owner, {now} + CAST(:lease_ms AS BIGINT), {now}, "
            f"{now} + CAST(:ttl_ms AS BIGINT) FROM cfg "
            f"ON CONFLICT ({scope}, {key}) DO NOTHING RETURNING 1) "
            f"SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true), {found}, {now} "
            f"FROM cfg LEFT JOIN {table} AS k ON k.{scope} = :scope AND k.{key} = :key"
        )
        return prepare(text, dialect)

    def _final_record(self, request: ClaimRequest, row: Any) -> Existing | None:
        """The record a PostgreSQL claim returned beside its count, when it cannot be stale.

        Only a completed or failed record that has not expired qualifies: nothing but its
        expiry changes such a row, so the statement's snapshot shows it as a fresh read would.
        Anything else (no row, in progress, expired) is read again by :meth:`_read_row`.
        """
        status = row[3]
        if status not in (_COMPLETED, _FAILED):
            return None
        now = int(row[2 + len(_READ_COLUMNS)])
        record = Record(request.scope, request.key, *row[2 : 2 + len(_READ_COLUMNS)])
        if record.expires_at <= now:
            return None
        return Existing(record, now)

    # -- helpers --------------------------------------------------------------------------------
    def _values(self, request: ClaimRequest, **extra: Any) -> dict[str, Any]:
        values = {
            "scope": request.scope,
            "key": request.key,
            "owner": request.owner,
            "clock_offset": self.store.clock_offset_ms,
        }
        values.update(extra)
        return values

    def _mysql_wait(self, wait_ms: int) -> str:
        seconds = max(0, math.ceil(wait_ms / 1000))
        prefix = self._mysql_prefix.get(seconds)
        if prefix is None:
            prefix = self._mysql_prefix[seconds] = f"SET STATEMENT innodb_lock_wait_timeout={seconds} FOR "
        return prefix

    def _translate(self, exc: BaseException) -> str | None:
        kind = classify(exc)
        if kind == NO_TABLE:
            raise TableMissing(
                f"the idempotency keys table {self.store.table.fullname!r} does not exist; create it with "
                "`idempotent migrate --url <database URL>` (or `alembic upgrade idempotent@head`, or "
                "metadata.create_all() on a table from idempotent.schema.make_table)"
            ) from exc
        if kind == BLOCKED:
            raise ClaimBlocked(str(getattr(exc, "orig", exc))) from exc
        if kind == ABORTED:
            raise ClaimAborted(str(getattr(exc, "orig", exc)).strip()) from exc
        return kind

    @staticmethod
    def aborted(exc: BaseException) -> bool:
        """True when ``exc`` is a deadlock or serialization failure: the transaction is lost."""
        return classify(exc) == ABORTED

    # -- BoundStore -----------------------------------------------------------------------------
    def claim(self, request: ClaimRequest) -> Steps[Existing | None]:
        values = self._values(
            request,
            fingerprint=request.fingerprint,
            status=Status.IN_PROGRESS.value,
            lease_ms=request.lease_ms,
            ttl_ms=request.ttl_ms,
        )
        for _ in range(_VANISHED_RETRIES):
            try:
                if self.name == "postgresql":
                    values["lock_ms"] = str(max(1, request.wait_ms))
                    claim = self._claim_pg
                    rows = yield Exec(claim.sql, claim.bind(values), fetch=True, own=request.own)
                    claimed = bool(rows[0][0])
                    if not claimed:
                        final = self._final_record(request, rows[0])
                        if final is not None:
                            return final
                elif self.mysql:
                    sql = self._mysql_wait(request.wait_ms) + self._claim_plain.sql
                    yield Exec(sql, self._claim_plain.bind(values), own=request.own)
                    claimed = True
                else:
                    claim = self._claim_plain
                    claimed = (yield Exec(claim.sql, claim.bind(values), own=request.own)) == 1
            except IdempotencyError:
                raise
            except Exception as exc:
                if self._translate(exc) != DUPLICATE:
                    raise
                claimed = False
            if claimed:
                return None
            found = yield from self._read_row(request)
            if found is not None:
                return found
        raise ClaimAborted("the key's row kept disappearing between the claim and the read")

    def peek(self, request: ClaimRequest) -> Steps[Existing | None]:
        """Read the key's record outside any transaction; only a final record is returned."""
        try:
            rows = yield Peek(self._read.sql, self._read.bind(self._values(request)))
        except IdempotencyError:
            raise
        except Exception as exc:
            self._translate(exc)
            raise
        found = _existing(request, rows)
        if found is None or found.record.status not in (_COMPLETED, _FAILED):
            return None
        return found

    def _read_row(self, request: ClaimRequest) -> Steps[Existing | None]:
        values = self._values(request)
        try:
            if self.mysql and not request.own:
                sql = self._mysql_wait(request.wait_ms) + self._read_locking.sql
                rows = yield Exec(sql, self._read_locking.bind(values), fetch=True, own=request.own)
            else:
                rows = yield Exec(self._read.sql, self._read.bind(values), fetch=True, own=request.own)
        except IdempotencyError:
            raise
        except Exception as exc:
            self._translate(exc)
            raise
        return _existing(request, rows)

    def read(self, request: ClaimRequest) -> Steps[Existing | None]:
        """Read the record for ``request``'s key without claiming it."""
        return (yield from self._read_row(request))

    def takeover(self, request: ClaimRequest, seen: Record) -> Steps[bool]:
        values = self._values(
            request,
            seen_owner=seen.owner,
            fingerprint=request.fingerprint,
            status=Status.IN_PROGRESS.value,
            lease_ms=request.lease_ms,
            ttl_ms=request.ttl_ms,
        )
        if self.name == "postgresql":  # the statement answers with the count of rows it took over
            values["lock_ms"] = str(max(1, request.wait_ms))
            rows = yield from self._exec(self._takeover, values, own=request.own, fetch=True)
            return int(rows[0][0]) == 1
        prepared = self._takeover
        if self.mysql:
            prepared = Prepared(self._mysql_wait(request.wait_ms) + prepared.sql, prepared.order)
        return (yield from self._write(prepared, values, own=request.own)) == 1

    def _exec(
        self, prepared: Prepared, values: dict[str, Any], *, own: bool, fetch: bool = False
    ) -> Steps[Any]:
        """Run one statement; driver errors are translated. Rows when ``fetch``, else the row count."""
        try:
            return (yield Exec(prepared.sql, prepared.bind(values), fetch=fetch, own=own))
        except IdempotencyError:
            raise
        except Exception as exc:
            self._translate(exc)
            raise

    def _write(self, prepared: Prepared, values: dict[str, Any], *, own: bool) -> Steps[int]:
        return int((yield from self._exec(prepared, values, own=own)))

    def _completed(self, request: ClaimRequest, codec: str, text: str) -> dict[str, Any]:
        """The values of the result write of a completed call."""
        return self._values(
            request,
            new_status=Status.COMPLETED.value,
            codec=codec,
            result=text,
            error_type=None,
            keep_ms=request.wait_ms,
        )

    def complete(self, request: ClaimRequest, codec: str, text: str, *, own: bool) -> Steps[bool]:
        values = self._completed(request, codec, text)
        return (yield from self._write(self._complete, values, own=own)) == 1

    def complete_commit(self, request: ClaimRequest, codec: str, text: str) -> Steps[bool]:
        """:meth:`complete`, then COMMIT the unit the decorator owns, in one round trip where the
        driver pipelines them (PostgreSQL with psycopg only, see ``pipelined``).

        False when no row of ``request.owner`` was in progress: nothing was committed (the plain
        statement wrote no row, or the guarded one failed and the server skipped the COMMIT
        behind it) and the transaction is left to be rolled back. Other errors of the statement or
        of the COMMIT are raised untranslated, as a failed COMMIT always was.
        """
        values = self._completed(request, codec, text)
        complete = self._complete
        try:
            written = yield ExecCommit(complete.sql, complete.bind(values), self._complete_guarded.sql)
        except Exception as exc:
            sqlstate, _, message = _codes(exc)
            if sqlstate == "22P02" and _NO_ROW in message:
                return False
            raise
        return bool(written == 1)

    def fail(self, request: ClaimRequest, error_type: str, text: str, *, own: bool) -> Steps[bool]:
        values = self._values(
            request,
            new_status=Status.FAILED.value,
            codec="json",
            result=text,
            error_type=error_type,
            keep_ms=request.wait_ms,
        )
        return (yield from self._write(self._complete, values, own=own)) == 1

    def release(self, request: ClaimRequest, *, own: bool) -> Steps[bool]:
        return (yield from self._write(self._release, self._values(request), own=own)) == 1

    def renew(self, request: ClaimRequest) -> Steps[bool]:
        """Push the lease on; the statement gives up after ``lease / 3`` (the renewal interval)
        rather than wait on a lock or a busy server, and the next renewal tries again."""
        values = self._values(request, lease_ms=request.lease_ms)
        limit_ms = max(1, request.lease_ms // 3)
        prepared = self._renew
        if self.name == "postgresql":
            values["lock_ms"] = str(limit_ms)
        elif self.mysql:
            prefix = (
                f"SET STATEMENT max_statement_time={limit_ms / 1000:.3f}, "
                f"innodb_lock_wait_timeout={max(1, math.ceil(limit_ms / 1000))} FOR "
            )
            prepared = Prepared(prefix + prepared.sql, prepared.order)
        return (yield from self._write(prepared, values, own=True)) == 1
