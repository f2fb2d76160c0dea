"""Stores with only get/set (the interface of other idempotency middleware) through GetSetStore."""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import pytest

from idempotent import InProgress, idempotent
from idempotent.errors import ConfigurationError, IdempotencyWarning
from idempotent.stores import GetSetStore, record_key
from tests.stores.doubles import CachedResponses


def test_a_get_set_store_is_wrapped_with_a_warning() -> None:
    """Passing a bare get/set store works through GetSetStore and warns, once, that it cannot
    protect calls in flight; the result is replayed from it."""
    inner = CachedResponses()
    runs: list[str] = []

    @idempotent(key_from="key", scope="tests.getset.bare", mode="lease", store=inner)
    async def work(key: str) -> dict[str, str]:
        runs.append(key)
        return {"key": key}

    async def scenario() -> list[Any]:
        return [await work("a"), await work("a")]

    with pytest.warns(IdempotencyWarning, match="cannot see a request still in flight") as caught:
        assert asyncio.run(scenario()) == [{"key": "a"}, {"key": "a"}]
    assert len(caught) == 1
    assert runs == ["a"]
    stored = json.loads(inner.data[record_key("tests.getset.bare", "a")])
    assert (stored["status"], stored["result"]) == ("completed", '{"key":"a"}')
    assert inner.ttls[record_key("tests.getset.bare", "a")] == 24 * 3600


def test_wrapped_explicitly_no_warning_and_in_progress() -> None:
    """Wrapped explicitly there is no warning; a duplicate arriving after the first call's
    claim was stored gets InProgress (only truly simultaneous first calls can both run)."""
    inner = CachedResponses()
    store = GetSetStore(inner)
    inside, finish = asyncio.Event(), asyncio.Event()

    @idempotent(key_from="key", scope="tests.getset.flight", mode="lease", wait=0, store=store)
    async def work(key: str) -> str:
        inside.set()
        await finish.wait()
        return "first"

    async def scenario() -> tuple[Any, Any]:
        first = asyncio.create_task(work("k"))
        await inside.wait()
        with pytest.raises(InProgress):
            await work("k")
        finish.set()
        return await first, await work("k")

    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)
        assert asyncio.run(scenario()) == ("first", "first")


def test_failure_releases_without_delete() -> None:
    """A failing call on a store without delete() leaves a tombstone: the retry runs again."""
    store = GetSetStore(CachedResponses())
    runs: list[bool] = []

    @idempotent(key_from="key", scope="tests.getset.fail", mode="lease", store=store)
    async def work(key: str, fail: bool) -> str:
        runs.append(fail)
        if fail:
            raise RuntimeError("boom")
        return "ok"

    async def scenario() -> str:
        with pytest.raises(RuntimeError):
            await work("k", True)
        return await work("k", False)

    assert asyncio.run(scenario()) == "ok"
    assert runs == [True, False]


def test_sync_function_with_an_async_get_set_store() -> None:
    """A plain function cannot use async get()/set(): the error says so."""
    store = GetSetStore(CachedResponses())

    @idempotent(key_from="key", scope="tests.getset.sync", mode="lease", store=store)
    def work(key: str) -> int:
        return 1

    with pytest.raises(ConfigurationError, match="async get"):
        work("k")


def test_not_a_store() -> None:
    """An object that is no store at all is refused at decoration, naming what to pass."""
    with pytest.raises(ConfigurationError, match="is not an idempotency store"):

        @idempotent(key_from="key", scope="tests.getset.none", mode="lease", store=object())
        def work(key: str) -> int:
            return 1

    with pytest.raises(ConfigurationError, match="get\\(\\) and set\\(\\)"):
        GetSetStore(object())
