"""The decision core: what a call does, with no I/O.

A stored record, the call's fingerprint and the database's clock decide whether the call
executes, replays, waits, or is refused (:func:`decide`). The flows below (:func:`transaction_flow`,
:func:`lease_flow`) are generators that *yield* operations (:class:`Exec`, :class:`Begin`,
:class:`Call`, ...) and receive their results; the sync and async drivers in
:mod:`idempotent._drivers` perform them. The logic therefore exists once for both worlds.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from idempotent.codec import Serializer, encode_checked
from idempotent.errors import (
    IdempotencyError,
    IdempotencyWarning,
    InProgress,
    KeyReused,
    SerializationError,
    StoredError,
    TransactionAborted,
)
from idempotent.events import Event, Hooks

__all__ = [
    "AsyncLeaseStore",
    "ClaimRequest",
    "Decision",
    "Existing",
    "LeaseStore",
    "Record",
    "Status",
    "decide",
    "lease_flow",
    "transaction_flow",
]

T = TypeVar("T")

#: At most this many extra attempts after a deadlock or serialization failure while claiming
#: (and, for a unit the decorator owns, anywhere in the unit); ``retries=`` overrides it.
CLAIM_RETRIES = 3
#: Backoff before such a retry: a random delay up to RETRY_BASE * 2**attempt, at most RETRY_CAP s.
RETRY_BASE = 0.01
RETRY_CAP = 1.0
#: Polling interval bounds while waiting for a committed claim (lease mode) to finish: the
#: interval starts at POLL_MIN and doubles up to POLL_MAX, so a short call is noticed quickly.
POLL_MIN = 0.02
POLL_MAX = 0.5


class Status(str, enum.Enum):
    """The ``status`` column."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the keys table, as the core sees it."""

    scope: str
    key: str
    fingerprint: str | None
    status: str
    owner: str
    locked_until: int
    created_at: int
    expires_at: int
    result_codec: str | None = None
    result: str | None = None
    error_type: str | None = None


class Outcome(enum.Enum):
    """What a call does about an existing record."""

    REPLAY = "replay"
    RAISE_STORED = "raise_stored"
    MISMATCH = "mismatch"
    TAKEOVER = "takeover"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Decision:
    """:func:`decide`'s verdict; ``retry_after`` (seconds) is set for ``WAIT``."""

    outcome: Outcome
    retry_after: float = 0.0


def decide(record: Record, fingerprint: str | None, now: int) -> Decision:
    """Decide what a call with ``fingerprint`` does, given the ``record`` already stored at ``now`` (ms).

    A live lease wins over expiry: a call still running (in progress, lease not ended) is never
    taken over because its ``ttl`` passed; its row expires only once it is finished or abandoned.
    """
    live = record.status == Status.IN_PROGRESS and record.locked_until > now
    if record.expires_at <= now and not live:
        return Decision(Outcome.TAKEOVER)
    if fingerprint is not None and record.fingerprint is not None and record.fingerprint != fingerprint:
        return Decision(Outcome.MISMATCH)
    if record.status == Status.COMPLETED:
        return Decision(Outcome.REPLAY)
    if record.status == Status.FAILED:
        return Decision(Outcome.RAISE_STORED)
    if record.locked_until <= now:
        return Decision(Outcome.TAKEOVER)
    return Decision(Outcome.WAIT, retry_after=(record.locked_until - now) / 1000.0)


# ---------------------------------------------------------------------------------------------
# Operations the flows yield and the drivers perform.
# ---------------------------------------------------------------------------------------------
class Op:
    """Base of every operation a flow yields."""

    __slots__ = ()


@dataclass(slots=True)
class Exec(Op):
    """Run one precompiled statement. On the caller's connection, or in its own committed
    transaction on the store's engine when ``own`` is true. Result: rows when ``fetch``, else rowcount."""

    sql: str
    params: Any
    fetch: bool = False
    own: bool = False


@dataclass(slots=True)
class Peek(Op):
    """Read with one statement outside any transaction on the caller's connection (autocommit;
    on MySQL/MariaDB, in a transaction of its own that the driver then rolls back).

    Result: the rows. Used before the decorator begins a transaction it will own, so that a
    replay costs one round trip; the driver answers ``[]`` when the connection cannot do it.
    """

    sql: str
    params: Any


class Begin(Op):
    """Begin the transaction the decorator owns."""

    __slots__ = ()


class Commit(Op):
    """Commit the handle's current transaction."""

    __slots__ = ()


@dataclass(slots=True)
class ExecCommit(Op):
    """Write with one precompiled statement on the caller's connection, then commit the
    transaction the decorator owns (as :class:`Commit`) if it wrote one row. Result: the row count
    (nothing is committed unless it is 1).

    ``sql`` is the plain statement, sent alone and its row count checked before the COMMIT.
    ``guarded`` is the same write made to fail when it writes no row, so that a driver that can
    send it and COMMIT together, in one round trip (psycopg's pipeline mode), may: the server
    skips a COMMIT queued behind a failed statement. Errors are raised as they are, untranslated.
    """

    sql: str
    params: Any
    guarded: str


class Rollback(Op):
    """Roll back the handle's current transaction (no-op when there is none)."""

    __slots__ = ()


class EndUnwritten(Op):
    """End an attempt that wrote nothing (its claim found a record): the transaction the decorator
    owns, or the savepoint ``token`` when it joined the caller's transaction.

    Either way the database is left as if the attempt had been rolled back; the driver picks the
    cheaper verb. (On a ``Connection`` that is COMMIT, which keeps per-connection driver state
    such as psycopg's prepared statements; psycopg discards them on every ROLLBACK.)
    """

    __slots__ = ("token",)

    def __init__(self, token: Any) -> None:
        self.token = token


class Savepoint(Op):
    """Begin a SAVEPOINT; result: an opaque token."""

    __slots__ = ()


@dataclass(slots=True)
class EndSavepoint(Op):
    """Release (``commit=True``) or roll back the savepoint ``token``; errors are swallowed on rollback."""

    token: Any
    commit: bool


class Call(Op):
    """Run the wrapped function; result: its return value."""

    __slots__ = ()


class Flush(Op):
    """Flush the ORM session, so pending writes fail before the key is completed."""

    __slots__ = ()


class Marker(Op):
    """Result: the identity of the handle's current root transaction (None outside one)."""

    __slots__ = ()


@dataclass(slots=True)
class Sleep(Op):
    """Wait ``seconds`` without holding a transaction."""

    seconds: float


class StartRenewal(Op):
    """Start renewing the lease in the background (lease mode)."""

    __slots__ = ()


class StopRenewal(Op):
    """Stop the renewal started by :class:`StartRenewal`; result: False if a renewal found the lease lost."""

    __slots__ = ()


@dataclass(slots=True)
class Ask(Op):
    """Ask a store of the lease-store protocol (:class:`LeaseStore`) one question. Result: its answer.

    ``target`` is the adapter in :mod:`idempotent.stores`: the sync driver calls
    ``target.ask(name, args, kwargs)``, the async driver awaits ``target.ask_async(...)`` alike.
    """

    target: Any
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


Steps = Generator[Op, Any, T]


# ---------------------------------------------------------------------------------------------
# Store protocol: sans-IO, its methods are generators yielding Exec.
# ---------------------------------------------------------------------------------------------
class ClaimBlocked(IdempotencyError):
    """The claim waited for another transaction holding the key past the wait limit."""


class ClaimAborted(IdempotencyError):
    """The database aborted the transaction during the claim (deadlock or serialization failure)."""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Everything a store needs to claim a key."""

    scope: str
    key: str
    fingerprint: str | None
    owner: str
    ttl_ms: int
    lease_ms: int
    wait_ms: int
    own: bool = False  # lease mode: each statement in its own committed transaction


@dataclass(frozen=True, slots=True)
class Existing:
    """The claim found a record; ``now`` is the database clock when it was read."""

    record: Record
    now: int


class Store(Protocol):
    """Where keys live. Only a SQL store is atomic with the caller's own writes.

    Every method is a generator: it yields :class:`Exec` operations for the driver to run (a
    store with no database, such as :class:`idempotent.testing.MemoryStore`, yields nothing)
    and returns its answer.
    """

    def for_dialect(self, dialect: Any) -> BoundStore:
        """Return the store prepared for the connection's dialect (``None`` outside SQL)."""
        ...


class BoundStore(Protocol):
    """A store ready for one dialect.

    A store whose database reports deadlocks and serialization failures may also offer
    ``aborted(exc) -> bool``: the transaction flow then runs an owned unit again when the
    function's own statements or the COMMIT fail that way (see :func:`transaction_flow`).
    """

    #: True when the store's claim joins the caller's database transaction.
    atomic: bool

    def claim(self, request: ClaimRequest) -> Steps[Existing | None]:
        """Insert an in-progress row: ``None`` when claimed, else the record found.

        Raises ClaimBlocked past the wait, ClaimAborted on a deadlock or serialization failure.
        """
        ...

    def takeover(self, request: ClaimRequest, seen: Record) -> Steps[bool]:
        """Replace ``seen`` (expired, or a dead owner's) by a new claim; False when someone else did."""
        ...

    def complete(self, request: ClaimRequest, codec: str, text: str, *, own: bool) -> Steps[bool]:
        """Store the result while ``request.owner`` still owns the key; False when fenced out."""
        ...

    def fail(self, request: ClaimRequest, error_type: str, text: str, *, own: bool) -> Steps[bool]:
        """Store a failure while ``request.owner`` still owns the key."""
        ...

    def release(self, request: ClaimRequest, *, own: bool) -> Steps[bool]:
        """Delete the in-progress claim of ``request.owner``."""
        ...

    def renew(self, request: ClaimRequest) -> Steps[bool]:
        """Push ``locked_until`` to now + lease while ``request.owner`` owns the key."""
        ...


# ---------------------------------------------------------------------------------------------
# The lease-store protocol: what a store outside SQL implements (Redis, DynamoDB, etcd, ...).
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class LeaseStore(Protocol):
    """A store for lease mode, with blocking methods. It answers "what is stored now"; the
    decision core decides what a call does about it.

    A record is the :class:`Record` of one ``(scope, key)``. Every method is one atomic step on
    the store (a conditional write, a Lua script, a transaction), never a read followed by a
    separate write. Times are epoch milliseconds read from the store's own clock (plus its
    ``clock_offset``, so tests move time without sleeping).

    - :meth:`claim` stores a new in-progress record for ``request`` (owner ``request.owner``,
      ``locked_until = now + lease_ms``, ``created_at = now``, ``expires_at = now + ttl_ms``,
      no result) when there is no record, or when ``replacing`` is given and the stored record
      is still that one (same owner, status and ``locked_until``): then it returns None.
      Otherwise it changes nothing and returns the stored record with the clock's ``now``.
      (A claim sent again after its reply was lost finds the caller's own record; the core
      recognises it by its owner.) A store may raise :class:`ClaimAborted` for a conflict
      worth retrying; the core retries it.
    - :meth:`renew`, :meth:`complete` and :meth:`release` act only while ``request.owner``
      holds the record in progress, and answer whether they did. ``renew`` sets
      ``locked_until = now + lease_ms``; ``complete`` sets the status (``completed`` or
      ``failed``), ``result_codec``, ``result`` and ``error_type``, and keeps the record at
      least ``request.wait_ms`` (``expires_at = max(expires_at, now + wait_ms)``), so that a
      duplicate that waited for it replays it; ``release`` deletes the record.
    - :meth:`read` returns the stored record and ``now`` without changing anything.

    A record may vanish by itself once its ``expires_at`` and, while in progress, its
    ``locked_until`` have passed (a TTL); it must not vanish earlier.
    """

    def claim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """Store a new claim (None), or return the record found and the store's clock."""
        ...

    def renew(self, request: ClaimRequest) -> bool:
        """Push ``locked_until`` to now + ``request.lease_ms`` while the owner holds the key."""
        ...

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
        ...

    def release(self, request: ClaimRequest) -> bool:
        """Delete the record while ``request.owner`` holds it in progress."""
        ...

    def read(self, scope: str, key: str) -> Existing | None:
        """The stored record and the store's clock, or None."""
        ...


@runtime_checkable
class AsyncLeaseStore(Protocol):
    """:class:`LeaseStore` for asyncio: the same methods, awaitable, named with an ``a`` prefix
    (so one class may implement both)."""

    async def aclaim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """:meth:`LeaseStore.claim`."""
        ...

    async def arenew(self, request: ClaimRequest) -> bool:
        """:meth:`LeaseStore.renew`."""
        ...

    async def acomplete(
        self,
        request: ClaimRequest,
        *,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None = None,
    ) -> bool:
        """:meth:`LeaseStore.complete`."""
        ...

    async def arelease(self, request: ClaimRequest) -> bool:
        """:meth:`LeaseStore.release`."""
        ...

    async def aread(self, scope: str, key: str) -> Existing | None:
        """:meth:`LeaseStore.read`."""
        ...


# ---------------------------------------------------------------------------------------------
# The flows.
# ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Plan(Generic[T]):
    """One call's parameters, prepared by the decorator."""

    store: BoundStore
    request: ClaimRequest
    wait: float
    serializer: Serializer
    return_hint: Any
    max_bytes: int
    store_errors: tuple[type[BaseException], ...]
    hooks: Hooks
    function: str
    owned: bool = True
    commit: bool = False
    lease: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: Look for a stored result with one autocommit read before claiming (see ``peek_first``).
    peek: bool = False
    #: Set when the call returned (or raised) a stored outcome instead of running.
    replayed: bool = False
    #: Extra attempts of an owned unit the database aborted (transaction mode).
    retries: int = CLAIM_RETRIES


def new_owner() -> str:
    """A random token identifying one claim: 128 random bits as 32 hex digits."""
    return os.urandom(16).hex()


def _replay(plan: Plan[Any], record: Record) -> Any:
    plan.replayed = True
    if record.status == Status.FAILED:
        raise _rebuild_error(plan, record)
    if record.result is None or record.result_codec is None:
        return None
    if record.result_codec != plan.serializer.name:
        raise SerializationError(
            f"the stored result of {plan.function} was written by serializer {record.result_codec!r}, "
            f"but the function now uses {plan.serializer.name!r}; restore the serializer or evict the key"
        )
    return plan.serializer.loads(record.result, plan.return_hint)


def _rebuild_error(plan: Plan[Any], record: Record) -> BaseException:
    import json  # noqa: PLC0415  (only the rare failed-record path needs it)

    args = tuple(json.loads(record.result or "[]"))
    for cls in plan.store_errors:
        if f"{cls.__module__}.{cls.__qualname__}" == record.error_type:
            try:
                return cls(*args)
            except Exception:
                break
    return StoredError(
        f"{plan.function} failed earlier with {record.error_type}{args!r}; the failure was recorded "
        "for this key and is replayed as StoredError because that type cannot be rebuilt",
        type_name=record.error_type or "",
        args=args,
    )


def _encode_error(exc: BaseException) -> tuple[str, str]:
    import json  # noqa: PLC0415  (only the rare failed-record path needs it)

    cls = type(exc)
    try:
        text = json.dumps(list(exc.args), ensure_ascii=False)
    except (TypeError, ValueError):
        text = json.dumps([str(exc)], ensure_ascii=False)
    return f"{cls.__module__}.{cls.__qualname__}", text


def _in_progress(plan: Plan[Any], retry_after: float) -> InProgress:
    return InProgress(
        f"another call of {plan.function} with key {plan.request.key!r} is still running; "
        f"retry in {max(retry_after, 0.0):.1f} s",
        retry_after=retry_after,
    )


def _blocked(plan: Plan[Any], exc: ClaimBlocked, retry_after: float) -> InProgress:
    """The claim waited past its limit: for the key's row (another call with the key holds it),
    or, on SQLite, for the whole database, which one writer at a time may hold."""
    if "database is locked" not in str(exc).lower():
        return _in_progress(plan, retry_after)
    return InProgress(
        f"the key {plan.request.key!r} of {plan.function} could not be claimed: the SQLite database is "
        "locked by another connection's write transaction (SQLite allows one writer at a time, and "
        f"the driver's busy timeout ran out); retry in {max(retry_after, 0.0):.1f} s, or give the "
        "driver a longer timeout (connect_args={'timeout': seconds})",
        retry_after=retry_after,
    )


def _mismatch(plan: Plan[Any]) -> KeyReused:
    return KeyReused(
        f"key {plan.request.key!r} was already used for {plan.function} with different arguments; "
        "use a new key for a new request",
        scope=plan.request.scope,
        key=plan.request.key,
    )


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _poll_delay(polls: int, retry_after: float, left: float) -> float:
    """Seconds a waiter sleeps before its next look: doubling from POLL_MIN, at most POLL_MAX,
    never past the holder's lease nor the caller's remaining ``wait`` (``left``)."""
    return min(left, POLL_MAX, max(POLL_MIN, min(retry_after, POLL_MIN * (1 << min(polls, 16)))))


def _claim(plan: Plan[Any], deadline: float) -> Steps[tuple[Existing | None, Decision]]:
    """Claim the key, or decide about the record found (taking over an expired or abandoned one).

    Returns ``(None, _)`` when the call owns the key now, else the record and the decision.
    """
    request = _with_wait(plan.request, max(0, int(_remaining(deadline) * 1000)))
    found = yield from plan.store.claim(request)
    if found is None or _ours(found, request):
        return None, _CLAIMED
    decision = decide(found.record, request.fingerprint, found.now)
    if decision.outcome is Outcome.TAKEOVER:
        # The takeover waits at most ``wait`` for a row another caller is taking over right now.
        if (yield from plan.store.takeover(request, found.record)):
            return None, _CLAIMED
        # Someone else took it over first, and may have finished while we waited: look again
        # (even with no wait left), so a result committed meanwhile is replayed, not refused.
        found = yield from plan.store.claim(_with_wait(request, 0))
        if found is None:
            return None, _CLAIMED
        decision = decide(found.record, request.fingerprint, found.now)
        if decision.outcome is Outcome.TAKEOVER:
            decision = Decision(Outcome.WAIT, retry_after=0.0)
    return found, decision


def _ours(found: Existing, request: ClaimRequest) -> bool:
    """True for our own claim: a claim statement sent again after its connection dropped may find
    the row its first attempt committed (the owner token is random per call)."""
    return found.record.owner == request.owner and found.record.status == Status.IN_PROGRESS


def _settle(plan: Plan[Any], found: Existing, decision: Decision) -> Any:
    """Act on a final decision: replay the stored outcome, or refuse a reused key."""
    if decision.outcome is Outcome.MISMATCH:
        plan.hooks.emit(Event.MISMATCH, plan)
        raise _mismatch(plan)
    plan.hooks.emit(Event.REPLAYED, plan)
    return _replay(plan, found.record)


_CLAIMED = Decision(Outcome.TAKEOVER)


class _Aborted(Exception):
    """An attempt the decorator owned was aborted by the database and undone: run it again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _ClaimLost(Exception):
    """The result write matched no row: the transaction that held the claim is gone."""


def _is_aborted(plan: Plan[Any], exc: BaseException) -> bool:
    """True for a deadlock or serialization failure (the store translates driver errors)."""
    if isinstance(exc, (ClaimAborted, _ClaimLost)):
        return True
    aborted = getattr(plan.store, "aborted", None)
    return bool(aborted is not None and aborted(exc))


def _backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): full jitter under a doubling cap."""
    return random.uniform(0.0, min(RETRY_CAP, RETRY_BASE * (1 << min(attempt, 16))))  # noqa: S311  (jitter, not crypto)


def transaction_flow(plan: Plan[T]) -> Steps[T]:
    """Transaction mode: the key commits or rolls back with the function's own writes.

    A unit the decorator owns that the database aborts (deadlock, serialization failure: in the
    claim, in the function's statements, storing the result or at COMMIT) is undone and run
    again, at most ``plan.retries`` times with jittered backoff, then ``TransactionAborted``.
    """
    store, request = plan.store, plan.request
    deadline = time.monotonic() + plan.wait
    if plan.owned and plan.peek and getattr(store, "peek_first", False):
        # A replay then costs one autocommit read; anything but a final record is claimed below.
        try:
            seen = yield from store.peek(request)  # type: ignore[attr-defined]
        except (ClaimAborted, ClaimBlocked):
            seen = None  # the claim below decides
        if seen is not None:
            verdict = decide(seen.record, request.fingerprint, seen.now)
            if verdict.outcome in (Outcome.REPLAY, Outcome.RAISE_STORED, Outcome.MISMATCH):
                return _settle(plan, seen, verdict)  # type: ignore[no-any-return]
    retried = 0
    while True:
        try:
            return (yield from _transaction_attempt(plan, deadline))
        except _Aborted as exc:
            plan.hooks.emit(Event.CONFLICT, plan, detail="aborted")
            if retried >= plan.retries:
                raise _aborted_error(plan, exc.cause, retried) from exc.cause
            retried += 1
            yield Sleep(_backoff(retried))


def _aborted_error(plan: Plan[Any], cause: BaseException, retried: int) -> TransactionAborted:
    if isinstance(cause, _ClaimLost):
        return TransactionAborted(
            f"the transaction holding the claim of key {plan.request.key!r} ended while {plan.function} "
            f"ran ({cause}); the decorator rolled back what the handle held and stored no result: roll "
            "back and retry the whole unit of work"
        )
    tries = f" after {retried + 1} attempts" if retried else ""
    return TransactionAborted(
        f"the database aborted the transaction of {plan.function} with key {plan.request.key!r}{tries} "
        f"({str(cause).strip()}); roll back and retry the whole unit of work"
    )


def _transaction_attempt(plan: Plan[T], deadline: float) -> Steps[T]:
    """One attempt: claim (or wait, replay, refuse), run, store the result, commit."""
    store, request, hooks = plan.store, plan.request, plan.hooks
    waited = False
    polls = 0
    while True:
        token = None
        try:
            if plan.owned:
                yield Begin()
            else:
                token = yield Savepoint()
            found, decision = yield from _claim(plan, deadline)
            if found is not None:
                # Nothing was written: end what this attempt began, then act on the decision.
                yield EndUnwritten(token)
        except ClaimAborted as exc:
            yield from _undo(plan, token)
            if plan.owned:
                raise _Aborted(exc) from None
            hooks.emit(Event.CONFLICT, plan, detail="aborted")
            raise _aborted_error(plan, exc, 0) from exc.__cause__
        except ClaimBlocked as exc:
            yield from _undo(plan, token)
            hooks.emit(Event.CONFLICT, plan, detail="timeout")
            raise _blocked(plan, exc, max(plan.wait, 1.0)) from None
        except BaseException:
            yield from _undo(plan, token)
            raise
        if found is None:
            break
        if decision.outcome is not Outcome.WAIT:
            return _settle(plan, found, decision)  # type: ignore[no-any-return]
        # WAIT: a committed claim (lease mode, or a self-committing function) is still running.
        left = _remaining(deadline)
        if left <= 0 or not plan.owned:
            hooks.emit(Event.CONFLICT, plan, detail="in_progress")
            raise _in_progress(plan, decision.retry_after)
        if not waited:
            hooks.emit(Event.WAITED, plan)
            waited = True
        yield Sleep(_poll_delay(polls, decision.retry_after, left))
        polls += 1

    # Claimed: run the function inside the same transaction. Everything from here to the end
    # either completes the unit or undoes it: a caller that catches the error and commits
    # anyway never commits a half-claimed key.
    marker = yield Marker()
    ended = recorded = merged = False
    try:
        errors_point = (yield Savepoint()) if plan.owned and plan.store_errors else None
        try:
            # Renews the claim's lease only once the function committed it itself (the driver
            # watches the transaction), so a long call after its own commit is not taken over.
            yield StartRenewal()
            result = yield Call()
            yield StopRenewal()
            yield Flush()
        except BaseException as exc:
            yield StopRenewal()
            ended = (yield Marker()) is not marker
            if errors_point is None or ended or not isinstance(exc, plan.store_errors):
                raise
            yield EndSavepoint(errors_point, commit=False)
            error_type, text = _encode_error(exc)
            if not (yield from store.fail(request, error_type, text, own=False)):
                raise _ClaimLost("its claim was rolled back") from exc
            yield Commit()
            recorded = True
            hooks.emit(Event.EXECUTED, plan, detail="failed")
            raise
        ended = (yield Marker()) is not marker
        text = encode_checked(plan.serializer, result, plan.return_hint, plan.max_bytes)
        # A unit the decorator owns and nothing else ended: the result and the COMMIT may go
        # together (the store's guarded statement fails, so nothing commits, if no row matched).
        single = plan.owned and not ended and errors_point is None and getattr(store, "pipelined", False)
        if single:
            stored = yield from store.complete_commit(request, plan.serializer.name, text)  # type: ignore[attr-defined]
        else:
            stored = yield from store.complete(request, plan.serializer.name, text, own=False)
        if not stored:
            # No row of ours: the function (or the database, on a deadlock it caught) rolled the
            # claim back, or its committed claim was taken over. Never commit as if it worked.
            if ended:
                hooks.emit(Event.CONFLICT, plan, detail="fenced")
            raise _ClaimLost(  # noqa: TRY301  (undone by the handler below like any other failure)
                "it was rolled back, or taken over after the function committed it"
                if ended
                else "the database rolled it back"
            )
        if single:
            pass  # committed with the result
        elif ended:
            warnings.warn(
                f"{plan.function} ended the transaction itself; its key committed with its writes and "
                "the result was stored in a second, fenced transaction. Leave the commit to the decorator "
                "(or to the caller that began the transaction) to store both atomically",
                IdempotencyWarning,
                stacklevel=4,
            )
            yield Commit()
        else:
            if errors_point is not None:
                yield EndSavepoint(errors_point, commit=True)
            if plan.owned:
                yield Commit()
            else:
                # A failed RELEASE may or may not have merged the unit into the caller's
                # transaction: from here on only rolling all of it back is sure to undo the unit.
                merged = True
                yield EndSavepoint(token, commit=True)
                if plan.commit:
                    yield Commit()
    except BaseException as exc:
        if recorded:
            raise
        lost = merged or isinstance(exc, _ClaimLost)
        yield from _after_failure(plan, token, ended=ended, lost=lost)
        if isinstance(exc, _ClaimLost) or (not ended and _is_aborted(plan, exc)):
            if plan.owned and not ended:
                raise _Aborted(exc) from None
            hooks.emit(Event.CONFLICT, plan, detail="aborted")
            raise _aborted_error(plan, exc, 0) from (exc.__cause__ if isinstance(exc, ClaimAborted) else exc)
        raise
    hooks.emit(Event.EXECUTED, plan)
    return result  # type: ignore[no-any-return]


def _after_failure(plan: Plan[Any], token: Any, *, ended: bool, lost: bool) -> Steps[None]:
    """Undo the unit after anything failed between the claim and the end of the unit.

    Normally that is rolling back what the decorator began. When the claim is lost, whatever
    the handle holds now is not the unit's transaction: it is rolled back whole. When the
    function committed the claim itself, the committed in-progress row is deleted in a short
    transaction; if even that fails, the row's lease lets the next caller take it over, and
    the original error is the one that propagates.
    """
    if lost:
        yield from _quietly(Rollback(), plan)
    elif not ended:
        yield from _undo(plan, token)
    else:
        try:
            yield Rollback()
            yield from plan.store.release(plan.request, own=False)
            yield Commit()
        except Exception:
            logging.getLogger("idempotent").warning(
                "could not release the claim of %s key %r after it failed; it will be taken over once "
                "its lease expires",
                plan.function,
                plan.request.key,
                exc_info=True,
            )
            yield from _quietly(Rollback(), plan)
    plan.hooks.emit(Event.RELEASED, plan)


def _quietly(op: Op, plan: Plan[Any]) -> Steps[None]:
    """Perform a clean-up step; its own failure is logged, never raised over the original error."""
    try:
        yield op
    except Exception:
        logging.getLogger("idempotent").warning(
            "clean-up of %s key %r failed", plan.function, plan.request.key, exc_info=True
        )


def _with_wait(request: ClaimRequest, wait_ms: int) -> ClaimRequest:
    if request.wait_ms == wait_ms:
        return request
    return ClaimRequest(
        request.scope,
        request.key,
        request.fingerprint,
        request.owner,
        request.ttl_ms,
        request.lease_ms,
        wait_ms,
        request.own,
    )


def _undo(plan: Plan[Any], token: Any) -> Steps[None]:
    """Roll back what the decorator began (its transaction, or its savepoint when it joined)."""
    if plan.owned:
        yield from _quietly(Rollback(), plan)
    elif token is not None:
        yield from _quietly(EndSavepoint(token, commit=False), plan)


def lease_flow(plan: Plan[T]) -> Steps[T]:
    """Lease mode: the claim commits at once; the result commits only while the lease is still ours."""
    store, request, hooks = plan.store, plan.request, plan.hooks
    deadline = time.monotonic() + plan.wait
    if plan.peek and getattr(store, "peek_first", False):
        # Frequent replays: a replay is then one autocommit read of the stored result instead of
        # the claim statement; anything but a final record is claimed below.
        try:
            seen = yield from store.read(request)  # type: ignore[attr-defined]
        except (ClaimAborted, ClaimBlocked):
            seen = None  # the claim below decides
        if seen is not None and seen.record.status in (Status.COMPLETED, Status.FAILED):
            verdict = decide(seen.record, request.fingerprint, seen.now)
            if verdict.outcome in (Outcome.REPLAY, Outcome.RAISE_STORED, Outcome.MISMATCH):
                return _settle(plan, seen, verdict)  # type: ignore[no-any-return]
    aborted = 0
    waited = False
    polls = 0
    while True:
        try:
            found, decision = yield from _claim(plan, deadline)
        except ClaimAborted as exc:
            if aborted < CLAIM_RETRIES:
                aborted += 1
                continue
            raise TransactionAborted(
                f"the database kept aborting the claim of key {request.key!r} for {plan.function} ({exc})"
            ) from exc.__cause__
        except ClaimBlocked as exc:
            hooks.emit(Event.CONFLICT, plan, detail="timeout")
            raise _blocked(plan, exc, plan.lease) from None
        if found is None:
            break
        if decision.outcome is not Outcome.WAIT:
            return _settle(plan, found, decision)  # type: ignore[no-any-return]
        left = _remaining(deadline)
        if left <= 0:
            hooks.emit(Event.CONFLICT, plan, detail="in_progress")
            raise _in_progress(plan, decision.retry_after)
        if not waited:
            hooks.emit(Event.WAITED, plan)
            waited = True
        yield Sleep(_poll_delay(polls, decision.retry_after, left))
        polls += 1

    yield StartRenewal()
    try:
        result = yield Call()
    except BaseException as exc:
        yield StopRenewal()
        if plan.store_errors and isinstance(exc, plan.store_errors):
            error_type, text = _encode_error(exc)
            if (yield from _clean_up(plan, exc, store.fail(request, error_type, text, own=True), "record")):
                hooks.emit(Event.EXECUTED, plan, detail="failed")
        elif (yield from _clean_up(plan, exc, store.release(request, own=True), "release")):
            hooks.emit(Event.RELEASED, plan)
        raise
    yield StopRenewal()
    try:
        text = encode_checked(plan.serializer, result, plan.return_hint, plan.max_bytes)
    except BaseException as exc:
        if (yield from _clean_up(plan, exc, store.release(request, own=True), "release")):
            hooks.emit(Event.RELEASED, plan)
        raise
    if not (yield from store.complete(request, plan.serializer.name, text, own=True)):
        hooks.emit(Event.CONFLICT, plan, detail="fenced")
        return (yield from _fenced_outcome(plan, deadline))
    hooks.emit(Event.EXECUTED, plan)
    return result  # type: ignore[no-any-return]


def _clean_up(plan: Plan[Any], error: BaseException, steps: Steps[Any], verb: str) -> Steps[bool]:
    """Run a clean-up after the function raised ``error``; False when it failed.

    A clean-up failure never replaces the function's own exception: it is logged and attached
    to ``error`` as a note. The claim then stays until its lease ends, when it is taken over.
    """
    try:
        yield from steps
    except Exception as problem:
        message = (
            f"idempotent could not {verb} the claim of {plan.function} key {plan.request.key!r} after it "
            f"failed ({type(problem).__name__}: {problem}); the key is taken over once its lease ends"
        )
        logging.getLogger("idempotent").warning(message, exc_info=True)
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(message)
        return False
    return True


def _fenced_outcome(plan: Plan[T], deadline: float) -> Steps[T]:
    """Our lease was taken over: refuse our result and give the current owner's outcome."""
    logging.getLogger("idempotent").warning(
        "lease of %s key %r expired before it completed; its result was refused (another caller took over)",
        plan.function,
        plan.request.key,
    )
    found = yield from plan.store.claim(_with_wait(plan.request, 0))
    if found is None:  # the taker released it: ours is not the outcome any more either
        yield from plan.store.release(plan.request, own=True)
        raise _in_progress(plan, 0.0)
    decision = decide(found.record, plan.request.fingerprint, found.now)
    if decision.outcome in (Outcome.REPLAY, Outcome.RAISE_STORED):
        return _replay(plan, found.record)  # type: ignore[no-any-return]
    raise _in_progress(plan, max(decision.retry_after, 0.0))
