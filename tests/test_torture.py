"""Repeated races with random failures: executions and rows must always add up.

The short version runs in CI; ``pytest -m slow`` runs the long one.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from idempotent import idempotent
from tests.conftest import Db
from tests.shop import Boom, Receipt


def _torture(db: Db, rounds: int, workers: int = 4) -> None:
    orders = db.orders
    rng = random.Random(1234)
    plan = [[rng.random() < 0.3 for _ in range(workers)] for _ in range(rounds)]
    lock = threading.Lock()
    executions: dict[str, int] = {}

    @idempotent(key_from="ref", scope="tests.torture", store=db.store, fingerprint=["ref"])
    def place(conn: Any, ref: str, fail: bool) -> Receipt:
        with lock:
            executions[ref] = executions.get(ref, 0) + 1
        result = conn.execute(orders.insert().values(ref=ref, amount=1))
        if fail:
            raise Boom(ref)
        return Receipt(int(result.inserted_primary_key[0]), ref, 1)

    for number, fails in enumerate(plan):
        ref = f"r-{number}"
        barrier = threading.Barrier(workers)

        def worker(fail: bool, ref: str = ref, barrier: threading.Barrier = barrier) -> Any:
            barrier.wait()
            try:
                with db.engine.connect() as conn:
                    return place(conn, ref, fail)
            except Exception as exc:  # collected and checked below
                return exc

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(worker, fails))
        receipts = {r for r in results if isinstance(r, Receipt)}
        others = [r for r in results if not isinstance(r, (Receipt, Boom))]
        assert others == [], others
        assert len(receipts) <= 1
        boom_count = sum(isinstance(r, Boom) for r in results)
        # every Boom is one execution that rolled back; at most one execution committed
        assert executions[ref] == boom_count + (1 if receipts else 0)
    rows = db.count()
    assert rows == sum(1 for n in range(rounds) if f"r-{n}" in {r.key for r in db.key_rows()})


def test_torture_short(sync_db: Db) -> None:
    """A few rounds of four racing callers, some failing: counts add up on every database."""
    _torture(sync_db, rounds=5)


@pytest.mark.slow
def test_torture_long(sync_db: Db) -> None:
    """The long version: two hundred rounds."""
    _torture(sync_db, rounds=200)
