"""``examples/fastapi_app.py`` under a real uvicorn server on a free loopback port, on every database:
concurrent duplicates, a client that times out and retries while the first attempt is stuck on a
lock, and the same across a SIGKILL of the server and a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import Db
from tests.contrib.child_server import ChildServer

REPO = Path(__file__).resolve().parents[2]
ORDER = {"item": "tea", "quantity": 2}


UVICORN = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}"]
#: The app each kind of route is served from: the example (a sync route on a Session), or the
#: example's API on an async route with an AsyncSession.
APPS = {
    "sync": ["examples.fastapi_app:app"],
    "async": ["--factory", "tests.contrib.test_fastapi_async_server:create_app"],
}


@dataclass
class Site:
    """The example's database: URL, table names, and an engine to look at it."""

    db: Db
    env: dict[str, str]
    orders: str
    keys: str
    cwd: Path

    def serve(self, route: str = "sync") -> ChildServer:
        """uvicorn serving the example on a free port, once its start-up completed."""
        return ChildServer([*UVICORN, *APPS[route]], "Application startup complete", self.env, self.cwd)

    def order_ids(self) -> list[int]:
        with self.db.engine.connect() as conn:
            return [int(row[0]) for row in conn.execute(sa.text(f"SELECT id FROM {self.orders} ORDER BY id"))]


@pytest.fixture
def site(sync_db: Db, tmp_path: Path) -> Iterator[Site]:
    """Random table names on the test database; the server creates them, the fixture drops them."""
    suffix = uuid.uuid4().hex[:8]
    orders, keys = f"fa_orders_{suffix}", f"fa_keys_{suffix}"
    env = dict(os.environ, DATABASE_URL=sync_db.url, ASYNC_DATABASE_URL=sync_db.async_url)
    env.update(ORDERS_TABLE=orders, IDEMPOTENCY_TABLE=keys)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    yield Site(sync_db, env, orders, keys, tmp_path)
    metadata = sa.MetaData()
    metadata.reflect(sync_db.engine, only=lambda name, _: name in (orders, keys))
    metadata.drop_all(sync_db.engine)


def _headers(key: str, who: str = "alice") -> dict[str, str]:
    return {"Idempotency-Key": key, "Authorization": f"Bearer {who}"}


def test_fifty_concurrent_duplicates_make_one_order(site: Site) -> None:
    """50 concurrent requests with one key: one order row, 50 identical 201 bodies, 49 replays."""
    server = site.serve()
    try:

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=120) as client:
                return await asyncio.gather(
                    *(client.post("/orders", json=ORDER, headers=_headers("burst")) for _ in range(50))
                )

        responses = asyncio.run(burst())
        listed = httpx.get(f"{server.base}/orders").json()
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [201] * 50, [
        r.text for r in responses if r.status_code != 201
    ]
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    assert len({r.headers["location"] for r in responses}) == 1
    assert site.order_ids() == [responses[0].json()["id"]]
    assert listed == [responses[0].json()]


class OrdersLock:
    """Hold a lock that blocks inserts into the example's ``orders`` table (on SQLite: every write)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.sqlite: sqlite3.Connection | None = None
        self.conn: sa.Connection | None = None
        name = site.db.name
        if name == "sqlite":
            path = site.db.engine.url.database
            assert path is not None
            self.sqlite = sqlite3.connect(path, isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")
        elif name == "postgresql":
            self.conn = site.db.engine.connect()
            self.conn.exec_driver_sql(f"LOCK TABLE {site.orders} IN SHARE MODE")
        else:
            self.conn = site.db.engine.connect()
            self.conn.exec_driver_sql(f"LOCK TABLES {site.orders} READ")

    def release(self) -> None:
        if self.sqlite is not None:
            self.sqlite.rollback()
            self.sqlite.close()
            self.sqlite = None
        if self.conn is not None:
            if self.site.db.name != "postgresql":
                self.conn.exec_driver_sql("UNLOCK TABLES")
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (the other party is a separate server process)."""
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not condition():
            if done.wait(0.05):
                pytest.fail(f"timed out waiting until {what}")
    finally:
        deadline.cancel()


def _claim_waiting(site: Site) -> Callable[[], bool]:
    """True once a server connection is blocked inserting into the keys table (None on SQLite,
    whose lock blocks every writer alike: any order of the two attempts is then valid)."""
    if site.db.name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' "
            "AND wait_event_type = 'Lock' AND query LIKE :pattern"
        )
    elif site.db.name == "sqlite":
        return lambda: True
    else:
        query = (
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
            "AND COMMAND = 'Query' AND INFO LIKE :pattern"
        )

    def check() -> bool:
        with site.db.engine.connect() as conn:
            pattern = f"%INSERT%{site.keys}%"
            return int(conn.execute(sa.text(query), {"pattern": pattern}).scalar_one()) > 0

    return check


class RetryingClient(threading.Thread):
    """A client that gives up on its first attempt after one second and retries with the same key
    (``between`` runs between the two attempts, e.g. to restart the server)."""

    def __init__(self, base: Callable[[], str], between: Callable[[], None] = lambda: None) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.between = between
        self.timed_out = threading.Event()
        self.retrying = threading.Event()
        self.final: httpx.Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            try:
                httpx.post(
                    f"{self.base()}/orders",
                    json=ORDER,
                    headers=_headers("retry"),
                    timeout=httpx.Timeout(30, read=1.0),
                )
            except httpx.ReadTimeout:
                self.timed_out.set()
            else:
                raise AssertionError("the first attempt was expected to time out")
            self.between()
            self.retrying.set()
            self.final = httpx.post(
                f"{self.base()}/orders", json=ORDER, headers=_headers("retry"), timeout=90
            )
        except BaseException as exc:
            self.error = exc
            self.timed_out.set()
            self.retrying.set()


def _finish(client: RetryingClient, site: Site, lock: OrdersLock, *, first_alive: bool = True) -> Any:
    """Release the lock once the retry is under way: while the first attempt is alive, once the
    retry waits for its key; after a crash at once (the dead attempt's connection may be gone
    already, or be rolled back when it finds its client gone: either way it never commits)."""
    client.retrying.wait(60)
    try:
        assert client.error is None, client.error
        if first_alive:
            _wait_until(_claim_waiting(site), "the retry waits for the first attempt's key")
    finally:
        lock.release()
    client.join(90)
    assert client.error is None, client.error
    assert client.final is not None
    return client.final


@pytest.mark.parametrize("route", ["sync", "async"])
def test_client_timeout_and_retry_while_the_first_attempt_runs(site: Site, route: str) -> None:
    """The first attempt is stuck behind a lock on ``orders`` when the client times out and retries
    with the same key: one order, and the client ends with the first attempt's 201."""
    server = site.serve(route)
    try:
        lock = OrdersLock(site)
        client = RetryingClient(lambda: server.base)
        client.start()
        final = _finish(client, site, lock)
    finally:
        server.stop()
    assert final.status_code == 201
    assert site.order_ids() == [final.json()["id"]]
    if site.db.name != "sqlite":  # elsewhere the retry waited on the first attempt's key
        assert final.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("route", ["sync", "async"])
def test_client_retry_after_the_server_is_killed_mid_request(site: Site, route: str) -> None:
    """SIGKILL the server while the first attempt is stuck, start it again, retry with the same
    key: the killed attempt never commits, the retry makes the one order and gets its 201."""
    servers = [site.serve(route)]

    def restart() -> None:
        servers[0].stop(signal.SIGKILL)
        servers.append(site.serve(route))  # the client retries at the new server's address

    try:
        lock = OrdersLock(site)
        client = RetryingClient(lambda: servers[-1].base, between=restart)
        client.start()
        final = _finish(client, site, lock, first_alive=False)
    finally:
        for server in servers:
            server.stop()
    assert servers[0].process.returncode == -signal.SIGKILL
    assert final.status_code == 201
    assert site.order_ids() == [final.json()["id"]]
