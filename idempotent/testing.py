"""Test helpers for code that uses ``@idempotent``: an in-memory store, no database needed.

``MemoryStore`` accepts both modes. In transaction mode it records the key after the function
returns normally and drops it when the function raises; it is *not* atomic with any database
write the function makes (only the SQL store is). Use it in unit tests of your own code::

    store = MemoryStore()

    @idempotent(key_from="order_id", store=store)
    def place(order_id: str) -> str: ...
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from idempotent.core import ClaimRequest, Existing, Record, Status
from idempotent.stores import LeaseMethods

if TYPE_CHECKING:
    from idempotent._conformance import StoreConformance

__all__ = ["MemoryStore", "StoreConformance"]

_IN_PROGRESS = Status.IN_PROGRESS.value


class MemoryStore(LeaseMethods):
    """A thread-safe dict of records; ``clock_offset`` (seconds) moves its clock forward.

    It implements the lease-store protocol (:class:`idempotent.stores.LeaseStore` and
    :class:`~idempotent.stores.AsyncLeaseStore`) and, being a test double, also accepts
    transaction mode (``allows_transaction_mode``).
    """

    #: Not atomic with the caller's database writes (only the SQL store is).
    atomic = False
    engine = None
    allows_transaction_mode = True

    def __init__(self, *, clock_offset: float = 0.0) -> None:
        self.clock_offset = clock_offset
        self.records: dict[tuple[str, str], Record] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self.records)} records)"

    def now(self) -> int:
        """The store's clock in epoch milliseconds."""
        return int(time.time() * 1000) + round(self.clock_offset * 1000)

    def get(self, scope: str, key: str) -> Record | None:
        """The record for ``(scope, key)``, or None."""
        with self._lock:
            return self.records.get((scope, key))

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self.records.clear()

    # -- the lease-store steps (LeaseMethods hooks) ------------------------------------------------
    def _step(self, name: str, args: tuple[Any, ...]) -> Any:
        return getattr(self, "_" + name)(*args)

    async def _astep(self, name: str, args: tuple[Any, ...]) -> Any:
        return self._step(name, args)  # no I/O

    def _claim(self, request: ClaimRequest, replacing: Record | None) -> Existing | None:
        """Store a new in-progress record unless one is there (or is no longer ``replacing``)."""
        now = self.now()
        ident = (request.scope, request.key)
        with self._lock:
            found = self.records.get(ident)
            if found is not None and not (
                replacing is not None
                and (found.owner, found.status, found.locked_until)
                == (replacing.owner, replacing.status, replacing.locked_until)
            ):
                return Existing(found, now)
            self.records[ident] = Record(
                request.scope, request.key, request.fingerprint, _IN_PROGRESS, request.owner,
                now + request.lease_ms, now, now + request.ttl_ms,
            )  # fmt: skip
            return None

    def _update(self, request: ClaimRequest, **changes: object) -> bool:
        ident = (request.scope, request.key)
        with self._lock:
            current = self.records.get(ident)
            if current is None or current.owner != request.owner or current.status != _IN_PROGRESS:
                return False
            if changes.pop("delete", False):
                del self.records[ident]
            else:
                self.records[ident] = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
            return True

    def _renew(self, request: ClaimRequest) -> bool:
        return self._update(request, locked_until=self.now() + request.lease_ms)

    def _complete(
        self,
        request: ClaimRequest,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None,
    ) -> bool:
        current = self.get(request.scope, request.key)
        # A stored outcome is kept at least ``wait`` (as in the SQL store), so waiters see it.
        expires_at = max(current.expires_at, self.now() + request.wait_ms) if current else 0
        return self._update(
            request,
            status=status,
            result_codec=codec,
            result=result,
            error_type=error_type,
            expires_at=expires_at,
        )

    def _release(self, request: ClaimRequest) -> bool:
        return self._update(request, delete=True)

    def _read(self, scope: str, key: str) -> Existing | None:
        now = self.now()
        found = self.get(scope, key)
        return None if found is None else Existing(found, now)


def __getattr__(name: str) -> object:
    # StoreConformance needs pytest, which the library itself does not: imported on first use.
    if name == "StoreConformance":
        from idempotent._conformance import StoreConformance  # noqa: PLC0415

        return StoreConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
