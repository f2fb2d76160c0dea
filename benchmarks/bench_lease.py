"""Lease mode next to transaction mode: first calls and replays per second, per database.

Variants, timed round-robin in one run so that machine noise hits them alike:

* ``tx-first``: transaction mode, a new key each call, in a transaction the decorator owns
  (begin, claim, run, store the result, commit) on a pooled ``Connection``;
* ``tx-replay``: the same function called again with a key that already completed;
* ``lease-first``: lease mode, a new key each call (claim committed on its own, renewal
  started and stopped around the function, result committed fenced by the owner token);
* ``lease-replay``: lease mode with a completed key.

The function itself does nothing but return a small dict, so the numbers are the decorator's
own cost. ``--async`` adds the same four through the async drivers.

    python benchmarks/bench_lease.py                      # SQLite file and PostgreSQL
    python benchmarks/bench_lease.py --url mysql+pymysql://root@127.0.0.1:3306/test --calls 500
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from idempotent import SQLStore, idempotent
from idempotent.schema import make_table

DEFAULT_URLS = [
    "sqlite",  # a file in a temporary directory
    os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"),
]
VARIANTS = ("tx-first", "tx-replay", "lease-first", "lease-replay")


def async_url(url: str) -> str:
    if url.startswith("postgresql+psycopg://"):
        return "postgresql+psycopg_async://" + url.split("://", 1)[1]
    if url.startswith(("mysql+pymysql://", "mariadb+pymysql://")):
        return url.split("+", 1)[0] + "+aiomysql://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    raise SystemExit(f"no async driver known for {url}")


def sync_variants(engine: sa.Engine, table: str) -> dict[str, Callable[[], None]]:
    """The four variants through the sync driver; each call of a returned callable is one timed call."""
    store = SQLStore(engine, table)
    keys = itertools.count()

    @idempotent(key_from="key", scope="bench.tx", store=store)
    def tx(conn: sa.Connection, key: str) -> dict[str, Any]:
        return {"key": key, "status": "ok"}

    @idempotent(key_from="key", scope="bench.lease", mode="lease", store=store)
    def lease(key: str) -> dict[str, Any]:
        return {"key": key, "status": "ok"}

    conn = engine.connect()
    tx(conn, "replayed")
    lease("replayed")

    def tx_first() -> None:
        tx(conn, f"k{next(keys)}")

    def lease_first() -> None:
        lease(f"k{next(keys)}")

    return {
        "tx-first": tx_first,
        "tx-replay": lambda: tx(conn, "replayed"),
        "lease-first": lease_first,
        "lease-replay": lambda: lease("replayed"),
    }


def async_variants(engine: Any, table: str) -> dict[str, Callable[[], Awaitable[None]]]:
    """The four variants through the async driver (one AsyncConnection reused, like the sync run)."""
    store = SQLStore(engine, table)
    keys = itertools.count()
    holder: dict[str, Any] = {}

    @idempotent(key_from="key", scope="bench.atx", store=store)
    async def tx(conn: Any, key: str) -> dict[str, Any]:
        return {"key": key, "status": "ok"}

    @idempotent(key_from="key", scope="bench.alease", mode="lease", store=store)
    async def lease(key: str) -> dict[str, Any]:
        return {"key": key, "status": "ok"}

    async def tx_first() -> None:
        await tx(holder["conn"], f"k{next(keys)}")

    async def tx_replay() -> None:
        await tx(holder["conn"], "replayed")

    async def lease_first() -> None:
        await lease(f"k{next(keys)}")

    async def lease_replay() -> None:
        await lease("replayed")

    async def setup() -> None:
        holder["conn"] = await engine.connect()
        await tx_replay()
        await lease_replay()

    holder["setup"] = setup
    return {
        "tx-first": tx_first,
        "tx-replay": tx_replay,
        "lease-first": lease_first,
        "lease-replay": lease_replay,
        "_setup": setup,  # type: ignore[dict-item]
        "_holder": holder,  # type: ignore[dict-item]
    }


def measure_sync(run: dict[str, Callable[[], None]], calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round; rounds interleave the variants."""
    samples: dict[str, list[float]] = {name: [] for name in run}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, fn in run.items():
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


async def measure_async(run: dict[str, Any], calls: int, rounds: int) -> dict[str, list[float]]:
    await run["_setup"]()
    variants = {k: v for k, v in run.items() if not k.startswith("_")}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, calls // rounds)
    try:
        for _ in range(rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(per_round):
                    await fn()
                samples[name].append((time.perf_counter() - start) / per_round)
    finally:
        await run["_holder"]["conn"].close()
    return samples


def report(label: str, samples: dict[str, list[float]]) -> None:
    base = statistics.median(samples["tx-first"])
    for name in VARIANTS:
        median = statistics.median(samples[name])
        print(
            f"  {label:<6} {name:<13} {1 / median:9.0f} calls/s  {median * 1000:7.3f} ms/call  "
            f"{median / base:5.2f}x tx-first"
        )


def bench(url: str, calls: int, rounds: int, with_async: bool, tmp: Path) -> None:
    if url == "sqlite":
        url = f"sqlite:///{tmp / 'bench_lease.db'}"
    table = f"idem_bench_lease_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url, pool_size=5)
    keys = make_table(sa.MetaData(), table)
    keys.create(engine)
    name = engine.dialect.name + (" (MariaDB)" if getattr(engine.dialect, "is_mariadb", False) else "")
    print(f"{name}: {url.rsplit('@', maxsplit=1)[-1]}, {calls} calls per variant")
    try:
        report("sync", measure_sync(sync_variants(engine, table), calls, rounds))
        if with_async:
            from sqlalchemy.ext.asyncio import create_async_engine

            async def run_async() -> dict[str, list[float]]:
                aengine = create_async_engine(async_url(url), pool_size=5)
                try:
                    return await measure_async(async_variants(aengine, table), calls, rounds)
                finally:
                    await aengine.dispose()

            report("async", asyncio.run(run_async()))
    finally:
        keys.drop(engine)
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", action="append", help="database URL (repeatable; 'sqlite' for a temporary file)"
    )
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--async", dest="with_async", action="store_true", help="also the async drivers")
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        for url in args.url or DEFAULT_URLS:
            bench(url, args.calls, args.rounds, args.with_async, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
