"""One periodic callback per event loop for many deadlines, where a timer each would cost more.

On an event loop a timer (``call_later``/``call_at`` and its cancellation) costs about a quarter
of a loopback round trip. Calls that nearly always end before their deadline (a lease renewal
due after ``lease / 3``, a socket timeout of seconds) register their deadline here instead, and
one callback a period fires the items whose deadline passed. An item so fires up to one period
late; the period is a quarter of the shortest delay registered (at most 1 s), and a shorter
delay brings a callback due later forward. The callback stops once nothing was registered for a
whole period, and it is a callback rather than a task: nothing is left pending when the loop
closes, and the ticker holds its loop only weakly.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Ticker"]

K = TypeVar("K", bound=Hashable)


class Ticker(Generic[K]):
    """Calls ``fire(loop, item)`` once for each registered item whose deadline passed."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[asyncio.AbstractEventLoop, K], None]
    ) -> None:
        self.loop = weakref.ref(loop)
        self.fire = fire
        self.due: dict[K, float] = {}
        self.period = 1.0
        self.handle: asyncio.TimerHandle | None = None
        self.busy = False  # something was registered since the last tick

    def add(self, loop: asyncio.AbstractEventLoop, item: K, delay: float) -> None:
        """Fire ``item`` in ``delay`` seconds unless it is taken out of :attr:`due` first."""
        now = loop.time()
        self.due[item] = now + delay
        self.busy = True
        if delay / 4 < self.period:
            self.period = max(delay / 4, 0.001)
            if self.handle is not None and self.handle.when() > now + self.period:
                self.handle.cancel()  # due too late for this item
                self.handle = None
        if self.handle is None:
            self.handle = loop.call_at(now + self.period, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for item, due in list(self.due.items()):
            if due <= now:
                del self.due[item]
                self.fire(loop, item)
        if self.due or self.busy:
            self.busy = False
            self.handle = loop.call_at(now + self.period, self._tick, loop)
        else:
            self.handle = None
