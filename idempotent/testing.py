"""Test helpers for code that uses ``@idempotent``: an in-memory store, no database needed.

``MemoryStore`` accepts both modes. In transaction mode it records the key after the function
returns normally and drops it when the function raises; it is *not* atomic with any database
write the function makes (only the SQL store is). Use it in unit tests of your own code::

    store = MemoryStore()

    @idempotent(key_from="order_id", store=store)
    def place(order_id: str) -> str: ...
"""

from __future__ import annotations

import threading
import time
from typing import Any

from idempotent.core import ClaimRequest, Existing, Record, Status, Steps

__all__ = ["MemoryStore"]


class MemoryStore:
    """A thread-safe dict of records; ``clock_offset`` (seconds) moves its clock forward."""

    atomic = False
    engine = None

    def __init__(self, *, clock_offset: float = 0.0) -> None:
        self.clock_offset = clock_offset
        self.records: dict[tuple[str, str], Record] = {}
        self._lock = threading.Lock()

    def now(self) -> int:
        """The store's clock in epoch milliseconds."""
        return int(time.time() * 1000) + round(self.clock_offset * 1000)

    def for_dialect(self, dialect: Any) -> MemoryStore:
        return self

    def get(self, scope: str, key: str) -> Record | None:
        """The record for ``(scope, key)``, or None."""
        with self._lock:
            return self.records.get((scope, key))

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self.records.clear()

    def _new(self, request: ClaimRequest, now: int) -> Record:
        return Record(
            request.scope,
            request.key,
            request.fingerprint,
            Status.IN_PROGRESS.value,
            request.owner,
            now + request.lease_ms,
            now,
            now + request.ttl_ms,
        )

    def claim(self, request: ClaimRequest) -> Steps[Existing | None]:
        now = self.now()
        with self._lock:
            found = self.records.get((request.scope, request.key))
            if found is None:
                self.records[(request.scope, request.key)] = self._new(request, now)
                return None
        return Existing(found, now)
        yield  # a generator that never yields: no I/O

    def takeover(self, request: ClaimRequest, seen: Record) -> Steps[bool]:
        now = self.now()
        with self._lock:
            current = self.records.get((request.scope, request.key))
            stale = (
                current is not None
                and current.owner == seen.owner
                and (  # a live lease wins over expiry, as in the SQL store
                    current.locked_until <= now
                    if current.status == Status.IN_PROGRESS.value
                    else current.expires_at <= now
                )
            )
            if stale:
                self.records[(request.scope, request.key)] = self._new(request, now)
        return stale
        yield

    def _update(self, request: ClaimRequest, **changes: Any) -> bool:
        with self._lock:
            current = self.records.get((request.scope, request.key))
            if (
                current is None
                or current.owner != request.owner
                or current.status != Status.IN_PROGRESS.value
            ):
                return False
            if changes.pop("delete", False):
                del self.records[(request.scope, request.key)]
            else:
                fields = {name: getattr(current, name) for name in current.__dataclass_fields__}
                if changes.pop("keep", False):  # a stored outcome is kept at least ``wait`` (as in SQL)
                    fields["expires_at"] = max(current.expires_at, self.now() + request.wait_ms)
                fields.update(changes)
                self.records[(request.scope, request.key)] = Record(**fields)
            return True

    def complete(self, request: ClaimRequest, codec: str, text: str, *, own: bool) -> Steps[bool]:
        return self._update(
            request, status=Status.COMPLETED.value, result_codec=codec, result=text, keep=True
        )
        yield

    def fail(self, request: ClaimRequest, error_type: str, text: str, *, own: bool) -> Steps[bool]:
        return self._update(
            request,
            status=Status.FAILED.value,
            result_codec="json",
            result=text,
            error_type=error_type,
            keep=True,
        )
        yield

    def release(self, request: ClaimRequest, *, own: bool) -> Steps[bool]:
        return self._update(request, delete=True)
        yield

    def renew(self, request: ClaimRequest) -> Steps[bool]:
        return self._update(request, locked_until=self.now() + request.lease_ms)
        yield
