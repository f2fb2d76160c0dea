"""Django's ORM as a transaction handle: the key's statements run on Django's own connection.

The keys statements are SQLAlchemy Core compiled for the connection's database with the
``format`` parameter style Django's cursors take, and run with ``connection.cursor()`` inside a
``transaction.atomic()`` block, so the key commits and rolls back with the ORM's writes.
:class:`DjangoTransaction` is what a decorator receives as its ``session``; the drivers see it
through :class:`DjangoHandle`, which offers the same few verbs as a SQLAlchemy ``Connection``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from idempotent.errors import ConfigurationError

__all__ = ["DjangoTransaction"]


class _Rollback(Exception):
    """Handed to ``Atomic.__exit__`` to make it roll back."""


def _dialect(connection: Any) -> sa.Dialect:
    vendor = connection.vendor
    if vendor == "postgresql":
        # psycopg2's dialect: Django binds parameters client-side, as psycopg2 does.
        from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2  # noqa: PLC0415

        return PGDialect_psycopg2(paramstyle="format")  # type: ignore[no-untyped-call]
    if vendor == "mysql":
        from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql  # noqa: PLC0415

        dialect = MySQLDialect_pymysql(paramstyle="format")
        dialect.is_mariadb = bool(getattr(connection, "mysql_is_mariadb", False))
        return dialect
    if vendor == "sqlite":
        from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite  # noqa: PLC0415

        return SQLiteDialect_pysqlite(paramstyle="format")
    raise ConfigurationError(
        f"idempotent supports Django on SQLite, PostgreSQL and MySQL/MariaDB, not {vendor!r}"
    )


class _Result:
    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchall(self) -> list[Any]:
        return self.rows


class _Connection:
    """Django's connection with the few ``sa.Connection`` members the drivers use."""

    __slots__ = ("db", "dialect")

    #: No SQLAlchemy engine: the lease of a claim renews only after a function commits its own
    #: transaction, which Django forbids inside atomic().
    engine = None

    def __init__(self, handle: DjangoHandle) -> None:
        self.db = handle.db
        self.dialect = handle.dialect

    @property
    def connection(self) -> _Connection:
        return self

    @property
    def driver_connection(self) -> Any:
        self.db.ensure_connection()
        return self.db.connection

    def exec_driver_sql(self, sql: str, params: Any) -> _Result:
        from django.db import Error  # noqa: PLC0415

        try:
            with self.db.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall() if cursor.description is not None else []
                return _Result(rows, cursor.rowcount)
        except Error as exc:
            # Driver errors reach the one translation point (``_sql.classify``) as SQLAlchemy's.
            raise sa.exc.DBAPIError(sql, params, exc.__cause__ or exc) from exc


class _Savepoint:
    """A savepoint of Django's transaction API, with the token verbs the drivers use."""

    def __init__(self, handle: DjangoHandle) -> None:
        from django.db import transaction  # noqa: PLC0415

        self.using = handle.using
        self.sid = transaction.savepoint(using=self.using)
        self.is_active = True

    def commit(self) -> None:
        from django.db import transaction  # noqa: PLC0415

        self.is_active = False
        transaction.savepoint_commit(self.sid, using=self.using)

    def rollback(self) -> None:
        from django.db import connections, transaction  # noqa: PLC0415

        self.is_active = False
        # Django refuses every statement, ROLLBACK TO SAVEPOINT included, while its connection is
        # marked for rollback (after an ORM error inside atomic(), or ``set_rollback(True)``, which
        # Django REST framework calls on an error response under ATOMIC_REQUESTS). Lift the mark for
        # this one statement and put it back: the enclosing atomic() block still rolls back.
        db = connections[self.using]
        marked, db.needs_rollback = db.needs_rollback, False
        try:
            transaction.savepoint_rollback(self.sid, using=self.using)
        finally:
            db.needs_rollback = marked or db.needs_rollback


class DjangoHandle:
    """Django's connection ``using`` seen through the verbs the flows use (see ``_drivers.SyncHandle``)."""

    is_session = False

    def __init__(self, using: str) -> None:
        from django.db import connections  # noqa: PLC0415

        self.using = using
        self.db = connections[using]
        self.obj = self  # the drivers call begin/commit/rollback/begin_nested on ``obj``
        self._atomic: Any = None
        self.dialect = _dialect(self.db)

    # -- what the drivers ask of a handle ------------------------------------------------------
    def connection(self) -> _Connection:
        return _Connection(self)

    def in_transaction(self) -> bool:
        return bool(self.db.in_atomic_block)

    def autobegun(self) -> bool:
        return False

    #: Read by the drivers' rollback: Django's atomic() ends its own transaction, nothing lingers.
    is_active = True

    def get_transaction(self) -> DjangoHandle:
        return self

    def get_execution_options(self) -> dict[str, Any]:
        # Not AUTOCOMMIT: the claim runs inside Django's atomic() block with the function's writes.
        return {}

    def marker(self) -> object:
        # Django refuses commit() inside atomic(): a function cannot end the transaction itself.
        return self.db if self.db.in_atomic_block else None

    # -- transaction verbs ---------------------------------------------------------------------
    def begin(self) -> None:
        from django.db import transaction  # noqa: PLC0415

        self._atomic = transaction.atomic(using=self.using)
        self._atomic.__enter__()

    def commit(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            atomic.__exit__(None, None, None)

    def rollback(self) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            error = _Rollback()
            atomic.__exit__(_Rollback, error, None)

    def begin_nested(self) -> _Savepoint:
        if not self.db.in_atomic_block:
            raise ConfigurationError("a savepoint needs a transaction.atomic() block")
        return _Savepoint(self)


class DjangoTransaction:
    """The transaction of Django's database ``using``: pass ``session=lambda: DjangoTransaction()``.

    Outside ``transaction.atomic()`` the decorator opens one around the claim and the function;
    inside one it works in a savepoint and the caller's block commits.
    """

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def idempotent_handle(self) -> DjangoHandle:
        return DjangoHandle(self.using)
