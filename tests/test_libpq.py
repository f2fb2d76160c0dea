"""PostgreSQL with psycopg, sync: the library's statements go through libpq, prepared once per
connection under names of their own (``_idem_N``).

These tests pin what that must survive: the server losing the prepared statements (psycopg's
``DEALLOCATE ALL`` after a rollback, a pooler's reset), connections set up for poolers that keep
no prepared statements, text outside ASCII both ways, and a transaction whose claim did not go
through libpq.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import idempotent
from tests.conftest import Db, _make_db


@pytest.fixture
def pg(tmp_path: Any) -> Iterator[Db]:
    """PostgreSQL through psycopg's sync driver (the only one that goes through libpq)."""
    yield from _make_db("postgresql", "sync", tmp_path)


def _ours(conn: sa.Connection) -> list[str]:
    """The library's prepared statements on ``conn``'s server session."""
    rows = conn.exec_driver_sql(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_idem\\_%%' ORDER BY name"
    )
    names = [name for (name,) in rows]
    conn.commit()
    return names


def _place(db: Db, scope: str, calls: list[str] | None = None) -> Any:
    @idempotent(key_from="ref", scope=scope, store=db.store)
    def place(conn: Any, ref: str) -> dict[str, Any]:
        if calls is not None:
            calls.append(ref)
        conn.execute(db.orders.insert().values(ref=ref))
        return {"ref": ref, "note": "placed"}

    return place


def _refs(db: Db) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(r for (r,) in conn.execute(sa.select(db.orders.c.ref)))


def test_statements_are_prepared_once_per_connection(pg: Db) -> None:
    """The claim and the result write are prepared on first use and reused after: more calls on
    the connection add no statement."""
    place = _place(pg, "tests.libpq.once")
    with pg.engine.connect() as conn:
        assert place(conn, "o-1") == {"ref": "o-1", "note": "placed"}
        first = _ours(conn)
        assert len(first) == 2  # the claim and the guarded result write
        for n in range(2, 8):
            place(conn, f"o-{n}")
        assert _ours(conn) == first
    assert _refs(pg) == [f"o-{n}" for n in range(1, 8)]


def test_statements_lost_to_psycopg_deallocate_all_are_prepared_again(pg: Db) -> None:
    """psycopg sends DEALLOCATE ALL when a transaction in which it had prepared statements of its
    own rolls back: the library's go too. The next first call and the next replay still run once
    and answer as before, and the statements are prepared again."""
    calls: list[str] = []
    place = _place(pg, "tests.libpq.lost", calls)
    with pg.engine.connect() as conn:
        assert place(conn, "l-1")["ref"] == "l-1"
        assert _ours(conn)
        for _ in range(8):  # psycopg prepares a statement on its 5th execution
            conn.execute(sa.text("SELECT 1 + :n"), {"n": 1})
        conn.rollback()
        assert _ours(conn) == []  # what this test is about
        assert place(conn, "l-2")["ref"] == "l-2"
        assert place(conn, "l-1")["ref"] == "l-1"  # a replay
        assert len(_ours(conn)) == 2
    assert calls == ["l-1", "l-2"]
    assert _refs(pg) == ["l-1", "l-2"]
    assert sorted(r.status for r in pg.key_rows()) == ["completed", "completed"]


def test_statements_lost_to_a_session_reset_are_prepared_again(pg: Db) -> None:
    """``DISCARD ALL`` (what a pooler sends between clients) drops them too; so does
    ``DEALLOCATE ALL`` sent by the application."""
    calls: list[str] = []
    place = _place(pg, "tests.libpq.reset", calls)
    with pg.engine.connect() as conn:
        place(conn, "r-1")
        driver = conn.connection.driver_connection
        for n, reset in enumerate(("DISCARD ALL", "DEALLOCATE ALL"), start=2):
            driver.autocommit = True
            driver.execute(reset)
            driver.autocommit = False
            assert _ours(conn) == []
            assert place(conn, f"r-{n}") == {"ref": f"r-{n}", "note": "placed"}
            assert place(conn, "r-1") == {"ref": "r-1", "note": "placed"}
    assert calls == ["r-1", "r-2", "r-3"]
    assert _refs(pg) == ["r-1", "r-2", "r-3"]


def test_replay_reads_survive_lost_statements(pg: Db) -> None:
    """Frequent replays read before they begin (one statement outside any transaction): that
    read too prepares its statement again when the server lost it."""
    calls: list[str] = []
    place = _place(pg, "tests.libpq.peek", calls)
    with pg.engine.connect() as conn:
        place(conn, "p-1")
        for _ in range(6):  # enough replays in a row to read first
            assert place(conn, "p-1")["ref"] == "p-1"
        before = _ours(conn)
        assert len(before) == 3  # the claim, the result write and the read
        conn.exec_driver_sql("DEALLOCATE ALL")
        conn.commit()
        assert _ours(conn) == []
        assert place(conn, "p-1") == {"ref": "p-1", "note": "placed"}
        assert len(_ours(conn)) == 1  # only the read was needed
    assert calls == ["p-1"]


def test_connection_without_prepared_statements_gets_none(tmp_path: Any, pg: Db) -> None:
    """``prepare_threshold=None`` (psycopg's setting for poolers that cannot keep prepared
    statements) keeps the library's statements unprepared too."""
    engine = sa.create_engine(pg.url, connect_args={"prepare_threshold": None})
    try:
        store = type(pg.store)(engine, pg.keys.name)
        calls: list[str] = []

        @idempotent(key_from="ref", scope="tests.libpq.unnamed", store=store)
        def place(conn: Any, ref: str) -> str:
            calls.append(ref)
            conn.execute(pg.orders.insert().values(ref=ref))
            return ref.upper()

        with engine.connect() as conn:
            for _ in range(8):
                assert place(conn, "u-1") == "U-1"
            assert place(conn, "u-2") == "U-2"
            assert _ours(conn) == []
    finally:
        engine.dispose()
    assert calls == ["u-1", "u-2"]
    assert _refs(pg) == ["u-1", "u-2"]


def test_text_outside_ascii_both_ways(pg: Db) -> None:
    """Keys, results and replays keep every character, on the claim and on the replay read."""
    calls: list[str] = []

    @idempotent(key_from="ref", scope="tests.libpq.text", store=pg.store)
    def place(conn: Any, ref: str) -> dict[str, Any]:
        calls.append(ref)
        conn.execute(pg.orders.insert().values(ref=ref))
        return {"ref": ref, "name": "Zoë Ørsted, 東京 🚚", "n": 2**40}

    ref = "clé-ü-東京-🚚"
    expected = {"ref": ref, "name": "Zoë Ørsted, 東京 🚚", "n": 2**40}
    with pg.engine.connect() as conn:
        for _ in range(8):  # the first call, replays in a transaction, then replays read first
            assert place(conn, ref) == expected
    assert calls == [ref]
    (row,) = pg.key_rows()
    assert (row.key, row.status) == (ref, "completed")


def test_session_whose_transaction_began_before_the_call(pg: Db) -> None:
    """A Session that already ran a statement has begun its transaction: the claim goes on
    psycopg's cursor, and the result write (with COMMIT, when the decorator owns the unit) does
    not rely on statements it has not seen prepared in this transaction."""
    calls: list[str] = []
    place = _place(pg, "tests.libpq.session", calls)
    for n in range(3):
        with Session(pg.engine) as session:
            session.execute(sa.select(1))
            assert place(session, f"s-{n % 2}")["ref"] == f"s-{n % 2}"
            session.commit()
    assert calls == ["s-0", "s-1"]
    assert _refs(pg) == ["s-0", "s-1"]
    assert [r.status for r in pg.key_rows()] == ["completed", "completed"]


async def _aours(conn: Any) -> list[str]:
    rows = await conn.exec_driver_sql(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_idem\\_%%' ORDER BY name"
    )
    names = [name for (name,) in rows]
    await conn.commit()
    return names


def test_async_driver_prepares_again_what_the_server_lost(pg: Db) -> None:
    """The async driver goes through libpq too (waiting on the event loop): the same first
    calls, replays and read-first replays, before and after the server lost the statements."""
    from sqlalchemy.ext.asyncio import create_async_engine

    calls: list[str] = []
    text = "Zoë 東京 🚚"

    async def main() -> None:
        engine = create_async_engine(pg.async_url)
        store = type(pg.store)(engine, pg.keys.name)

        @idempotent(key_from="ref", scope="tests.libpq.async", store=store)
        async def place(conn: Any, ref: str) -> dict[str, Any]:
            calls.append(ref)
            await conn.execute(pg.orders.insert().values(ref=ref))
            return {"ref": ref, "text": text}

        try:
            async with engine.connect() as conn:
                assert await place(conn, "a-1") == {"ref": "a-1", "text": text}
                for _ in range(6):  # replays, then replays that read first
                    assert await place(conn, "a-1") == {"ref": "a-1", "text": text}
                assert len(await _aours(conn)) == 3  # the claim, the result write and the read
                await conn.exec_driver_sql("DEALLOCATE ALL")
                await conn.commit()
                assert await _aours(conn) == []
                assert await place(conn, "a-1") == {"ref": "a-1", "text": text}  # the read, again
                assert await place(conn, "a-2") == {"ref": "a-2", "text": text}  # the claim, again
                assert len(await _aours(conn)) == 3
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert calls == ["a-1", "a-2"]
    assert _refs(pg) == ["a-1", "a-2"]


def test_statement_prepared_in_a_failed_pipeline_is_kept(pg: Db) -> None:
    """The claim's first use on a connection gives up on a duplicate's uncommitted claim
    (``InProgress`` after ``wait``): its statement was prepared all the same, and the next calls
    use it rather than prepare another."""
    from idempotent import InProgress

    calls: list[str] = []

    @idempotent(key_from="ref", scope="tests.libpq.kept", store=pg.store, wait=0.05)
    def place(conn: Any, ref: str) -> str:
        calls.append(ref)
        conn.execute(pg.orders.insert().values(ref=ref))
        return ref

    with pg.engine.connect() as holder, pg.engine.connect() as conn:
        holder.begin()
        holder.execute(
            pg.keys.insert().values(
                scope="tests.libpq.kept", key="k-1", status="in_progress", owner="other",
                locked_until=0, created_at=0, expires_at=2**62,
            )
        )  # fmt: skip
        with pytest.raises(InProgress):
            place(conn, "k-1")
        conn.rollback()
        assert len(_ours(conn)) == 1  # the claim, prepared in the pipeline that failed
        holder.rollback()
        assert place(conn, "k-2") == "k-2"
        assert place(conn, "k-1") == "k-1"
        assert len(_ours(conn)) == 2  # the claim (the same one) and the result write
    assert calls == ["k-2", "k-1"]
