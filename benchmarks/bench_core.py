"""What ``@idempotent`` costs around a small business transaction, and what the same work costs by hand.

Variants, per dialect, timed round-robin in one run so that machine noise hits them alike:

* ``bare``: one INSERT and one UPDATE in a transaction on a SQLAlchemy ``Connection``;
* ``first``: the same function under ``@idempotent``, a new key each call, in a transaction
  the decorator owns (it begins, claims, runs the function, stores the result and commits);
* ``replay``: the decorated function called again with a key that already completed;
* ``core``: the business statements plus hand-written SQLAlchemy Core statements doing what the
  decorator does on that dialect (claim with ``ON CONFLICT DO NOTHING``, then the result UPDATE),
  executed with ``Connection.execute``;
* ``statements`` (PostgreSQL on psycopg, MariaDB on PyMySQL): the business statements plus the
  decorator's own two statements sent exactly as it sends them (on psycopg BEGIN with the claim
  and the guarded result write with COMMIT, through ``idempotent._libpq``; on PyMySQL on the
  driver's cursor), with none of the decorator's Python around them: what ``first`` would cost
  if the decorator's own code took no time;
* ``core_replay``: a reference for ``replay``, the least a hand-written replay does: read the
  stored result by key in a transaction (one SELECT with SQLAlchemy Core) and decode it;
* ``read``: a bare one-statement autocommit read through SQLAlchemy (one SELECT by primary key
  on a connection in ``AUTOCOMMIT``), the floor a replay is compared with.

Run ``python benchmarks/bench_core.py --help`` for the options; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from idempotent import SQLStore, _drivers, _libpq, idempotent
from idempotent._sql import Prepared
from idempotent.schema import make_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pinning import pinned

DEFAULT_POSTGRES_URL = os.environ.get(
    "IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)
DEFAULT_MARIADB_URL = os.environ.get(
    "IDEMPOTENT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
RESULTS = Path(__file__).resolve().parent / "results" / "bench_core.json"
VARIANTS = ("bare", "first", "replay", "core", "core_replay", "read", "statements")
ACCOUNTS = 16
SCOPE = "bench.place_order"
SEED = 20240601

#: The database clock in epoch milliseconds, as the keys table stores it.
NOW_SQL = {
    "postgresql": "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)",
    "sqlite": "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)",
    "mariadb": "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) DIV 1000",
}
TTL_MS = 24 * 3600 * 1000
LEASE_MS = 60 * 1000
WAIT_MS = 10 * 1000

# Targets from the issue: (variant, dialect, compared with, at most this ratio).
TARGETS = (
    ("first", "postgresql", "core", 1.15),
    ("replay", "postgresql", "bare", 0.6),
    ("first", "postgresql", "bare", 1.6),
    ("first", "sqlite", "bare", 1.5),
)


@dataclass
class Bench:
    """One dialect's engine, tables and the callables of every variant."""

    dialect: str
    run: dict[str, Callable[[], None]] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None


class Counter:
    """Order ids, unique across variants so every INSERT is a new row."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def _engine(dialect: str, url: str) -> sa.Engine:
    if dialect == "postgresql":
        return sa.create_engine(url, isolation_level="READ COMMITTED")
    if dialect == "mariadb":
        return sa.create_engine(url, isolation_level="REPEATABLE READ")
    return sa.create_engine(url)


def build(dialect: str, url: str, suffix: str) -> Bench:
    """Create the tables and the variant callables for one dialect.

    Every variant gets its own engine (so its own pooled connection): per-connection driver
    state, such as psycopg's prepared statements, which a ROLLBACK discards, stays per variant.
    """
    engine = _engine(dialect, url)
    engines = {variant: _engine(dialect, url) for variant in VARIANTS}
    metadata = sa.MetaData()
    orders = sa.Table(
        f"bench_orders_{suffix}",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
    )
    accounts = sa.Table(
        f"bench_accounts_{suffix}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
    )
    keys = make_table(metadata, f"bench_keys_{suffix}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(accounts), [{"id": i, "balance": 0} for i in range(ACCOUNTS)])

    insert_order = sa.insert(orders)
    credit = (
        sa.update(accounts)
        .where(accounts.c.id == sa.bindparam("account"))
        .values(balance=accounts.c.balance + sa.bindparam("amount"))
    )

    def business(conn: sa.Connection, order_id: int, amount: int) -> dict[str, int]:
        account = order_id % ACCOUNTS
        conn.execute(insert_order, {"id": order_id, "account_id": account, "amount": amount})
        conn.execute(credit, {"account": account, "amount": amount})
        return {"order": order_id, "amount": amount}

    store = SQLStore(table=keys.name)

    # Two entry points on one scope, as an application with a create path and a retry path would
    # have: each keeps its own replay rate, which decides whether a call reads before it claims
    # (see PEEK_AT in idempotent/decorator.py). First calls are measured as a workload of first
    # calls, replays as a workload of retries.
    @idempotent(key_from="order_id", scope=SCOPE, store=store)
    def place_order(conn: sa.Connection, order_id: int, amount: int) -> dict[str, int]:
        return business(conn, order_id, amount)

    @idempotent(key_from="order_id", scope=SCOPE, store=store)
    def retry_order(conn: sa.Connection, order_id: int, amount: int) -> dict[str, int]:
        return business(conn, order_id, amount)

    claim, complete = _hand_written(dialect, keys)
    ids = Counter()
    last_key: list[int] = []

    def bare(engine: sa.Engine = engines["bare"]) -> None:
        with engine.connect() as conn, conn.begin():
            business(conn, ids.next(), 5)

    def first(engine: sa.Engine = engines["first"]) -> None:
        key = ids.next()
        with engine.connect() as conn:
            place_order(conn, key, 5)
        last_key[:] = [key]

    def replay(engine: sa.Engine = engines["replay"]) -> None:
        with engine.connect() as conn:
            retry_order(conn, last_key[0], 5)

    def core(engine: sa.Engine = engines["core"]) -> None:
        order_id, amount = ids.next(), 5
        owner = uuid.uuid4().hex
        fingerprint = "v1:" + hashlib.sha256(json.dumps([order_id, amount]).encode()).hexdigest()
        key = str(order_id)
        with engine.connect() as conn, conn.begin():
            claimed = claim(conn, {"scope": SCOPE, "key": key, "owner": owner, "fingerprint": fingerprint})
            assert claimed, "hand-written claim found an existing key"
            result = business(conn, order_id, amount)
            done = conn.execute(
                complete, {"k_scope": SCOPE, "k_key": key, "k_owner": owner, "k_result": json.dumps(result)}
            )
            assert done.rowcount == 1, "hand-written result update lost the claim"

    stored = sa.select(keys.c.status, keys.c.result).where(
        keys.c.scope == sa.bindparam("k_scope"), keys.c.key == sa.bindparam("k_key")
    )

    def core_replay(engine: sa.Engine = engines["core_replay"]) -> None:
        with engine.connect() as conn, conn.begin():
            row = conn.execute(stored, {"k_scope": SCOPE, "k_key": str(last_key[0])}).one()
            assert row.status == "completed"
            json.loads(row.result)

    balance = sa.select(accounts.c.balance).where(accounts.c.id == sa.bindparam("account"))
    autocommit = engines["read"].execution_options(isolation_level="AUTOCOMMIT")

    def read(engine: sa.Engine = autocommit) -> None:
        with engine.connect() as conn:
            conn.execute(balance, {"account": 3}).scalar_one()

    bench = Bench(dialect)
    bench.run = {
        "bare": bare,
        "first": first,
        "replay": replay,
        "core": core,
        "core_replay": core_replay,
        "read": read,
    }
    if (dialect, engine.dialect.driver) in {("postgresql", "psycopg"), ("mariadb", "pymysql")}:
        bench.run["statements"] = _statements_only(engines["statements"], store, business, ids)

    def cleanup() -> None:
        for each in engines.values():
            each.dispose()
        metadata.drop_all(engine)
        engine.dispose()

    bench.cleanup = cleanup
    return bench


def _unit_values(order_id: int, amount: int) -> tuple[dict[str, Any], Callable[[Any], dict[str, Any]]]:
    """The parameters of the decorator's claim for one call, and a function that gives those of
    its result write (both by the library's parameter names)."""
    key, owner = str(order_id), uuid.uuid4().hex
    common = {"scope": SCOPE, "key": key, "owner": owner, "clock_offset": 0}
    claim = {
        **common,
        "fingerprint": "v1:" + hashlib.sha256(json.dumps([order_id, amount]).encode()).hexdigest(),
        "status": "in_progress",
        "lease_ms": LEASE_MS,
        "ttl_ms": TTL_MS,
        "lock_ms": str(WAIT_MS),
    }

    def done(result: Any) -> dict[str, Any]:
        return {
            **common, "new_status": "completed", "codec": "json", "result": json.dumps(result),
            "error_type": None, "keep_ms": WAIT_MS,
        }  # fmt: skip

    return claim, done


def _statements_only(
    engine: sa.Engine,
    store: SQLStore,
    business: Callable[[sa.Connection, int, int], dict[str, int]],
    ids: Counter,
) -> Callable[[], None]:
    """The ``statements`` variant: the decorator's claim and result write, as it sends them (on
    psycopg through libpq, BEGIN with the claim and the result write with COMMIT; on PyMySQL on
    the driver's cursor), around the business statements, without the decorator."""
    bound: Any = store.for_dialect(engine.dialect)
    if engine.dialect.driver == "psycopg":
        claim, complete = bound._claim_pg, bound._complete_guarded
    else:  # PyMySQL: a plain INSERT with the statement's lock wait set, as the decorator sends it
        plain = bound._claim_plain
        claim = Prepared(bound._mysql_wait(WAIT_MS) + plain.sql, plain.order)
        complete = bound._complete

    def statements() -> None:
        order_id, amount = ids.next(), 5
        values, done = _unit_values(order_id, amount)
        with engine.connect() as conn:
            conn.begin()  # SQLAlchemy's transaction (it sends nothing)
            driver = conn.connection.driver_connection
            if engine.dialect.driver == "psycopg":
                transaction = conn.get_transaction()
                begin = _drivers._begin_due(driver, True)
                assert begin is not None, "psycopg's transaction was already open"
                found = _libpq.begin_and_run(
                    driver, transaction, begin, claim.sql, claim.bind(values), fetch=True
                )
                assert found[0][0] == 1, "the claim found the key"
                result = business(conn, order_id, amount)
                _libpq.run_and_commit(driver, transaction, complete.sql, complete.bind(done(result)))
            else:
                cursor = driver.cursor()
                cursor.execute(claim.sql, claim.bind(values))
                result = business(conn, order_id, amount)
                cursor.execute(complete.sql, complete.bind(done(result)))
                assert cursor.rowcount == 1, "the result write matched no row"
                cursor.close()
            conn.commit()  # on psycopg its transaction is over: this ends SQLAlchemy's, sending nothing

    return statements


def _hand_written(
    dialect: str, keys: sa.Table
) -> tuple[Callable[[sa.Connection, dict[str, Any]], bool], Any]:
    """The decorator's statements for one dialect, written by hand with SQLAlchemy Core."""
    c = keys.c
    now = NOW_SQL[dialect]
    complete = (
        sa.update(keys)
        .where(
            c.scope == sa.bindparam("k_scope"),
            c.key == sa.bindparam("k_key"),
            c.owner == sa.bindparam("k_owner"),
            c.status == "in_progress",
        )
        .values(status="completed", result_codec="json", result=sa.bindparam("k_result"), error_type=None)
    )
    if dialect == "postgresql":
        # lock_timeout is set for the claim and set back in the same round trip.
        claim_sql = sa.text(
            "WITH cfg AS MATERIALIZED (SELECT current_setting('lock_timeout') AS prev, "
            f"set_config('lock_timeout', :lock_ms, true) AS cur, {now} AS now), "
            f"ins AS (INSERT INTO {keys.name} (scope, key, fingerprint, status, owner, locked_until, "
            "created_at, expires_at) "
            "SELECT :scope, :key, :fingerprint, 'in_progress', :owner, cfg.now + :lease_ms, cfg.now, "
            "cfg.now + :ttl_ms FROM cfg ON CONFLICT (scope, key) DO NOTHING RETURNING 1) "
            "SELECT (SELECT count(*) FROM ins), set_config('lock_timeout', cfg.prev, true) FROM cfg"
        ).bindparams(
            sa.bindparam("lease_ms", type_=sa.BigInteger),
            sa.bindparam("ttl_ms", type_=sa.BigInteger),
        )

        def claim_pg(conn: sa.Connection, values: dict[str, Any]) -> bool:
            row = conn.execute(
                claim_sql, {**values, "lock_ms": str(WAIT_MS), "lease_ms": LEASE_MS, "ttl_ms": TTL_MS}
            ).one()
            return bool(row[0])

        return claim_pg, complete

    now_col = sa.literal_column(now, sa.BigInteger)
    claimed = {
        "scope": sa.bindparam("scope"),
        "key": sa.bindparam("key"),
        "fingerprint": sa.bindparam("fingerprint"),
        "status": "in_progress",
        "owner": sa.bindparam("owner"),
        "locked_until": now_col + LEASE_MS,
        "created_at": now_col,
        "expires_at": now_col + TTL_MS,
    }
    if dialect == "mariadb":
        # A plain INSERT in the caller's transaction: a duplicate is a unique violation.
        plain = sa.insert(keys).values(claimed)

        def claim_plain(conn: sa.Connection, values: dict[str, Any]) -> bool:
            return conn.execute(plain, values).rowcount == 1

        return claim_plain, complete

    claim_stmt = (
        sqlite_dialect.insert(keys).values(claimed).on_conflict_do_nothing(index_elements=["scope", "key"])
    )

    def claim_sqlite(conn: sa.Connection, values: dict[str, Any]) -> bool:
        return conn.execute(claim_stmt, values).rowcount == 1

    return claim_sqlite, complete


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[index])


Samples = dict[tuple[str, str], list[int]]


def measure(benches: list[Bench], iterations: int, warmup: int) -> tuple[Samples, Samples]:
    """Time every (dialect, variant) ``iterations`` times, round-robin: wall-clock time, and the
    CPU time of this thread (the client's own work, whatever the server and the disk take).

    Each round runs every (dialect, variant) once, in a new random order: whatever runs right
    after a switch of dialect pays for the switch (cold caches, an idle server process), so a
    fixed or merely rotated order would keep charging the same variants.
    """
    order = [(bench, variant) for bench in benches for variant in VARIANTS if variant in bench.run]
    for _ in range(warmup):
        for bench, variant in order:
            bench.run[variant]()
    samples: Samples = {(b.dialect, v): [] for b, v in order}
    cpu: Samples = {(b.dialect, v): [] for b, v in order}
    clock, thread = time.perf_counter_ns, time.thread_time_ns
    shuffle = random.Random(SEED).shuffle
    for _ in range(iterations):
        shuffle(order)
        for bench, variant in order:
            fn = bench.run[variant]
            start, start_cpu = clock(), thread()
            fn()
            samples[(bench.dialect, variant)].append(clock() - start)
            cpu[(bench.dialect, variant)].append(thread() - start_cpu)
    return samples, cpu


def summarise(samples: Samples, cpu: Samples) -> list[dict[str, Any]]:
    rows = []
    for (dialect, variant), values in samples.items():
        median = statistics.median(values) / 1000.0
        bare = statistics.median(samples[(dialect, "bare")]) / 1000.0
        rows.append(
            {
                "variant": variant,
                "dialect": dialect,
                "median_us": round(median, 1),
                "p90_us": round(percentile(values, 0.9) / 1000.0, 1),
                "ratio_to_bare": round(median / bare, 3),
                "cpu_us": round(statistics.median(cpu[(dialect, variant)]) / 1000.0, 1),
                "calls": len(values),
            }
        )
    return rows


def own_code(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What the decorator's own code adds to a first call, per database: ``first`` against
    ``statements`` (the same statements and round trips, no decorator), in µs and as a ratio."""
    median = {(r["dialect"], r["variant"]): r["median_us"] for r in rows}
    out = {}
    for dialect in ("postgresql", "mariadb"):
        first, floor = median.get((dialect, "first")), median.get((dialect, "statements"))
        if first is not None and floor is not None:
            out[dialect] = {"us": round(first - floor, 1), "ratio": round(first / floor, 3)}
    return out


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    median = {(r["dialect"], r["variant"]): r["median_us"] for r in rows}
    checks = []
    for variant, dialect, base, limit in TARGETS:
        if (dialect, variant) not in median or (dialect, base) not in median:
            continue
        ratio = median[(dialect, variant)] / median[(dialect, base)]
        checks.append(
            {
                "target": f"{dialect} {variant} / {base} <= {limit}",
                "ratio": round(ratio, 3),
                "met": ratio <= limit,
            }
        )
    return checks


def print_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"{'variant':<12} {'dialect':<11} {'median µs':>10} {'p90 µs':>10} {'x bare':>7} {'cpu µs':>8}")
    for row in rows:
        print(
            f"{row['variant']:<12} {row['dialect']:<11} {row['median_us']:>10.1f} {row['p90_us']:>10.1f} "
            f"{row['ratio_to_bare']:>7.2f} {row['cpu_us']:>8.1f}"
        )
    if checks:
        print()
        for check in checks:
            print(f"{'met' if check['met'] else 'MISSED':<7} {check['target']:<36} ({check['ratio']:.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--iterations", type=int, default=2000, help="timed calls per variant and dialect (default 2000)"
    )
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls of each first (default 100)")
    parser.add_argument(
        "--dialects",
        default="sqlite,postgresql",
        help="comma-separated: sqlite, postgresql, mariadb (default sqlite,postgresql)",
    )
    parser.add_argument(
        "--postgres-url", default=DEFAULT_POSTGRES_URL, help=f"default {DEFAULT_POSTGRES_URL}"
    )
    parser.add_argument("--mariadb-url", default=DEFAULT_MARIADB_URL, help=f"default {DEFAULT_MARIADB_URL}")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run this process and the local database servers on this CPU only (see pinning.py)",
    )
    args = parser.parse_args(argv)
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    unknown = set(dialects) - set(NOW_SQL)
    if unknown:
        parser.error(f"unknown dialects: {', '.join(sorted(unknown))}")

    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    benches: list[Bench] = []
    with tempfile.TemporaryDirectory(prefix="idempotent-bench-") as tmp:
        try:
            for dialect in dialects:
                url = {
                    "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}",
                    "postgresql": args.postgres_url,
                    "mariadb": args.mariadb_url,
                }[dialect]
                try:
                    benches.append(build(dialect, url, suffix))
                except sa.exc.OperationalError as exc:
                    parser.exit(2, f"cannot set up {dialect} at {url}: {exc.orig}\n")
            with pinned(args.pin) as placement:
                print(placement)
                started = time.monotonic()
                samples, cpu = measure(benches, args.iterations, args.warmup)
                elapsed = time.monotonic() - started
        finally:
            for bench in benches:
                if bench.cleanup is not None:
                    bench.cleanup()
    rows = summarise(samples, cpu)
    checks = check_targets(rows)
    print_table(rows, checks)
    own = own_code(rows)
    for dialect, cost in own.items():
        print(
            f"\n{dialect}: the decorator's own code, first - statements: {cost['us']:.0f} µs a call "
            f"(first / statements {cost['ratio']:.2f})",
            end="",
        )
    print()
    print(f"\n{args.iterations} calls per variant after {args.warmup} warm-up calls, {elapsed:.1f} s")
    report = {
        "benchmark": "bench_core",
        "iterations": args.iterations,
        "warmup": args.warmup,
        "seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "placement": placement,
        "dialects": dialects,
        "results": rows,
        "targets": checks,
        "decorator_own_code": own,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
