"""``examples/flask_app.py`` on an empty database: in process on each database, and under
``flask --app examples/flask_app.py run`` as a user starts it."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from idempotent import configure
from idempotent.decorator import default_store
from tests.conftest import Db

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_flask_run_serves_the_example_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    """``flask --app examples/flask_app.py run`` starts on a database file that does not exist yet
    and answers a retried POST once."""
    port = _free_port()
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'orders.db'}", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "flask", "--app", str(EXAMPLE), "run", "--port", str(port)]
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "Running on" in line:
                break
        else:
            pytest.fail(f"the server did not start (exit code {server.wait()})")
        base = f"http://127.0.0.1:{port}"
        headers = {"Idempotency-Key": "k", "Authorization": "Bearer carol"}
        first = httpx.post(f"{base}/orders", json={"item": "tea", "quantity": 1}, headers=headers)
        again = httpx.post(f"{base}/orders", json={"item": "tea", "quantity": 1}, headers=headers)
        assert first.status_code == 201
        assert (again.content, again.headers["Idempotent-Replayed"]) == (first.content, "true")
        assert httpx.get(f"{base}/orders").json() == [first.json()]
    finally:
        server.terminate()
        server.wait(30)
