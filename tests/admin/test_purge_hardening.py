"""``purge`` next to live traffic: deadlocks with concurrent claims, and agreement with ``show``."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from idempotent.admin import purge, show
from tests.admin.conftest import AdminDb, make_adb


@pytest.fixture
def maria_adb(tmp_path: Path) -> Iterator[AdminDb]:
    """MariaDB only (InnoDB deadlock detection), sync URL."""
    yield from make_adb("mariadb", "sync", tmp_path)


def test_finished_rows_past_their_ttl_are_purged_whatever_their_lease(sync_adb: AdminDb) -> None:
    """``show`` and ``purge`` agree: a finished row past its TTL is expired and purged even if its
    last lease reached further; a call still within its lease past its TTL is neither."""
    sync_adb.insert("completed-long-lease", expires_in=-1, locked_for=30)
    sync_adb.insert(
        "failed-long-lease", status="failed", error_type="x.Declined", expires_in=-1, locked_for=30
    )
    sync_adb.insert("running-past-ttl", status="in_progress", result=None, expires_in=-1, locked_for=30)
    shown = {
        key: show(sync_adb.url, "orders.place", key, table=sync_adb.table)
        for key in ("completed-long-lease", "failed-long-lease", "running-past-ttl")
    }
    assert {key: info.expired for key, info in shown.items() if info is not None} == {
        "completed-long-lease": True,
        "failed-long-lease": True,
        "running-past-ttl": False,
    }
    assert shown["running-past-ttl"] is not None
    assert shown["running-past-ttl"].running
    assert purge(sync_adb.url, table=sync_adb.table) == 2
    assert sync_adb.keys_left() == ["running-past-ttl"]


def _wait_for_lock_wait(conn: sa.Connection) -> None:
    """Return once another InnoDB transaction waits for a row lock (the purge batch blocked)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = conn.exec_driver_sql("SELECT trx_state FROM information_schema.innodb_trx").scalars().all()
        if "LOCK WAIT" in states:
            return
        time.sleep(0.15)  # InnoDB refreshes this table only when it was not read for 0.1 s
    pytest.fail("the purge never waited for the row lock")  # pragma: no cover


def test_purge_runs_a_batch_again_after_a_deadlock(maria_adb: AdminDb) -> None:
    """A purge batch chosen as a deadlock victim (1213) is run again instead of failing the purge.

    A writer holds the lock on expired row B and has written more (so InnoDB picks the purge,
    the lighter transaction, as the victim); the purge batch deletes expired row A and waits
    for B; the writer then asks for A: a real deadlock. The purge still removes both rows.
    """
    adb = maria_adb
    adb.insert("a", expires_in=-20)
    adb.insert("b", expires_in=-10)
    scratch = sa.Table(
        f"idem_scratch_{secrets.token_hex(4)}", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    scratch.create(adb.engine)
    k = adb.keys.c
    outcome: dict[str, object] = {}
    try:
        with adb.engine.connect() as writer:
            writer.execute(scratch.insert(), [{"id": i} for i in range(1, 51)])
            writer.execute(sa.select(k.key).where(k.scope == "orders.place", k.key == "b").with_for_update())

            def run_purge() -> None:
                try:
                    outcome["purged"] = purge(adb.url, table=adb.table)
                except BaseException as exc:  # handed to the test below
                    outcome["error"] = exc

            thread = threading.Thread(target=run_purge, daemon=True)
            thread.start()
            _wait_for_lock_wait(writer)
            writer.execute(sa.select(k.key).where(k.scope == "orders.place", k.key == "a").with_for_update())
            writer.rollback()
            thread.join(60)
            assert not thread.is_alive()
    finally:
        scratch.drop(adb.engine)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["purged"] == 2
    assert adb.keys_left() == []
