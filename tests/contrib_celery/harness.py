"""A real Celery worker for a test module: tables on each database, one worker process, file flags.

One worker serves a whole module (starting one per test would dominate the run time). It is a
prefork worker with two pool processes, so a test can SIGKILL the pool process running a task
while the worker itself lives on and redelivers the message, as ``task_reject_on_worker_lost``
promises. Queue names and table names are random, so suites can share the broker and servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from idempotent.schema import make_table
from tests.contrib_celery.app import CONFIG_VARIABLE, Config, Flags, make_app, orders_table
from tests.services import DATABASES, MARIADB_URL, POSTGRES_URL, reachable, require

ROOT = Path(__file__).resolve().parents[2]
RABBITMQ_URL = os.environ.get("IDEMPOTENT_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_BROKER_URL = os.environ.get("IDEMPOTENT_TEST_REDIS_BROKER_URL", "redis://127.0.0.1:6379/0")
#: How long a test waits for the worker to reach a point or finish a task before it fails.
PATIENCE = 60.0


@dataclass
class Database:
    """The tables one database lends to a test module."""

    name: str
    url: str
    engine: sa.Engine
    metadata: sa.MetaData
    orders: sa.Table

    def rows(self, ref: str) -> list[Any]:
        """The order rows with this reference, read on a fresh connection."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.orders).where(self.orders.c.ref == ref)).all())


@dataclass
class CeleryEnv:
    """A running worker and what a test needs to drive it."""

    config: Config
    app: Celery
    flags: Flags
    databases: dict[str, Database]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def database(self, name: str) -> Database:
        """The database ``name``; skips (or fails under IDEMPOTENT_REQUIRE_SERVICES=1) when absent."""
        if name not in self.databases:
            require(POSTGRES_URL if name == "postgresql" else MARIADB_URL, name)
        return self.databases[name]

    def send(self, task: str, database: str, **kwargs: Any) -> Any:
        """Send ``tests.<task>.<database>`` with keyword arguments; returns its AsyncResult."""
        return self.app.send_task(f"tests.{task}.{database}", kwargs=kwargs, queue=self.config.queue)

    def get(self, result: Any) -> Any:
        """The task's return value, waiting for the worker (fails after PATIENCE seconds)."""
        try:
            return result.get(timeout=PATIENCE, interval=0.05)
        except Exception:
            print(self.log.read_text()[-6000:])  # the worker's log helps when a task failed
            raise

    def wait_for(self, name: str) -> str:
        """Wait until the worker writes the flag ``name``; return its text."""
        path = self.flags.dir / name
        pause = threading.Event()
        for _ in range(int(PATIENCE / 0.02)):
            if path.exists():
                return path.read_text()
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"the worker exited ({self.process.returncode}):\n{self.log.read_text()[-6000:]}")
            pause.wait(0.02)  # polling interval of a bounded loop, not a timing assumption
        pytest.fail(f"the worker never reached {name!r}:\n{self.log.read_text()[-6000:]}")

    def kill_at(self, point: str, ref: str) -> int:
        """Wait until the run of ``ref`` holds at ``point`` and SIGKILL its pool process; returns its pid."""
        pid = int(self.wait_for(f"at-{point}-{ref}"))
        os.kill(pid, signal.SIGKILL)
        return pid

    def start(self) -> None:
        env = {**os.environ, CONFIG_VARIABLE: self.config.dumps(), "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.contrib_celery.worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the teardown kills the pool too
            )

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def _database(name: str, tmp: Path, suffix: str) -> Database | str:
    if name == "sqlite":
        url = f"sqlite:///{tmp / 'orders.db'}"
    else:
        url = POSTGRES_URL if name == "postgresql" else MARIADB_URL
        reason = reachable(url)
        if reason is not None:
            return reason
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    make_table(metadata, f"idem_keys_{suffix}")
    orders = orders_table(metadata, f"orders_{suffix}")
    metadata.create_all(engine)
    return Database(name, url, engine, metadata, orders)


@contextlib.contextmanager
def celery_env(
    tmp: Path, broker: str, transport_options: dict[str, Any] | None = None
) -> Iterator[CeleryEnv]:
    """Create the tables, start the worker, and clean everything up afterwards."""
    suffix = uuid.uuid4().hex[:10]
    flags_dir = tmp / "flags"
    flags_dir.mkdir()
    databases: dict[str, Database] = {}
    skipped: dict[str, str] = {}
    for name in DATABASES:
        made = _database(name, tmp, suffix)
        if isinstance(made, str):
            skipped[name] = made
        else:
            databases[name] = made
    config = Config(
        broker=broker,
        queue=f"idem-test-{suffix}",
        results=f"db+sqlite:///{tmp / 'results.db'}",
        flags=str(flags_dir),
        databases={d.name: (d.url, f"idem_keys_{suffix}", d.orders.name) for d in databases.values()},
        transport_options=transport_options or {},
    )
    app = make_app(config)
    # Create the result tables before two processes race to do it (explicitly: before Celery
    # 5.5 a process creates them for the first results database it opens only).
    from celery.backends.database.models import ResultModelBase

    results = sa.create_engine(config.results.removeprefix("db+"))
    ResultModelBase.metadata.create_all(results)
    results.dispose()
    app.AsyncResult(str(uuid.uuid4())).state  # noqa: B018
    env = CeleryEnv(config, app, Flags(flags_dir), databases, tmp / "worker.log", skipped=skipped)
    env.start()
    try:
        yield env
    finally:
        env.stop()
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            conn.default_channel.queue_delete(config.queue)
        for database in databases.values():
            database.metadata.drop_all(database.engine)
            database.engine.dispose()


def rabbitmq_available() -> None:
    require(RABBITMQ_URL, "RabbitMQ")
