"""First-use mistakes get a message naming the problem and the fix."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import MissingKey, SQLStore, idempotent
from idempotent.errors import ConfigurationError, TableMissing
from idempotent.testing import MemoryStore
from tests.conftest import Db


@dataclasses.dataclass
class Order:
    """A request object the key is read from."""

    id: str


def test_session_as_dotted_path_on_self(db: Db) -> None:
    """``session="self.session"`` finds the session on the instance, like ``key_from="self.x"``."""
    orders = db.orders

    class Repository:
        def __init__(self, session: Any) -> None:
            self.session = session
            self.runs = 0

        @idempotent(key_from="ref", scope="tests.first.repo", session="self.session", store=db.store)
        def place(self, ref: str) -> int:
            self.runs += 1
            self.session.execute(orders.insert().values(ref=ref))
            return self.runs

        @idempotent(key_from="ref", scope="tests.first.repo", session="self.session", store=db.store)
        async def aplace(self, ref: str) -> int:
            self.runs += 1
            await self.session.execute(orders.insert().values(ref=ref))
            return self.runs

    if db.is_async:
        from sqlalchemy.ext.asyncio import AsyncSession

        async def scenario() -> list[int]:
            async with AsyncSession(db.async_engine) as session:
                repo = Repository(session)
                return [await repo.aplace("order-s1"), await repo.aplace("order-s1")]

        results = db.run(scenario())
    else:
        with Session(db.engine) as session:
            repo = Repository(session)
            results = [repo.place("order-s1"), repo.place("order-s1")]
    assert results == [1, 1]  # the second call replayed the first one's result
    assert (db.count(), len(db.key_rows())) == (1, 1)


def test_session_path_must_start_at_a_parameter() -> None:
    """A session path whose head is no parameter is refused at decoration, listing the parameters."""
    with pytest.raises(ConfigurationError, match=r"session='db\.session' names no parameter .* ref"):

        @idempotent(key_from="ref", scope="tests.first.bad", session="db.session")
        def place(ref: str) -> None: ...


def test_engine_instead_of_session_is_named(sync_db: Db) -> None:
    """An Engine passed where a Session or Connection belongs says so (also when named by session=)."""

    @idempotent(key_from="ref", scope="tests.first.engine", store=sync_db.store)
    def place(engine: Any, ref: str) -> None: ...

    @idempotent(key_from="ref", scope="tests.first.engine2", session="bind", store=sync_db.store)
    def place_named(bind: Any, ref: str) -> None: ...

    @idempotent(key_from="ref", scope="tests.first.engine3", store=sync_db.store)
    async def aplace(engine: Any, ref: str) -> None: ...

    from sqlalchemy.ext.asyncio import create_async_engine

    async_engine = create_async_engine(sync_db.async_url)
    for call in (
        lambda: place(sync_db.engine, "r-1"),
        lambda: place_named(sync_db.engine, "r-1"),
        lambda: asyncio.run(aplace(async_engine, "r-1")),
    ):
        with pytest.raises(ConfigurationError, match="pass a Session or Connection, not an Engine"):
            call()
    assert sync_db.key_rows() == []


def test_typo_in_dotted_key_from_is_named() -> None:
    """``key_from="order.idd"`` says the attribute does not exist, or the mapping has no such key."""

    @idempotent(key_from="order.idd", scope="tests.first.typo", store=MemoryStore())
    def place(order: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"order \(Order\) has no attribute 'idd'"):
        place(Order("o-1"))
    with pytest.raises(MissingKey, match=r"order has no key 'idd' \(its keys: id\)"):
        place({"id": "o-1"})


def test_callable_key_from_is_named_by_qualname() -> None:
    """A callable ``key_from`` appears in messages by its qualified name, not its repr."""

    @idempotent(key_from=lambda order: None, scope="tests.first.lambda", store=MemoryStore())
    def place(order: Any) -> None: ...

    with pytest.raises(MissingKey) as caught:
        place(Order("o-1"))
    message = str(caught.value)
    assert (
        "tests.test_first_use.test_callable_key_from_is_named_by_qualname.<locals>.<lambda> returned None"
        in message
    )
    assert " at 0x" not in message


def test_table_missing_names_the_database(sync_db: Db) -> None:
    """A missing keys table names the database it was looked for in, password masked."""
    url = sync_db.engine.url
    if sync_db.name == "postgresql":  # trust authentication accepts any password: it must be masked
        url = url.set(password="s3cret-pw")  # noqa: S106  (a made-up password the message must mask)
    engine = sa.create_engine(url)
    sync_db.cleanups.append(engine.dispose)

    @idempotent(key_from="ref", scope="tests.first.table", store=SQLStore(engine, "no_such_keys_table"))
    def place(conn: Any, ref: str) -> None: ...

    with engine.connect() as conn, pytest.raises(TableMissing) as caught:
        place(conn, "r-1")
    message = str(caught.value)
    assert f"does not exist in {url.render_as_string(hide_password=True)};" in message
    assert "s3cret-pw" not in message and "idempotent migrate" in message


def test_scope_warning_points_at_the_users_line(tmp_path: Path) -> None:
    """The warning for a function defined in ``__main__`` points at the decorated line, not ``sys:1``."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """\
            from idempotent import idempotent
            from idempotent.testing import MemoryStore

            @idempotent(key_from="ref", store=MemoryStore())
            def place(ref):
                return ref
            """
        )
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-W", "always", str(script)], capture_output=True, text=True, cwd=root, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{script}:4: IdempotencyWarning" in proc.stderr
    assert "sys:1" not in proc.stderr
