"""Purge throughput on a keys table holding a million expired rows (PostgreSQL by default).

The table is filled server-side with ``--rows`` expired keys (older, so physically first, as in
a real table) and ``--live`` keys that have not expired, then ``idempotent.admin.purge`` runs
with each ``--batch`` size (the table is refilled before each). Reported: rows removed per
second, and the time each batch took (its transaction, hence the longest any row lock is held).

``--traffic`` also runs lease-mode calls with new keys on the same table in a thread while the
purge runs, and reports their latency next to the latency of the same calls without a purge:
what a busy application sees while the purge is running.

    python benchmarks/bench_purge.py
    python benchmarks/bench_purge.py --batch 1000 --batch 10000 --traffic
    python benchmarks/bench_purge.py --url mysql+pymysql://root@127.0.0.1:3306/test --rows 200000
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from idempotent import SQLStore, idempotent
from idempotent._sql import now_sql
from idempotent.admin import purge
from idempotent.schema import make_table

DEFAULT_URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
HOUR_MS = 3600 * 1000


def fill(engine: sa.Engine, table: sa.Table, expired: int, live: int) -> None:
    """Insert ``expired`` keys that expired an hour ago and ``live`` keys expiring in a day."""
    name = engine.dialect.name
    q = engine.dialect.identifier_preparer
    columns = (
        "scope, " + q.quote("key") + ", fingerprint, status, owner, locked_until, created_at, expires_at, "
    )
    columns += "result_codec, result"
    if name == "postgresql":
        numbers = "SELECT g AS n FROM generate_series(1, {count}) AS g"
        concat = "'{prefix}' || n"
        hexed = "md5(n::text)"
    elif name in ("mysql", "mariadb"):
        numbers = "SELECT seq AS n FROM seq_1_to_{count}"  # MariaDB's Sequence engine
        concat = "CONCAT('{prefix}', n)"
        hexed = "MD5(n)"
    else:
        numbers = (
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {count}) "
            "SELECT n FROM c"
        )
        concat = "'{prefix}' || n"
        hexed = "printf('%032x', n)"
    with engine.begin() as conn:
        now = int(conn.exec_driver_sql(f"SELECT {now_sql(engine.dialect)}").scalar_one())
        for prefix, count, expires in (("old-", expired, now - HOUR_MS), ("live-", live, now + 24 * HOUR_MS)):
            if not count:
                continue
            created = expires - 24 * HOUR_MS
            select = (
                f"SELECT 'bench.charge', {concat.format(prefix=prefix)}, {hexed}, 'completed', {hexed}, "
                f"{created + 60_000}, {created}, {expires} + n % 1000, 'json', '{{\"ok\": true}}' "
                f"FROM ({numbers.format(count=count)}) AS numbers"
            )
            sql = f"INSERT INTO {q.format_table(table)} ({columns}) {select}"
            if engine.dialect.paramstyle in ("format", "pyformat"):
                sql = sql.replace("%", "%%")
            conn.exec_driver_sql(sql)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {q.format_table(table)}")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {'TABLE ' if name != 'sqlite' else ''}{q.format_table(table)}")


class Traffic:
    """Lease-mode calls with new keys in a loop on another thread, recording each call's latency."""

    def __init__(self, engine: sa.Engine, table: str) -> None:
        keys = itertools.count()
        run = uuid.uuid4().hex[:6]

        @idempotent(key_from="key", scope="bench.traffic", mode="lease", store=SQLStore(engine, table))
        def call(key: str) -> str:
            return key

        self.call = lambda: call(f"{run}-{next(keys)}")
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            self.call()
            self.latencies.append(time.perf_counter() - start)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return "no calls"
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{len(lat)} calls, p50 {statistics.median(lat) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
            f"max {lat[-1] * 1000:.1f} ms"
        )


def timed_purge(engine: sa.Engine, table: str, batch: int) -> tuple[int, float, list[float]]:
    """Purge; return the rows removed, the seconds it took and the seconds each batch took."""
    ends: list[float] = []
    start = time.perf_counter()
    removed = purge(engine, table=table, batch=batch, progress=lambda _: ends.append(time.perf_counter()))
    elapsed = time.perf_counter() - start
    return removed, elapsed, [b - a for a, b in itertools.pairwise([start, *ends])]


def run(url: str, rows: int, live: int, batches: list[int], traffic: bool) -> None:
    engine = sa.create_engine(url, pool_size=5)
    table = make_table(sa.MetaData(), f"idem_bench_purge_{uuid.uuid4().hex[:8]}")
    table.create(engine)
    label = engine.dialect.name + (" (MariaDB)" if getattr(engine.dialect, "is_mariadb", False) else "")
    print(f"{label}: {url.rsplit('@', maxsplit=1)[-1]}; {rows:,} expired rows, {live:,} live rows")
    try:
        if traffic:
            fill(engine, table, 0, live)
            with Traffic(engine, table.name) as baseline:
                time.sleep(3)
            print(f"  traffic without purge: {baseline.summary()}")
        for batch in batches:
            with engine.begin() as conn:
                conn.execute(table.delete())
            fill(engine, table, rows, live)
            load = Traffic(engine, table.name) if traffic else None
            if load is not None:
                load.__enter__()
            removed, elapsed, took = timed_purge(engine, table.name, batch)
            if load is not None:
                load.__exit__()
            assert removed == rows, (removed, rows)
            print(
                f"  batch {batch:>6}: {removed:,} rows in {elapsed:.2f} s = {removed / elapsed:,.0f} rows/s; "
                f"per batch median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms"
            )
            if load is not None:
                print(f"    traffic during purge: {load.summary()}")
    finally:
        table.drop(engine)
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="database URL ('sqlite' for a temporary file)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired rows (default 1,000,000)")
    parser.add_argument(
        "--live", type=int, default=100_000, help="rows that have not expired (default 100,000)"
    )
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1000)")
    parser.add_argument("--traffic", action="store_true", help="measure lease-mode calls during the purge")
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench_purge.db'}" if args.url == "sqlite" else args.url
        run(url, args.rows, args.live, args.batch or [1000], args.traffic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
