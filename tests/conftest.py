"""Shared fixtures: real SQLite, PostgreSQL and MariaDB, through sync and async drivers.

``db`` is parametrised over the six combinations; each test gets its own keys table and
business table (random names), so suites can run side by side against the same servers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from idempotent import SQLStore
from idempotent.schema import make_table
from tests.services import DATABASES, database_urls

T = TypeVar("T")


@dataclass
class Db:
    """One database under test, with a fresh keys table and an ``orders`` business table."""

    name: str
    kind: str  # "sync" or "async"
    url: str
    async_url: str
    engine: sa.Engine
    store: SQLStore
    keys: sa.Table
    orders: sa.Table
    loop: asyncio.AbstractEventLoop | None = None
    _async_engine: Any = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.kind == "async"

    @property
    def async_engine(self) -> Any:
        """An AsyncEngine on this test's event loop (NullPool: no connection outlives a call)."""
        if self._async_engine is None:
            from sqlalchemy.ext.asyncio import create_async_engine

            self._async_engine = create_async_engine(self.async_url, poolclass=NullPool)
        return self._async_engine

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this test's event loop."""
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def count(self, table: sa.Table | None = None) -> int:
        """Rows in ``table`` (default: orders), read on a fresh connection."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(table or self.orders)).scalar_one()
            )

    def key_rows(self) -> list[Any]:
        """Every row of the keys table."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.keys)).all())


def _make_db(name: str, kind: str, tmp_path: Any) -> Iterator[Db]:
    url, async_url = database_urls(name, tmp_path)
    suffix = uuid.uuid4().hex[:10]
    metadata = sa.MetaData()
    keys = make_table(metadata, f"idem_keys_{suffix}")
    orders = sa.Table(
        f"orders_{suffix}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(100), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False, server_default="0"),
    )
    engine = (
        sa.create_engine(url, pool_size=10, max_overflow=20) if name != "sqlite" else sa.create_engine(url)
    )
    metadata.create_all(engine)
    db = Db(name, kind, url, async_url, engine, SQLStore(engine, keys.name), keys, orders)
    if kind == "async":
        db.loop = asyncio.new_event_loop()
    try:
        yield db
    finally:
        for cleanup in reversed(db.cleanups):
            cleanup()
        if db._async_engine is not None:
            db.run(db._async_engine.dispose())
        if db.loop is not None:
            db.loop.close()
        metadata.drop_all(engine)
        engine.dispose()


@pytest.fixture(params=[(n, k) for n in DATABASES for k in ("sync", "async")], ids=lambda p: f"{p[0]}-{p[1]}")
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """Each database through its sync and its async driver."""
    name, kind = request.param
    yield from _make_db(name, kind, tmp_path)


@pytest.fixture(params=DATABASES)
def sync_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """Each database through its sync driver only (for tests about threads and processes)."""
    yield from _make_db(request.param, "sync", tmp_path)


@pytest.fixture(
    params=[(n, k) for n in ("postgresql",) for k in ("sync", "async")], ids=lambda p: f"{p[0]}-{p[1]}"
)
def pg_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """PostgreSQL only, sync and async."""
    name, kind = request.param
    yield from _make_db(name, kind, tmp_path)


@pytest.fixture(
    params=[(n, k) for n in ("mariadb",) for k in ("sync", "async")], ids=lambda p: f"{p[0]}-{p[1]}"
)
def maria_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """MariaDB only, sync and async."""
    name, kind = request.param
    yield from _make_db(name, kind, tmp_path)


@pytest.fixture(params=DATABASES)
def async_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """Each database through its async driver only (for tests about asyncio itself)."""
    yield from _make_db(request.param, "async", tmp_path)
