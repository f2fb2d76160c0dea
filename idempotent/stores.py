"""Stores beside the SQL store: the lease-store protocol, its adapter, and get/set stores.

A store for lease mode implements :class:`LeaseStore` (blocking methods), :class:`AsyncLeaseStore`
(``a``-prefixed coroutines), or both: five atomic steps (``claim``, ``renew``, ``complete``,
``release``, ``read``) that answer what is stored now. The decision core
(:mod:`idempotent.core`) decides what a call does with the answer; :func:`resolve` puts a store
of this protocol behind the core's internal store interface, so the SQL store, the memory store,
:class:`idempotent.redis.RedisStore` and any store you write run through the same flows.

:class:`GetSetStore` adapts a store with only ``get(key)`` and ``set(key, value, ttl)`` (the
interface of other idempotency middleware). It is weaker: see its docstring.

``docs/stores.md`` explains how to write a store and test it with
:class:`idempotent.testing.StoreConformance`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import time
import warnings
from collections.abc import Generator
from typing import Any

import anyio

from idempotent.core import (
    Ask,
    AsyncLeaseStore,
    ClaimRequest,
    Existing,
    LeaseStore,
    Record,
    Status,
    Steps,
)
from idempotent.errors import ConfigurationError, IdempotencyWarning

__all__ = [
    "AsyncLeaseStore",
    "ClaimRequest",
    "Existing",
    "GetSetStore",
    "LeaseMethods",
    "LeaseStore",
    "Record",
    "Status",
    "record_key",
    "resolve",
]

_COMPLETED = Status.COMPLETED.value
_FAILED = Status.FAILED.value
_IN_PROGRESS = Status.IN_PROGRESS.value


def record_key(scope: str, key: str) -> str:
    """The single text key under which a store without columns keeps ``(scope, key)``.

    The scope's length comes first, so no scope/key pair can spell another one's key
    (``"a:b" + "c"`` and ``"a" + "b:c"`` differ): ``"12:orders.place:o-1"``.
    """
    return f"{len(scope)}:{scope}:{key}"


# ---------------------------------------------------------------------------------------------
# The ten protocol methods, written once over two hooks.
# ---------------------------------------------------------------------------------------------
class LeaseMethods:
    """:class:`LeaseStore` and :class:`AsyncLeaseStore` written once, over two hooks.

    A store subclasses it and implements ``_step(name, args)`` (blocking) and
    ``_astep(name, args)`` (async): ``name`` is ``"claim"``, ``"renew"``, ``"complete"``,
    ``"release"`` or ``"read"``, and ``args`` the method's arguments in order (``complete``:
    ``request, status, codec, result, error_type``). The SQL, memory and get/set stores do
    (``RedisStore`` implements the methods directly); a store of your own may too, or implement
    the methods directly.
    """

    def _step(self, name: str, args: tuple[Any, ...]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _astep(self, name: str, args: tuple[Any, ...]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def claim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """Claim ``request``'s key (None), or return the stored record and the store's clock."""
        return self._step("claim", (request, replacing))  # type: ignore[no-any-return]

    def renew(self, request: ClaimRequest) -> bool:
        """Push the lease while ``request.owner`` holds the key in progress."""
        return bool(self._step("renew", (request,)))

    def complete(
        self,
        request: ClaimRequest,
        *,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None = None,
    ) -> bool:
        """Store the outcome while ``request.owner`` holds the key in progress."""
        return bool(self._step("complete", (request, status, codec, result, error_type)))

    def release(self, request: ClaimRequest) -> bool:
        """Delete the record while ``request.owner`` holds it in progress."""
        return bool(self._step("release", (request,)))

    def read(self, scope: str, key: str) -> Existing | None:
        """The stored record and the store's clock, or None."""
        return self._step("read", (scope, key))  # type: ignore[no-any-return]

    async def aclaim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """:meth:`claim`, awaited."""
        return await self._astep("claim", (request, replacing))  # type: ignore[no-any-return]

    async def arenew(self, request: ClaimRequest) -> bool:
        """:meth:`renew`, awaited."""
        return bool(await self._astep("renew", (request,)))

    async def acomplete(
        self,
        request: ClaimRequest,
        *,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None = None,
    ) -> bool:
        """:meth:`complete`, awaited."""
        return bool(await self._astep("complete", (request, status, codec, result, error_type)))

    async def arelease(self, request: ClaimRequest) -> bool:
        """:meth:`release`, awaited."""
        return bool(await self._astep("release", (request,)))

    async def aread(self, scope: str, key: str) -> Existing | None:
        """:meth:`read`, awaited."""
        return await self._astep("read", (scope, key))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The adapter from the public protocol to the core's internal store interface.
# ---------------------------------------------------------------------------------------------
class _Bound:
    """A :class:`LeaseStore`/:class:`AsyncLeaseStore` seen through the core's ``BoundStore``.

    Its generator methods yield one :class:`~idempotent.core.Ask` each; the sync driver answers
    it with :meth:`ask`, the async driver with :meth:`ask_async`.
    """

    atomic = False
    engine = None

    def __init__(self, store: Any) -> None:
        self.store = store
        self.has_sync = isinstance(store, LeaseStore)
        self.has_async = isinstance(store, AsyncLeaseStore)

    def __repr__(self) -> str:
        return repr(self.store)

    def for_dialect(self, dialect: Any) -> _Bound:
        return self

    # -- performing (called by the drivers) -------------------------------------------------------
    def ask(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self.has_sync:
            raise ConfigurationError(
                f"{self.store!r} implements only the async lease-store methods (aclaim, ...), so only "
                "async functions can use it: make the function async def, or give the store blocking "
                "methods (claim, renew, complete, release, read)"
            )
        return getattr(self.store, name)(*args, **kwargs)

    async def ask_async(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.has_async:
            return await getattr(self.store, "a" + name)(*args, **kwargs)
        # A store with blocking methods only: keep the event loop free.
        method = functools.partial(getattr(self.store, name), *args, **kwargs)
        return await anyio.to_thread.run_sync(method)

    # -- the core's BoundStore ------------------------------------------------------------------
    def claim(self, request: ClaimRequest) -> Steps[Existing | None]:
        return (yield Ask(self, "claim", (request,)))  # type: ignore[no-any-return]

    def takeover(self, request: ClaimRequest, seen: Record) -> Steps[bool]:
        return (yield Ask(self, "claim", (request, seen))) is None

    def complete(self, request: ClaimRequest, codec: str, text: str, *, own: bool) -> Steps[bool]:
        outcome = {"status": _COMPLETED, "codec": codec, "result": text, "error_type": None}
        return bool((yield Ask(self, "complete", (request,), outcome)))

    def fail(self, request: ClaimRequest, error_type: str, text: str, *, own: bool) -> Steps[bool]:
        outcome = {"status": _FAILED, "codec": "json", "result": text, "error_type": error_type}
        return bool((yield Ask(self, "complete", (request,), outcome)))

    def release(self, request: ClaimRequest, *, own: bool) -> Steps[bool]:
        return bool((yield Ask(self, "release", (request,))))

    def renew(self, request: ClaimRequest) -> Steps[bool]:
        return bool((yield Ask(self, "renew", (request,))))


def _has_get_set(store: object) -> bool:
    return callable(getattr(store, "get", None)) and callable(getattr(store, "set", None))


def resolve(store: Any, mode: str, function: str) -> Any:
    """The store as the decision core uses it, checked against ``mode``.

    The SQL store is used as it is; a store of the lease-store protocol goes behind the
    adapter; a store with only ``get``/``set`` behind :class:`GetSetStore` (with a warning that
    it cannot protect calls in flight). Anything else is a :class:`ConfigurationError`.
    """
    if hasattr(store, "for_dialect"):
        return store
    if isinstance(store, (LeaseStore, AsyncLeaseStore)):
        if mode == "transaction" and not getattr(store, "allows_transaction_mode", False):
            raise ConfigurationError(
                f"{function} runs in transaction mode, which records its key in the same database "
                f"transaction as the function's own writes; {store!r} keeps keys outside that database "
                "and cannot join the transaction, so the key and the writes could disagree after a "
                "crash. Use @idempotent(..., mode='lease') (at-least-once with crash recovery, for "
                "effects outside the database) or the SQL store"
            )
        return _Bound(store)
    if _has_get_set(store):
        warnings.warn(
            f"{store!r} has only get() and set(); it is used through idempotent.stores.GetSetStore, "
            "which cannot see a request still in flight (two concurrent first requests may both run). "
            "Wrap it yourself, GetSetStore(store), to acknowledge this, or use a store of the "
            "lease-store protocol such as idempotent.redis.RedisStore",
            IdempotencyWarning,
            stacklevel=2,
        )
        return resolve(GetSetStore(store), mode, function)
    raise ConfigurationError(
        f"{store!r} is not an idempotency store: pass SQLStore(engine), idempotent.redis.RedisStore, "
        "idempotent.testing.MemoryStore, or an object with the lease-store methods (claim, renew, "
        "complete, release, read, or their async forms aclaim, ...; see idempotent.stores.LeaseStore)"
    )


# ---------------------------------------------------------------------------------------------
# The SQL store's lease-store methods: its own statements, each in a short committed transaction.
# ---------------------------------------------------------------------------------------------
class SQLLeaseMethods(LeaseMethods):
    """:class:`LeaseStore` and :class:`AsyncLeaseStore` for ``SQLStore``, on its ``engine``.

    Each step runs the statements lease mode runs, through the same driver code; a blocking
    method needs a sync ``Engine``, an ``a``-method either kind.
    """

    engine: Any

    def for_dialect(self, dialect: Any) -> Any:  # pragma: no cover - SQLStore's own
        raise NotImplementedError

    def _lease_steps(self, name: str, request: ClaimRequest, *args: Any) -> tuple[Any, Steps[Any]]:
        from idempotent import _drivers  # noqa: PLC0415  (the drivers import the SQL store's modules)
        from idempotent.codec import JsonCodec  # noqa: PLC0415
        from idempotent.core import Plan  # noqa: PLC0415
        from idempotent.events import Hooks  # noqa: PLC0415

        if self.engine is None:
            raise _drivers.missing_lease_engine(repr(self))
        plan: Plan[Any] = Plan(
            store=self.for_dialect(self.engine.dialect),
            request=dataclasses.replace(request, own=True),
            wait=request.wait_ms / 1000.0,
            serializer=JsonCodec(),
            return_hint=Any,
            max_bytes=0,
            store_errors=(),
            hooks=Hooks(),
            function=repr(self),
            extra={"engine": self.engine},
        )
        return plan, getattr(self, "_steps_" + name)(plan, *args)

    @staticmethod
    def _steps_claim(plan: Any, replacing: Record | None) -> Steps[Existing | None]:
        bound, request = plan.store, plan.request
        if replacing is not None and (yield from bound.takeover(request, replacing)):
            return None
        return (yield from bound.claim(request))  # type: ignore[no-any-return]

    @staticmethod
    def _steps_renew(plan: Any) -> Steps[bool]:
        return (yield from plan.store.renew(plan.request))  # type: ignore[no-any-return]

    @staticmethod
    def _steps_complete(
        plan: Any, status: str, codec: str | None, result: str | None, error_type: str | None
    ) -> Steps[bool]:
        bound, request = plan.store, plan.request
        # (None passes through as NULL: a result without codec or text stores neither.)
        if status == _FAILED:
            return (yield from bound.fail(request, error_type, result, own=True))  # type: ignore[no-any-return]
        return (yield from bound.complete(request, codec, result, own=True))  # type: ignore[no-any-return]

    @staticmethod
    def _steps_release(plan: Any) -> Steps[bool]:
        return (yield from plan.store.release(plan.request, own=True))  # type: ignore[no-any-return]

    @staticmethod
    def _steps_read(plan: Any) -> Steps[Existing | None]:
        return (yield from plan.store.read(plan.request))  # type: ignore[no-any-return]

    @staticmethod
    def _split(name: str, args: tuple[Any, ...]) -> tuple[ClaimRequest, tuple[Any, ...]]:
        if name == "read":
            return _reader(*args), ()
        return args[0], args[1:]

    def _step(self, name: str, args: tuple[Any, ...]) -> Any:
        from idempotent import _drivers  # noqa: PLC0415

        if not _is_sync_engine(self.engine):
            raise ConfigurationError(
                f"{self!r} has an AsyncEngine: call its async methods (aclaim, ...) or give it a sync engine"
            )
        request, rest = self._split(name, args)
        plan, steps = self._lease_steps(name, request, *rest)
        return _drivers._drive_plain_sync(steps, plan)

    async def _astep(self, name: str, args: tuple[Any, ...]) -> Any:
        from idempotent import _drivers  # noqa: PLC0415

        request, rest = self._split(name, args)
        plan, steps = self._lease_steps(name, request, *rest)
        return await _drivers._drive_plain_async(steps, plan)


def _is_sync_engine(engine: Any) -> bool:
    return engine is None or not hasattr(engine, "sync_engine")


def _reader(scope: str, key: str) -> ClaimRequest:
    """A request that only names a key (for reads)."""
    return ClaimRequest(scope, key, None, "", 0, 0, 0, own=True)


# ---------------------------------------------------------------------------------------------
# get/set stores.
# ---------------------------------------------------------------------------------------------
_FIELDS = ("fingerprint", "status", "owner", "locked_until", "created_at", "expires_at")
_RESULT_FIELDS = ("result_codec", "result", "error_type")
_GONE = '{"gone":true}'  # what release() leaves when the store cannot delete

#: One step of a get/set operation: ("get", key), ("set", key, value, ttl seconds) or ("delete", key).
_Step = tuple[Any, ...]


class GetSetStore(LeaseMethods):
    """A store with only ``get(key)`` and ``set(key, value, ttl)`` used as a lease store. Weaker.

    ``inner`` is any object with ``get(key) -> value | None`` and ``set(key, value, ttl)`` (sync
    or ``async def``, the TTL in whole seconds, passed as ``ttl_seconds=`` when ``set`` has a
    parameter of that name, else as the third argument), such as the stores of other
    idempotency middleware; ``delete(key)`` is used when present. The adapter stores each
    record as JSON text under :func:`record_key` and must get back exactly what it set.

    **No in-flight protection.** ``get`` then ``set`` is a check followed by a separate write:
    two first requests arriving together may both see no record and both run, and a stale
    owner's completion is refused only when it is not racing the new owner. Completed results
    are replayed as usual. Times come from this process's clock (plus ``clock_offset``), not
    the server's. Use :class:`idempotent.redis.RedisStore` or another store of the lease-store
    protocol where a duplicate run costs money.
    """

    #: Not atomic with the caller's database writes: lease mode only.
    atomic = False

    def __init__(self, inner: Any, *, clock_offset: float = 0.0) -> None:
        if not _has_get_set(inner):
            raise ConfigurationError(f"GetSetStore needs an object with get() and set(), not {inner!r}")
        self.inner = inner
        self.clock_offset = clock_offset
        self._is_async = inspect.iscoroutinefunction(inner.get)
        try:
            params = inspect.signature(inner.set).parameters
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            params = {}  # type: ignore[assignment]
        self._ttl_keyword = "ttl_seconds" in params
        self._delete = getattr(inner, "delete", None)

    def __repr__(self) -> str:
        return f"GetSetStore({self.inner!r})"

    def now(self) -> int:
        """This process's clock in epoch milliseconds, plus ``clock_offset``."""
        return int(time.time() * 1000) + round(self.clock_offset * 1000)

    # -- the operations, once, as generators of get/set/delete steps ------------------------------
    @staticmethod
    def _decode(raw: Any, request_scope: str, request_key: str) -> Record | None:
        if raw is None:
            return None
        data = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        if data.get("gone"):
            return None
        return Record(request_scope, request_key, *(data.get(n) for n in _FIELDS + _RESULT_FIELDS))

    @staticmethod
    def _encode(record: Record) -> str:
        return json.dumps({n: getattr(record, n) for n in _FIELDS + _RESULT_FIELDS}, ensure_ascii=False)

    def _ttl(self, record: Record, now: int) -> int:
        end = record.expires_at
        if record.status == _IN_PROGRESS:
            end = max(end, record.locked_until)
        return max(1, math.ceil((end - now) / 1000))

    def _put(self, key: str, record: Record, now: int) -> _Step:
        return ("set", key, self._encode(record), self._ttl(record, now))

    def _op_claim(self, request: ClaimRequest, replacing: Record | None) -> Generator[_Step, Any, Any]:
        key = record_key(request.scope, request.key)
        now = self.now()
        current = self._decode((yield ("get", key)), request.scope, request.key)
        if current is not None and not (replacing is not None and _same_claim(current, replacing)):
            return Existing(current, now)
        record = Record(
            request.scope, request.key, request.fingerprint, _IN_PROGRESS, request.owner,
            now + request.lease_ms, now, now + request.ttl_ms,
        )  # fmt: skip
        yield self._put(key, record, now)
        return None

    def _op_owned(self, request: ClaimRequest, **changes: Any) -> Generator[_Step, Any, bool]:
        key = record_key(request.scope, request.key)
        now = self.now()
        current = self._decode((yield ("get", key)), request.scope, request.key)
        if current is None or current.owner != request.owner or current.status != _IN_PROGRESS:
            return False
        if changes.pop("delete", False):
            yield ("delete", key) if self._delete is not None else ("set", key, _GONE, 1)
            return True
        if "lease_ms" in changes:
            changes = {"locked_until": now + changes.pop("lease_ms")}
        else:  # an outcome is kept at least the caller's wait, so that waiters see it
            changes["expires_at"] = max(current.expires_at, now + request.wait_ms)
        yield self._put(key, dataclasses.replace(current, **changes), now)
        return True

    def _op_read(self, scope: str, key: str) -> Generator[_Step, Any, Existing | None]:
        now = self.now()
        current = self._decode((yield ("get", record_key(scope, key))), scope, key)
        return None if current is None else Existing(current, now)

    # -- running them -----------------------------------------------------------------------------
    def _set_args(self, step: _Step) -> tuple[tuple[Any, ...], dict[str, Any]]:
        _, key, value, ttl = step
        if self._ttl_keyword:
            return (key, value), {"ttl_seconds": ttl}
        return (key, value, ttl), {}

    def _perform(self, step: _Step) -> Any:
        """Send one step to the inner store; its answer (an awaitable when the store is async)."""
        if step[0] == "get":
            return self.inner.get(step[1])
        if step[0] == "delete":
            return self._delete(step[1])  # type: ignore[misc]
        args, kwargs = self._set_args(step)
        return self.inner.set(*args, **kwargs)

    def _drive(self, op: Generator[_Step, Any, Any]) -> Any:
        if self._is_async:
            raise ConfigurationError(
                f"{self.inner!r} has async get()/set(): use it from async functions or the ASGI middleware"
            )
        answer: Any = None
        while True:
            try:
                step = op.send(answer)
            except StopIteration as stop:
                return stop.value
            answer = self._perform(step)

    async def _adrive(self, op: Generator[_Step, Any, Any]) -> Any:
        answer: Any = None
        while True:
            try:
                step = op.send(answer)
            except StopIteration as stop:
                return stop.value
            answer = self._perform(step)
            if inspect.isawaitable(answer):
                answer = await answer

    # -- LeaseMethods hooks ------------------------------------------------------------------------
    def _op(self, name: str, args: tuple[Any, ...]) -> Generator[_Step, Any, Any]:
        if name == "claim":
            return self._op_claim(*args)
        if name == "read":
            return self._op_read(*args)
        request = args[0]
        if name == "renew":
            return self._op_owned(request, lease_ms=request.lease_ms)
        if name == "release":
            return self._op_owned(request, delete=True)
        status, codec, result, error_type = args[1:]
        return self._op_owned(
            request, status=status, result_codec=codec, result=result, error_type=error_type
        )

    def _step(self, name: str, args: tuple[Any, ...]) -> Any:
        return self._drive(self._op(name, args))

    async def _astep(self, name: str, args: tuple[Any, ...]) -> Any:
        return await self._adrive(self._op(name, args))


def _same_claim(current: Record, seen: Record) -> bool:
    """True when ``current`` is still the record ``seen`` (nobody renewed, finished or took it over)."""
    return (
        current.owner == seen.owner
        and current.status == seen.status
        and current.locked_until == seen.locked_until
    )
