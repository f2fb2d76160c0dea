"""Lease mode on real databases, sync and async: claim, renewal, waiting, takeover, fencing, release.

Concurrent callers are synchronised with thread events and the hooks' events; lease expiry is
driven by the store's ``clock_offset``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent import InProgress, KeyReused, SQLStore, configure, idempotent
from idempotent.errors import ConfigurationError
from idempotent.events import Event
from tests.lease.conftest import LeaseDb, Recorder


@dataclasses.dataclass
class Receipt:
    """A result with a class of its own: replay must rebuild it from the return annotation."""

    payment_id: str
    amount: int


class Background:
    """Run one call in a thread; ``result()`` joins it and returns its value or raises its error."""

    def __init__(self, ldb: LeaseDb, fn: Any, *args: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ldb, fn, args), daemon=True)
        self.thread.start()

    def _run(self, ldb: LeaseDb, fn: Any, args: tuple[Any, ...]) -> None:
        try:
            self.value = ldb.call(fn, *args)
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    def result(self) -> Any:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the background call never finished"
        if self.error is not None:
            raise self.error
        return self.value


class Gate:
    """Lets a test hold a function inside its body: ``entered`` is set on entry, ``release`` lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        assert self.release.wait(60), "the test never released the function"

    def wait_entered(self) -> None:
        assert self.entered.wait(60), "the function was never entered"


def test_first_call_runs_later_calls_replay(ldb: LeaseDb, recorder: Recorder) -> None:
    """The first call runs and stores its result; a retry replays an equal value of the same type."""
    runs: list[str] = []

    def charge(payment_id: str, amount: int) -> Receipt:
        runs.append(payment_id)
        return Receipt(payment_id, amount)

    fn = ldb.idempotent(charge, key_from="payment_id", store=ldb.store(), hooks=[recorder])
    first = ldb.call(fn, "p-1", 500)
    again = ldb.call(fn, "p-1", 500)
    assert first == again == Receipt("p-1", 500)
    assert type(again) is Receipt
    assert runs == ["p-1"]
    assert recorder.names() == ["executed", "replayed"]
    (row,) = ldb.rows()
    assert (row.scope, row.key, row.status) == ("tests.lease.charge", "p-1", "completed")


def test_claim_commits_before_the_function_runs(ldb: LeaseDb) -> None:
    """While the function runs, its claim is already committed: another connection sees it.

    The row carries the owner token and ``locked_until = created_at + lease``; the result
    is stored in a second transaction when the function returns.
    """
    gate = Gate()

    def send_email(message_id: str) -> str:
        gate.hold()
        return "sent"

    fn = ldb.idempotent(send_email, key_from="message_id", store=ldb.store(), lease=45)
    call = Background(ldb, fn, "m-1")
    gate.wait_entered()
    row = ldb.row("tests.lease.send_email", "m-1")
    assert row.status == "in_progress"
    assert len(row.owner) >= 16
    assert row.locked_until - row.created_at == 45_000
    assert row.result is None
    gate.release.set()
    assert call.result() == "sent"
    done = ldb.row("tests.lease.send_email", "m-1")
    assert (done.status, done.owner) == ("completed", row.owner)


def test_duplicate_during_live_lease_gets_in_progress(ldb: LeaseDb, recorder: Recorder) -> None:
    """With ``wait=0`` a duplicate arriving while the lease is live fails at once with InProgress.

    ``retry_after`` is the time left on the lease; the function did not run a second time.
    """
    gate = Gate()
    runs: list[str] = []

    def call_api(request_id: str) -> str:
        runs.append(request_id)
        gate.hold()
        return "ok"

    fn = ldb.idempotent(
        call_api, key_from="request_id", store=ldb.store(), lease=60, wait=0, hooks=[recorder]
    )
    first = Background(ldb, fn, "r-1")
    gate.wait_entered()
    with pytest.raises(InProgress) as caught:
        ldb.call(fn, "r-1")
    assert 50 < caught.value.retry_after <= 60
    gate.release.set()
    assert first.result() == "ok"
    assert runs == ["r-1"]
    assert recorder.names() == ["conflict:in_progress", "executed"]


def test_duplicate_waits_for_the_result_and_replays_it(ldb: LeaseDb, recorder: Recorder) -> None:
    """A duplicate arriving during the lease waits (up to ``wait``) and replays the first call's result."""
    gate = Gate()
    runs: list[str] = []

    def call_api(request_id: str) -> dict[str, Any]:
        runs.append(request_id)
        gate.hold()
        return {"charged": True, "request": request_id}

    fn = ldb.idempotent(call_api, key_from="request_id", store=ldb.store(), wait=60, hooks=[recorder])
    first = Background(ldb, fn, "r-2")
    gate.wait_entered()
    second = Background(ldb, fn, "r-2")
    recorder.wait_for(Event.WAITED)
    gate.release.set()
    assert first.result() == second.result() == {"charged": True, "request": "r-2"}
    assert runs == ["r-2"]
    assert sorted(recorder.names()) == ["executed", "replayed", "waited"]


def test_duplicate_gives_up_after_wait(ldb: LeaseDb, recorder: Recorder) -> None:
    """A duplicate that waited ``wait`` seconds without an outcome gets InProgress."""
    gate = Gate()

    def call_api(request_id: str) -> str:
        gate.hold()
        return "ok"

    store = ldb.store()
    fn = ldb.idempotent(call_api, key_from="request_id", store=store, wait=60, hooks=[recorder])
    impatient = ldb.idempotent(call_api, key_from="request_id", store=store, wait=0.1, hooks=[recorder])
    first = Background(ldb, fn, "r-3")
    gate.wait_entered()
    with pytest.raises(InProgress):
        ldb.call(impatient, "r-3")
    assert recorder.names() == ["waited", "conflict:in_progress"]
    gate.release.set()
    assert first.result() == "ok"


def test_expired_lease_is_taken_over_and_the_stale_result_refused(
    ldb: LeaseDb, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """After the lease expires the next caller takes over and runs; the old owner's result is refused.

    The first owner is still running when the lease passes (the store's clock is moved past
    it). A second call takes the key over, runs and stores its result. When the first owner
    finishes, its result is refused (fenced by the owner token), a warning is logged, and it
    returns the current owner's result: at-least-once, never an overwrite.
    """
    first_gate, second_gate = Gate(), Gate()
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        (first_gate if len(runs) == 1 else second_gate).hold()
        return f"run-{len(runs)}"

    store = ldb.store()
    fn = ldb.idempotent(charge, key_from="payment_id", store=store, lease=60, wait=0, hooks=[recorder])
    first = Background(ldb, fn, "p-9")
    first_gate.wait_entered()
    owner = ldb.row("tests.lease.charge", "p-9").owner

    store.clock_offset = 61
    second = Background(ldb, fn, "p-9")
    second_gate.wait_entered()
    assert ldb.row("tests.lease.charge", "p-9").owner != owner
    second_gate.release.set()
    assert second.result() == "run-2"

    with caplog.at_level(logging.WARNING, logger="idempotent"):
        first_gate.release.set()
        assert first.result() == "run-2"
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert runs == ["p-9", "p-9"]
    assert ldb.row("tests.lease.charge", "p-9").result == '"run-2"'
    assert recorder.names() == ["executed", "conflict:fenced"]


def test_renewal_keeps_the_lease_alive(ldb: LeaseDb) -> None:
    """The lease is renewed every ``lease/3`` while the function runs, so it never expires under it.

    Renewals are observed as they reach the database (an engine event on the renew
    statement). After four renewals the original lease (0.9 s) has passed, yet the row's
    ``locked_until`` has moved on and a duplicate still gets InProgress instead of taking over.
    """
    renewed = threading.Semaphore(0)
    store = ldb.store()
    engine = store.engine.sync_engine if ldb.is_async else store.engine

    @sa.event.listens_for(engine, "after_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "SET locked_until" in statement:
            renewed.release()

    gate = Gate()

    def long_call(job_id: str) -> str:
        gate.hold()
        return "done"

    fn = ldb.idempotent(long_call, key_from="job_id", store=store, lease=0.9, wait=0)
    call = Background(ldb, fn, "j-1")
    gate.wait_entered()
    initial = ldb.row("tests.lease.long_call", "j-1").locked_until
    for _ in range(4):
        assert renewed.acquire(timeout=30), "the lease was not renewed"
    assert ldb.row("tests.lease.long_call", "j-1").locked_until > initial
    with pytest.raises(InProgress):
        ldb.call(fn, "j-1")
    gate.release.set()
    assert call.result() == "done"
    sa.event.remove(engine, "after_cursor_execute", seen)


def test_exception_releases_the_claim(ldb: LeaseDb, recorder: Recorder) -> None:
    """The function raising deletes its claim, so a retry runs; the exception propagates unchanged."""
    attempts: list[str] = []

    def flaky(job_id: str) -> str:
        attempts.append(job_id)
        if len(attempts) == 1:
            raise ConnectionError("gateway timeout")
        return "ok"

    fn = ldb.idempotent(flaky, key_from="job_id", store=ldb.store(), hooks=[recorder])
    with pytest.raises(ConnectionError, match="gateway timeout"):
        ldb.call(fn, "j-2")
    assert ldb.rows() == []
    assert ldb.call(fn, "j-2") == "ok"
    assert attempts == ["j-2", "j-2"]
    assert recorder.names() == ["released", "executed"]


def test_same_key_with_other_arguments_is_key_reused(ldb: LeaseDb, recorder: Recorder) -> None:
    """A key reused with a different payload is refused: no run, no replay."""
    runs: list[int] = []

    def refund(refund_id: str, amount: int) -> int:
        runs.append(amount)
        return amount

    fn = ldb.idempotent(refund, key_from="refund_id", store=ldb.store(), hooks=[recorder])
    assert ldb.call(fn, "x-1", 10) == 10
    with pytest.raises(KeyReused):
        ldb.call(fn, "x-1", 20)
    assert runs == [10]
    assert recorder.names() == ["executed", "mismatch"]


def test_engine_from_configure(ldb: LeaseDb, restore_defaults: None) -> None:
    """Without ``store=``, lease mode commits its claim through the engine given to ``configure``."""
    configure(engine=ldb.driver_engine(), table=ldb.table)
    runs: list[str] = []

    def notify(user_id: str) -> str:
        runs.append(user_id)
        return "notified"

    fn = ldb.idempotent(notify, key_from="user_id")
    assert ldb.call(fn, "u-1") == ldb.call(fn, "u-1") == "notified"
    assert runs == ["u-1"]
    assert ldb.row("tests.lease.notify", "u-1").status == "completed"


def test_lease_mode_without_an_engine_says_how_to_give_one(ldb: LeaseDb, restore_defaults: None) -> None:
    """Lease mode with no engine anywhere is a configuration error naming ``configure(engine=...)``."""
    configure(table=ldb.table)

    def notify(user_id: str) -> str:
        return "notified"

    fn = ldb.idempotent(notify, key_from="user_id")
    with pytest.raises(ConfigurationError, match=r"configure\(engine=\.\.\.\)"):
        ldb.call(fn, "u-2")
    explicit = ldb.idempotent(notify, key_from="user_id", store=SQLStore(None, ldb.table))
    with pytest.raises(ConfigurationError, match="engine"):
        ldb.call(explicit, "u-2")


def test_plain_function_with_an_async_engine_is_a_configuration_error(async_ldb: LeaseDb) -> None:
    """A ``def`` in lease mode cannot use an AsyncEngine: the error says to use a sync engine or ``async def``."""

    def notify(user_id: str) -> str:
        return "notified"

    fn = idempotent(
        key_from="user_id", scope="tests.lease.sync_on_async", mode="lease", store=async_ldb.store()
    )(notify)
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        fn("u-3")
    assert async_ldb.rows() == []


def test_waiter_runs_the_function_when_the_owner_fails(ldb: LeaseDb, recorder: Recorder) -> None:
    """A duplicate waiting on an owner that raises finds the key released, claims it and runs itself."""
    gate = Gate()
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        if len(runs) == 1:
            gate.hold()
            raise ConnectionError("provider unreachable")
        return "charged"

    fn = ldb.idempotent(charge, key_from="payment_id", store=ldb.store(), wait=60, hooks=[recorder])
    owner = Background(ldb, fn, "p-5")
    gate.wait_entered()
    waiter = Background(ldb, fn, "p-5")
    recorder.wait_for(Event.WAITED)
    gate.release.set()
    with pytest.raises(ConnectionError):
        owner.result()
    assert waiter.result() == "charged"
    assert runs == ["p-5", "p-5"]
    assert recorder.names() == ["waited", "released", "executed"]


def test_waiter_receives_the_owners_stored_error(ldb: LeaseDb) -> None:
    """A duplicate waiting on an owner whose error is in ``store_errors`` raises that error too, without a run."""

    class DeclinedError(Exception):
        """Declined by the provider."""

    gate = Gate()
    runs: list[str] = []
    waited = Recorder()

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        gate.hold()
        raise DeclinedError("insufficient funds")

    fn = ldb.idempotent(
        charge,
        key_from="payment_id",
        store=ldb.store(),
        wait=60,
        store_errors=[DeclinedError],
        hooks=[waited],
    )
    owner = Background(ldb, fn, "p-6")
    gate.wait_entered()
    waiter = Background(ldb, fn, "p-6")
    waited.wait_for(Event.WAITED)
    gate.release.set()
    with pytest.raises(DeclinedError):
        owner.result()
    with pytest.raises(DeclinedError, match="insufficient funds"):
        waiter.result()
    assert runs == ["p-6"]


def test_stale_owner_finishing_before_the_taker_gets_in_progress(ldb: LeaseDb, recorder: Recorder) -> None:
    """An owner whose lease was taken over and that finishes first is refused and told to retry later.

    Its result is not stored; the taker is still running, so it gets InProgress carrying the
    taker's remaining lease. The taker then completes normally.
    """
    first_gate, second_gate = Gate(), Gate()
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        (first_gate if len(runs) == 1 else second_gate).hold()
        return f"run-{len(runs)}"

    store = ldb.store()
    fn = ldb.idempotent(charge, key_from="payment_id", store=store, lease=60, wait=0, hooks=[recorder])
    first = Background(ldb, fn, "p-7")
    first_gate.wait_entered()
    store.clock_offset = 61
    second = Background(ldb, fn, "p-7")
    second_gate.wait_entered()

    first_gate.release.set()
    with pytest.raises(InProgress) as caught:
        first.result()
    assert 0 < caught.value.retry_after <= 60
    assert ldb.row("tests.lease.charge", "p-7").status == "in_progress"
    second_gate.release.set()
    assert second.result() == "run-2"
    assert ldb.row("tests.lease.charge", "p-7").result == '"run-2"'
    assert recorder.names() == ["conflict:fenced", "executed"]


def test_caller_holding_a_write_transaction(sync_ldb: LeaseDb) -> None:
    """Lease mode while the caller holds an open write transaction on the same database.

    SQLite allows one writer per file, so the claim would wait for the caller, i.e. for
    itself: that is detected and explained. PostgreSQL and MariaDB lock rows, and the claim
    commits on its own connection beside the caller's transaction.
    """
    from sqlalchemy.orm import Session

    def notify(session: Session, user_id: str) -> str:
        return "notified"

    fn = sync_ldb.idempotent(notify, key_from="user_id", store=sync_ldb.store(), wait=0)
    with Session(sync_ldb.engine) as session:
        session.execute(sync_ldb.payments.insert().values(ref="pending"))
        if sync_ldb.name == "sqlite":
            with pytest.raises(ConfigurationError, match=r"wait for that transaction, i\.e\. for itself"):
                fn(session, "u-4")
        else:
            assert fn(session, "u-4") == "notified"
        session.rollback()
    assert sync_ldb.payment_count() == 0
    assert len(sync_ldb.rows()) == (0 if sync_ldb.name == "sqlite" else 1)
