"""Lease mode and asyncio: exceptions arrive unwrapped, cancellation releases the lease.

These run the decorated coroutine functions directly on one event loop per test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from idempotent import idempotent
from idempotent.events import Event, EventInfo
from tests.lease.conftest import LeaseDb, Recorder


def test_function_error_propagates_as_itself(async_ldb: LeaseDb, recorder: Recorder) -> None:
    """An exception from the function reaches the caller as that exception, not inside an ExceptionGroup."""

    @idempotent(key_from="job_id", scope="tests.lease.async_error", mode="lease", store=async_ldb.store(),
                hooks=[recorder])  # fmt: skip
    async def job(job_id: str) -> str:
        raise LookupError("no such customer")

    async def main() -> None:
        with pytest.raises(LookupError, match="no such customer"):
            await job("j-1")

    asyncio.run(main())
    assert async_ldb.rows() == []
    assert recorder.names() == ["released"]


@pytest.mark.parametrize("how", ["task.cancel", "cancel-scope"])
def test_cancellation_releases_the_lease(async_ldb: LeaseDb, recorder: Recorder, how: str) -> None:
    """Cancelling a call mid-work deletes its claim (in a shielded clean-up) and re-raises the cancellation.

    Both asyncio's ``Task.cancel()`` and an anyio cancel scope are covered; a retry runs at once.
    """
    store = async_ldb.store()
    runs: list[str] = []

    async def main() -> None:
        entered = asyncio.Event()

        @idempotent(
            key_from="job_id", scope="tests.lease.cancelled", mode="lease", store=store, hooks=[recorder]
        )
        async def job(job_id: str) -> str:
            runs.append(job_id)
            if len(runs) == 1:
                entered.set()
                await asyncio.Event().wait()  # until cancelled
            return "finished"

        if how == "task.cancel":
            task = asyncio.create_task(job("j-2"))
            await entered.wait()
            assert (
                await asyncio.to_thread(async_ldb.row, "tests.lease.cancelled", "j-2")
            ).status == "in_progress"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            async with anyio.create_task_group() as group:
                group.start_soon(job, "j-2")
                await entered.wait()
                group.cancel_scope.cancel()
        assert await asyncio.to_thread(async_ldb.row, "tests.lease.cancelled", "j-2") is None
        assert await job("j-2") == "finished"

    asyncio.run(main())
    assert runs == ["j-2", "j-2"]
    assert recorder.names() == ["released", "executed"]


def test_tasks_on_one_loop_execute_once(async_ldb: LeaseDb) -> None:
    """Concurrent tasks with one key on one event loop: one execution, the others wait and replay it."""
    callers = 5
    store = async_ldb.store()
    runs: list[str] = []

    async def main() -> list[Any]:
        all_waiting = asyncio.Event()
        waited = 0

        def hook(info: EventInfo) -> None:
            nonlocal waited
            if info.event is Event.WAITED:
                waited += 1
                if waited == callers - 1:
                    all_waiting.set()

        @idempotent(
            key_from="order_id", scope="tests.lease.tasks", mode="lease", store=store, wait=60, hooks=[hook]
        )
        async def ship(order_id: str) -> list[str]:
            runs.append(order_id)
            await all_waiting.wait()
            return ["shipped", order_id]

        return await asyncio.gather(*(ship("o-1") for _ in range(callers)))

    assert asyncio.run(main()) == [["shipped", "o-1"]] * callers
    assert runs == ["o-1"]


def test_cancelled_waiter_leaves_the_owner_alone(async_ldb: LeaseDb, recorder: Recorder) -> None:
    """Cancelling a duplicate that is waiting for the owner releases nothing: the owner still completes."""
    store = async_ldb.store()

    async def main() -> None:
        entered, release, waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()

        def hook(info: EventInfo) -> None:
            recorder(info)
            if info.event is Event.WAITED:
                waiting.set()  # hooks run on the calling task, here the event loop's thread

        @idempotent(key_from="order_id", scope="tests.lease.waiter", mode="lease", store=store, wait=60,
                    hooks=[hook])  # fmt: skip
        async def ship(order_id: str) -> str:
            entered.set()
            await release.wait()
            return "shipped"

        owner = asyncio.create_task(ship("o-2"))
        await entered.wait()
        waiter = asyncio.create_task(ship("o-2"))
        await waiting.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        row = await asyncio.to_thread(async_ldb.row, "tests.lease.waiter", "o-2")
        assert row.status == "in_progress"
        release.set()
        assert await owner == "shipped"

    asyncio.run(main())
    assert async_ldb.row("tests.lease.waiter", "o-2").status == "completed"
