"""What differs per database: key collation on MariaDB, the database clock, non-Latin text."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from idempotent import idempotent
from idempotent._sql import now_sql
from tests.conftest import Db


@pytest.mark.parametrize(
    ("first", "second"),
    [("ABC", "abc"), ("a", "a "), ("é", "e"), ("straße", "strasse")],
    ids=["case", "trailing-space", "accent", "expansion"],
)
def test_keys_differing_in_case_space_or_accent_are_distinct(db: Db, first: str, second: str) -> None:
    """Keys that a case- or accent-insensitive or PAD SPACE collation would merge stay two keys."""
    orders = db.orders
    runs: list[str] = []

    if db.is_async:

        @idempotent(key_from="ref", scope="tests.collation", store=db.store)
        async def aplace(conn: Any, ref: str) -> str:
            runs.append(ref)
            await conn.execute(orders.insert().values(ref=ref))
            return ref

        async def scenario() -> list[str]:
            async with db.async_engine.connect() as conn:
                return [await aplace(conn, first), await aplace(conn, second), await aplace(conn, second)]

        results = db.run(scenario())
    else:

        @idempotent(key_from="ref", scope="tests.collation", store=db.store)
        def place(conn: Any, ref: str) -> str:
            runs.append(ref)
            conn.execute(orders.insert().values(ref=ref))
            return ref

        with db.engine.connect() as conn:
            results = [place(conn, first), place(conn, second), place(conn, second)]
    assert results == [first, second, second]
    assert runs == [first, second]
    assert len(db.key_rows()) == 2


def test_non_latin_key_and_result_round_trip(db: Db) -> None:
    """Keys and results in any script round-trip, also where the server default charset is latin1."""
    key = "注文-🧾-Ключ"
    value = {"note": "日本語のメモ ✓", "emoji": "🎉", "cyrillic": "Привет"}
    runs = []

    if db.is_async:

        @idempotent(key_from="ref", scope="tests.unicode", store=db.store)
        async def aplace(conn: Any, ref: str) -> dict[str, str]:
            runs.append(ref)
            return value

        async def scenario() -> list[dict[str, str]]:
            async with db.async_engine.connect() as conn:
                return [await aplace(conn, key), await aplace(conn, key)]

        results = db.run(scenario())
    else:

        @idempotent(key_from="ref", scope="tests.unicode", store=db.store)
        def place(conn: Any, ref: str) -> dict[str, str]:
            runs.append(ref)
            return value

        with db.engine.connect() as conn:
            results = [place(conn, key), place(conn, key)]
    assert results == [value, value]
    assert runs == [key]
    (row,) = db.key_rows()
    assert row.key == key


def test_mariadb_key_columns_are_binary_nopad(maria_db: Db) -> None:
    """The key columns use utf8mb4_nopad_bin and the result column is LONGTEXT, whatever the server default."""
    with maria_db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT column_name, collation_name, data_type FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = :t"
            ),
            {"t": maria_db.keys.name},
        ).all()
    columns = {name.lower(): (collation, kind) for name, collation, kind in rows}
    assert columns["scope"][0] == "utf8mb4_nopad_bin"
    assert columns["key"][0] == "utf8mb4_nopad_bin"
    assert columns["result"][1] == "longtext"


def test_database_clock_is_epoch_milliseconds(sync_db: Db) -> None:
    """Each dialect's clock expression reads the server clock as UTC epoch milliseconds."""
    before = int(time.time() * 1000)
    with sync_db.engine.connect() as conn:
        value = int(conn.execute(sa.text("SELECT " + now_sql(conn.dialect))).scalar_one())
    after = int(time.time() * 1000)
    assert before - 2_000 <= value <= after + 2_000  # same machine: within clock-read jitter


def test_large_result_round_trips(sync_db: Db) -> None:
    """A result over 64 KB (TEXT's limit on MySQL) is stored whole and replayed."""
    big = "x" * 200_000
    runs = []

    @idempotent(key_from="ref", scope="tests.large", store=sync_db.store)
    def place(conn: Any, ref: str) -> str:
        runs.append(ref)
        return big

    with sync_db.engine.connect() as conn:
        assert place(conn, "L") == big
        assert place(conn, "L") == big
    assert runs == ["L"]
