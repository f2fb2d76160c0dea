"""Fixtures for the lease-mode, expiry and crash tests: real databases, sync and async drivers.

``ldb`` runs a test on SQLite (a file in ``tmp_path``), PostgreSQL and MariaDB, each through its
sync and its async driver. Every test gets its own keys table and ``payments`` business table
(random names, so suites can share the servers) and both are dropped afterwards.

Most tests are written once for both drivers: :meth:`LeaseDb.idempotent` decorates a plain
function body, as a ``def`` for the sync driver and as an ``async def`` for the async one (the
body then runs in a worker thread, so it may block on thread events without stalling the event
loop), and :meth:`LeaseDb.call` calls the result either way.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from idempotent import SQLStore, idempotent
from idempotent.events import Event, EventInfo
from idempotent.schema import make_table
from tests.services import COMBINATIONS, DATABASES, database_urls

ROOT = Path(__file__).resolve().parents[2]


def drop(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Drop the test's tables, never waiting long for a lock a crashed test left behind."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET lock_timeout = '20s'")
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = 20")
        metadata.drop_all(conn)
        conn.commit()


class Recorder:
    """A hook that records events, and lets a test wait until some have happened."""

    def __init__(self) -> None:
        self.events: list[EventInfo] = []
        self._cond = threading.Condition()

    def __call__(self, info: EventInfo) -> None:
        with self._cond:
            self.events.append(info)
            self._cond.notify_all()

    def names(self) -> list[str]:
        """The event names in order, with their detail word where there is one."""
        with self._cond:
            return [f"{e.event.value}:{e.detail}" if e.detail else e.event.value for e in self.events]

    def count(self, event: Event) -> int:
        with self._cond:
            return sum(1 for e in self.events if e.event is event)

    def wait_for(self, event: Event, count: int = 1, timeout: float = 30.0) -> None:
        """Block until ``count`` events of kind ``event`` were recorded (fail after ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count_unlocked(event) >= count, timeout):
                pytest.fail(f"{count} {event.value} event(s) never came; got {self.names_unlocked()}")

    def count_unlocked(self, event: Event) -> int:
        return sum(1 for e in self.events if e.event is event)

    def names_unlocked(self) -> list[str]:
        return [e.event.value for e in self.events]


@dataclass
class LeaseDb:
    """One database through one driver, with this test's keys and business tables."""

    name: str
    driver: str  # "sync" or "async"
    url: str  # the URL of this driver
    sync_url: str
    async_url: str
    engine: sa.Engine  # sync engine for set-up and inspection
    keys: sa.Table
    payments: sa.Table
    metadata: sa.MetaData
    _async_engines: list[Any] = field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.driver == "async"

    @property
    def table(self) -> str:
        return self.keys.name

    def driver_engine(self) -> Any:
        """A new engine of this test's driver (async: an AsyncEngine with NullPool, usable from any loop)."""
        if not self.is_async:
            return self.engine
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.async_url, poolclass=NullPool)
        self._async_engines.append(engine)

        async def first_connect() -> None:
            async with engine.connect():
                pass

        # The first connection initialises the dialect under a lock bound to its event loop; make
        # it here, so threads running their own loops can share the engine afterwards.
        asyncio.run(first_connect())
        return engine

    def store(self, *, clock_offset: float = 0.0) -> SQLStore:
        """A SQL store on this test's keys table with an engine of this test's driver."""
        return SQLStore(self.driver_engine(), self.table, clock_offset=clock_offset)

    def idempotent(self, body: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """Decorate ``body`` as a sync function, or as an async one running ``body`` in a worker thread."""
        options.setdefault("scope", f"tests.lease.{body.__name__}")
        options.setdefault("mode", "lease")
        if not self.is_async:
            return idempotent(**options)(body)

        @functools.wraps(body)
        async def run_body(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(body, *args, **kwargs))

        return idempotent(**options)(run_body)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a function made by :meth:`idempotent` (on a fresh event loop for the async driver)."""
        if self.is_async:
            return asyncio.run(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def rows(self) -> list[Any]:
        """Every row of the keys table, read on a fresh connection."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.keys).order_by(self.keys.c.scope, self.keys.c.key)).all())

    def row(self, scope: str, key: str) -> Any:
        """The keys-table row for ``(scope, key)``, or None."""
        k = self.keys.c
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self.keys).where(k.scope == scope, k.key == key)).one_or_none()

    def now_ms(self) -> int:
        """The database clock in epoch milliseconds."""
        from idempotent._sql import now_sql

        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT {now_sql(conn.dialect)}").scalar_one())

    def payment_count(self) -> int:
        """Rows in the business table, read on a fresh connection."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.payments)).scalar_one())


def make_ldb(name: str, driver: str, tmp_path: Path) -> Iterator[LeaseDb]:
    """Create the tables of one test, yield the database, drop the tables."""
    sync_url, async_url = database_urls(name, tmp_path)
    suffix = secrets.token_hex(5)
    metadata = sa.MetaData()
    keys = make_table(metadata, f"idem_lease_{suffix}")
    payments = sa.Table(
        f"idem_pay_{suffix}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(100), nullable=False),
    )
    engine = (
        sa.create_engine(sync_url, pool_size=20, max_overflow=20)
        if name != "sqlite"
        else sa.create_engine(sync_url)
    )
    metadata.create_all(engine)
    ldb = LeaseDb(
        name,
        driver,
        async_url if driver == "async" else sync_url,
        sync_url,
        async_url,
        engine,
        keys,
        payments,
        metadata,
    )
    try:
        yield ldb
    finally:
        for eng in ldb._async_engines:
            asyncio.run(eng.dispose())
        drop(engine, metadata)
        engine.dispose()


@pytest.fixture(params=COMBINATIONS, ids=[f"{n}-{d}" for n, d in COMBINATIONS])
def ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """Each database through its sync and its async driver, with fresh tables."""
    name, driver = request.param
    yield from make_ldb(name, driver, tmp_path)


@pytest.fixture(params=DATABASES)
def sync_ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """Each database through its sync driver only (tests of sync-only behaviour)."""
    yield from make_ldb(request.param, "sync", tmp_path)


@pytest.fixture(params=DATABASES)
def async_ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """Each database through its async driver only (tests of asyncio behaviour)."""
    yield from make_ldb(request.param, "async", tmp_path)


@pytest.fixture
def recorder() -> Recorder:
    """A hook recording every event of the decorators it is passed to."""
    return Recorder()


@pytest.fixture
def restore_defaults() -> Iterator[None]:
    """Put back the process-wide defaults a test changes with ``configure()``."""
    from idempotent import decorator

    saved = decorator._defaults
    yield
    decorator._defaults = saved


# ---------------------------------------------------------------------------------------------
# Child processes.
# ---------------------------------------------------------------------------------------------
class Child:
    """A worker process of :mod:`tests.lease.child`; it talks over its stdin/stdout pipes."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease.child", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def expect(self, word: str) -> str:
        """Read the child's next line; fail with its stderr unless it starts with ``word``."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith(word):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=60)
            pytest.fail(f"child said {line!r}, expected {word!r}; its stderr:\n{err}")
        return line[len(word) :].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        self.proc.kill()
        self.proc.communicate(timeout=60)
        assert self.proc.returncode == -9

    def finish(self) -> tuple[str, str]:
        """Wait for the child to exit by itself; return its remaining stdout and its stderr."""
        out, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            pytest.fail(f"child exited {self.proc.returncode}; stderr:\n{err}")
        return out, err


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Start children with ``children(*args)``; any still running at the end is killed."""
    started: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(*args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.communicate(timeout=60)


def drive(engine: sa.Engine, steps: Any) -> Any:
    """Run a store operation (a generator of ``Exec``) statement by statement, each committed."""
    value: Any = None
    while True:
        try:
            op = steps.send(value)
        except StopIteration as stop:
            return stop.value
        with engine.connect() as conn:
            result = conn.exec_driver_sql(op.sql, op.params)
            value = result.fetchall() if op.fetch else result.rowcount
            conn.commit()


def complete_as(ldb: LeaseDb, scope: str, key: str, owner: str, result: str) -> bool:
    """Try to store ``result`` for the key as the claim ``owner`` would; False when fenced out."""
    from idempotent.core import ClaimRequest

    bound = SQLStore(ldb.engine, ldb.table).for_dialect(ldb.engine.dialect)
    request = ClaimRequest(scope, key, None, owner, 0, 0, 0, own=True)
    return bool(drive(ldb.engine, bound.complete(request, "json", result, own=True)))
