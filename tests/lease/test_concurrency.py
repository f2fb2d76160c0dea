"""Concurrent duplicates in lease mode: exactly one execution, every caller gets the same result.

The short tests hold the one execution until every other caller is known to be waiting (their
``waited`` events), so the overlap is certain rather than hoped for. The ``slow`` torture loop
lets many threads race on many keys without any help.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from idempotent.events import Event
from tests.lease.conftest import LeaseDb, Recorder

CALLERS = 6


def _run_all(ldb: LeaseDb, fn: object, keys: list[str]) -> list[object]:
    """Call ``fn`` once per entry of ``keys``, each in its own thread, all started together."""
    results: list[object] = [None] * len(keys)
    errors: list[BaseException] = []
    start = threading.Barrier(len(keys))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = ldb.call(fn, keys[i])
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    if errors:
        raise errors[0]
    return results


def test_concurrent_duplicates_execute_once(ldb: LeaseDb, recorder: Recorder) -> None:
    """Six callers with one key: one runs, five wait and replay; all get the same result."""
    runs: list[str] = []

    def transfer(transfer_id: str) -> dict[str, object]:
        runs.append(transfer_id)
        recorder.wait_for(Event.WAITED, CALLERS - 1)  # everyone else is waiting on this execution
        return {"transfer": transfer_id, "status": "sent"}

    fn = ldb.idempotent(transfer, key_from="transfer_id", store=ldb.store(), wait=60, hooks=[recorder])
    results = _run_all(ldb, fn, ["t-1"] * CALLERS)
    assert results == [{"transfer": "t-1", "status": "sent"}] * CALLERS
    assert runs == ["t-1"]
    assert Counter(recorder.names()) == {"executed": 1, "waited": CALLERS - 1, "replayed": CALLERS - 1}


@pytest.mark.parametrize(
    "rounds", [pytest.param(3, id="short"), pytest.param(60, id="long", marks=pytest.mark.slow)]
)
def test_racing_duplicates_on_many_keys(ldb: LeaseDb, rounds: int) -> None:
    """Threads race on fresh keys round after round, unsynchronised: each key runs exactly once."""
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def transfer(transfer_id: str) -> str:
        with lock:
            runs[transfer_id] += 1
        return f"done:{transfer_id}"

    fn = ldb.idempotent(transfer, key_from="transfer_id", store=ldb.store(), wait=60)
    for r in range(rounds):
        keys = [f"k{r}-{i % 2}" for i in range(4)]
        results = _run_all(ldb, fn, keys)
        assert results == [f"done:{k}" for k in keys]
    assert set(runs.values()) == {1}
    assert len(runs) == 2 * rounds
