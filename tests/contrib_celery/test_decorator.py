"""``idempotent_task`` and ``IdempotentTask`` without a worker: composition, options, and what a run
does with Celery's request (``task.apply()`` runs the real tracer in this process)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from celery import Celery, shared_task
from celery.exceptions import Ignore, Reject
from sqlalchemy.orm import Session, sessionmaker

from idempotent import MissingKey
from idempotent.contrib.celery import IdempotentTask, idempotent_task
from idempotent.errors import ConfigurationError
from idempotent.testing import MemoryStore
from tests.conftest import Db


@pytest.fixture
def app() -> Celery:
    """An application with no broker: tests run tasks with ``apply()``."""
    return Celery(f"unit-{uuid.uuid4().hex[:6]}", set_as_current=False)


def _count(db: Db, ref: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(db.orders.c.ref == ref)).scalar_one())


def test_above_app_task_is_an_error(app: Celery) -> None:
    """@idempotent_task above @app.task would wrap the registered task, not the body: a clear error."""
    with pytest.raises(ConfigurationError, match="below"):

        @idempotent_task(store=MemoryStore())
        @app.task
        def send_receipt(order_id: int) -> None: ...


def test_above_shared_task_is_an_error_without_registering_it() -> None:
    """Above @shared_task too; the check does not evaluate Celery's lazy proxy."""
    with pytest.raises(ConfigurationError, match=r"@app\.task\(\.\.\.\) \(or @shared_task\) first"):

        @idempotent_task(store=MemoryStore())
        @shared_task(name=f"tests.unit.refund.{uuid.uuid4().hex[:6]}")
        def refund(order_id: int) -> None: ...


def test_transaction_mode_needs_a_session() -> None:
    """A task cannot receive a Session in its message: transaction mode without one says what to give."""
    with pytest.raises(ConfigurationError, match="session_factory"):
        idempotent_task(mode="transaction")


def test_mode_follows_the_session() -> None:
    """Without a session the task is in lease mode; with a factory, in transaction mode."""
    lease = idempotent_task(store=MemoryStore(), scope="t.lease")(lambda order_id: order_id)
    txn = idempotent_task(session_factory=lambda: None, key_from="order_id", scope="t.txn")(
        lambda session, order_id: order_id
    )
    assert lease.__idempotent__.mode == "lease"
    assert txn.__idempotent__.mode == "transaction"


def test_session_factory_needs_its_parameter() -> None:
    """The factory's session goes to the parameter ``session`` (or the one named): a clear error without it."""
    with pytest.raises(ConfigurationError, match="no parameter 'session'"):
        idempotent_task(session_factory=sessionmaker())(lambda order_id: order_id)
    with pytest.raises(ConfigurationError, match="transaction mode"):
        idempotent_task(session_factory=sessionmaker(), mode="lease")


def test_async_body_is_refused() -> None:
    """Celery runs task bodies as plain functions."""

    async def body(order_id: int) -> None: ...

    with pytest.raises(ConfigurationError, match="async def"):
        idempotent_task(store=MemoryStore())(body)


def test_default_key_needs_a_request_id(app: Celery) -> None:
    """Called directly (no worker, no apply()), a task has no request id to key on: MissingKey says so."""

    @app.task(bind=True)
    @idempotent_task(store=MemoryStore(), scope="tests.unit.ping")
    def ping(self: Any) -> str:
        return "pong"

    with pytest.raises(MissingKey, match="request id"):
        ping()


def _place_task(app: Celery, db: Db, **options: Any) -> Any:
    calls: list[str] = []

    @app.task(bind=True, name=f"tests.unit.place.{uuid.uuid4().hex[:6]}")
    @idempotent_task(
        session_factory=sessionmaker(db.engine), store=db.store, scope="tests.unit.place", **options
    )
    def place(self: Any, session: Session, ref: str, amount: int) -> dict[str, Any]:
        calls.append(ref)
        order_id = session.execute(db.orders.insert().values(ref=ref, amount=amount)).inserted_primary_key[0]
        return {"order_id": int(order_id), "amount": amount}

    place.calls = calls
    return place


def test_session_is_injected_and_hidden_from_the_message(app: Celery, sync_db: Db) -> None:
    """The message carries only the business arguments (positional ones map past ``session``); the
    decorator opens, commits and closes a session per run."""
    place = _place_task(app, sync_db, key_from="ref")
    first = place.apply(args=("o-1", 5)).get()
    again = place.apply(kwargs={"ref": "o-1", "amount": 5}).get()
    assert first == again
    assert place.calls == ["o-1"]
    assert _count(sync_db, "o-1") == 1
    with pytest.raises(TypeError):
        place.apply_async(
            args=("o-2", 5, "extra")
        )  # Celery checks the arguments against the public signature


def test_default_key_is_the_request_id(app: Celery, sync_db: Db) -> None:
    """Same request id (a redelivery): replay; a new send of the same arguments: a new run."""
    place = _place_task(app, sync_db)
    task_id = str(uuid.uuid4())
    one = place.apply(kwargs={"ref": "o-3", "amount": 1}, task_id=task_id).get()
    two = place.apply(kwargs={"ref": "o-3", "amount": 1}, task_id=task_id).get()
    place.apply(kwargs={"ref": "o-3", "amount": 1}).get()
    assert one == two
    assert place.calls == ["o-3", "o-3"]
    assert _count(sync_db, "o-3") == 2
    assert f"{place.name}:{task_id}" in {row.key for row in sync_db.key_rows()}


@pytest.mark.parametrize("predicate", [Ignore(), Reject("stop", requeue=False)], ids=["ignore", "reject"])
def test_ignore_and_reject_release_the_key(app: Celery, sync_db: Db, predicate: Exception) -> None:
    """Ignore and Reject are not completions, even with store_errors=(Exception,): the write rolls back
    with the claim, and the next run of the key runs the body."""
    runs: list[int] = []

    @app.task(bind=True, name=f"tests.unit.pred.{uuid.uuid4().hex[:6]}")
    @idempotent_task(
        key_from="ref",
        session_factory=sessionmaker(sync_db.engine),
        store=sync_db.store,
        scope="tests.unit.pred",
        store_errors=(Exception,),
    )
    def settle(self: Any, session: Session, ref: str) -> str:
        runs.append(1)
        session.execute(sync_db.orders.insert().values(ref=ref, amount=1))
        if len(runs) == 1:
            raise predicate
        return "settled"

    first = settle.apply(kwargs={"ref": "o-4"})
    assert first.state in ("IGNORED", "REJECTED", "FAILURE")
    assert _count(sync_db, "o-4") == 0
    assert sync_db.key_rows() == []
    assert settle.apply(kwargs={"ref": "o-4"}).get() == "settled"
    assert _count(sync_db, "o-4") == 1


def test_base_class(app: Celery, sync_db: Db) -> None:
    """``base=IdempotentTask`` with ``idempotency={...}``: the same behaviour, options merged from the base."""

    class OrderTask(IdempotentTask):  # type: ignore[misc]
        idempotency: ClassVar[dict[str, Any]] = {
            "session_factory": sessionmaker(sync_db.engine),
            "store": sync_db.store,
        }

    calls: list[str] = []

    @app.task(
        bind=True,
        base=OrderTask,
        name=f"tests.unit.base.{uuid.uuid4().hex[:6]}",
        idempotency={"key_from": "ref", "scope": "tests.unit.base"},
    )
    def place(self: Any, session: Session, ref: str) -> str:
        calls.append(ref)
        session.execute(sync_db.orders.insert().values(ref=ref, amount=2))
        return ref.upper()

    assert place.apply(args=("o-5",)).get() == "O-5"
    assert place.apply(args=("o-5",)).get() == "O-5"
    assert calls == ["o-5"]
    assert _count(sync_db, "o-5") == 1


def test_in_progress_outside_a_worker_raises(app: Celery) -> None:
    """Eager runs cannot be sent again for later: a key still held raises InProgress."""
    from idempotent import InProgress

    store = MemoryStore()

    @app.task(name=f"tests.unit.busy.{uuid.uuid4().hex[:6]}")
    @idempotent_task(key_from="ref", store=store, scope="tests.unit.busy", wait=0)
    def busy(ref: str) -> str:
        return busy_inner.apply(kwargs={"ref": ref}).get()  # the same key, while this run holds it

    busy_inner = busy
    with pytest.raises(InProgress):
        busy.apply(kwargs={"ref": "o-6"}, throw=True)


def test_unbound_task_keys_on_the_current_request(app: Celery) -> None:
    """Without bind=True the default key comes from Celery's current task: same id replays, and the
    stored key is the task name plus the request id."""
    store = MemoryStore()
    runs: list[int] = []

    @app.task(name=f"tests.unit.unbound.{uuid.uuid4().hex[:6]}")
    @idempotent_task(store=store, scope="tests.unit.unbound")
    def notify(order_id: int) -> int:
        runs.append(order_id)
        return order_id * 2

    task_id = str(uuid.uuid4())
    assert notify.apply(args=(21,), task_id=task_id).get() == 42
    assert notify.apply(args=(21,), task_id=task_id).get() == 42
    assert runs == [21]
    assert store.get("tests.unit.unbound", f"{notify.name}:{task_id}") is not None


def test_connection_factory_and_optional_key(app: Celery, sync_db: Db) -> None:
    """``engine.connect`` works as a factory; with required=False a run without a key still commits
    its writes (without idempotency), and a run with one replays."""

    @app.task(name=f"tests.unit.conn.{uuid.uuid4().hex[:6]}")
    @idempotent_task(
        key_from="ref",
        required=False,
        session_factory=sync_db.engine.connect,
        session="conn",
        store=sync_db.store,
        scope="tests.unit.conn",
    )
    def record(conn: sa.Connection, ref: str | None, label: str) -> str:
        conn.execute(sync_db.orders.insert().values(ref=label, amount=1))
        return label

    assert record.apply(args=(None, "no-key")).get() == "no-key"
    assert record.apply(args=(None, "no-key")).get() == "no-key"
    assert _count(sync_db, "no-key") == 2
    assert record.apply(args=("k-1", "keyed")).get() == "keyed"
    assert record.apply(args=("k-1", "keyed")).get() == "keyed"
    assert _count(sync_db, "keyed") == 1


def test_unstable_scope_warning_points_at_the_task() -> None:
    """A body defined inside a function gets the scope warning, reported at the user's decorator line."""
    from idempotent.errors import IdempotencyWarning

    with pytest.warns(IdempotencyWarning, match="scope") as record:

        @idempotent_task(store=MemoryStore())
        def local(order_id: int) -> int:
            return order_id

    assert record[0].filename == __file__


def test_shared_task_composes() -> None:
    """Below @shared_task the body runs once per key like under @app.task."""
    runs: list[str] = []

    @shared_task(bind=True, name=f"tests.unit.shared.{uuid.uuid4().hex[:6]}")
    @idempotent_task(key_from="ref", store=MemoryStore(), scope="tests.unit.shared")
    def archive(self: Any, ref: str) -> str:
        runs.append(ref)
        return f"archived {ref}"

    assert archive.apply(args=("s-1",)).get() == "archived s-1"
    assert archive.apply(args=("s-1",)).get() == "archived s-1"
    assert runs == ["s-1"]
