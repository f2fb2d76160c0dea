"""What each way of cutting round trips buys a transaction-mode first call on PostgreSQL (psycopg).

All variants run round-robin in one process, in a new random order each round, each on its own
engine or connection (so its own prepared statements); ratios are of medians of the same run.

Through the decorator (``@idempotent`` on a pooled ``Connection``, a new key each call, a
function that never replays, so no read comes before the claim), switched per call with the
driver's measuring switches ``_LEAN`` and ``_PIPELINE`` (``idempotent/_drivers.py``):

* ``exec``: the library's statements through SQLAlchemy's ``exec_driver_sql`` (both off);
* ``cursor``: on the psycopg cursor, each statement its own round trip (``_LEAN`` only);
* ``pipeline``: BEGIN sent with the claim and the result write with COMMIT, through libpq
  (``idempotent/_libpq.py``; both on).

Each on two bodies: ``business`` (one INSERT and one UPDATE, as in ``bench_core.py``; its ``bare``
is the same transaction without the decorator) and ``trivial`` (returns a dict, no statement).

Hand-written with psycopg alone (no SQLAlchemy, no decorator), trivial body, each pipelined into
two round trips, to weigh what the SQL itself costs the server:

* ``h-row``: the library's claim (returns the key's row beside the count), the guarded result write;
* ``h-slim``: the same claim without the row (count and clock only), the guarded result write;
* ``h-gated``: the library's claim with the row's join gated on the insert having found a row;
* ``h-lock``: no claim row: ``pg_advisory_xact_lock`` on a hash of the key and a read of the key's
  row (two statements, so the read sees a row committed while the lock was awaited), then one
  INSERT of the completed row with the result, and COMMIT.

    .venv/bin/python benchmarks/bench_pipeline.py --iterations 1000
    .venv/bin/python benchmarks/bench_pipeline.py --iterations 1000 --async   # the library's variants only
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from idempotent import SQLStore, idempotent
from idempotent import _drivers as drivers
from idempotent.schema import make_table

URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
MODES = {"exec": (False, False), "cursor": (True, False), "pipeline": (True, True)}
NOW = "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"


class DelayProxy:
    """A loopback TCP proxy that delivers every chunk ``delay`` seconds after it arrived, in each
    direction (a network round trip of about ``2 * delay``); chunks sent together stay together."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target, self.delay = (host, port), delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, sink in ((client, server), (server, client)):
                queue: collections.deque[tuple[float, bytes]] = collections.deque()
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(source, queue, ready), daemon=True).start()
                threading.Thread(target=self._write, args=(sink, queue, ready), daemon=True).start()

    def _read(self, source: socket.socket, queue: Any, ready: threading.Condition) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                with ready:
                    queue.append((time.perf_counter() + self.delay, data))
                    ready.notify()
        with ready:
            queue.append((0.0, b""))
            ready.notify()

    def _write(self, sink: socket.socket, queue: Any, ready: threading.Condition) -> None:
        with contextlib.suppress(OSError):
            while True:
                with ready:
                    while not queue:
                        ready.wait()
                    due, data = queue.popleft()
                if not data:  # the other side closed: pass the end on, even while recv() waits on sink
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    sink.close()
                    return
                while (left := due - time.perf_counter()) > 0:
                    time.sleep(left)
                sink.sendall(data)


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="READ COMMITTED")


def _tables(names: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    """The orders, accounts and keys tables, named ``names.format(...)`` (not yet created)."""
    metadata = sa.MetaData()
    orders = sa.Table(
        names.format("orders"),
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("amount", sa.Integer, nullable=False),
    )
    accounts = sa.Table(
        names.format("accounts"),
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
    )
    return metadata, orders, accounts, make_table(metadata, names.format("keys"))


def build(url: str, suffix: str) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """The variants' callables, and the clean-up."""
    setup = _engine(url)
    metadata, orders, accounts, keys = _tables("bp_{}_" + suffix)
    metadata.create_all(setup)
    with setup.begin() as conn:
        conn.execute(sa.insert(accounts), [{"id": i, "balance": 0} for i in range(16)])
    insert_order = sa.insert(orders)
    credit = (
        sa.update(accounts)
        .where(accounts.c.id == sa.bindparam("account"))
        .values(balance=accounts.c.balance + sa.bindparam("amount"))
    )
    ids = iter(range(1, 1 << 62))

    def business(conn: sa.Connection, order_id: int) -> dict[str, int]:
        conn.execute(insert_order, {"id": order_id, "amount": 5})
        conn.execute(credit, {"account": order_id % 16, "amount": 5})
        return {"order": order_id, "amount": 5}

    engines: list[sa.Engine] = [setup]
    run: dict[str, Callable[[], None]] = {}
    bare_engine = _engine(url)
    engines.append(bare_engine)

    def bare() -> None:
        with bare_engine.connect() as conn, conn.begin():
            business(conn, next(ids))

    run["business bare"] = bare
    store = SQLStore(table=keys.name)
    for body in ("business", "trivial"):
        for mode, (lean, pipeline) in MODES.items():
            engine = _engine(url)
            engines.append(engine)

            @idempotent(key_from="order_id", scope=f"bp.{body}.{mode}", store=store)
            def fn(conn: sa.Connection, order_id: int, body: str = body) -> dict[str, int]:
                if body == "business":
                    return business(conn, order_id)
                return {"order": order_id, "amount": 5}

            def call(
                fn: Any = fn, engine: sa.Engine = engine, lean: bool = lean, pipeline: bool = pipeline
            ) -> None:
                drivers._LEAN, drivers._PIPELINE = lean, pipeline
                try:
                    with engine.connect() as conn:
                        fn(conn, next(ids))
                finally:
                    drivers._LEAN, drivers._PIPELINE = True, True

            run[f"{body} {mode}"] = call

    raw = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connections: list[psycopg.Connection[Any]] = []
    table = keys.name
    cols = "scope, key, fingerprint, status, owner, locked_until, created_at, expires_at"
    found = "k.fingerprint, k.status, k.owner, k.locked_until, k.created_at, k.expires_at, " + (
        "k.result_codec, k.result, k.error_type"
    )
    claim_head = (
        "WITH cfg AS MATERIALIZED (SELECT current_setting('lock_timeout') AS prev, "
        f"set_config('lock_timeout', %(lock_ms)s, true) AS cur, {NOW} AS now), "
        f"ins AS (INSERT INTO {table} ({cols}) SELECT %(scope)s, %(key)s, NULL, 'in_progress', %(owner)s, "
        "cfg.now + 60000, cfg.now, cfg.now + 86400000 FROM cfg "
        "ON CONFLICT (scope, key) DO NOTHING RETURNING 1) "
    )
    claim_row = (
        claim_head
        + f"SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true), {found}, "
        f"cfg.now FROM cfg LEFT JOIN {table} AS k ON k.scope = %(scope)s AND k.key = %(key)s"
    )
    claim_gated = (
        claim_head
        + f"SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true), {found}, "
        f"cfg.now FROM cfg LEFT JOIN {table} AS k ON k.scope = %(scope)s AND k.key = %(key)s "
        "AND NOT EXISTS (SELECT FROM ins)"
    )
    claim_slim = claim_head + (
        "SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true), cfg.now FROM cfg"
    )
    guarded = (
        f"WITH idem_done AS (UPDATE {table} SET status = 'completed', result_codec = 'json', "
        "result = %(result)s, error_type = NULL WHERE scope = %(scope)s AND key = %(key)s AND "
        "owner = %(owner)s AND status = 'in_progress' RETURNING 1) "
        "SELECT CASE WHEN count(*) = 1 THEN 1 ELSE CAST('no row: ' || count(*) AS INTEGER) END FROM idem_done"
    )
    lock = (
        "SELECT set_config('lock_timeout', %(lock_ms)s, true), "
        "pg_advisory_xact_lock(hashtextextended(%(lk)s, 0))"
    )
    read = f"SELECT status, result, {NOW} FROM {table} WHERE scope = %(scope)s AND key = %(key)s"
    write = (
        f"INSERT INTO {table} ({cols}, result_codec, result) SELECT %(scope)s, %(key)s, NULL, 'completed', "
        f"%(owner)s, n, n, n + 86400000, 'json', %(result)s FROM (SELECT {NOW} AS n) AS c"
    )

    def hand(claim: str | None) -> Callable[[], None]:
        conn = psycopg.connect(raw)
        connections.append(conn)

        def call() -> None:
            key = str(next(ids))
            values = {"scope": "bp.hand", "key": key, "owner": uuid.uuid4().hex, "lock_ms": "5000"}
            values["lk"] = "bp.hand|" + key
            conn.autocommit = True  # the BEGIN goes in the pipeline (as the library does)
            with conn.cursor() as cur, conn.cursor() as begin, conn.cursor() as extra:
                with conn.pipeline():
                    begin.execute(b"BEGIN", prepare=False)
                    if claim is not None:
                        cur.execute(claim, values)
                    else:
                        extra.execute(lock, values)
                        cur.execute(read, values)
                if claim is not None:
                    assert cur.fetchone()[0] == 1  # type: ignore[index]
                else:
                    assert cur.fetchone() is None
                values["result"] = json.dumps({"order": int(key), "amount": 5})  # the trivial body's result
                with conn.pipeline():
                    cur.execute(guarded if claim is not None else write, values)
                    extra.execute(b"COMMIT", prepare=False)

        return call

    run["hand h-row"] = hand(claim_row)
    run["hand h-slim"] = hand(claim_slim)
    run["hand h-gated"] = hand(claim_gated)
    run["hand h-lock"] = hand(None)

    def cleanup() -> None:
        for conn in connections:
            conn.close()
        for engine in engines[1:]:
            engine.dispose()
        metadata.drop_all(setup)
        setup.dispose()

    return run, cleanup


def build_async(url: str, suffix: str) -> tuple[dict[str, Callable[[], None]], Callable[[], None]]:
    """The library's variants on ``postgresql+psycopg_async`` (no hand-written ones): each call is
    driven by ``run_until_complete`` on one event loop kept for the run."""
    from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

    loop = asyncio.new_event_loop()
    aurl = sa.make_url(url).set(drivername="postgresql+psycopg_async")

    def engine() -> Any:
        return create_async_engine(aurl, isolation_level="READ COMMITTED")

    setup = engine()
    metadata, orders, accounts, keys = _tables("bpa_{}_" + suffix)

    async def create() -> None:
        async with setup.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(sa.insert(accounts), [{"id": i, "balance": 0} for i in range(16)])

    loop.run_until_complete(create())
    credit = (
        sa.update(accounts)
        .where(accounts.c.id == sa.bindparam("account"))
        .values(balance=accounts.c.balance + sa.bindparam("amount"))
    )
    ids = iter(range(1, 1 << 62))

    async def business(conn: AsyncConnection, order_id: int) -> dict[str, int]:
        await conn.execute(sa.insert(orders), {"id": order_id, "amount": 5})
        await conn.execute(credit, {"account": order_id % 16, "amount": 5})
        return {"order": order_id, "amount": 5}

    engines = [setup]
    run: dict[str, Callable[[], None]] = {}
    bare_engine = engine()
    engines.append(bare_engine)

    async def bare() -> None:
        async with bare_engine.connect() as conn, conn.begin():
            await business(conn, next(ids))

    run["business bare"] = lambda: loop.run_until_complete(bare())
    store = SQLStore(table=keys.name)
    for body in ("business", "trivial"):
        for mode, (lean, pipeline) in MODES.items():
            each = engine()
            engines.append(each)

            @idempotent(key_from="order_id", scope=f"bpa.{body}.{mode}", store=store)
            async def fn(conn: AsyncConnection, order_id: int, body: str = body) -> dict[str, int]:
                if body == "business":
                    return await business(conn, order_id)
                return {"order": order_id, "amount": 5}

            async def acall(
                fn: Any = fn, each: Any = each, lean: bool = lean, pipeline: bool = pipeline
            ) -> None:
                drivers._LEAN, drivers._PIPELINE = lean, pipeline
                try:
                    async with each.connect() as conn:
                        await fn(conn, next(ids))
                finally:
                    drivers._LEAN, drivers._PIPELINE = True, True

            run[f"{body} {mode}"] = lambda acall=acall: loop.run_until_complete(acall())

    def cleanup() -> None:
        async def drop() -> None:
            for each in engines[1:]:
                await each.dispose()
            async with setup.begin() as conn:
                await conn.run_sync(metadata.drop_all)
            await setup.dispose()

        loop.run_until_complete(drop())
        loop.close()

    return run, cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--url", default=URL)
    parser.add_argument(
        "--delay-us",
        type=int,
        default=0,
        help="send every connection through a proxy adding this delay each way",
    )
    parser.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="the library's variants on psycopg's async driver",
    )
    args = parser.parse_args()
    url = args.url
    if args.delay_us:
        parsed = sa.make_url(url)
        proxy = DelayProxy(parsed.host or "127.0.0.1", parsed.port or 5432, args.delay_us / 1e6)
        url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    run, cleanup = (build_async if args.use_async else build)(url, uuid.uuid4().hex[:8])
    try:
        names = list(run)
        for _ in range(args.warmup):
            for name in names:
                run[name]()
        samples: dict[str, list[int]] = {name: [] for name in names}
        shuffle = random.Random(7).shuffle
        clock = time.perf_counter_ns
        for _ in range(args.iterations):
            shuffle(names)
            for name in names:
                start = clock()
                run[name]()
                samples[name].append(clock() - start)
    finally:
        cleanup()
    median = {name: statistics.median(values) / 1000 for name, values in samples.items()}
    refs = {"business": "business bare", "trivial": "trivial exec", "hand": "hand h-row"}
    print(f"{'variant':<20} {'median µs':>10} {'ratio':>7}  reference")
    for name in sorted(median):
        ref = refs[name.split()[0]]
        print(f"{name:<20} {median[name]:>10.1f} {median[name] / median[ref]:>7.2f}  {ref}")
    print(f"\nbusiness pipeline / exec: {median['business pipeline'] / median['business exec']:.2f}")
    print(f"business cursor / exec: {median['business cursor'] / median['business exec']:.2f}")


if __name__ == "__main__":
    main()
