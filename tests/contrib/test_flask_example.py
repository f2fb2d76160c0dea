"""``examples/flask_app.py`` on an empty database: in process on each database, and under
``flask --app examples/flask_app.py run`` as a user starts it."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from idempotent import configure
from idempotent.decorator import default_store
from tests.conftest import Db, _make_db
from tests.contrib.child_server import ChildServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flask_app.py"


@pytest.fixture
def example(sync_db: Db, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example module imported fresh on the test database, with tables of its own."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"ex_orders_{suffix}", f"ex_keys_{suffix}")
    monkeypatch.setenv("DATABASE_URL", sync_db.url)
    monkeypatch.setenv("ORDERS_TABLE", names[0])
    monkeypatch.setenv("IDEMPOTENCY_TABLE", names[1])
    previous = default_store()
    sys.modules.pop("examples.flask_app", None)
    try:
        yield importlib.import_module("examples.flask_app")
    finally:
        module = sys.modules.pop("examples.flask_app", None)
        configure(store=previous)
        if module is not None:
            with module.app.app_context():
                module.db.drop_all()
                module.db.engine.dispose()


def _order(client: Any, key: str, item: str, who: str = "alice", quantity: int = 1) -> Any:
    return client.post(
        "/orders",
        json={"item": item, "quantity": quantity},
        headers={"Idempotency-Key": key, "Authorization": f"Bearer {who}"},
    )


def test_example_creates_its_tables_and_serves_orders(example: Any, sync_db: Db) -> None:
    """On an empty database the example creates both tables; POST answers 201 with the order and
    its Location, a retry replays it, GET lists one order, another caller's key is their own."""
    tables = set(sa.inspect(sync_db.engine).get_table_names())
    assert {example.orders.name, example.KEYS_TABLE} <= tables
    client = example.app.test_client()
    first = _order(client, "k1", "tea", quantity=2)
    assert first.status_code == 201
    assert first.json == {"id": first.json["id"], "item": "tea", "quantity": 2, "owner": "alice"}
    assert first.headers["Location"] == f"/orders/{first.json['id']}"
    again = _order(client, "k1", "tea", quantity=2)
    assert (again.get_data(), again.headers["Idempotent-Replayed"]) == (first.get_data(), "true")
    assert _order(client, "k1", "coffee").status_code == 422
    bob = _order(client, "k1", "coffee", who="bob")
    assert (bob.status_code, bob.json["owner"]) == (201, "bob")
    assert client.post("/orders", json={"item": 3}, headers={"Idempotency-Key": "bad"}).status_code == 400
    listed = client.get("/orders")
    assert [o["item"] for o in listed.json] == ["tea", "coffee"]


def test_flask_run_serves_the_example_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    """``flask --app examples/flask_app.py run`` starts on a database file that does not exist yet
    and answers a retried POST once."""
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'orders.db'}", PYTHONPATH=str(REPO))
    server = example_server(env, tmp_path)
    try:
        headers = {"Idempotency-Key": "k", "Authorization": "Bearer carol"}
        first = httpx.post(f"{server.base}/orders", json={"item": "tea", "quantity": 1}, headers=headers)
        again = httpx.post(f"{server.base}/orders", json={"item": "tea", "quantity": 1}, headers=headers)
        assert first.status_code == 201
        assert (again.content, again.headers["Idempotent-Replayed"]) == (first.content, "true")
        assert httpx.get(f"{server.base}/orders").json() == [first.json()]
    finally:
        server.stop()


def example_server(env: dict[str, str], cwd: Path) -> ChildServer:
    """``flask --app examples/flask_app.py run`` on a free port."""
    command = [sys.executable, "-m", "flask", "--app", str(EXAMPLE), "run", "--port", "{port}"]
    return ChildServer(command, "Running on", env, cwd)


# -- a client that times out and retries ---------------------------------------------------------


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """PostgreSQL and MariaDB (SQLite has no table lock to make a request slow while others run)."""
    yield from _make_db(request.param, "sync", tmp_path)


def _lock(conn: sa.Connection, db: Db, table: str) -> None:
    """Hold a lock that makes every INSERT into ``table`` wait (reads still run)."""
    if db.name == "postgresql":
        conn.execute(sa.text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
    else:
        conn.execute(sa.text(f"LOCK TABLES {table} READ"))


def _waiting_on(db: Db, table: str) -> bool:
    """Whether some session is running a statement on ``table`` (blocked, in these tests)."""
    if db.name == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE :pattern"
    else:
        query = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE :pattern"
    with db.engine.connect() as conn:
        return bool(conn.execute(sa.text(query), {"pattern": f"%INSERT INTO {table}%"}).scalar_one())


def _drop(db: Db, *tables: str) -> None:
    with db.engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def _until(condition: Any, what: str) -> None:
    """Poll ``condition`` (a state another process reaches) for at most 30 s."""
    ready = threading.Event()
    for _ in range(600):
        if condition():
            return
        ready.wait(0.05)
    pytest.fail(f"timed out waiting until {what}")


@pytest.mark.parametrize("crash", [False, True], ids=["timeout", "sigkill"])
def test_client_timeout_retry_while_first_attempt_runs(server_db: Db, tmp_path: Path, crash: bool) -> None:
    """The first attempt is stuck behind a lock on ``orders``; the client times out and retries
    with the same key (after the server was SIGKILLed and restarted, in the second variant). One
    order row, and the client ends with a 201 carrying that order."""
    suffix = uuid.uuid4().hex[:8]
    orders, keys = f"ex_orders_{suffix}", f"ex_keys_{suffix}"
    env = dict(
        os.environ,
        DATABASE_URL=server_db.url,
        ORDERS_TABLE=orders,
        IDEMPOTENCY_TABLE=keys,
        PYTHONPATH=str(REPO),
    )
    server_db.cleanups.append(lambda: _drop(server_db, orders, keys))
    server = example_server(env, tmp_path)
    servers = [server]
    headers = {"Idempotency-Key": "retry-me", "Authorization": "Bearer dora"}
    order = {"item": "tea", "quantity": 1}
    final: dict[str, httpx.Response] = {}
    try:
        with server_db.engine.connect() as locker:
            _lock(locker, server_db, orders)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{server.base}/orders", json=order, headers=headers, timeout=1)
            _until(lambda: _waiting_on(server_db, orders), "the first attempt waits")
            if crash:
                server.stop(signal.SIGKILL)
                server = example_server(env, tmp_path)
                servers.append(server)

            def retry() -> None:
                final["response"] = httpx.post(
                    f"{server.base}/orders", json=order, headers=headers, timeout=60
                )

            retrying = threading.Thread(target=retry)
            retrying.start()
            _until(lambda: _waiting_on(server_db, keys), "the retry waits for the first")
            if server_db.name == "mariadb":
                locker.execute(sa.text("UNLOCK TABLES"))
            locker.rollback()
        retrying.join()
    finally:
        for running in servers:
            running.stop()
    response = final["response"]
    assert response.status_code == 201, "".join(line for running in servers for line in running.lines)
    assert response.json()["item"] == "tea"
    assert response.headers.get("Idempotent-Replayed") == (None if crash else "true")
    with server_db.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id FROM {orders}")).scalars().all()
    assert rows == [response.json()["id"]]


def test_flask_benchmark_runs(tmp_path: Path) -> None:
    """``benchmarks/bench_flask.py`` runs end to end (a few requests on SQLite) and writes its report."""
    output = tmp_path / "bench.json"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_flask.py"), "--url", "sqlite",
        "--requests", "3", "--warmup", "0", "--output", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text(encoding="utf-8"))
    assert set(report["results"]) == {"bare", "route-first", "route-replay", "mw-first", "mw-replay"}
    assert "route-first" in result.stdout
