"""The lean paths of a call: how a replay ends its transaction, the PostgreSQL claim that reads the
final record in the same round trip, direct argument binding and the fingerprint encoding."""

from __future__ import annotations

import collections
import decimal
import inspect
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import InProgress, KeyReused, SQLStore
from idempotent.decorator import PEEK_AT, _Spec
from idempotent.fingerprint import digest
from tests.conftest import Db, _make_db
from tests.shop import Receipt, Shop


@pytest.fixture
def pg_sync(tmp_path: Any) -> Iterator[Db]:
    """PostgreSQL through its sync driver (the engine's events see every statement)."""
    yield from _make_db("postgresql", "sync", tmp_path)


def _count_events(engine: sa.Engine, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)

    def counter(name: str) -> Callable[..., None]:
        def bump(*_: Any) -> None:
            counts[name] += 1

        return bump

    for name in names:
        sa.event.listen(engine, name, counter(name))
    return counts


def test_replay_on_a_connection_ends_with_commit(sync_db: Db) -> None:
    """A replay wrote nothing; on a Connection the decorator ends its own transaction by COMMIT."""
    shop = Shop(sync_db)
    first = shop.call("hp-1")
    counts = _count_events(sync_db.engine, ("commit", "rollback"))
    assert shop.call("hp-1") == first
    assert counts == {"commit": 1, "rollback": 0}
    assert (shop.executions, sync_db.count()) == (1, 1)


def test_library_statements_skip_sqlalchemy_unless_watched(sync_db: Db, monkeypatch: Any) -> None:
    """On every sync driver the claim and the result write go to the DBAPI cursor, not through
    ``exec_driver_sql``; once a listener watches the engine, it sees both, as before."""
    db = sync_db
    through_sqlalchemy: list[str] = []
    execute = sa.Connection.exec_driver_sql

    def spy(self: sa.Connection, statement: str, *args: Any, **kwargs: Any) -> Any:
        through_sqlalchemy.append(statement)
        return execute(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.Connection, "exec_driver_sql", spy)
    shop = Shop(db)
    first = shop.call("lean-1")
    assert [s for s in through_sqlalchemy if db.keys.name in s] == []
    listened: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        listened.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", listener)
    try:
        second = shop.call("lean-2")
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", listener)
    assert len([s for s in listened if db.keys.name in s]) == 2  # the claim and the result write
    assert shop.call("lean-1") == first
    assert second != first
    assert (shop.executions, db.count()) == (2, 2)
    assert [r.status for r in db.key_rows()] == ["completed", "completed"]


def test_replay_on_a_session_still_rolls_back(sync_db: Db) -> None:
    """On a Session the replay's transaction is rolled back: the Session's commit events do not fire."""
    shop = Shop(sync_db)
    first = shop.call("hp-2", handle="session")
    seen: list[str] = []
    with Session(sync_db.engine) as session:
        sa.event.listen(session, "after_commit", lambda _s: seen.append("commit"))
        sa.event.listen(session, "after_rollback", lambda _s: seen.append("rollback"))
        assert shop.place(session, "hp-2", 10) == first
        assert not session.in_transaction()
    assert seen == ["rollback"]
    assert shop.executions == 1


def test_joined_replay_releases_its_savepoint(db: Db) -> None:
    """A replay inside the caller's transaction leaves the caller's earlier and later writes to it."""
    shop = Shop(db)
    first = shop.call("hp-3")
    before, after = db.orders.insert().values(ref="before", amount=1), db.orders.insert().values(ref="after")
    if db.is_async:

        async def scenario() -> Receipt:
            async with db.async_engine.connect() as conn, conn.begin():
                await conn.execute(before)
                receipt: Receipt = await shop.aplace(conn, "hp-3", 10)
                await conn.execute(after)
                return receipt

        again = db.run(scenario())
    else:
        with db.engine.connect() as conn, conn.begin():
            conn.execute(before)
            again = shop.place(conn, "hp-3", 10)
            conn.execute(after)
    assert again == first
    assert (shop.executions, db.count()) == (1, 3)


def test_replays_keep_psycopg_prepared_statements(pg_sync: Db) -> None:
    """psycopg forgets its prepared statements on ROLLBACK; replays send none, so the statements a
    replay runs get prepared after a few calls on the same connection."""
    shop = Shop(pg_sync)
    shop.call("hp-4")
    with pg_sync.engine.connect() as conn:
        for _ in range(16):
            shop.place(conn, "hp-4", 10)
        prepared = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %(pattern)s",
            {"pattern": f"%{pg_sync.keys.name}%"},
        ).scalar_one()
        conn.rollback()
    assert prepared >= 1
    assert shop.executions == 1


def _statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_postgresql_replay_is_one_statement(pg_sync: Db) -> None:
    """On PostgreSQL a replay is one statement: the claim returns the completed record itself; once
    a function's calls replay often, a decorator-owned replay is one autocommit read instead."""
    shop = Shop(pg_sync)
    first = shop.call("hp-5")
    seen = _statements(pg_sync.engine)
    assert shop.call("hp-5") == first
    assert len(seen) == 1
    assert "ON CONFLICT" in seen[0]
    for _ in range(3):
        shop.call("hp-5")
    seen.clear()
    assert shop.call("hp-5") == first
    assert len(seen) == 1
    assert seen[0].lstrip().startswith("SELECT")
    seen.clear()
    assert shop.call("hp-5", joined=True) == first
    claims = [s for s in seen if "ON CONFLICT" in s or s.lstrip().startswith("SELECT")]
    assert len(claims) == 1
    assert "ON CONFLICT" in claims[0]


def test_postgresql_in_progress_record_is_read_again(pg_sync: Db) -> None:
    """A record still in progress may be stale in the claim's snapshot, so it is read again."""
    keys = pg_sync.keys
    far = 2**62
    with pg_sync.engine.begin() as conn:
        conn.execute(
            keys.insert().values(
                scope="tests.shop.place", key="hp-6", fingerprint=None, status="in_progress",
                owner="someone", locked_until=far, created_at=0, expires_at=far,
            )
        )  # fmt: skip
    shop = Shop(pg_sync, wait=0)
    seen = _statements(pg_sync.engine)
    with pytest.raises(InProgress):
        shop.call("hp-6", joined=True)  # joined: no autocommit read before the claim
    seen = [s for s in seen if "SAVEPOINT" not in s]
    assert len(seen) == 2
    assert "ON CONFLICT" in seen[0]
    assert seen[1].lstrip().upper().startswith("SELECT")
    assert shop.executions == 0


def test_postgresql_expired_record_is_taken_over(pg_sync: Db) -> None:
    """A completed record past its ttl is not replayed from the claim: the call runs again."""
    shop = Shop(pg_sync, ttl=60)
    shop.call("hp-7")
    pg_sync.store.clock_offset = 61
    try:
        shop.call("hp-7")
    finally:
        pg_sync.store.clock_offset = 0
    assert (shop.executions, pg_sync.count(), len(pg_sync.key_rows())) == (2, 2, 1)


# -- no database ------------------------------------------------------------------------------------
def _spec(func: Callable[..., Any]) -> _Spec:
    first = next(iter(inspect.signature(func).parameters))
    return _Spec(
        func, first, "tests.bind", None, "transaction", 1, 1, 1, True, (), None, False, True, None, None, ()
    )  # fmt: skip


def f_plain(a: Any, b: Any, c: Any = 3) -> None:
    """Positional-or-keyword parameters with a default."""


def f_keyword_only(a: Any, b: Any = 2, *, c: Any, d: Any = 4) -> None:
    """Keyword-only parameters, one required."""


def f_positional_only(a: Any, /, b: Any) -> None:
    """A positional-only parameter: bound by inspect.Signature.bind."""


def f_var(a: Any, *args: Any, b: Any = 1, **kwargs: Any) -> None:
    """*args and **kwargs: bound by inspect.Signature.bind."""


def f_only_keywords(*, a: Any = 1) -> None:
    """No positional parameter at all."""


@pytest.mark.parametrize("func", [f_plain, f_keyword_only, f_positional_only, f_var, f_only_keywords])
def test_arguments_equal_signature_bind(func: Callable[..., Any]) -> None:
    """Every call shape binds to the same arguments, in the same order, or raises the same TypeError."""
    spec = _spec(func)
    names = ["a", "b", "c", "d", "e"]
    for given in range(5):
        for count in range(4):
            for chosen in itertools.permutations(names, count):
                args = tuple(range(given))
                kwargs = {name: 10 + i for i, name in enumerate(chosen)}
                try:
                    bound = inspect.signature(func).bind(*args, **kwargs)
                    bound.apply_defaults()
                    expected: Any = list(bound.arguments.items())
                except TypeError as exc:
                    expected = str(exc)
                try:
                    got: Any = list(spec.arguments(args, kwargs).items())
                except TypeError as exc:
                    got = str(exc)
                assert got == expected, (args, kwargs)


def test_fingerprint_encoding_is_stable() -> None:
    """The v1 fingerprint of these arguments never changes: stored keys depend on it."""
    arguments = {
        "order_id": 7,
        "note": "é",
        "amount": 1.5,
        "flag": True,
        "none": None,
        "items": [1, "a", (2,)],
        "price": decimal.Decimal("1.10"),
    }
    assert digest(arguments, "f") == "v1:5507b29fff6735d6b95eae0a5f3e6b02a060fc497804d27d5ca09829346679dc"


def test_fingerprint_of_dicts_is_stable() -> None:
    """Dicts keep their v1 fingerprint whatever their keys: plain text, keys that sort differently once
    quoted ("a" after "a!"), quotes, non-ASCII, non-text keys, an OrderedDict, and nesting."""
    arguments = {
        "order": {"id": "o1", "amount": 100, "a": 1, "a!": 2, 'b"': 3, "é": 4, "": [{"x": 1.5}]},
        "mixed": {1: "i", "k": None},
        "ordered": collections.OrderedDict(z=1, y=(True,)),
    }
    assert digest(arguments, "f") == "v1:3e7f17536b0aca3e0751682dd1ebd9219cccabd7b16dadebb562df10fb415df5"


@pytest.fixture(
    params=[(n, k) for n in ("sqlite", "postgresql", "mariadb") for k in ("sync", "async")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def read_first_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Db]:
    """Every database (frequent replays read before they claim on each), sync and async."""
    yield from _make_db(*request.param, tmp_path)


def test_frequent_replays_read_first_and_still_refuse_reuse(read_first_db: Db) -> None:
    """After several replays a call reads before claiming: replays, KeyReused and first calls stay correct."""
    db = read_first_db
    shop = Shop(db)
    first = shop.call("hp-8", 10)
    for _ in range(4):
        assert shop.call("hp-8", 10) == first
    entry = shop.aplace if db.is_async else shop.place
    assert entry.__idempotent__.replay_rate >= 0.25  # type: ignore[attr-defined]
    with pytest.raises(KeyReused):
        shop.call("hp-8", 11)
    other = shop.call("hp-9", 10)
    assert other != first
    assert (shop.executions, db.count(), len(db.key_rows())) == (2, 2, 2)


@pytest.fixture
def maria_sync(tmp_path: Any) -> Iterator[Db]:
    """MariaDB through its sync driver."""
    yield from _make_db("mariadb", "sync", tmp_path)


def test_mariadb_frequent_replay_is_one_read_and_a_rollback(maria_sync: Db) -> None:
    """On MariaDB a replay of a function that replays often is one plain SELECT, in a transaction
    of its own that ends with ROLLBACK: no claim, no duplicate-key error, no locking read; the
    connection is left outside any transaction, on the server too."""
    db = maria_sync
    shop = Shop(db)
    first = shop.call("hp-m")
    while shop.place.__idempotent__.replay_rate < PEEK_AT:  # type: ignore[attr-defined]
        assert shop.call("hp-m") == first
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    counts = _count_events(db.engine, ("commit", "rollback"))
    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        assert shop.call("hp-m") == first
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert [s.lstrip().split()[0] for s in seen] == ["SELECT"]
    assert "LOCK IN SHARE MODE" not in seen[0]
    assert counts == {"commit": 0, "rollback": 1}
    with db.engine.connect() as conn:  # unwatched: the read goes on the driver's cursor
        assert shop.place(conn, "hp-m", 10) == first
        assert not conn.in_transaction()
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SELECT @@in_transaction")
        assert cursor.fetchone() == (0,)
        cursor.close()
    assert (shop.executions, db.count()) == (1, 1)


@pytest.fixture
def sqlite_sync(tmp_path: Any) -> Iterator[Db]:
    """SQLite through its sync driver."""
    yield from _make_db("sqlite", "sync", tmp_path)


def test_sqlite_frequent_replays_are_served_while_another_connection_writes(sqlite_sync: Db) -> None:
    """On SQLite a frequent replay reads without a write transaction: it is served while another
    connection holds the database's write lock, instead of waiting for it and failing; a first
    call still waits for the lock, as any writer does, and past the driver's busy timeout gets
    InProgress naming the lock (not "another call with this key")."""
    db = sqlite_sync
    engine = sa.create_engine(db.url, connect_args={"timeout": 0.05})  # a short busy timeout
    shop = Shop(
        Db(db.name, db.kind, db.url, db.async_url, engine, SQLStore(engine, db.keys.name), db.keys, db.orders)
    )
    first = shop.call("hp-s")
    while shop.place.__idempotent__.replay_rate < PEEK_AT:  # type: ignore[attr-defined]
        assert shop.call("hp-s") == first
    writer = sqlite3.connect(db.url.split("///", 1)[1], isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the write lock, held
        writer.execute(f"INSERT INTO {db.orders.name} (ref, amount) VALUES ('other', 1)")
        assert shop.call("hp-s") == first
        with pytest.raises(InProgress, match=r"SQLite database is locked by another connection"):
            shop.call("hp-s2")  # the message names the real cause, not a call with the key
        writer.execute("COMMIT")
    finally:
        writer.close()
        engine.dispose()
    assert shop.call("hp-s2").ref == "hp-s2"
    assert (shop.executions, db.count()) == (2, 3)


def test_replay_read_leaves_the_connection_as_found(pg_sync: Db) -> None:
    """With no event listener on the engine the replay read runs on the driver's cursor; the
    caller's connection comes back out of autocommit and outside any transaction, so its next
    transaction still rolls back."""
    shop = Shop(pg_sync)
    first = shop.call("hp-8")
    while shop.place.__idempotent__.replay_rate < PEEK_AT:
        assert shop.call("hp-8") == first
    with pg_sync.engine.connect() as conn:
        assert shop.place(conn, "hp-8", 10) == first
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        assert not conn.in_transaction()
        with conn.begin() as tx:
            conn.execute(pg_sync.orders.insert().values(ref="hp-8-undone", amount=1))
            tx.rollback()
    assert (shop.executions, pg_sync.count()) == (1, 1)


def test_postgresql_replay_read_is_seen_by_a_dialect_listener(pg_sync: Db) -> None:
    """A ``do_execute`` listener (an event of the engine's dialect) sees the autocommit replay
    read too: a watched engine keeps every statement on SQLAlchemy's path."""
    shop = Shop(pg_sync)
    first = shop.call("hp-d")
    for _ in range(4):  # the function's calls now replay often: the read comes first
        shop.call("hp-d")
    seen: list[str] = []

    def record(cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    sa.event.listen(pg_sync.engine, "do_execute", record)
    try:
        assert shop.call("hp-d") == first
    finally:
        sa.event.remove(pg_sync.engine, "do_execute", record)
    assert len(seen) == 1
    assert seen[0].lstrip().startswith("SELECT")
