"""Crash recovery: worker processes killed with SIGKILL at the worst moments.

A child process (:mod:`tests.lease.child`) claims a key and reports over its stdout pipe that
it reached the point under test; the test then kills it with SIGKILL (or lets it go on). Lease
expiry is driven by the store's ``clock_offset``, never by waiting for the lease to pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from idempotent import InProgress, SQLStore, idempotent
from tests.lease.conftest import Child, LeaseDb, Recorder, complete_as

LEASE = 30.0
PAST_LEASE = LEASE + 1.0


def start(children: Callable[..., Child], ldb: LeaseDb, mode: str, scope: str, key: str) -> Child:
    """Start a child that claims ``key`` in ``mode`` and wait until it says it reached the point."""
    child = children(mode, ldb.driver, ldb.url, ldb.table, ldb.payments.name, scope, key, str(LEASE))
    child.expect("reached")
    return child


def transactional_pay(
    ldb: LeaseDb, store: SQLStore, scope: str, runs: list[str], **options: Any
) -> Callable[[str], Any]:
    """A transaction-mode function writing one payment row, called with a fresh session of the driver."""
    payments = ldb.payments
    options = {"key_from": "key", "scope": scope, "store": store, "lease": LEASE, **options}
    if not ldb.is_async:
        engine = ldb.engine

        @idempotent(**options)
        def pay(session: Session, key: str) -> str:
            runs.append(key)
            session.execute(payments.insert().values(ref=key))
            return "parent"

        def call(key: str) -> Any:
            with Session(engine) as session:
                return pay(session, key)

        return call

    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession

    async_engine = ldb.driver_engine()

    @idempotent(**options)
    async def apay(session: AsyncSession, key: str) -> str:
        runs.append(key)
        await session.execute(payments.insert().values(ref=key))
        return "parent"

    async def acall(key: str) -> Any:
        async with AsyncSession(async_engine) as session:
            return await apay(session, key)

    return lambda key: asyncio.run(acall(key))


def test_lease_owner_killed_mid_work_is_taken_over_after_the_lease(
    ldb: LeaseDb, children: Callable[..., Child], recorder: Recorder
) -> None:
    """SIGKILL during the work: retries wait or get InProgress until the lease ends, then one runs.

    The dead owner's claim was committed at once, so its row outlives it. Before the lease
    ends a retry with ``wait=0`` gets InProgress at once and one with a short ``wait`` waits
    and then gets it. After the lease (the store's clock moved past it) the next call takes
    over, runs once and completes; a late completion carrying the dead owner's token is refused.
    """
    scope = "tests.crash.lease"
    child = start(children, ldb, "lease", scope, "k1")
    dead = ldb.row(scope, "k1")
    assert dead.status == "in_progress"
    assert dead.locked_until - dead.created_at == LEASE * 1000
    child.kill()

    runs: list[str] = []

    def work(key: str) -> str:
        runs.append(key)
        return "parent"

    store = ldb.store()
    at_once = ldb.idempotent(
        work, key_from="key", scope=scope, store=store, lease=LEASE, wait=0, hooks=[recorder]
    )
    briefly = ldb.idempotent(
        work, key_from="key", scope=scope, store=store, lease=LEASE, wait=0.2, hooks=[recorder]
    )
    with pytest.raises(InProgress) as caught:
        ldb.call(at_once, "k1")
    assert 0 < caught.value.retry_after <= LEASE
    with pytest.raises(InProgress):
        ldb.call(briefly, "k1")
    assert recorder.names() == ["conflict:in_progress", "waited", "conflict:in_progress"]
    assert runs == []

    store.clock_offset = PAST_LEASE
    assert ldb.call(at_once, "k1") == "parent"
    assert ldb.call(at_once, "k1") == "parent"
    assert runs == ["k1"]
    row = ldb.row(scope, "k1")
    assert row.status == "completed"
    assert row.owner != dead.owner
    assert recorder.names()[-2:] == ["executed", "replayed"]

    assert not complete_as(ldb, scope, "k1", dead.owner, json.dumps("late"))
    assert ldb.row(scope, "k1").result == row.result


def test_stalled_lease_owner_late_result_is_refused(ldb: LeaseDb, children: Callable[..., Child]) -> None:
    """A lease owner that stalls past its lease finishes after the taker: its result is refused.

    The taker's result stays stored; the stalled process logs the refusal and returns the
    taker's result (the current owner's outcome) instead of its own.
    """
    scope = "tests.crash.stalled"
    child = start(children, ldb, "lease", scope, "k4")
    runs: list[str] = []

    def work(key: str) -> str:
        runs.append(key)
        return "parent"

    store = ldb.store(clock_offset=PAST_LEASE)
    taker = ldb.idempotent(work, key_from="key", scope=scope, store=store, lease=LEASE, wait=0)
    assert ldb.call(taker, "k4") == "parent"

    child.send("go")
    assert json.loads(child.expect("result")) == "parent"
    _, stderr = child.finish()
    assert "its result was refused" in stderr
    assert ldb.row(scope, "k4").result == json.dumps("parent")
    assert runs == ["k4"]


def test_transaction_owner_killed_before_commit_leaves_nothing(
    ldb: LeaseDb, children: Callable[..., Child]
) -> None:
    """SIGKILL after the business write, before commit: neither a key row nor a business row remains.

    The database rolls the dead connection's transaction back, key and write together; the
    retry runs exactly once and commits both.
    """
    scope = "tests.crash.transaction"
    child = start(children, ldb, "transaction", scope, "k2")
    child.kill()
    assert ldb.row(scope, "k2") is None
    assert ldb.payment_count() == 0

    runs: list[str] = []
    pay = transactional_pay(ldb, ldb.store(), scope, runs, wait=30)
    assert pay("k2") == "parent"
    assert pay("k2") == "parent"
    assert runs == ["k2"]
    assert ldb.payment_count() == 1
    assert ldb.row(scope, "k2").status == "completed"


def test_self_committing_function_killed_before_result_store_is_taken_over(
    ldb: LeaseDb, children: Callable[..., Child]
) -> None:
    """SIGKILL between a self-committing function's commit and the result store.

    The function's commit also committed the in-progress claim; the row carries the dead
    owner's token and a lease, so retries get InProgress until the lease passes and then take
    the key over and run (the business write of the dead call stays: such a function is
    at-least-once, which the warning it triggers says).
    """
    scope = "tests.crash.self_commit"
    child = start(children, ldb, "self-commit", scope, "k3")
    dead = ldb.row(scope, "k3")
    assert dead.status == "in_progress"
    assert ldb.payment_count() == 1
    child.kill()

    runs: list[str] = []
    store = ldb.store()
    pay = transactional_pay(ldb, store, scope, runs, wait=0)
    with pytest.raises(InProgress):
        pay("k3")
    assert runs == []

    store.clock_offset = PAST_LEASE
    assert pay("k3") == "parent"
    assert pay("k3") == "parent"
    assert runs == ["k3"]
    row = ldb.row(scope, "k3")
    assert row.status == "completed"
    assert row.owner != dead.owner
    assert ldb.payment_count() == 2


@pytest.mark.parametrize(
    "rounds", [pytest.param(1, id="short"), pytest.param(15, id="long", marks=pytest.mark.slow)]
)
def test_killed_at_arbitrary_points_never_strands_or_repeats_a_finished_key(
    ldb: LeaseDb, children: Callable[..., Child], rounds: int
) -> None:
    """A lease-mode worker looping over keys is SIGKILLed wherever it happens to be.

    The kill may land in a claim, in the function, in the result store or between calls.
    Afterwards (the clock moved past the lease) every key gets an answer: a key the worker
    reported done is replayed without running again, and no key is left in progress.
    """
    import random

    rng = random.Random(rounds)
    scope = "tests.crash.loop"
    runs: list[str] = []

    def work(key: str) -> str:
        runs.append(key)
        return f"parent:{key}"

    store = ldb.store(clock_offset=PAST_LEASE)
    retry = ldb.idempotent(work, key_from="key", scope=scope, store=store, lease=LEASE, wait=0)
    for r in range(rounds):
        child = children(
            "loop", ldb.driver, ldb.url, ldb.table, ldb.payments.name, scope, f"r{r}", str(LEASE)
        )
        done = [child.expect("done") for _ in range(rng.randint(1, 4))]
        child.kill()
        reached = int(done[-1].rsplit("-", 1)[1])
        keys = [f"r{r}-{i}" for i in range(reached + 3)]  # the ones done, the one in flight, and beyond
        runs.clear()
        results = {key: ldb.call(retry, key) for key in keys}
        for key in done:
            assert results[key] == f"child:{key}"
        assert not set(done) & set(runs)
        assert all(results[key] in (f"child:{key}", f"parent:{key}") for key in keys)
        statuses = {row.key: row.status for row in ldb.rows() if row.key.startswith(f"r{r}-")}
        assert set(statuses) == set(keys)
        assert set(statuses.values()) == {"completed"}
