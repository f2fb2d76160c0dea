"""Fixtures for the purge/show/evict tests: a keys table per test on each database, and the CLI.

``adb`` runs a test on SQLite (a file in ``tmp_path``), PostgreSQL and MariaDB, with the URL of
the sync or the async driver (the command line and the Python API accept both). Rows are
written with times relative to the database clock, so no test depends on the machine's clock.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent._sql import now_sql
from idempotent.schema import make_table
from tests.services import COMBINATIONS, DATABASES, database_urls

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AdminDb:
    """One database, the URL under test, and this test's keys table."""

    name: str
    url: str  # the URL the test passes to the API or the command line (sync or async driver)
    engine: sa.Engine  # sync engine for set-up and inspection
    keys: sa.Table

    @property
    def table(self) -> str:
        return self.keys.name

    def now_ms(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT {now_sql(conn.dialect)}").scalar_one())

    def insert(
        self,
        key: str,
        *,
        scope: str = "orders.place",
        status: str = "completed",
        expires_in: float = 3600.0,
        locked_for: float = -3000.0,
        age: float = 600.0,
        result: str | None = '"ok"',
        fingerprint: str | None = "v1:" + "ab" * 32,
        error_type: str | None = None,
        table: sa.Table | None = None,
    ) -> dict[str, Any]:
        """Insert one row; times are seconds relative to the database clock (negative: in the past)."""
        now = self.now_ms()
        row = {
            "scope": scope,
            "key": key,
            "fingerprint": fingerprint,
            "status": status,
            "owner": secrets.token_hex(16),
            "locked_until": now + int(locked_for * 1000),
            "created_at": now - int(age * 1000),
            "expires_at": now + int(expires_in * 1000),
            "result_codec": None if result is None else "json",
            "result": result,
            "error_type": error_type,
        }
        self.insert_rows([row], table)
        return row

    def insert_rows(self, rows: list[dict[str, Any]], table: sa.Table | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute((table if table is not None else self.keys).insert(), rows)

    def keys_left(self, table: sa.Table | None = None) -> list[str]:
        """The keys still stored, sorted."""
        t = table if table is not None else self.keys
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.select(t.c.key)))


def drop(engine: sa.Engine, *tables: sa.Table) -> None:
    """Drop the test's tables, never waiting long for a lock."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET lock_timeout = '20s'")
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = 20")
        for table in tables:
            table.drop(conn, checkfirst=True)
        conn.commit()


def make_adb(name: str, driver: str, tmp_path: Path) -> Iterator[AdminDb]:
    sync_url, async_url = database_urls(name, tmp_path)
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    keys = make_table(sa.MetaData(), f"idem_admin_{secrets.token_hex(5)}")
    keys.create(engine)
    try:
        yield AdminDb(name, async_url if driver == "async" else sync_url, engine, keys)
    finally:
        drop(engine, keys)
        engine.dispose()


@pytest.fixture(params=COMBINATIONS, ids=[f"{n}-{d}" for n, d in COMBINATIONS])
def adb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminDb]:
    """Each database, addressed through its sync and its async driver's URL."""
    name, driver = request.param
    yield from make_adb(name, driver, tmp_path)


@pytest.fixture(params=DATABASES)
def async_adb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminDb]:
    """Each database through its async driver's URL."""
    yield from make_adb(request.param, "async", tmp_path)


@pytest.fixture(params=DATABASES)
def sync_adb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminDb]:
    """Each database through its sync driver's URL."""
    yield from make_adb(request.param, "sync", tmp_path)


def console_script() -> Path:
    """The ``idempotent`` script installed beside this interpreter (the package's entry point)."""
    script = Path(sys.executable).parent / "idempotent"
    if not script.exists():
        pytest.skip(f"the idempotent console script is not installed beside {sys.executable}")
    return script


def run_cli(*args: str, script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the command line in a new process: ``python -m idempotent`` or the console script."""
    command = [str(console_script())] if script else [sys.executable, "-m", "idempotent"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False
    )
