"""The Celery application the worker tests run: an order task per database, a payment-like task in
lease mode, and file flags through which a test holds a run at a chosen point and kills it there.

The worker process (``python -m tests.contrib_celery.worker``) and the test process build the
same application from one :class:`Config`, so the test sends to the tasks by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.signals import task_prerun, task_retry
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from idempotent import SQLStore
from idempotent.contrib.celery import idempotent_task
from idempotent.events import Event, EventInfo
from tests.django_db import django_alias

CONFIG_VARIABLE = "IDEMPOTENT_CELERY_TEST_CONFIG"
LEASE = 30.0


@dataclasses.dataclass
class Config:
    """Where the broker, the results and the databases of one test module are."""

    broker: str
    queue: str
    results: str
    flags: str
    #: database name -> (SQLAlchemy URL, keys table, orders table)
    databases: dict[str, tuple[str, str, str]]
    transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> Config:
        return cls(**json.loads(os.environ[CONFIG_VARIABLE]))


def orders_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The business table the order tasks write to."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(100), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
    )


class Flags:
    """Files shared by the test and the worker: holds, arrival notes, and counters."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def put(self, name: str, text: str = "") -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / name)  # atomic: a reader never sees half a note

    def take(self, name: str) -> bool:
        """Remove the flag ``name``; True when it was there."""
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def append(self, name: str, line: str) -> None:
        with (self.dir / name).open("a") as file:
            file.write(line + "\n")

    def lines(self, name: str) -> list[str]:
        path = self.dir / name
        return path.read_text().splitlines() if path.exists() else []

    def wait(self, name: str, rounds: int = 3000) -> None:
        """Wait until the flag ``name`` exists (bounded: 60 s)."""
        pause = threading.Event()
        for _ in range(rounds):
            if (self.dir / name).exists():
                return
            pause.wait(0.02)  # polling interval of a bounded loop, not a timing assumption
        raise TimeoutError(f"flag {name!r} never appeared")

    def hold(self, point: str, ref: str) -> None:
        """When the test set ``hold-<point>-<ref>``: say where this process is, then wait to be killed."""
        if not self.take(f"hold-{point}-{ref}"):
            return
        self.put(f"at-{point}-{ref}", str(os.getpid()))
        threading.Event().wait()  # until the test SIGKILLs this pool process


def make_app(config: Config) -> Celery:
    """The application, configured for exactly-once effects as docs/celery.md recommends."""
    app = Celery("idempotent-tests", broker=config.broker, backend=config.results, set_as_current=False)
    app.conf.update(
        task_default_queue=config.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=config.transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_backend_always_retry=True,
    )
    flags = Flags(config.flags)
    stores: list[SQLStore] = []

    for name, (url, keys, orders_name) in config.databases.items():
        engine = sa.create_engine(url, poolclass=NullPool)  # NullPool: no connection crosses a fork
        store = SQLStore(engine, keys)
        stores.append(store)
        _define_tasks(app, name, flags, store, sessionmaker(engine), orders_table(sa.MetaData(), orders_name))
        _define_django_task(app, name, flags, store, url, orders_name)

    @task_prerun.connect(weak=False)
    def move_clock(**_: Any) -> None:
        lines = flags.lines("clock-offset")
        for store in stores:
            store.clock_offset = float(lines[0]) if lines else 0.0

    @task_retry.connect(weak=False)
    def note_retry(request: Any = None, **_: Any) -> None:
        flags.append(f"retried-{(request.kwargs or {}).get('ref')}", str(request.id))

    return app


def _hold_after_commit(flags: Flags) -> Any:
    """A hook holding the run after its commit (before Celery stores the result and acks) when flagged."""

    def hook(info: EventInfo) -> None:
        from celery import current_task

        if info.event is Event.EXECUTED:
            flags.hold("commit", str(current_task.request.kwargs.get("ref")))

    return hook


def _define_tasks(
    app: Celery, name: str, flags: Flags, store: SQLStore, sessions: Any, orders: sa.Table
) -> None:
    """Register the tasks of one database under ``tests.<task>.<database>``."""

    def write_order(session: Any, ref: str, amount: int) -> dict[str, Any]:
        result = session.execute(orders.insert().values(ref=ref, amount=amount))
        flags.append(f"runs-{ref}", str(os.getpid()))
        flags.hold("write", ref)
        return {"order_id": int(result.inserted_primary_key[0]), "ref": ref, "amount": amount}

    hold_after_commit = _hold_after_commit(flags)

    @app.task(bind=True, name=f"tests.order.{name}")
    @idempotent_task(
        session_factory=sessions, store=store, scope=f"tests.order.{name}", hooks=[hold_after_commit]
    )
    def order(self: Any, session: Any, ref: str, amount: int) -> dict[str, Any]:
        """Default key (task name + request id). Fails transiently once when flagged, then retries."""
        if self.request.retries:
            # The retried copy can start while the first run is still reporting its retry: let it
            # finish, so that its RETRY state never lands on top of this run's result.
            flags.wait(f"retried-{ref}")
        receipt = write_order(session, ref, amount)
        if flags.take(f"transient-{ref}"):
            try:
                raise ConnectionError("the payment gateway timed out")
            except ConnectionError as exc:
                raise self.retry(exc=exc, countdown=0) from exc
        return receipt

    @app.task(bind=True, name=f"tests.place.{name}")
    @idempotent_task(key_from="ref", session_factory=sessions, store=store, scope=f"tests.place.{name}")
    def place(self: Any, session: Any, ref: str, amount: int) -> dict[str, Any]:
        """Business key: two sends of one order run once."""
        return write_order(session, ref, amount)

    # in_progress_delay: a delivery that meets the live lease is sent again after 1 s. (Celery reports
    # RETRY after the next copy was sent; the gap keeps that report from landing on the final result.)
    @app.task(bind=True, name=f"tests.charge.{name}")
    @idempotent_task(
        key_from="ref", store=store, scope=f"tests.charge.{name}", lease=LEASE, wait=0, in_progress_delay=1.0
    )
    def charge(self: Any, ref: str) -> dict[str, Any]:
        """Lease mode: the effect (a line in a file) is outside the database."""
        flags.append(f"charges-{ref}", str(os.getpid()))
        flags.hold("charge", ref)
        return {"charged": ref, "retries": self.request.retries}


def _define_django_task(
    app: Celery, name: str, flags: Flags, store: SQLStore, url: str, orders_name: str
) -> None:
    """``tests.djorder.<database>``: the order task writing through the Django ORM (same orders table)."""
    from django.db import models

    alias = django_alias(url)
    meta = type("Meta", (), {"app_label": "idem_celery_worker", "db_table": orders_name, "managed": False})
    order_model: Any = type(
        f"Order_{name}_{orders_name}",
        (models.Model,),
        {
            "__module__": __name__,
            "Meta": meta,
            "ref": models.CharField(max_length=100),
            "amount": models.IntegerField(),
        },
    )

    hold_after_commit = _hold_after_commit(flags)

    @app.task(bind=True, name=f"tests.djorder.{name}")
    @idempotent_task(django=alias, store=store, scope=f"tests.djorder.{name}", hooks=[hold_after_commit])
    def djorder(self: Any, ref: str, amount: int) -> dict[str, Any]:
        """Default key; the row is written by Django's ORM inside the decorator's atomic() block."""
        order = order_model.objects.using(alias).create(ref=ref, amount=amount)
        flags.append(f"runs-{ref}", str(os.getpid()))
        flags.hold("write", ref)
        return {"order_id": order.pk, "ref": ref, "amount": amount}
