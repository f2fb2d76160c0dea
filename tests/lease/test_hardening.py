"""Lease mode under pressure: live leases against expiry, renewals, fork, takeover races, dropped
connections.

Time is moved with the store's ``clock_offset``; concurrent callers are synchronised with thread
events and engine events on the statements that reach the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from idempotent import InProgress, SQLStore, idempotent
from idempotent.core import ClaimRequest, Existing, Record, Status
from idempotent.decorator import PEEK_AT
from idempotent.testing import MemoryStore
from tests.lease.conftest import LeaseDb, Recorder, make_ldb
from tests.lease.test_lease import Background, Gate
from tests.proxy import Proxy

TTL = 3600.0


class Statements:
    """Counts the statements of one kind that reach the database through an engine."""

    def __init__(self, engine: Any, match: Callable[[str], bool]) -> None:
        self.engine = engine.sync_engine if hasattr(engine, "sync_engine") else engine
        self.match = match
        self.count = 0
        self.params: list[Any] = []
        self._cond = threading.Condition()
        sa.event.listen(self.engine, "after_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if self.match(statement):
            with self._cond:
                self.count += 1
                self.params.append(parameters)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` such statements ran in all (fail after ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= count, timeout):
                pytest.fail(f"only {self.count} of {count} statements reached the database")

    def close(self) -> None:
        sa.event.remove(self.engine, "after_cursor_execute", self._seen)


def is_renewal(statement: str) -> bool:
    """The renew statement is the only one that sets ``locked_until`` first."""
    return "SET locked_until" in statement


# -- a live lease wins over expiry -----------------------------------------------------------------
def test_renewed_call_past_its_ttl_is_not_taken_over(ldb: LeaseDb, recorder: Recorder) -> None:
    """A call still renewing its lease keeps its key after ``ttl``: a duplicate gets InProgress, not a run.

    The lease is 3 s (renewed every second) so a loaded machine is unlikely to delay a renewal past it.

    The store's clock is moved past the TTL while the call runs; once a renewal carried the
    moved clock, the row is expired by its TTL but its lease is live, and the lease wins.
    """
    store = ldb.store()
    renewals = Statements(store.engine, is_renewal)
    gate = Gate()
    runs: list[str] = []

    def export_report(job_id: str) -> str:
        runs.append(job_id)
        if len(runs) == 1:
            gate.hold()
        return "exported"

    fn = ldb.idempotent(
        export_report, key_from="job_id", store=store, ttl=TTL, lease=3.0, wait=0, hooks=[recorder]
    )
    call = Background(ldb, fn, "j-1")
    gate.wait_entered()
    store.clock_offset = TTL + 1
    renewals.wait_for(renewals.count + 2)  # the second one surely read the moved clock
    try:
        with pytest.raises(InProgress):
            ldb.call(fn, "j-1")
    finally:
        gate.release.set()
        renewals.close()
    assert call.result() == "exported"
    assert runs == ["j-1"]
    assert recorder.names() == ["conflict:in_progress", "executed"]


def test_memory_store_live_lease_wins_over_expiry() -> None:
    """MemoryStore decides like the SQL store: a running call within its lease is not taken over after its TTL."""
    store = MemoryStore()
    runs: list[str] = []

    @idempotent(key_from="job_id", scope="tests.lease.memory_live", mode="lease", store=store, wait=0)
    def job(job_id: str) -> str:
        runs.append(job_id)
        return "ran"

    now = store.now()
    store.records[("tests.lease.memory_live", "j-1")] = Record(
        "tests.lease.memory_live", "j-1", None, Status.IN_PROGRESS.value, "other-owner",
        locked_until=now + 60_000, created_at=now - 7_200_000, expires_at=now - 3_600_000,
    )  # fmt: skip
    with pytest.raises(InProgress):
        job("j-1")
    assert runs == []
    store.clock_offset = 61  # the lease ends too: now it is abandoned and taken over
    assert job("j-1") == "ran"


# -- renewals: one engine never waits on another, each renewal has its own timeout -----------------
SERVERS = [(name, driver) for name in ("postgresql", "mariadb") for driver in ("sync", "async")]


@pytest.fixture(params=SERVERS, ids=[f"{n}-{d}" for n, d in SERVERS])
def server_ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL and MariaDB (row locks a test can hold), sync and async drivers."""
    name, driver = request.param
    yield from make_ldb(name, driver, tmp_path)


@pytest.fixture(params=("postgresql", "mariadb"))
def server_sync_ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL and MariaDB through their sync drivers."""
    yield from make_ldb(request.param, "sync", tmp_path)


class RenewalWatch:
    """Tracks the renew statements of one engine: how many ended, failed, and whether one is running."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine.sync_engine if hasattr(engine, "sync_engine") else engine
        self.inflight = 0
        self.done = 0
        self.failed = 0
        self.cond = threading.Condition()
        for name, fn in (
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("handle_error", self._error),
        ):
            sa.event.listen(self.engine, name, fn)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if is_renewal(statement):
            with self.cond:
                self.inflight += 1

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if is_renewal(statement):
            with self.cond:
                self.inflight -= 1
                self.done += 1
                self.cond.notify_all()

    def _error(self, context: Any) -> None:
        if context.statement is not None and is_renewal(context.statement):
            with self.cond:
                self.inflight -= 1
                self.failed += 1
                self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                pytest.fail(f"{what} never happened")

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._before)
        sa.event.remove(self.engine, "after_cursor_execute", self._after)
        sa.event.remove(self.engine, "handle_error", self._error)


def held_call(ldb: LeaseDb, store: SQLStore, job_id: str) -> tuple[Gate, Background]:
    """Start a lease-mode call (scope ``tests.lease.held_job``, lease 0.6 s, so renewals every 0.2 s)
    that runs until its gate is released; return once it is running."""
    gate = Gate()

    def held_job(job_id: str) -> str:
        gate.hold()
        return job_id

    fn = ldb.idempotent(held_job, key_from="job_id", store=store, lease=0.6, wait=0)
    call = Background(ldb, fn, job_id)
    gate.wait_entered()
    return gate, call


def lock_row(ldb: LeaseDb, conn: sa.Connection, scope: str, key: str) -> None:
    """Hold the row lock of ``(scope, key)`` on ``conn`` until its transaction ends."""
    k = ldb.keys.c
    conn.execute(sa.select(k.key).where(k.scope == scope, k.key == key).with_for_update())


def test_blocked_renewal_gives_up_within_its_own_timeout(server_ldb: LeaseDb) -> None:
    """A renewal waiting on a row lock ends with an error after its timeout (``lease / 3``), while the
    lock is still held, instead of waiting as long as the lock does; the call still completes."""
    ldb = server_ldb
    store = ldb.store()
    watch = RenewalWatch(store.engine)
    gate, call = held_call(ldb, store, "j-1")
    try:
        with ldb.engine.connect() as holder:
            lock_row(ldb, holder, "tests.lease.held_job", "j-1")
            watch.wait(lambda: watch.failed >= 1, "a renewal giving up while the row was locked")
            holder.rollback()
    finally:
        gate.release.set()
        watch.close()
    assert call.result() == "j-1"


def test_renewals_of_one_engine_do_not_wait_on_another(server_sync_ldb: LeaseDb) -> None:
    """While one engine's renewal is stuck on a lock, another engine's leases go on being renewed."""
    ldb = server_sync_ldb
    stuck_store = SQLStore(sa.create_engine(ldb.sync_url, poolclass=NullPool), ldb.table)
    free_store = ldb.store()
    stuck, free = RenewalWatch(stuck_store.engine), RenewalWatch(free_store.engine)
    overlaps = 0

    def count_overlap(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal overlaps
        if is_renewal(statement):
            with stuck.cond:
                if stuck.inflight:
                    overlaps += 1
                    stuck.cond.notify_all()

    sa.event.listen(free.engine, "after_cursor_execute", count_overlap)
    held = [held_call(ldb, stuck_store, "stuck"), held_call(ldb, free_store, "free")]
    try:
        with ldb.engine.connect() as holder:
            lock_row(ldb, holder, "tests.lease.held_job", "stuck")
            stuck.wait(lambda: overlaps >= 2, "a renewal of the free engine during a stuck renewal")
            holder.rollback()
    finally:
        for gate, _ in held:
            gate.release.set()
        sa.event.remove(free.engine, "after_cursor_execute", count_overlap)
        stuck.close()
        free.close()
    assert [call.result() for _, call in held] == ["stuck", "free"]
    stuck_store.engine.dispose()


# -- fork -------------------------------------------------------------------------------------------
def test_forked_child_does_not_renew_the_parents_lease(sync_ldb: LeaseDb) -> None:
    """A child forked while the parent holds a lease renews only its own leases, never the parent's.

    The child runs a lease of its own (so a renewer runs in it) and reports how many renew
    statements it sent for the parent's claim: none.
    """
    ldb = sync_ldb
    store = ldb.store()
    gate, call = held_call(ldb, store, "parent")
    parent_owner = ldb.row("tests.lease.held_job", "parent").owner
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and never returns
        report = "error"
        try:
            store.engine.dispose(close=False)
            renewals = Statements(store.engine, is_renewal)

            def child_job(job_id: str) -> str:
                renewals.wait_for(renewals.count + 3, timeout=20)
                return "child"

            ldb.idempotent(child_job, key_from="job_id", store=store, lease=0.6, wait=0)("child")
            report = str(sum(1 for p in renewals.params if parent_owner in str(p)))
        except BaseException as exc:  # reported to the parent
            report = f"error {exc!r}"
        finally:
            os.write(write_end, report.encode())
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        answer = os.read(read_end, 1000).decode() if ready else "no answer (the child hung)"
    finally:
        gate.release.set()
        os.close(read_end)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer == "0"
    assert call.result() == "parent"


# -- racing takeovers of an expired key -------------------------------------------------------------
class RacedMemoryStore(MemoryStore):
    """A MemoryStore in which another caller takes the key over and completes it just before us."""

    def _claim(self, request: ClaimRequest, replacing: Record | None) -> Existing | None:
        if replacing is not None:  # the takeover: someone else got there first
            now = self.now()
            self.records[(request.scope, request.key)] = Record(
                request.scope, request.key, request.fingerprint, Status.COMPLETED.value, "the-winner",
                now + 60_000, now, now + 3_600_000, "json", '"winner"',
            )  # fmt: skip
        return super()._claim(request, replacing)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_lost_takeover_reads_again_and_replays(kind: str) -> None:
    """A caller whose takeover lost to another that completed meanwhile replays that result, even
    with no ``wait`` left, instead of raising InProgress."""
    store = RacedMemoryStore()
    runs: list[str] = []
    options: dict[str, Any] = {"key_from": "job_id", "scope": "tests.lease.raced", "mode": "lease", "wait": 0}

    def body(job_id: str) -> str:
        runs.append(job_id)
        return "ours"

    if kind == "sync":
        fn: Any = idempotent(store=store, **options)(body)
    else:

        async def abody(job_id: str) -> str:
            return body(job_id)

        fn = idempotent(store=store, **options)(abody)
    now = store.now()
    store.records[("tests.lease.raced", "j-1")] = Record(
        "tests.lease.raced", "j-1", None, Status.COMPLETED.value, "old", now, now - 7_200_000, now - 1,
        "json", '"expired"',
    )  # fmt: skip
    result = fn("j-1") if kind == "sync" else asyncio.run(fn("j-1"))
    assert result == "winner"
    assert runs == []


def transaction_call(ldb: LeaseDb, store: SQLStore, body: Callable[[str], str], **options: Any) -> Any:
    """A transaction-mode function writing one payment and running ``body`` (in a thread when async),
    called with a fresh session on an engine of its own (``call.engine``, the sync engine)."""
    payments = ldb.payments
    options = {"key_from": "ref", "scope": "tests.lease.pay_expired", "store": store, **options}
    if not ldb.is_async:
        engine = sa.create_engine(ldb.sync_url, poolclass=NullPool)

        @idempotent(**options)
        def pay(session: Session, ref: str) -> str:
            session.execute(payments.insert().values(ref=ref))
            return body(ref)

        def call(ref: str) -> Any:
            with Session(engine) as session:
                return pay(session, ref)

        call.engine = engine  # type: ignore[attr-defined]
        return call
    from sqlalchemy.ext.asyncio import AsyncSession

    async_engine = ldb.driver_engine()

    @idempotent(**options)
    async def apay(session: AsyncSession, ref: str) -> str:
        await session.execute(payments.insert().values(ref=ref))
        return await anyio.to_thread.run_sync(body, ref)

    async def acall(ref: str) -> Any:
        async with AsyncSession(async_engine) as session:
            return await apay(session, ref)

    def acall_sync(ref: str) -> Any:
        return asyncio.run(acall(ref))

    acall_sync.engine = async_engine.sync_engine  # type: ignore[attr-defined]
    return acall_sync


@pytest.fixture(params=["sync", "async"])
def pg_ldb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL, sync and async drivers."""
    yield from make_ldb("postgresql", request.param, tmp_path)


def test_racing_takeover_waits_at_most_wait_for_the_winner(pg_ldb: LeaseDb) -> None:
    """Two callers race to take over one expired key: the loser, blocked on the winner's row lock,
    gives up after ``wait`` with InProgress (not after the winner's whole run); later it replays.

    The loser is held just before its takeover statement until the winner has taken the row
    over and is running inside its transaction, so the loser's takeover really waits on the lock.
    PostgreSQL only: on MariaDB the claim's locking read already makes racing takeovers deadlock
    (one is rolled back and retried) rather than queue behind each other.
    """
    ldb = pg_ldb
    store = ldb.store()
    gate = Gate()
    runs: list[str] = []
    paused = threading.Event()

    def body(ref: str) -> str:
        runs.append(ref)
        if len(runs) == 2:
            gate.hold()
        return f"run-{len(runs)}"

    winner_call = transaction_call(ldb, store, body, ttl=TTL, wait=30)
    loser_call = transaction_call(ldb, store, body, ttl=TTL, wait=2)

    def hold_takeover(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "SET fingerprint" in statement and not paused.is_set():
            paused.set()
            assert gate.entered.wait(30), "the winner never started"

    sa.event.listen(loser_call.engine, "before_cursor_execute", hold_takeover)
    assert winner_call("o-1") == "run-1"
    store.clock_offset = TTL + 1
    loser = BackgroundCall(loser_call, "o-1")
    try:
        assert paused.wait(30), "the loser never reached its takeover"
        winner = BackgroundCall(winner_call, "o-1")
        loser.thread.join(30)
        assert not loser.thread.is_alive(), "the loser waited on the winner's row lock past its wait"
        assert isinstance(loser.error, InProgress), loser.error
    finally:
        gate.release.set()
    assert winner.result() == "run-2"
    assert loser_call("o-1") == "run-2"
    assert runs == ["o-1", "o-1"]
    assert ldb.payment_count() == 2
    loser_call.engine.dispose()
    winner_call.engine.dispose()


class BackgroundCall:
    """Run ``fn(*args)`` in a thread; ``result()`` joins it and returns or raises its outcome."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    def result(self) -> Any:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the background call never finished"
        if self.error is not None:
            raise self.error
        return self.value


# -- a brief connection drop ------------------------------------------------------------------------
class DeclinedError(Exception):
    """The function's own failure."""


@pytest.mark.parametrize("outcome", ["raises", "returns"])
def test_connection_drop_during_the_call(server_ldb: LeaseDb, outcome: str) -> None:
    """Every pooled connection drops while the function runs (a proxy cuts them). A function that
    raises still releases its claim and its own exception propagates; one that returns still
    stores its result. The library's statements run again once on a fresh connection."""
    ldb = server_ldb
    runs: list[str] = []
    with Proxy.for_url(ldb.sync_url) as proxy:

        def refund(refund_id: str) -> str:
            runs.append(refund_id)
            if len(runs) == 1:
                proxy.cut()
                if outcome == "raises":
                    raise DeclinedError("card declined")
            return f"refunded {refund_id}"

        options: dict[str, Any] = {"key_from": "refund_id", "scope": "tests.lease.refund", "mode": "lease"}
        if not ldb.is_async:
            engine = sa.create_engine(proxy.url(ldb.sync_url))
            fn = idempotent(store=SQLStore(engine, ldb.table), **options)(refund)
            first = pytest.raises(DeclinedError) if outcome == "raises" else contextlib.nullcontext()
            with first:
                assert fn("r-1") == "refunded r-1"
            assert fn("r-1") == "refunded r-1"
            engine.dispose()
        else:
            from sqlalchemy.ext.asyncio import create_async_engine

            async def main() -> None:
                engine = create_async_engine(proxy.url(ldb.async_url))

                async def arefund(refund_id: str) -> str:
                    return refund(refund_id)

                fn = idempotent(store=SQLStore(engine, ldb.table), **options)(arefund)
                first = pytest.raises(DeclinedError) if outcome == "raises" else contextlib.nullcontext()
                with first:
                    assert await fn("r-1") == "refunded r-1"
                assert await fn("r-1") == "refunded r-1"
                await engine.dispose()

            asyncio.run(main())
    assert runs == (["r-1", "r-1"] if outcome == "raises" else ["r-1"])
    (row,) = ldb.rows()
    assert (row.status, row.result) == ("completed", '"refunded r-1"')


class ReleaseFailsStore(MemoryStore):
    """A MemoryStore whose release fails, as a database gone for good would."""

    def _release(self, request: ClaimRequest) -> bool:
        raise ConnectionError("database unreachable")


def test_failed_clean_up_never_replaces_the_functions_exception(caplog: pytest.LogCaptureFixture) -> None:
    """When even releasing the claim fails, the function's own exception propagates, with the
    clean-up failure logged and attached as a note; the key stays until its lease ends."""
    store = ReleaseFailsStore()

    @idempotent(key_from="job_id", scope="tests.lease.release_fails", mode="lease", store=store)
    def job(job_id: str) -> str:
        raise DeclinedError("declined")

    with pytest.raises(DeclinedError) as caught:
        job("j-1")
    notes = getattr(caught.value, "__notes__", [])
    assert any("could not release" in note and "ConnectionError" in note for note in notes), notes
    assert any("could not release" in r.getMessage() for r in caplog.records)
    assert store.get("tests.lease.release_fails", "j-1") is not None


# -- the replay read ("peek") on PostgreSQL ---------------------------------------------------------
def replayed_often(ldb: LeaseDb, session_options: dict[str, Any]) -> tuple[Any, Any]:
    """A transaction-mode function that already replayed often enough to read before claiming,
    and a caller making a session with ``session_options``; returns ``(fn, call)``."""
    store = ldb.store()
    payments = ldb.payments
    options: dict[str, Any] = {"key_from": "ref", "scope": "tests.lease.peeked", "store": store}
    if not ldb.is_async:

        @idempotent(**options)
        def pay(session: Session, ref: str) -> str:
            session.execute(payments.insert().values(ref=ref))
            return f"paid {ref}"

        def call(ref: str) -> Any:
            with Session(ldb.engine, **session_options) as session:
                return pay(session, ref)

        fn: Any = pay
    else:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = ldb.driver_engine()

        @idempotent(**options)
        async def apay(session: AsyncSession, ref: str) -> str:
            await session.execute(payments.insert().values(ref=ref))
            return f"paid {ref}"

        async def acall(ref: str) -> Any:
            async with AsyncSession(engine, **session_options) as session:
                return await apay(session, ref)

        def call(ref: str) -> Any:
            return asyncio.run(acall(ref))

        fn = apay
    assert call("o-1") == "paid o-1"
    spec = fn.__idempotent__
    while spec.replay_rate < PEEK_AT:
        assert call("o-1") == "paid o-1"
    return fn, call


def test_replay_read_with_autobegin_disabled(pg_ldb: LeaseDb) -> None:
    """``Session(autobegin=False)``: once the replay read kicks in, replays and first calls still work."""
    _, call = replayed_often(pg_ldb, {"autobegin": False})
    assert call("o-1") == "paid o-1"
    assert call("o-2") == "paid o-2"
    assert call("o-2") == "paid o-2"
    assert pg_ldb.payment_count() == 2


@pytest.fixture
def pg_async_ldb(tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL through its async driver."""
    yield from make_ldb("postgresql", "async", tmp_path)


def test_cancelling_the_replay_read_raises_the_cancellation(pg_async_ldb: LeaseDb) -> None:
    """A task cancelled while its replay read waits (here on a table lock) ends with CancelledError,
    not a driver error, and the next call on the same engine replays normally."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    ldb = pg_async_ldb
    fn, _ = replayed_often(ldb, {})

    async def main() -> None:
        engine = create_async_engine(ldb.async_url)
        async with engine.connect() as locker:
            await locker.exec_driver_sql(f"LOCK TABLE {ldb.table} IN ACCESS EXCLUSIVE MODE")

            async def replay() -> Any:
                async with AsyncSession(engine) as session:
                    return await fn(session, "o-1")

            task = asyncio.create_task(replay())
            while True:  # until the replay read waits for the lock
                waiting = await asyncio.to_thread(blocked_on_lock, ldb)
                if waiting or task.done():
                    break
                await asyncio.sleep(0.02)
            assert not task.done(), task
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await locker.rollback()
        async with AsyncSession(engine) as session:
            assert await fn(session, "o-1") == "paid o-1"
        await engine.dispose()

    asyncio.run(main())


def blocked_on_lock(ldb: LeaseDb) -> bool:
    """True while some session waits for a lock on a statement reading this test's keys table."""
    with ldb.engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"%FROM {ldb.table}%",),
            ).scalar_one()
        )


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt or SystemExit arriving in the middle of a statement."""


@pytest.fixture
def pg_sync_ldb(tmp_path: Path) -> Iterator[LeaseDb]:
    """PostgreSQL through its sync driver."""
    yield from make_ldb("postgresql", "sync", tmp_path)


def test_interrupted_replay_read_raises_the_interruption(pg_sync_ldb: LeaseDb) -> None:
    """Sync: an interruption during the replay read, after the driver closed its connection,
    reaches the caller as itself, not as the driver's error from resetting the closed connection;
    the next call replays normally."""
    ldb = pg_sync_ldb
    _, call = replayed_often(ldb, {})
    armed = True

    def interrupt(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal armed
        if armed and statement.lstrip().upper().startswith("SELECT") and ldb.table in statement:
            armed = False
            conn.connection.driver_connection.close()
            raise Interrupted

    sa.event.listen(ldb.engine, "before_cursor_execute", interrupt)
    try:
        with pytest.raises(Interrupted):
            call("o-1")
    finally:
        sa.event.remove(ldb.engine, "before_cursor_execute", interrupt)
    assert not armed
    assert call("o-1") == "paid o-1"


def test_cancelled_sync_replay_read_raises_the_driver_error(pg_sync_ldb: LeaseDb) -> None:
    """Sync: a replay read cancelled by the server (here while it waits on a table lock) reaches the
    caller as SQLAlchemy's error, as any statement's would, and the next call replays normally."""
    ldb = pg_sync_ldb
    _, call = replayed_often(ldb, {})
    outcome: list[BaseException | str] = []

    def replay() -> None:
        try:
            outcome.append(call("o-1"))
        except BaseException as exc:  # the test asserts on it
            outcome.append(exc)

    with ldb.engine.connect() as locker:
        locker.exec_driver_sql(f"LOCK TABLE {ldb.table} IN ACCESS EXCLUSIVE MODE")
        worker = threading.Thread(target=replay)
        worker.start()
        while worker.is_alive() and not blocked_on_lock(ldb):  # until the replay read waits
            worker.join(0.01)
        assert worker.is_alive(), outcome
        with ldb.engine.connect() as admin:
            admin.exec_driver_sql(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE %s",
                (f"%FROM {ldb.table}%",),
            )
            admin.rollback()
        worker.join()
        locker.rollback()
    assert len(outcome) == 1 and isinstance(outcome[0], sa.exc.OperationalError), outcome
    assert call("o-1") == "paid o-1"
    assert ldb.payment_count() == 1
