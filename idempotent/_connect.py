"""Connections for the command-line helpers (admin, migrate): from a URL, an Engine or a Connection."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from idempotent.errors import ConfigurationError, IdempotencyError
from idempotent.schema import DEFAULT_TABLE

__all__ = ["Bind", "add_database_arguments", "check_sqlite_file", "explain", "with_connection"]

Bind = str | sa.URL | sa.Engine | sa.Connection
_T = TypeVar("_T")


def with_connection(
    bind: Bind, fn: Callable[[sa.Connection], _T], *, begin: bool, async_hint: str, must_exist: bool = False
) -> _T:
    """Run ``fn`` on a connection of ``bind``.

    A given Connection is used as it is. Otherwise the connection is ours: with ``begin`` it runs
    in a transaction committed on success, else ``fn`` commits what it writes. ``must_exist``
    refuses a SQLite URL naming a missing file (connecting would create an empty database).
    """
    if isinstance(bind, sa.Connection):
        return fn(bind)
    if isinstance(bind, sa.Engine):
        with bind.begin() if begin else bind.connect() as conn:
            return fn(conn)
    if not isinstance(bind, (str, sa.URL)):
        raise TypeError(
            f"expected a database URL, Engine or Connection, got {type(bind).__name__}; {async_hint}"
        )
    url = sa.make_url(bind)
    if must_exist:
        check_sqlite_file(url)
    if url.get_dialect().is_async:
        return asyncio.run(_with_async_connection(url, fn, begin=begin))
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() if begin else engine.connect() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def check_sqlite_file(url: sa.URL) -> None:
    """Refuse a SQLite URL naming a file that does not exist (connecting would create an empty one)."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or url.query.get("uri") in ("true", "1"):
        return  # a URI filename: its own options decide
    if not Path(database).exists():
        raise ConfigurationError(f"the SQLite database file {database!r} does not exist")


async def _with_async_connection(url: sa.URL, fn: Callable[[sa.Connection], _T], *, begin: bool) -> _T:
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415  (needs the asyncio extra)

    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.begin() if begin else engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def explain(exc: Exception) -> str | None:
    """One line saying what went wrong, or None for an unexpected error (a bug: show its traceback)."""
    from alembic.util import CommandError  # noqa: PLC0415  (keep the command line's start-up light)

    if isinstance(exc, sa.exc.NoSuchModuleError):
        return f"unknown database in the URL: {_first_line(exc)}"
    if isinstance(exc, sa.exc.ArgumentError):
        return f"invalid database URL: {_first_line(exc)}"
    if isinstance(exc, ModuleNotFoundError):
        return f"the database driver is not installed ({exc}); install it, e.g. idempotent[postgres]"
    if isinstance(exc, sa.exc.DBAPIError):
        return f"database error: {_first_line(exc.orig if exc.orig is not None else exc)}"
    if isinstance(exc, (sa.exc.SQLAlchemyError, CommandError, IdempotencyError)):
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--table`` and ``--schema``, the same for every command that opens the keys table."""
    parser.add_argument(
        "--url", required=True, help="SQLAlchemy database URL, e.g. postgresql+psycopg://host/db"
    )
    parser.add_argument(
        "--table",
        default=DEFAULT_TABLE,
        metavar="NAME",
        help=f"keys table name, as given to configure(table=...) (default: {DEFAULT_TABLE})",
    )
    parser.add_argument(
        "--schema", default=None, metavar="NAME", help="schema of the keys table (default: the URL's default)"
    )
