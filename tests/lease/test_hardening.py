"""Lease mode under pressure: live leases against expiry, renewals, fork, takeover races, dropped
connections.

Time is moved with the store's ``clock_offset``; concurrent callers are synchronised with thread
events and engine events on the statements that reach the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent import InProgress, idempotent
from idempotent.core import Record, Status
from idempotent.testing import MemoryStore
from tests.lease.conftest import LeaseDb, Recorder
from tests.lease.test_lease import Background, Gate

TTL = 3600.0


class Statements:
    """Counts the statements of one kind that reach the database through an engine."""

    def __init__(self, engine: Any, match: Callable[[str], bool]) -> None:
        self.engine = engine.sync_engine if hasattr(engine, "sync_engine") else engine
        self.match = match
        self.count = 0
        self.params: list[Any] = []
        self._cond = threading.Condition()
        sa.event.listen(self.engine, "after_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if self.match(statement):
            with self._cond:
                self.count += 1
                self.params.append(parameters)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` such statements ran in all (fail after ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= count, timeout):
                pytest.fail(f"only {self.count} of {count} statements reached the database")

    def close(self) -> None:
        sa.event.remove(self.engine, "after_cursor_execute", self._seen)


def is_renewal(statement: str) -> bool:
    """The renew statement is the only one that sets ``locked_until`` first."""
    return "SET locked_until" in statement


# -- a live lease wins over expiry -----------------------------------------------------------------
def test_renewed_call_past_its_ttl_is_not_taken_over(ldb: LeaseDb, recorder: Recorder) -> None:
    """A call still renewing its lease keeps its key after ``ttl``: a duplicate gets InProgress, not a run.

    The store's clock is moved past the TTL while the call runs; once a renewal carried the
    moved clock, the row is expired by its TTL but its lease is live, and the lease wins.
    """
    store = ldb.store()
    renewals = Statements(store.engine, is_renewal)
    gate = Gate()
    runs: list[str] = []

    def export_report(job_id: str) -> str:
        runs.append(job_id)
        if len(runs) == 1:
            gate.hold()
        return "exported"

    fn = ldb.idempotent(
        export_report, key_from="job_id", store=store, ttl=TTL, lease=0.9, wait=0, hooks=[recorder]
    )
    call = Background(ldb, fn, "j-1")
    gate.wait_entered()
    store.clock_offset = TTL + 1
    renewals.wait_for(renewals.count + 2)  # the second one surely read the moved clock
    try:
        with pytest.raises(InProgress):
            ldb.call(fn, "j-1")
    finally:
        gate.release.set()
        renewals.close()
    assert call.result() == "exported"
    assert runs == ["j-1"]
    assert recorder.names() == ["conflict:in_progress", "executed"]


def test_memory_store_live_lease_wins_over_expiry() -> None:
    """MemoryStore decides like the SQL store: a running call within its lease is not taken over after its TTL."""
    store = MemoryStore()
    runs: list[str] = []

    @idempotent(key_from="job_id", scope="tests.lease.memory_live", mode="lease", store=store, wait=0)
    def job(job_id: str) -> str:
        runs.append(job_id)
        return "ran"

    now = store.now()
    store.records[("tests.lease.memory_live", "j-1")] = Record(
        "tests.lease.memory_live", "j-1", None, Status.IN_PROGRESS.value, "other-owner",
        locked_until=now + 60_000, created_at=now - 7_200_000, expires_at=now - 3_600_000,
    )  # fmt: skip
    with pytest.raises(InProgress):
        job("j-1")
    assert runs == []
    store.clock_offset = 61  # the lease ends too: now it is abandoned and taken over
    assert job("j-1") == "ran"
