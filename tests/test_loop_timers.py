"""The per-loop clocks that replace a timer per call: the renewal clock of async calls and the
Redis store's watchdog of async exchanges. A call with a short interval registered while the
shared callback is due much later must bring that callback forward."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from idempotent import _drivers


class _Plan:
    """The least of a plan :class:`idempotent._drivers._AsyncRenewal` reads."""

    def __init__(self, lease: float) -> None:
        self.lease = lease


class _Pool:
    """Stands for a connection pool: the watchdogs are kept per pool, weakly."""


def test_short_renewal_brings_the_clock_forward() -> None:
    """A call with a 0.3 s lease registered after one with a 60 s lease is renewed within a
    quarter of its interval, not at the long call's period."""

    async def scenario() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        _, long_stop = _drivers._renew_later(_Plan(60.0))  # type: ignore[arg-type]
        clock = _drivers._clocks[loop]
        assert clock.handle is not None
        first = clock.handle.when() - loop.time()
        _, short_stop = _drivers._renew_later(_Plan(0.3))  # type: ignore[arg-type]
        assert clock.handle is not None
        second = clock.handle.when() - loop.time()
        long_stop()
        short_stop()
        return first, second, clock.period

    first, second, period = asyncio.run(scenario())
    assert first > 0.5  # a 60 s lease renews after 20 s: checked every second
    assert second <= 0.1 / 4 + 0.01
    assert period == pytest.approx(0.1 / 4)


def test_renewal_clock_stops_and_lets_its_loop_go() -> None:
    """Once nothing is registered for a whole period the clock schedules nothing more, and a
    closed loop is not kept alive by it."""
    loops: list[weakref.ref[Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loops.append(weakref.ref(loop))
        _, stop = _drivers._renew_later(_Plan(0.03))  # type: ignore[arg-type]
        stop()
        clock = _drivers._clocks[loop]
        for idle in (False, True):  # the tick after a registration reschedules, the next one idles
            assert clock.handle is not None
            clock.handle.cancel()  # tick now rather than wait for it
            clock._tick(loop)
            assert (clock.handle is None) is idle

    asyncio.run(scenario())
    gc.collect()
    assert loops[0]() is None


def test_watchdog_brought_forward_by_a_shorter_timeout() -> None:
    """The Redis store's watchdog: a connection with a 0.2 s socket timeout watched after one
    with 30 s is checked within a quarter of 0.2 s."""
    redis_module = pytest.importorskip("idempotent.redis")

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        pool, slow, fast = _Pool(), object(), object()
        dog = redis_module._watch(pool, slow, 30.0)
        first = dog.handle.when() - loop.time()
        redis_module._watch(pool, fast, 0.2)
        second = dog.handle.when() - loop.time()
        dog.due.clear()
        return first, second

    first, second = asyncio.run(scenario())
    assert first > 0.5
    assert second <= 0.2 / 4 + 0.01
