"""Hooks and logging: every outcome can be counted in the caller's own metrics."""

from __future__ import annotations

import logging

import pytest

from idempotent import KeyReused, configure
from idempotent.events import Event, EventInfo
from tests.lease.conftest import LeaseDb, Recorder


def test_process_wide_and_per_decorator_hooks_see_every_event(
    ldb: LeaseDb, recorder: Recorder, restore_defaults: None
) -> None:
    """Hooks from ``configure(hooks=...)`` and from the decorator both get each event with its details."""
    everywhere = Recorder()
    configure(engine=ldb.driver_engine(), table=ldb.table, hooks=[everywhere])

    def refund(refund_id: str, amount: int) -> int:
        if amount < 0:
            raise ValueError("negative")
        return amount

    fn = ldb.idempotent(refund, key_from="refund_id", hooks=[recorder])
    ldb.call(fn, "r-1", 5)
    ldb.call(fn, "r-1", 5)
    with pytest.raises(KeyReused):
        ldb.call(fn, "r-1", 6)
    with pytest.raises(ValueError, match="negative"):
        ldb.call(fn, "r-2", -1)
    expected = ["executed", "replayed", "mismatch", "released"]
    assert recorder.names() == everywhere.names() == expected
    info = recorder.events[0]
    assert isinstance(info, EventInfo)
    assert (info.event, info.scope, info.key) == (Event.EXECUTED, "tests.lease.refund", "r-1")
    assert info.function.endswith("refund")


def test_a_failing_hook_is_logged_and_never_breaks_the_call(
    ldb: LeaseDb, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged on the ``idempotent`` logger; the call still returns its result."""

    def broken(info: EventInfo) -> None:
        raise RuntimeError("metrics backend down")

    def ship(order_id: str) -> str:
        return "shipped"

    fn = ldb.idempotent(ship, key_from="order_id", store=ldb.store(), hooks=[broken])
    with caplog.at_level(logging.DEBUG, logger="idempotent"):
        assert ldb.call(fn, "o-1") == "shipped"
    messages = [r.getMessage() for r in caplog.records if r.name == "idempotent"]
    assert any(m.startswith("executed ") and "'o-1'" in m for m in messages)
    assert any("hook" in m and "failed on executed" in m for m in messages)
