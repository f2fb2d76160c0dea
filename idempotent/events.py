"""Events and hooks: count what the decorator does in your own metrics.

Every event is also logged at DEBUG level on ``logging.getLogger("idempotent")``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventInfo", "Hook", "Hooks"]

logger = logging.getLogger("idempotent")


class Event(str, enum.Enum):
    """What happened to one call."""

    EXECUTED = "executed"  # the function ran and its outcome was stored
    REPLAYED = "replayed"  # a stored outcome was returned (or a stored error raised)
    WAITED = "waited"  # the call waited for another call holding the key
    CONFLICT = "conflict"  # the call gave up waiting, was aborted, or lost its lease
    MISMATCH = "mismatch"  # the key was reused with other arguments
    RELEASED = "released"  # the function raised and the claim was dropped, so a retry runs


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event: which function, scope and key, and a detail word for some events."""

    event: Event
    function: str
    scope: str
    key: str
    detail: str = ""


Hook = Callable[[EventInfo], None]


class Hooks:
    """The callbacks of one decorator (plus the process-wide ones from ``configure``)."""

    __slots__ = ("callbacks",)

    def __init__(self, callbacks: Sequence[Hook] = ()) -> None:
        self.callbacks = tuple(callbacks)

    def emit(self, event: Event, plan: Any, detail: str = "") -> None:
        """Call every hook; a hook that raises is logged, never allowed to break the call."""
        if not self.callbacks and not logger.isEnabledFor(logging.DEBUG):
            return
        info = EventInfo(event, plan.function, plan.request.scope, plan.request.key, detail)
        logger.debug(
            "%s %s scope=%r key=%r %s", info.event.value, info.function, info.scope, info.key, detail
        )
        for hook in self.callbacks:
            try:
                hook(info)
            except Exception:
                logger.exception("idempotent hook %r failed on %s", hook, info.event.value)
