"""The in-memory store for unit tests of user code: no database, both modes."""

from __future__ import annotations

import asyncio

import pytest

from idempotent import InProgress, KeyReused, MissingKey, idempotent
from idempotent.testing import MemoryStore


def test_memory_store_records_after_return_and_replays() -> None:
    """A normal return is recorded; the retry replays without running."""
    store = MemoryStore()
    runs = []

    @idempotent(key_from="order_id", scope="tests.mem", store=store)
    def charge(order_id: str, amount: int) -> dict[str, int]:
        runs.append(order_id)
        return {"charged": amount}

    assert charge("o-1", 5) == {"charged": 5}
    assert charge("o-1", 5) == {"charged": 5}
    assert runs == ["o-1"]
    with pytest.raises(KeyReused):
        charge("o-1", 6)


def test_memory_store_drops_key_on_exception() -> None:
    """An exception drops the key, so a retry runs again."""
    store = MemoryStore()
    runs = []

    @idempotent(key_from="order_id", scope="tests.mem2", store=store)
    def charge(order_id: str, fail: bool) -> int:
        runs.append(order_id)
        if fail:
            raise RuntimeError("declined")
        return 1

    with pytest.raises(RuntimeError):
        charge("o-2", True)
    assert store.get("tests.mem2", "o-2") is None
    assert charge("o-2", False) == 1
    assert runs == ["o-2", "o-2"]


def test_memory_store_async_and_lease_mode() -> None:
    """Async functions and lease mode work on the memory store too."""
    store = MemoryStore()
    runs = []

    @idempotent(key_from="key", scope="tests.mem3", store=store, mode="lease", lease=30)
    async def send(key: str) -> str:
        runs.append(key)
        return "sent"

    async def scenario() -> list[str]:
        return [await send("k"), await send("k")]

    assert asyncio.run(scenario()) == ["sent", "sent"]
    assert runs == ["k"]


def test_memory_store_in_progress_and_expiry() -> None:
    """A live claim makes a duplicate wait then InProgress; moving the clock past the lease lets it take over."""
    store = MemoryStore()

    @idempotent(key_from="key", scope="tests.mem4", store=store, wait=0, lease=10)
    def work(key: str) -> int:
        return 2

    from idempotent.core import ClaimRequest

    request = ClaimRequest("tests.mem4", "k", None, "someone-else", 60_000, 10_000, 0)
    assert store.claim(request) is None
    with pytest.raises(InProgress):
        work("k")
    store.clock_offset = 11
    assert work("k") == 2


def test_required_key_missing() -> None:
    """required=True (the default) refuses a call without a key; required=False runs it plainly."""
    store = MemoryStore()

    @idempotent(key_from="key", scope="tests.mem5", store=store)
    def strict(key: str | None) -> int:
        return 1

    @idempotent(key_from="key", scope="tests.mem6", store=store, required=False)
    def lenient(key: str | None) -> int:
        return 2

    with pytest.raises(MissingKey, match="required=False"):
        strict(None)
    assert lenient(None) == 2
    assert store.records == {}
