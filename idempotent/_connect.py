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

__all__ = ["Bind", "add_database_arguments", "check_sqlite_file", "describe", "explain", "with_connection"]

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


def explain(exc: Exception, url: str | sa.URL | None = None) -> str | None:
    """One line saying what went wrong, or None for an unexpected error (a bug: show its traceback).
    ``url``: the database the command used, named (password masked) in a database error, since
    not every driver's message names it."""
    from alembic.util import CommandError  # noqa: PLC0415  (keep the command line's start-up light)

    if isinstance(exc, sa.exc.NoSuchModuleError):
        name = str(exc).rsplit(":", 1)[-1].strip()
        hint = _URL_HINTS.get(name.split(".", 1)[0], "")
        return f"unknown database in the URL: {_first_line(exc)}{hint}"
    if isinstance(exc, sa.exc.ArgumentError):
        return f"invalid database URL: {_first_line(exc)}"
    if isinstance(exc, ModuleNotFoundError):
        hint = _DRIVER_HINTS.get(exc.name or "", _ANY_DRIVER)
        return f"the database driver is not installed ({exc}); {hint}"
    if isinstance(exc, sa.exc.DBAPIError):
        return f"database error{_on(url)}: {_first_line(exc.orig if exc.orig is not None else exc)}"
    if isinstance(exc, (sa.exc.SQLAlchemyError, CommandError, IdempotencyError)):
        return _first_line(exc)
    return None


#: A dialect name SQLAlchemy does not know -> the URL form to use instead.
_URL_HINTS = {
    "postgres": "; PostgreSQL URLs start with postgresql+psycopg:// (pip install 'idempotent[postgres]')",
}

#: A missing driver module -> the extra that installs a driver and the URL form that selects it.
_DRIVER_HINTS = {
    "psycopg2": "the postgresql:// URL selects psycopg2; install 'idempotent[postgres]' (psycopg 3) and "
    "write postgresql+psycopg://user@host/db",
    "psycopg": "install 'idempotent[postgres]' and write postgresql+psycopg://user@host/db",
    "asyncpg": "install 'idempotent[asyncio]' and write postgresql+psycopg_async://user@host/db",
    "MySQLdb": "the mysql:// and mariadb:// URLs select mysqlclient; install 'idempotent[mysql]' (PyMySQL) "
    "and write mysql+pymysql://user@host/db (MySQL) or mariadb+pymysql://user@host/db (MariaDB)",
    "pymysql": "install 'idempotent[mysql]' and write mysql+pymysql://user@host/db (or mariadb+pymysql://)",
    "aiomysql": "install 'idempotent[asyncio]' and write mysql+aiomysql://user@host/db",
    "aiosqlite": "install 'idempotent[asyncio]' and write sqlite+aiosqlite:///path.db",
}
_ANY_DRIVER = (
    "install the extra for your database: 'idempotent[postgres]' (postgresql+psycopg://), "
    "'idempotent[mysql]' (mysql+pymysql:// or mariadb+pymysql://) or 'idempotent[asyncio]'"
)


def describe(url: sa.URL) -> str:
    """The URL of a database as messages show it: with its password masked."""
    return url.render_as_string(hide_password=True)


def _on(url: str | sa.URL | None) -> str:
    if url is None:
        return ""
    try:
        return f" on {describe(sa.make_url(url))}"
    except Exception:  # an unparsable URL has its own error; say nothing of it here
        return ""


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
