"""Administer the keys table: purge expired keys, show one key, evict one key.

On the command line::

    idempotent purge --url URL [--batch N]
    idempotent show  --url URL SCOPE KEY
    idempotent evict --url URL SCOPE KEY

each with ``--table``/``--schema`` for a table that is not ``idempotency_keys`` in the default
schema. From Python, :func:`purge`, :func:`show` and :func:`evict` do the same; they take a
database URL, an ``Engine`` or a ``Connection`` (an async application runs them through
``await conn.run_sync(lambda c: purge(c))``).

Times are read from the database server's clock, like every lease and expiry decision.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from idempotent._connect import Bind, add_database_arguments, describe, explain, with_connection
from idempotent._sql import ABORTED, NO_TABLE, classify, now_sql
from idempotent.core import Status
from idempotent.errors import ConfigurationError, InProgress, TableMissing
from idempotent.keys import normalise_scope
from idempotent.schema import DEFAULT_TABLE, make_table

__all__ = ["DEFAULT_BATCH", "KeyInfo", "evict", "purge", "register", "show"]

#: Rows deleted per transaction by :func:`purge`: each batch holds its locks for milliseconds.
DEFAULT_BATCH = 1000
#: A batch rolled back by a deadlock or serialization failure is run again at most this often.
PURGE_RETRIES = 10
#: Characters of a stored result that ``idempotent show`` prints.
PREVIEW_CHARS = 200

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Connections.
# ---------------------------------------------------------------------------------------------
def _with_connection(bind: Bind, fn: Callable[[sa.Connection], _T]) -> _T:
    """Run ``fn`` on a connection that is in no transaction; ``fn`` commits what it writes."""
    return with_connection(
        bind,
        fn,
        begin=False,
        must_exist=True,
        async_hint="with an AsyncEngine run `async with engine.connect() as conn: "
        "await conn.run_sync(lambda c: purge(c))`",
    )


def _table(table: str, schema: str | None) -> sa.Table:
    if not table or table != table.strip():
        raise ConfigurationError(f"invalid keys table name {table!r}")
    if schema is not None and (not schema or schema != schema.strip()):
        raise ConfigurationError(f"invalid schema name {schema!r}")
    return make_table(sa.MetaData(), table, schema)


def _translated(t: sa.Table, exc: Exception, conn: sa.Connection) -> Exception:
    """A missing table becomes :class:`TableMissing` naming the database it looked in and the
    command that creates it, or first the missing schema, which that command cannot create."""
    if classify(exc) == NO_TABLE:
        where = describe(conn.engine.url)
        if t.schema and not _schema_exists(conn, t.schema):
            return TableMissing(
                f"the schema {t.schema!r} does not exist in {where}, so neither does the keys table "
                f"{t.fullname!r}; create the schema first (CREATE SCHEMA {t.schema}), or give the "
                "schema the table is in with --schema"
            )
        options = "" if t.name == DEFAULT_TABLE else f" --table {t.name}"
        options += f" --schema {t.schema}" if t.schema else ""
        return TableMissing(
            f"the idempotency keys table {t.fullname!r} does not exist in {where}; create it with "
            f"`idempotent migrate --url <database URL>{options}`"
        )
    return exc


def _schema_exists(conn: sa.Connection, schema: str) -> bool:
    """Whether ``schema`` exists (True when the database cannot tell: then the table is what is missing)."""
    try:
        return bool(sa.inspect(conn).has_schema(schema))
    except sa.exc.SQLAlchemyError:
        return True
    finally:
        _finish(conn)


def _finish(conn: sa.Connection) -> None:
    """End the transaction SQLAlchemy began for a read, so the connection is left as it was found."""
    if conn.in_transaction():
        conn.rollback()


def _now(conn: sa.Connection, clock_offset: float) -> int:
    offset = round(clock_offset * 1000)
    return int(conn.exec_driver_sql(f"SELECT {now_sql(conn.dialect)}").scalar_one()) + offset


# ---------------------------------------------------------------------------------------------
# purge
# ---------------------------------------------------------------------------------------------
def _purge_statement(conn: sa.Connection, t: sa.Table) -> sa.TextClause:
    """Delete at most ``:batch`` rows that expired by ``:cutoff``, except calls still within their lease.

    A finished row (completed or failed) goes once its ``ttl`` has passed, whatever its last
    lease said; an in-progress row only once its lease has ended too (a live lease wins over
    expiry), exactly the rows :func:`show` calls expired.

    Each database gets the form that finds the rows through the ``expires_at`` index and
    deletes them by their physical address or key, never by a scan of the whole table.
    """
    name = conn.dialect.name
    q = conn.dialect.identifier_preparer
    table = q.format_table(t)
    running = f"'{Status.IN_PROGRESS.value}'"
    expired = f"expires_at <= :cutoff AND (status <> {running} OR locked_until <= :cutoff)"
    if name == "postgresql":
        # SKIP LOCKED: rows another transaction is taking over right now are left for next time.
        sql = (
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {expired} "
            f"LIMIT :batch FOR UPDATE SKIP LOCKED)) AND {expired}"
        )
    elif name in ("mysql", "mariadb"):
        sql = f"DELETE FROM {table} WHERE {expired} ORDER BY expires_at LIMIT :batch"
    elif name == "sqlite":
        sql = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {expired} LIMIT :batch)"
    else:
        now_sql(conn.dialect)  # raises the "unsupported database" error
        raise AssertionError(name)  # pragma: no cover
    return sa.text(sql)


def purge(
    bind: Bind,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], object] | None = None,
    clock_offset: float = 0.0,
) -> int:
    """Delete the expired keys and return how many were removed.

    A key is removed once it has expired (``expires_at``, counted from its claim with the
    decorator's ``ttl``); a call still running within its lease past its TTL keeps its row
    until its lease ends. The cut-off is the database clock when the purge
    starts (plus ``clock_offset`` seconds, for tests); keys expiring during a long purge are
    left for the next one.

    Rows are deleted ``batch`` at a time, each batch in its own short transaction, so a purge
    of millions of rows never holds locks on a busy table for more than one batch. On
    PostgreSQL rows locked by another transaction are skipped. ``progress`` is called with the
    running total after every batch. Given a ``Connection``, it must not be in a transaction:
    every batch is committed on it. A batch that a deadlock or serialization failure rolls
    back (concurrent claims on MariaDB) is run again, up to ``PURGE_RETRIES`` times in a row.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"batch must be a positive number of rows, not {batch!r}")
    t = _table(table, schema)

    def run(conn: sa.Connection) -> int:
        if conn.in_transaction():
            raise ConfigurationError("purge commits every batch: pass a connection that is in no transaction")
        if conn.dialect.name != "sqlite" and not isinstance(bind, sa.Connection):
            # No gap locks (MariaDB) and no snapshot held across the batches.
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        total = 0
        try:
            cutoff = _now(conn, clock_offset)
            _finish(conn)
            statement = _purge_statement(conn, t)
            params = {"cutoff": cutoff, "batch": batch}
            aborted = 0
            while True:
                try:
                    with conn.begin():
                        removed = conn.execute(statement, params).rowcount
                except sa.exc.DBAPIError as exc:
                    # A deadlock with concurrent claims (MariaDB) or a serialization failure rolled
                    # this batch back alone: the batches before it are committed, so run it again.
                    if classify(exc) != ABORTED or aborted >= PURGE_RETRIES:
                        raise
                    aborted += 1
                    time.sleep(random.uniform(0, 0.01 * aborted))  # noqa: S311  (jitter, not secrecy)
                    continue
                aborted = 0
                total += removed
                if progress is not None and removed:
                    progress(total)
                if removed < batch:
                    return total
        except sa.exc.DBAPIError as exc:
            _finish(conn)
            raise _translated(t, exc, conn) from exc

    return _with_connection(bind, run)


# ---------------------------------------------------------------------------------------------
# show / evict
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One stored key as :func:`show` reads it; times are epoch milliseconds of the database clock."""

    scope: str
    key: str
    status: str
    fingerprint: str | None
    owner: str
    created_at: int
    locked_until: int
    expires_at: int
    result_codec: str | None
    result: str | None
    error_type: str | None
    now: int

    @property
    def expired(self) -> bool:
        """True when the key counts as absent: the next call with it runs the function again.

        A call still running within its lease is never expired (a live lease wins over expiry).
        """
        return self.expires_at <= self.now and not self.running

    @property
    def running(self) -> bool:
        """True while a call holding the key is still within its lease."""
        return self.status == Status.IN_PROGRESS.value and self.locked_until > self.now

    @property
    def state(self) -> str:
        """One word or phrase for people: what the next call with this key does."""
        if self.expired:
            return f"{self.status}, expired (the next call runs again)"
        if self.status == Status.IN_PROGRESS.value:
            if self.running:
                return "in_progress (a call holds the lease)"
            return "in_progress, lease expired (the next call takes over)"
        if self.status == Status.FAILED.value:
            return "failed (the stored error is raised again)"
        return f"{self.status} (the stored result is replayed)"

    def as_dict(self) -> dict[str, Any]:
        """Every field plus ISO times, for ``idempotent show --json``."""
        data = dataclasses.asdict(self)
        for name in ("created_at", "locked_until", "expires_at", "now"):
            data[name.removesuffix("_at") + "_iso"] = _iso(getattr(self, name))
        data["expired"] = self.expired
        data["running"] = self.running
        return data


_COLUMNS = (
    "status",
    "fingerprint",
    "owner",
    "created_at",
    "locked_until",
    "expires_at",
    "result_codec",
    "result",
    "error_type",
)


def _read(conn: sa.Connection, t: sa.Table, scope: str, key: str, clock_offset: float) -> KeyInfo | None:
    offset = sa.literal(round(clock_offset * 1000), sa.BigInteger)
    now = sa.literal_column(now_sql(conn.dialect), sa.BigInteger) + offset
    query = sa.select(*[t.c[name] for name in _COLUMNS], now).where(t.c.scope == scope, t.c.key == key)
    try:
        row = conn.execute(query).one_or_none()
    except sa.exc.DBAPIError as exc:
        _finish(conn)
        raise _translated(t, exc, conn) from exc
    _finish(conn)
    if row is None:
        return None
    values = dict(zip(_COLUMNS, row, strict=False))
    return KeyInfo(scope=scope, key=key, now=int(row[len(_COLUMNS)]), **values)


def show(
    bind: Bind,
    scope: str,
    key: str,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    clock_offset: float = 0.0,
) -> KeyInfo | None:
    """Return the stored key ``(scope, key)``, or None when there is none.

    ``scope`` is the decorator's scope (``module:qualname`` unless set); a scope longer than
    255 characters may be given in full, it is shortened the way the decorator stores it.
    ``key`` is the stored text: an int key in decimal, a UUID in lowercase canonical form.
    """
    t = _table(table, schema)
    stored_scope = normalise_scope(scope)
    return _with_connection(bind, lambda conn: _read(conn, t, stored_scope, key, clock_offset))


def evict(
    bind: Bind,
    scope: str,
    key: str,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    force: bool = False,
    clock_offset: float = 0.0,
) -> KeyInfo | None:
    """Delete the stored key ``(scope, key)`` so the next call runs the function again.

    Returns what was deleted, or None when there was no such key. A key whose call is still
    running (its lease has not passed) is refused with :class:`InProgress` unless ``force``:
    evicting it lets a retry run beside that call, whose result is then refused.
    """
    t = _table(table, schema)
    stored_scope = normalise_scope(scope)

    def run(conn: sa.Connection) -> KeyInfo | None:
        info = _read(conn, t, stored_scope, key, clock_offset)
        if info is None:
            return None
        if info.running and not force:
            raise InProgress(
                f"key {key!r} of scope {scope!r} is still running: its call holds the lease for another "
                f"{_duration(info.locked_until - info.now)}; evict it anyway with force=True (--force)",
                retry_after=(info.locked_until - info.now) / 1000.0,
            )
        # Delete exactly the row that was read: a new claim made meanwhile is left alone.
        statement = sa.delete(t).where(t.c.scope == stored_scope, t.c.key == key, t.c.owner == info.owner)
        try:
            with conn.begin():
                removed = conn.execute(statement).rowcount
        except sa.exc.DBAPIError as exc:
            raise _translated(t, exc, conn) from exc
        return info if removed else None

    return _with_connection(bind, run)


# ---------------------------------------------------------------------------------------------
# Formatting.
# ---------------------------------------------------------------------------------------------
def _iso(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(ms: int) -> str:
    seconds = abs(ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _relative(ms: int, now: int) -> str:
    return f"in {_duration(ms - now)}" if ms > now else f"{_duration(now - ms)} ago"


def _preview(info: KeyInfo) -> str:
    if info.result is None:
        return "none"
    text = info.result
    shown = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"
    return f"{info.result_codec or 'unknown codec'}, {len(text)} chars: {shown}"


def format_key(info: KeyInfo) -> str:
    """The text ``idempotent show`` prints."""
    lines = [
        ("scope", info.scope),
        ("key", info.key),
        ("status", info.state),
        ("fingerprint", info.fingerprint or "none (not checked)"),
        ("owner", info.owner),
        ("created", f"{_iso(info.created_at)} ({_relative(info.created_at, info.now)})"),
    ]
    if info.status == Status.IN_PROGRESS.value:  # a finished key holds no lease
        lines.append(("lease until", f"{_iso(info.locked_until)} ({_relative(info.locked_until, info.now)})"))
    lines.append(("expires", f"{_iso(info.expires_at)} ({_relative(info.expires_at, info.now)})"))
    if info.error_type:
        lines.append(("error", info.error_type))
    lines.append(("result", _preview(info)))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scope", metavar="SCOPE", help="the decorator's scope (default module:qualname)")
    parser.add_argument(
        "key", metavar="KEY", help="the key as stored (an int in decimal, a UUID in lowercase)"
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``purge``, ``show`` and ``evict`` sub-commands."""
    parser = subparsers.add_parser(
        "purge",
        help="delete expired idempotency keys",
        description=(
            "Delete the keys whose TTL has passed (and whose lease, if any, has ended), in batches of "
            "--batch rows, each in its own short transaction. Prints how many were removed."
        ),
    )
    add_database_arguments(parser)
    parser.add_argument(
        "--batch",
        type=_positive,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"rows deleted per transaction (default: {DEFAULT_BATCH})",
    )
    parser.add_argument(
        "--progress-every",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="print progress to stderr at most this often during a long purge; 0: after every batch "
        "(default: 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="print no progress, only the total")
    parser.set_defaults(func=run_purge)

    parser = subparsers.add_parser(
        "show",
        help="show one stored key",
        description="Print a stored key's status, times, fingerprint and a preview of its result.",
    )
    add_database_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="print every field, the full result included, as JSON"
    )
    _key_arguments(parser)
    parser.set_defaults(func=run_show)

    parser = subparsers.add_parser(
        "evict",
        help="delete one stored key so the next call runs again",
        description=(
            "Delete a stored key: the next call with it runs the function again. A key whose call is "
            "still running is refused unless --force."
        ),
    )
    add_database_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="evict even a key whose call is still running within its lease"
    )
    _key_arguments(parser)
    parser.set_defaults(func=run_evict)


def _fail(command: str, message: str) -> int:
    print(f"idempotent {command}: error: {message}", file=sys.stderr)
    return 1


def _where(args: argparse.Namespace) -> str:
    return f"{args.schema}.{args.table}" if args.schema else str(args.table)


def run_purge(args: argparse.Namespace) -> int:
    """Carry out ``idempotent purge``; return the exit code."""
    started = last = time.monotonic()
    every: float = args.progress_every

    def report(total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if args.quiet or now - last < every:
            return
        last = now
        rate = total / max(now - started, 1e-9)
        print(f"purged {total} keys so far ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    try:
        total = purge(args.url, table=args.table, schema=args.schema, batch=args.batch, progress=report)
    except Exception as exc:
        message = explain(exc, args.url)
        if message is None:
            raise
        return _fail("purge", message)
    elapsed = time.monotonic() - started
    noun = "key" if total == 1 else "keys"
    print(f"purged {total} expired {noun} from {_where(args)} in {elapsed:.1f} s")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Carry out ``idempotent show``; return the exit code."""
    try:
        info = show(args.url, args.scope, args.key, table=args.table, schema=args.schema)
    except Exception as exc:
        message = explain(exc, args.url)
        if message is None:
            raise
        return _fail("show", message)
    if info is None:
        return _fail("show", f"no key {args.key!r} in scope {args.scope!r} in {_where(args)}")
    if args.json:
        print(json.dumps(info.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_key(info))
    return 0


def run_evict(args: argparse.Namespace) -> int:
    """Carry out ``idempotent evict``; return the exit code."""
    try:
        info = evict(args.url, args.scope, args.key, table=args.table, schema=args.schema, force=args.force)
    except Exception as exc:
        message = explain(exc, args.url)
        if message is None:
            raise
        return _fail("evict", message)
    if info is None:
        return _fail("evict", f"no key {args.key!r} in scope {args.scope!r} in {_where(args)}")
    print(f"evicted key {args.key!r} of scope {args.scope!r} from {_where(args)} (it was {info.status})")
    return 0
