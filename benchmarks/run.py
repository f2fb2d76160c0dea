"""Every benchmark scenario in one run: one table, a JSON report and a PNG chart beside it.

Scenarios (see ``benchmarks/README.md`` for what each one times and why):

1. ``business``: one INSERT + one UPDATE, bare vs ``@idempotent`` (first call and replay) and the
   same statements by hand, on SQLite, PostgreSQL and MariaDB (``bench_core.build``);
2. ``trivial``: a body that only returns a small dict, ``idempotent`` next to its peers
   (``peers.py``), each with its documented setup on this machine's services;
3. ``concurrent``: 8 processes, 25% of the calls repeat a key: throughput, and executions per key
   counted in the database (must be exactly one);
4. ``keys-table``: first call and replay with 1,000 vs 5,000,000 rows in the keys table on
   PostgreSQL (rows loaded with ``generate_series`` into a table created and dropped here);
5. ``http``: the HTTP endpoints through real servers on PostgreSQL, FastAPI on uvicorn
   (``bench_http.scenario()``) and Flask on werkzeug (``bench_flask.scenario()``).

    python benchmarks/run.py                 # everything, several minutes
    python benchmarks/run.py --quick         # a smoke run: few calls, fewer rows
    python benchmarks/run.py --quick --databases sqlite --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_core
import peers
from bench_pipeline import DelayProxy
from pinning import pinned

from idempotent import SQLStore, idempotent
from idempotent.schema import make_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "run.json"
DATABASES = ("sqlite", "postgresql", "mariadb")
SEED = 20240601
PROCESSES = 8
DUPLICATE_SHARE = 0.25

#: (scenario, database, system, limit, description): the performance targets, checked on each run.
TARGETS = (
    ("business", "postgresql", "idempotent first", 1.4, "PostgreSQL first call <= 1.4x bare"),
    ("business", "postgresql", "idempotent replay", 1.15, "PostgreSQL replay <= 1.15x bare autocommit read"),
    ("business", "mariadb", "idempotent first", 1.5, "MariaDB first call <= 1.5x bare"),
    ("business", "sqlite", "idempotent first", 1.3, "SQLite first call <= 1.3x bare"),
    ("trivial", "postgresql", "idempotent (lease) first", 1.15, "PostgreSQL lease first <= 1.15x by hand"),
    ("trivial", "postgresql", "idempotent (lease) replay", 1.15, "PostgreSQL lease replay <= 1.15x by hand"),
    (
        "trivial",
        "postgresql",
        "idempotent (transaction) first",
        0.5,
        "first call <= 0.5x idemkit (PostgreSQL)",
    ),
    ("trivial", "postgresql", "idempotent (transaction) replay", 0.5, "replay <= 0.5x idemkit (PostgreSQL)"),
    ("keys-table", "postgresql", "first, large table", 1.2, "first call flat within 20% at the large table"),
    ("keys-table", "postgresql", "replay, large table", 1.2, "replay flat within 20% at the large table"),
)


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))])


def measure(
    run: dict[str, Callable[[], None]], iterations: int, warmup: int, seed: int = SEED
) -> dict[str, list[int]]:
    """Time every callable ``iterations`` times, round-robin in a new random order each round."""
    order = list(run)
    for _ in range(warmup):
        for name in order:
            run[name]()
    samples: dict[str, list[int]] = {name: [] for name in order}
    clock = time.perf_counter_ns
    shuffle = random.Random(seed).shuffle
    for _ in range(iterations):
        shuffle(order)
        for name in order:
            fn = run[name]
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return samples


def row(
    scenario: str,
    database: str,
    system: str,
    samples: list[int] | None,
    reference: str = "",
    ref_samples: list[int] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the table: p50/p99 in µs, calls/s from the mean, ratio of medians to the reference."""
    out: dict[str, Any] = {
        "scenario": scenario,
        "database": database,
        "system": system,
        "reference": reference,
    }
    if samples:
        p50 = statistics.median(samples)
        out.update(
            calls_per_s=round(1e9 * len(samples) / sum(samples), 1),
            p50_us=round(p50 / 1000, 1),
            p99_us=round(percentile(samples, 0.99) / 1000, 1),
            calls=len(samples),
        )
        if ref_samples:
            out["ratio"] = round(p50 / statistics.median(ref_samples), 3)
    out["note"] = note
    return out


# --- 1. business transaction ------------------------------------------------------------------

BUSINESS_ROWS = (
    ("bare", "bare", ""),
    ("idempotent first", "first", "bare"),
    ("idempotent replay", "replay", "read"),
    ("hand-written first", "core", "bare"),
    ("hand-written replay", "core_replay", "read"),
    ("bare autocommit read", "read", ""),
    ("its statements, no decorator", "statements", "bare"),
)


def scenario_business(
    urls: dict[str, str], iterations: int, warmup: int, suffix: str
) -> list[dict[str, Any]]:
    benches = []
    rows: list[dict[str, Any]] = []
    try:
        for database, url in urls.items():
            try:
                benches.append(bench_core.build(database, url, suffix))
            except sa.exc.OperationalError as exc:
                rows.append(row("business", database, "all", None, note=f"not run: {exc.orig}"))
        samples, _ = bench_core.measure(benches, iterations, warmup)
    finally:
        for bench in benches:
            if bench.cleanup is not None:
                bench.cleanup()
    for bench in benches:
        for system, variant, reference in BUSINESS_ROWS:
            if (bench.dialect, variant) not in samples:  # a variant of one database only
                continue
            ref = samples[(bench.dialect, reference)] if reference else None
            ref_name = {v: s for s, v, _ in BUSINESS_ROWS}.get(reference, "")
            rows.append(
                row("business", bench.dialect, system, samples[(bench.dialect, variant)], ref_name, ref)
            )
    return rows


# --- 2. trivial body, like for like with the peers --------------------------------------------


def scenario_trivial(
    databases: list[str], sqlite_url: str, iterations: int, warmup: int, suffix: str
) -> list[dict[str, Any]]:
    loop = peers._Loop()
    builders: list[tuple[str, str, Callable[[], peers.System]]] = []
    if "sqlite" in databases:
        builders.append(
            ("idempotent (transaction)", "sqlite", lambda: peers.idempotent_sql(sqlite_url, "sqlite", suffix))
        )
    if "postgresql" in databases:
        pg = peers.POSTGRES_URL
        builders += [
            (
                "idempotent (transaction)",
                "postgresql",
                lambda: peers.idempotent_sql(pg, "postgresql", suffix),
            ),
            (
                "idempotent (lease)",
                "postgresql",
                lambda: peers.idempotent_sql(pg, "postgresql", suffix, "lease"),
            ),
            ("hand-written lease SQL", "postgresql", lambda: peers.hand_written_lease(pg, suffix)),
            ("idemkit (PostgreSQL)", "postgresql", lambda: peers.idemkit_system("postgresql", suffix, loop)),
            ("drf-idempotency (DB)", "postgresql", lambda: peers.drf_idempotency(suffix)),
        ]
    if "redis" in databases:
        builders += [
            ("idempotent (Redis, lease)", "redis", lambda: peers.idempotent_redis(suffix)),
            ("idemkit (Redis)", "redis", lambda: peers.idemkit_system("redis", suffix, loop)),
            ("Powertools (Redis)", "redis", lambda: peers.powertools_redis(suffix)),
        ]
    systems: list[peers.System] = []
    rows: list[dict[str, Any]] = []
    try:
        for name, database, build in builders:
            try:
                systems.append(build())
            except peers.Unavailable as exc:
                rows.append(row("trivial", database, name, None, note=f"not run: {exc}"))
            except Exception as exc:  # a peer that fails to start is reported, never faked
                rows.append(
                    row("trivial", database, name, None, note=f"not run: {type(exc).__name__}: {exc}")
                )
        run = {f"{s.name}|{s.database}|{v}": fn for s in systems for v, fn in s.run.items()}
        samples = measure(run, iterations, warmup)
    finally:
        for system in systems:
            with contextlib.suppress(Exception):
                system.close()
        loop.close()

    def get(system: str, database: str, variant: str) -> list[int] | None:
        return samples.get(f"{system}|{database}|{variant}")

    # The Redis peers are compared with this library's Redis store when it ran, like for like.
    redis_ref = ("idempotent (Redis, lease)", "redis")
    if not any(get(*redis_ref, variant) for variant in ("first", "replay")):
        redis_ref = ("idempotent (transaction)", "postgresql")
    for s in systems:
        for variant in s.run:
            # (system, database, variant) the ratio is taken against.
            if s.name == "idempotent (transaction)" and s.database == "postgresql":
                reference = ("idemkit (PostgreSQL)", "postgresql", variant)
            elif s.name == "idempotent (lease)":
                reference = ("hand-written lease SQL", "postgresql", variant)
            elif s.name == "drf-idempotency (DB)" and variant != "bare view":
                reference = (s.name, "postgresql", "bare view")
            elif s.name in {"idemkit (Redis)", "Powertools (Redis)"}:
                reference = (*redis_ref, variant)
            elif s.name == "idemkit (PostgreSQL)":
                reference = ("idempotent (transaction)", "postgresql", variant)
            else:
                reference = ("", "", "")
            ref = get(*reference) if reference[0] else None
            rows.append(
                row(
                    "trivial",
                    s.database,
                    f"{s.name} {variant}",
                    get(s.name, s.database, variant),
                    f"{reference[0]} {reference[2]}" if ref else "",
                    ref,
                    "" if s.durable_first_call else "Redis: first call not durable with any database write",
                )
            )
    return rows


# --- 3. eight processes, 25% duplicate keys ---------------------------------------------------


def _worker(
    url: str,
    database: str,
    table: str,
    exec_table: str,
    keys: list[str],
    decorated: bool,
    start: Any,
    results: Any,
) -> None:
    """One process: call the function for each of its keys; record each execution in ``exec_table``."""
    engine = bench_core._engine(database, url)
    executions = sa.Table(
        exec_table, sa.MetaData(), sa.Column("key", sa.String(64)), sa.Column("pid", sa.Integer)
    )
    pid = os.getpid()

    def body(conn: sa.Connection, key: str) -> str:
        conn.execute(sa.insert(executions), {"key": key, "pid": pid})
        return key

    place = idempotent(key_from="key", scope="bench.concurrent", store=SQLStore(engine, table))(body)
    times: list[int] = []
    start.wait()
    for key in keys:
        t0 = time.perf_counter_ns()
        with engine.connect() as conn:
            if decorated:
                place(conn, key)
            else:
                with conn.begin():
                    body(conn, key)
        times.append(time.perf_counter_ns() - t0)
    engine.dispose()
    results.put(times)


def scenario_concurrent(urls: dict[str, str], calls: int, suffix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(SEED)
    distinct = round(calls * (1 - DUPLICATE_SHARE))
    for database, url in urls.items():
        if database == "sqlite":
            rows.append(
                row(
                    "concurrent",
                    database,
                    "idempotent",
                    None,
                    note="not run: SQLite has one writer; the scenario is for servers",
                )
            )
            continue
        engine = bench_core._engine(database, url)
        metadata = sa.MetaData()
        keys_table = make_table(metadata, f"bench_conc_keys_{suffix}")
        exec_tables = {}
        for mode in ("bare", "idempotent"):
            exec_tables[mode] = sa.Table(
                f"bench_conc_exec_{mode}_{suffix}",
                metadata,
                sa.Column("key", sa.String(64)),
                sa.Column("pid", sa.Integer),
            )
        try:
            metadata.create_all(engine)
        except sa.exc.OperationalError as exc:
            rows.append(row("concurrent", database, "idempotent", None, note=f"not run: {exc.orig}"))
            continue
        try:
            measured: dict[str, tuple[list[int], float]] = {}
            for mode in ("bare", "idempotent"):
                base = [f"{mode}-{i}" for i in range(distinct)]
                call_keys = base + rng.sample(base, calls - distinct)
                rng.shuffle(call_keys)
                shares = [call_keys[i::PROCESSES] for i in range(PROCESSES)]
                start, results = ctx.Event(), ctx.Queue()
                procs = [
                    ctx.Process(
                        target=_worker,
                        args=(
                            url,
                            database,
                            keys_table.name,
                            exec_tables[mode].name,
                            share,
                            mode == "idempotent",
                            start,
                            results,
                        ),
                    )
                    for share in shares
                ]
                for proc in procs:
                    proc.start()
                time.sleep(1.0)  # let every process import and connect before the start signal
                began = time.perf_counter()
                start.set()
                times = [t for _ in procs for t in results.get(timeout=600)]
                wall = time.perf_counter() - began
                for proc in procs:
                    proc.join()
                measured[mode] = (times, wall)
                with engine.connect() as conn:
                    counts = [
                        n
                        for (n,) in conn.execute(
                            sa.select(sa.func.count())
                            .select_from(exec_tables[mode])
                            .group_by(exec_tables[mode].c.key)
                        )
                    ]
                once = sum(1 for n in counts if n == 1)
                more = sum(1 for n in counts if n > 1)
                missing = distinct - len(counts)
                verdict = (
                    "exactly once per key: yes"
                    if mode == "idempotent" and more == 0 and missing == 0
                    else f"exactly once per key: NO ({more} keys ran more than once, {missing} never)"
                    if mode == "idempotent"
                    else f"{more} of {distinct} keys ran more than once (no idempotency)"
                )
                note = (
                    f"{calls} calls, {distinct} keys, {PROCESSES} processes, {wall:.1f} s; "
                    f"executions per key: {once} once, {more} more; {verdict}"
                )
                measured_row = row("concurrent", database, mode, times, note=note)
                measured_row["calls_per_s"] = round(calls / wall, 1)
                measured_row["exactly_once"] = mode != "idempotent" or (more == 0 and missing == 0)
                rows.append(measured_row)
            rows[-1]["reference"] = "bare (throughput)"
            rows[-1]["ratio"] = round(measured["bare"][1] / measured["idempotent"][1], 3)
        finally:
            metadata.drop_all(engine)
            engine.dispose()
    return rows


# --- 4. keys table size -----------------------------------------------------------------------

NOW_MS_PG = "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"


def fill_keys(conn: sa.Connection, table: str, rows: int) -> None:
    """Load ``rows`` completed keys shaped like real ones: a UUID key, a fingerprint, a JSON result."""
    conn.exec_driver_sql(
        f"INSERT INTO {table} (scope, key, fingerprint, status, owner, locked_until, created_at, expires_at, "
        "result_codec, result) "
        "SELECT 'app.orders:place_order', md5(g::text)::uuid::text, "
        "'v1:' || encode(sha256(g::text::bytea), 'hex'), "
        f"'completed', md5((g + 1)::text), {NOW_MS_PG} - g, {NOW_MS_PG} - g, {NOW_MS_PG} - g + 86400000, "
        '\'json\', \'{"order": \' || g || \', "status": "accepted", "amount": "12.50"}\' '
        f"FROM generate_series(1, {int(rows)}) AS g"
    )
    conn.exec_driver_sql(f"ANALYZE {table}")


def scenario_keys_table(
    url: str, small: int, large: int, iterations: int, warmup: int, suffix: str
) -> list[dict[str, Any]]:
    engine = bench_core._engine("postgresql", url)
    metadata = sa.MetaData()
    tables = {size: make_table(metadata, f"bench_size_{size}_{suffix}") for size in (small, large)}
    run: dict[str, Callable[[], None]] = {}
    pools: list[sa.Engine] = []
    try:
        metadata.create_all(engine)
        load_seconds = {}
        for size, table in tables.items():
            began = time.perf_counter()
            with engine.begin() as conn:
                fill_keys(conn, table.name, size)
            load_seconds[size] = time.perf_counter() - began
        for label, size in (("small", small), ("large", large)):
            store = SQLStore(engine, tables[size].name)

            @idempotent(key_from="order_id", scope="app.orders:place_order", store=store)
            def place(conn: sa.Connection, order_id: str) -> dict[str, Any]:
                return {"order": order_id, "status": "accepted"}

            @idempotent(key_from="order_id", scope="app.orders:place_order", store=store)
            def retry(conn: sa.Connection, order_id: str) -> dict[str, Any]:
                return {"order": order_id, "status": "accepted"}

            last: list[str] = []
            pool = bench_core._engine("postgresql", url)
            pools.append(pool)

            def first(place: Any = place, last: list[str] = last, pool: sa.Engine = pool) -> None:
                key = str(uuid.uuid4())
                with pool.connect() as conn:
                    place(conn, key)
                last[:] = [key]

            def replay(retry: Any = retry, last: list[str] = last, pool: sa.Engine = pool) -> None:
                with pool.connect() as conn:
                    retry(conn, last[0])

            run[f"first, {label} table"] = first
            run[f"replay, {label} table"] = replay
        samples = measure(run, iterations, warmup)
    finally:
        for pool in pools:
            pool.dispose()
        metadata.drop_all(engine)
        engine.dispose()
    rows = []
    for label, size in (("small", small), ("large", large)):
        for variant in ("first", "replay"):
            name = f"{variant}, {label} table"
            ref = samples[f"{variant}, small table"] if label == "large" else None
            note = f"{size:,} rows in the keys table (loaded in {load_seconds[size]:.1f} s)"
            rows.append(
                row(
                    "keys-table",
                    "postgresql",
                    name,
                    samples[name],
                    f"{variant}, small table" if ref else "",
                    ref,
                    note,
                )
            )
    return rows


# --- 5. HTTP ----------------------------------------------------------------------------------


def scenario_http(quick: bool, databases: list[str]) -> list[dict[str, Any]]:
    """Hook: each of ``bench_http`` (FastAPI) and ``bench_flask`` has ``scenario(quick=...)``
    returning rows shaped like :func:`row`'s; both serve their endpoints on PostgreSQL."""
    if "postgresql" not in databases:
        note = "not run: the endpoints run on PostgreSQL (add postgresql to --databases)"
        return [row("http", "postgresql", "HTTP endpoints", None, note=note)]
    rows: list[dict[str, Any]] = []
    for module in ("bench_http", "bench_flask"):
        try:
            bench = importlib.import_module(module)
        except ImportError as exc:
            rows.append(row("http", "-", module, None, note=f"not run: {exc}"))
            continue
        scenario = getattr(bench, "scenario", None)
        if scenario is None:
            note = f"not run: {module}.py has no scenario(quick) function returning rows"
            rows.append(row("http", "-", module, None, note=note))
            continue
        rows += scenario(quick=quick)
    return rows


# --- report -----------------------------------------------------------------------------------


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for scenario, database, system, limit, text in TARGETS:
        match = [
            r
            for r in rows
            if r["scenario"] == scenario
            and r["database"] == database
            and r["system"] == system
            and "ratio" in r
        ]
        if match:
            ratio = match[0]["ratio"]
            checks.append({"target": text, "ratio": ratio, "limit": limit, "met": ratio <= limit})
        else:
            checks.append({"target": text, "ratio": None, "limit": limit, "met": None})
    return checks


def print_table(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    head = (
        f"{'scenario':<11} {'database':<10} {'system':<42} {'calls/s':>9} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'ratio':>6}  reference"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "p50_us" not in r:
            print(
                f"{r['scenario']:<11} {r['database']:<10} {r['system']:<42} "
                f"{'-':>9} {'-':>9} {'-':>9} {'-':>6}  {r['note']}"
            )
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(
            f"{r['scenario']:<11} {r['database']:<10} {r['system']:<42} {r['calls_per_s']:>9.0f} "
            f"{r['p50_us']:>9.0f} {r['p99_us']:>9.0f} {ratio:>6}  {r['reference']}"
        )
    notes = [r for r in rows if r.get("note") and "p50_us" in r]
    if notes:
        print()
        for r in notes:
            print(f"{r['scenario']}/{r['database']}/{r['system']}: {r['note']}")
    print()
    for c in checks:
        state = "n/a" if c["met"] is None else ("met" if c["met"] else "MISSED")
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        print(f"{state:<7} {c['target']:<52} {ratio}")


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The table and the targets as Markdown, for ``benchmarks/README.md``."""
    lines = [
        "| scenario | database | system | calls/s | p50 µs | p99 µs | ratio | reference / note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "p50_us" not in r:
            lines.append(
                f"| {r['scenario']} | {r['database']} | {r['system']} | - | - | - | - | {r['note']} |"
            )
            continue
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        lines.append(
            f"| {r['scenario']} | {r['database']} | {r['system']} | {r['calls_per_s']:.0f} "
            f"| {r['p50_us']:.0f} | {r['p99_us']:.0f} | {ratio} | {r['reference']} |"
        )
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    for c in checks:
        state = "not measured" if c["met"] is None else ("yes" if c["met"] else "**no**")
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(f"| {c['target']} | {ratio} | {state} |")
    return "\n".join(lines) + "\n"


PEERS = ("idemkit", "Powertools", "drf-idempotency")


def _is_other(system: str) -> bool:
    """A reference or a peer rather than this library (grey in the chart)."""
    references = ("bare", "hand-written", "its statements")
    return system.startswith(references) or any(peer in system for peer in PEERS)


def chart(rows: list[dict[str, Any]], path: Path) -> str:
    """A PNG of p50 per system, one panel per scenario; returns what happened."""
    try:
        import matplotlib
    except ImportError:
        return "no chart: matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [
        s
        for s in dict.fromkeys(r["scenario"] for r in rows)
        if any("p50_us" in r for r in rows if r["scenario"] == s)
    ]
    if not scenarios:
        return "no chart: nothing was measured"
    heights = [
        max(1.5, 0.32 * sum(1 for r in rows if r["scenario"] == s and "p50_us" in r)) for s in scenarios
    ]
    fig, axes = plt.subplots(
        len(scenarios),
        1,
        figsize=(10, sum(heights) + 1.2 * len(scenarios)),
        gridspec_kw={"height_ratios": heights},
    )
    if len(scenarios) == 1:
        axes = [axes]
    for ax, scenario in zip(axes, scenarios, strict=True):
        measured = [r for r in rows if r["scenario"] == scenario and "p50_us" in r]
        labels = [f"{r['database']}: {r['system']}" for r in measured]
        values = [r["p50_us"] for r in measured]
        colours = ["#999999" if _is_other(r["system"]) else "#1f77b4" for r in measured]
        ax.barh(labels, values, color=colours)
        ax.invert_yaxis()
        ax.set_title(f"{scenario}: median µs per call (lower is better)", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"


@contextlib.contextmanager
def sqlite_file() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="idempotent-run-") as tmp:
        yield str(Path(tmp) / "bench.db")


def _delayed(url: str, delay_us: int, default_port: int) -> str:
    """``url`` pointed at a new ``DelayProxy`` in front of its server (``delay_us`` each way)."""
    parsed = sa.make_url(url)
    proxy = DelayProxy(parsed.host or "127.0.0.1", parsed.port or default_port, delay_us / 1e6)
    return parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def across_network(delay_us: int) -> None:
    """Send the one-process scenarios' connections to PostgreSQL, MariaDB and Redis through
    ``bench_pipeline.DelayProxy``: each chunk is delivered ``delay_us`` late, each way, a stand-in
    for a server across a network. The URLs ``bench_core`` and ``peers`` hand out change; the
    concurrent and http scenarios keep theirs (8 processes through one Python proxy would measure
    the proxy)."""
    bench_core.DEFAULT_POSTGRES_URL = _delayed(bench_core.DEFAULT_POSTGRES_URL, delay_us, 5432)
    bench_core.DEFAULT_MARIADB_URL = _delayed(bench_core.DEFAULT_MARIADB_URL, delay_us, 3306)
    peers.POSTGRES_URL = _delayed(peers.POSTGRES_URL, delay_us, 5432)
    peers.REDIS_URL = _delayed(peers.REDIS_URL, delay_us, 6379)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few calls, 20,000 rows not 5,000,000"
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"JSON report; the PNG goes beside it ({RESULTS})"
    )
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql,mariadb,redis",
        help="comma-separated subset of sqlite,postgresql,mariadb,redis (default all)",
    )
    parser.add_argument(
        "--scenarios",
        default="business,trivial,concurrent,keys-table,http",
        help="comma-separated subset (default all)",
    )
    parser.add_argument("--iterations", type=int, help="timed calls per variant (default 1000, quick 30)")
    parser.add_argument(
        "--large-rows", type=int, help="rows in the large keys table (default 5,000,000, quick 20,000)"
    )
    parser.add_argument(
        "--concurrent-calls", type=int, help="calls in the 8-process scenario (default 4000, quick 400)"
    )
    parser.add_argument(
        "--delay-us",
        type=int,
        default=0,
        metavar="US",
        help="send the one-process scenarios' connections through a proxy delaying each chunk this "
        "many µs each way (a server across a network; see bench_pipeline.py)",
    )
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run the one-process scenarios (business, trivial, keys-table) with this process and the "
        "local servers on this CPU only (see pinning.py)",
    )
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    iterations = args.iterations or (30 if args.quick else 1000)
    warmup = 5 if args.quick else 50
    large = args.large_rows or (20_000 if args.quick else 5_000_000)
    concurrent_calls = args.concurrent_calls or (400 if args.quick else 4000)
    suffix = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    direct = {"postgresql": bench_core.DEFAULT_POSTGRES_URL, "mariadb": bench_core.DEFAULT_MARIADB_URL}
    if args.delay_us:
        across_network(args.delay_us)
    with sqlite_file() as db_path:
        sqlite_url = f"sqlite:///{db_path}"
        urls = {
            "sqlite": sqlite_url,
            "postgresql": bench_core.DEFAULT_POSTGRES_URL,
            "mariadb": bench_core.DEFAULT_MARIADB_URL,
        }
        sql_urls = {d: urls[d] for d in DATABASES if d in databases}
        placement = "not pinned"
        if "business" in scenarios:
            with pinned(args.pin) as placement:
                print(placement)
                rows += scenario_business(sql_urls, iterations, warmup, suffix)
        if "trivial" in scenarios:
            trivial_url = f"sqlite:///{db_path}.trivial"
            with pinned(args.pin) as placement:
                rows += scenario_trivial(databases, trivial_url, iterations, warmup, suffix)
        if "concurrent" in scenarios:
            rows += scenario_concurrent(
                {d: direct[d] for d in sql_urls if d != "sqlite"}, concurrent_calls, suffix
            )
        if "keys-table" in scenarios and "postgresql" in databases:
            with pinned(args.pin) as placement:
                rows += scenario_keys_table(urls["postgresql"], 1000, large, iterations, warmup, suffix)
        if "http" in scenarios:
            rows += scenario_http(args.quick, databases)
    elapsed = time.monotonic() - started
    checks = check_targets(rows)
    print_table(rows, checks)
    print(
        f"\n{'quick' if args.quick else 'full'} run, {iterations} timed calls per variant, "
        f"{elapsed:.0f} s, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"one-process scenarios: {placement}")
    if args.delay_us:
        print(f"one-process scenarios: through a proxy delaying {args.delay_us} µs each way")
    if args.quick and "keys-table" in scenarios and "postgresql" in databases:
        print(f"quick mode: the large keys table has {large:,} rows, not 5,000,000")
    report = {
        "benchmark": "run",
        "quick": args.quick,
        "iterations": iterations,
        "warmup": warmup,
        "large_rows": large,
        "seconds": round(elapsed, 1),
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "placement": placement,
        "delay_us": args.delay_us,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "targets": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(rows, checks))
    print(f"results written to {args.json} (and the table as Markdown beside it)")
    print(chart(rows, args.json.with_suffix(".png")))
    failed = [r for r in rows if r.get("exactly_once") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
