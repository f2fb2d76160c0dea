"""Lease mode on PostgreSQL next to the same statements written by hand, sync and async.

Variants, each timed call by call, round-robin in a new random order every round (as in
``run.py``), so machine noise hits them alike:

* ``lease first`` / ``lease replay``: ``@idempotent(mode="lease")`` on ``SQLStore(engine)``, a
  new key each call / the key of the latest first call;
* ``hand first`` / ``hand replay``: ``hand_written_lease`` of ``peers.py`` (an autocommit SELECT
  of the stored result, then the claim INSERT and the fenced result UPDATE; a replay is the SELECT);
* the same four on an ``async def`` function with ``postgresql+psycopg_async`` (``--async``),
  the hand-written statements on an ``AsyncEngine`` in AUTOCOMMIT.

    python benchmarks/bench_lease_pg.py --iterations 2000 --async
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
import sqlalchemy as sa
from run import measure

from idempotent import SQLStore, idempotent
from idempotent.schema import make_table


def async_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql+psycopg_async://", 1)


def lease_async(url: str, suffix: str, loop: asyncio.AbstractEventLoop) -> peers.System:
    from sqlalchemy.ext.asyncio import create_async_engine

    sync_engine = sa.create_engine(url)
    table = make_table(sa.MetaData(), f"bench_alease_{suffix}")
    table.create(sync_engine)
    engine = create_async_engine(async_url(url), isolation_level="READ COMMITTED")
    store = SQLStore(engine, table.name)

    @idempotent(key_from="order_id", scope="bench.alease", mode="lease", store=store)
    async def leased(order_id: int) -> dict[str, Any]:
        return peers._body(order_id)

    system = peers.System("lease async", "postgresql", durable_first_call=True)
    system.cleanup += [
        sync_engine.dispose,
        lambda: table.drop(sync_engine),
        lambda: loop.run_until_complete(engine.dispose()),
    ]
    return peers._pair(system, lambda k: loop.run_until_complete(leased(k)), peers._ids())


def hand_async(url: str, suffix: str, loop: asyncio.AbstractEventLoop) -> peers.System:
    """``peers.hand_written_lease`` on the async driver."""
    from sqlalchemy.ext.asyncio import create_async_engine

    sync_engine = sa.create_engine(url)
    table = make_table(sa.MetaData(), f"bench_ahand_{suffix}")
    table.create(sync_engine)
    engine = create_async_engine(async_url(url), isolation_level="AUTOCOMMIT")
    claim, complete, stored = peers.hand_lease_statements(table)

    async def call(order_id: int) -> None:
        key = str(order_id)
        async with engine.connect() as conn:
            row = (await conn.execute(stored, {"k_scope": "bench.hand", "k_key": key})).first()
            if row is not None and row.status == "completed":
                json.loads(row.result)
                return
            owner = uuid.uuid4().hex
            won = (await conn.execute(claim, {"scope": "bench.hand", "key": key, "owner": owner})).first()
            assert won is not None, "hand-written lease claim lost"
            result = json.dumps(peers._body(order_id))
            done = await conn.execute(
                complete, {"k_scope": "bench.hand", "k_key": key, "k_owner": owner, "k_result": result}
            )
            assert done.rowcount == 1

    system = peers.System("hand async", "postgresql", durable_first_call=True)
    system.cleanup += [
        sync_engine.dispose,
        lambda: table.drop(sync_engine),
        lambda: loop.run_until_complete(engine.dispose()),
    ]
    return peers._pair(system, lambda k: loop.run_until_complete(call(k)), peers._ids())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=peers.POSTGRES_URL)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--async", dest="with_async", action="store_true", help="also the async driver")
    args = parser.parse_args()
    suffix = uuid.uuid4().hex[:8]
    loop = asyncio.new_event_loop()
    systems = [
        peers.idempotent_sql(args.url, "postgresql", suffix, "lease"),
        peers.hand_written_lease(args.url, suffix),
    ]
    if args.with_async:
        systems += [lease_async(args.url, suffix, loop), hand_async(args.url, suffix, loop)]
    try:
        run = {f"{s.name} {v}": fn for s in systems for v, fn in s.run.items()}
        samples = measure(run, args.iterations, args.warmup, args.seed)
    finally:
        for s in systems:
            s.close()
        loop.close()
    med = {name: statistics.median(values) / 1000 for name, values in samples.items()}
    for name, value in med.items():
        print(f"  {name:<34} {value:8.1f} µs")
    pairs = [("idempotent (lease)", "hand-written lease SQL", "sync")]
    if args.with_async:
        pairs.append(("lease async", "hand async", "async"))
    for lease, hand, label in pairs:
        for variant in ("first", "replay"):
            ratio = med[f"{lease} {variant}"] / med[f"{hand} {variant}"]
            print(f"  {label:<5} {variant:<6} lease / hand-written = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
