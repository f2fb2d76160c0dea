"""What each part of the PostgreSQL claim costs a first call, measured with psycopg alone.

Every variant is the business transaction of ``bench_core.py`` (one INSERT into an orders table,
one UPDATE of a 16-row accounts table, COMMIT) on its own psycopg connection, plus:

* ``bare``: nothing (the reference);
* ``+ one insert``: one more INSERT of a completed key row: the least any design that records a
  key with the business write can add;
* ``+ read, insert``: a read of the key's row before the business statements, and the completed
  key row inserted (with the server's clock) after them: a check before the function and one
  write after it;
* ``+ lock, insert``: the same with the read joined to ``pg_try_advisory_xact_lock`` of the key,
  which is how a key written only at the end would keep duplicates out;
* ``+ insert, update``: a plain ``INSERT ... ON CONFLICT DO NOTHING`` of the key, then the result
  UPDATE: two statements with nothing else in them;
* ``+ clock``: the same insert taking its times from the server's clock;
* ``+ lock_timeout``: and setting ``lock_timeout`` for the statement and back (a CTE), which bounds
  how long a duplicate waits on an uncommitted claim;
* ``library claim``: the library's own claim statement (all of the above, and the key's row read
  back in the same statement when it exists) and its own result UPDATE, the SQL taken from
  ``SQLStore``: what a decorator-owned first call sends, without the decorator's Python;
* ``library, 2 round trips``: the same two statements, prepared once per connection with SQL
  ``PREPARE``, the claim sent with BEGIN and the result write with COMMIT, each pair as one
  simple-query string on an autocommit connection (literals bound on the client): two round
  trips fewer than ``library claim``;
* ``library via libpq``: the same two statements as the decorator sends them on a sync psycopg
  connection (``idempotent/_libpq.py``): prepared once, the claim pipelined with BEGIN and the
  guarded result write with COMMIT, straight on the connection's libpq object.

Variants run round-robin in a new random order each round; ratios are of medians of the same run.

    .venv/bin/python benchmarks/bench_claim_parts.py --rounds 30 --calls 30 --pin 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from idempotent import SQLStore, _libpq
from idempotent.schema import make_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pinning import pinned

URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
OUTPUT = Path(__file__).parent / "results" / "bench_claim_parts.json"
NOW = "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"
COLS = "scope, key, fingerprint, status, owner, locked_until, created_at, expires_at"


def statements(table: str) -> dict[str, list[str]]:
    """The key statements each variant adds to the business transaction (psycopg's paramstyle)."""
    plain = (
        f"INSERT INTO {table} ({COLS}) VALUES (%(scope)s, %(key)s, NULL, 'in_progress', %(owner)s, "
        "0, 0, 86400000) ON CONFLICT (scope, key) DO NOTHING"
    )
    clocked = (
        f"INSERT INTO {table} ({COLS}) SELECT %(scope)s, %(key)s, NULL, 'in_progress', %(owner)s, "
        f"n + 60000, n, n + 86400000 FROM (SELECT {NOW} AS n) AS c ON CONFLICT (scope, key) DO NOTHING "
        "RETURNING 1"
    )
    bounded = (
        "WITH cfg AS MATERIALIZED (SELECT current_setting('lock_timeout') AS prev, "
        f"set_config('lock_timeout', %(lock_ms)s, true) AS cur, {NOW} AS now), "
        f"ins AS (INSERT INTO {table} ({COLS}) SELECT %(scope)s, %(key)s, NULL, 'in_progress', %(owner)s, "
        "cfg.now + 60000, cfg.now, cfg.now + 86400000 FROM cfg "
        "ON CONFLICT (scope, key) DO NOTHING RETURNING 1) "
        "SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true), cfg.now FROM cfg"
    )
    update = (
        f"UPDATE {table} SET status = 'completed', result_codec = 'json', result = %(result)s, "
        "error_type = NULL WHERE scope = %(scope)s AND key = %(key)s AND owner = %(owner)s "
        "AND status = 'in_progress'"
    )
    one = (
        f"INSERT INTO {table} ({COLS}, result_codec, result) VALUES (%(scope)s, %(key)s, NULL, 'completed', "
        "%(owner)s, 0, 0, 86400000, 'json', %(result)s)"
    )
    read = (
        f"SELECT status, fingerprint, result_codec, result FROM {table} "
        "WHERE scope = %(scope)s AND key = %(key)s"
    )
    locked_read = (
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%(scope)s || ':' || %(key)s, 0)), "
        f"(SELECT status FROM {table} WHERE scope = %(scope)s AND key = %(key)s)"
    )
    one_clocked = (
        f"INSERT INTO {table} ({COLS}, result_codec, result) SELECT %(scope)s, %(key)s, NULL, 'completed', "
        f"%(owner)s, n, n, n + 86400000, 'json', %(result)s FROM (SELECT {NOW} AS n) AS c "
        "ON CONFLICT (scope, key) DO NOTHING"
    )
    return {
        "bare": [],
        "+ one insert": [one],
        "+ read, insert": [read, one_clocked],
        "+ lock, insert": [locked_read, one_clocked],
        "+ insert, update": [plain, update],
        "+ clock": [clocked, update],
        "+ lock_timeout": [bounded, update],
    }


class _Transaction:
    """Stands for the SQLAlchemy transaction the decorator would pass (only its identity counts)."""


def _number(order: list[str], name: str) -> str:
    """``$n`` for the named parameter ``name`` (numbered in order of first use)."""
    if name not in order:
        order.append(name)
    return f"${order.index(name) + 1}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls a variant, a round (default 30)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"JSON report (default {OUTPUT})")
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run this process and the local servers on this CPU only (see pinning.py)",
    )
    args = parser.parse_args()
    engine = sa.create_engine(URL)
    suffix = uuid.uuid4().hex[:8]
    keys = make_table(sa.MetaData(), f"bench_parts_keys_{suffix}")
    orders, accounts = f"bench_parts_orders_{suffix}", f"bench_parts_accounts_{suffix}"
    keys.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {orders} (id BIGINT PRIMARY KEY, amount INTEGER NOT NULL)")
        conn.exec_driver_sql(f"CREATE TABLE {accounts} (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL)")
        conn.exec_driver_sql(f"INSERT INTO {accounts} SELECT g, 0 FROM generate_series(1, 16) AS g")
    bound = SQLStore(engine, keys.name).for_dialect(engine.dialect)
    variants = statements(keys.name)
    variants["library claim"] = [bound._claim_pg.sql, bound._complete.sql]
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    ids = itertools.count()
    connections: list[psycopg.Connection[Any]] = []

    def values_for(n: int, library: bool) -> dict[str, Any]:
        values: dict[str, Any] = {
            "scope": "bench.parts",
            "key": str(n),
            "owner": uuid.uuid4().hex,
            "lock_ms": "5000",
            "result": json.dumps({"order": n, "amount": 5}),
        }
        if library:  # the library's own parameter names
            values.update(
                fingerprint=None, status="in_progress", lease_ms=60_000, ttl_ms=86_400_000,
                clock_offset=0, new_status="completed", codec="json", error_type=None, keep_ms=5000,
            )  # fmt: skip
        return values

    def business(cur: psycopg.Cursor[Any], n: int) -> None:
        cur.execute(f"INSERT INTO {orders} VALUES (%(id)s, 5)", {"id": n})
        cur.execute(f"UPDATE {accounts} SET balance = balance + 5 WHERE id = %(a)s", {"a": n % 16 + 1})

    def make(extra: list[str], library: bool) -> Callable[[], None]:
        conn = psycopg.connect(dsn)
        connections.append(conn)

        def call() -> None:
            n = next(ids)
            values = values_for(n, library)
            with conn.cursor() as cur:
                if extra:
                    cur.execute(extra[0], values)
                    if cur.description is not None:
                        cur.fetchall()
                business(cur, n)
                for statement in extra[1:]:
                    cur.execute(statement, values)
                    if library:
                        assert cur.rowcount == 1, "the library's result write matched no row"
            conn.commit()

        return call

    def make_merged(claim: str, complete: str) -> Callable[[], None]:
        """The library's two statements, prepared once with SQL ``PREPARE``, the claim sent with
        BEGIN and the result write with COMMIT, each pair as one simple-query string."""
        conn = psycopg.connect(dsn, autocommit=True)  # BEGIN and COMMIT are in the strings
        connections.append(conn)
        prepared = {}
        for name, text in (("parts_claim", claim), ("parts_complete", complete)):
            order: list[str] = []
            numbered = re.sub(r"%\((\w+)\)s", lambda m, order=order: _number(order, m.group(1)), text)
            conn.execute(f"PREPARE {name} AS {numbered}".encode())
            prepared[name] = order

        def run(name: str, values: dict[str, Any]) -> bytes:
            literals = b", ".join(sql.Literal(values[p]).as_bytes(conn) for p in prepared[name])
            return b"EXECUTE " + name.encode() + b"(" + literals + b")"

        def call() -> None:
            n = next(ids)
            values = values_for(n, True)
            with conn.cursor() as cur:
                cur.execute(b"BEGIN; " + run("parts_claim", values))
                cur.nextset()
                assert cur.fetchall()[0][0] == 1, "the claim found the key"
                business(cur, n)
                cur.execute(run("parts_complete", values) + b"; COMMIT")
                assert cur.rowcount == 1 or cur.nextset() is not None

        return call

    def make_libpq(claim: str, complete: str) -> Callable[[], None]:
        """The library's two statements through ``idempotent._libpq``, as the decorator sends them."""
        conn = psycopg.connect(dsn)
        connections.append(conn)
        transaction = _Transaction()

        def call() -> None:
            n = next(ids)
            values = values_for(n, True)
            rows = _libpq.begin_and_run(conn, transaction, b"BEGIN", claim, values, fetch=True)
            assert rows[0][0] == 1, "the claim found the key"
            with conn.cursor() as cur:
                business(cur, n)
            _libpq.run_and_commit(conn, transaction, complete, values)

        return call

    calls = {name: make(extra, name.startswith("library")) for name, extra in variants.items()}
    calls["library, 2 round trips"] = make_merged(bound._claim_pg.sql, bound._complete.sql)
    calls["library via libpq"] = make_libpq(bound._claim_pg.sql, bound._complete_guarded.sql)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    try:
        with pinned(args.pin) as placement:
            for call in calls.values():  # warm up: connections, prepared statements
                for _ in range(20):
                    call()
            rng = random.Random(7)
            for _ in range(args.rounds):
                order = list(calls.items())
                rng.shuffle(order)
                for name, call in order:
                    for _ in range(args.calls):
                        start = time.perf_counter_ns()
                        call()
                        samples[name].append((time.perf_counter_ns() - start) / 1000)
    finally:
        for conn in connections:
            conn.close()
        keys.drop(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {orders}")
            conn.exec_driver_sql(f"DROP TABLE {accounts}")
        engine.dispose()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"PostgreSQL, psycopg {psycopg.__version__}, {args.rounds} rounds of {args.calls} calls a variant")
    print(placement)
    print(f"\n{'variant':<28} {'p50 µs':>8} {'p90 µs':>8} {'x bare':>7}")
    rows = []
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        ratio = medians[name] / medians["bare"]
        rows.append({"variant": name, "p50_us": medians[name], "p90_us": p90, "ratio_to_bare": ratio})
        print(f"{name:<28} {medians[name]:8.0f} {p90:8.0f} {ratio:7.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "placement": placement,
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
