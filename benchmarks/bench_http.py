"""Requests per second of an order endpoint through a real uvicorn server: bare, under
``@idempotent_route`` and behind ``IdempotencyMiddleware``, first calls and replays.

One server process serves every variant from one app, on one PostgreSQL database, and the
variants are timed in alternating rounds in one run, so machine noise hits them alike:

* ``bare``: ``POST /bare/orders``, the example app's endpoint function without the decorator
  (plus the commit the decorator would make): one order through a ``Session`` from ``Depends``,
  201 with the order and a ``Location`` header;
* ``decorated_first``: the example's ``POST /orders``, under ``@idempotent_route()``, a new key
  per request;
* ``decorated_replay``: the same endpoint with keys that already completed;
* ``middleware_first`` / ``middleware_replay``: the bare endpoint in an app wrapped by
  ``IdempotencyMiddleware`` (lease mode), new keys / completed keys.

Run ``python benchmarks/bench_http.py --help`` for the options; see ``benchmarks/README.md``.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

DEFAULT_POSTGRES_URL = os.environ.get(
    "IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)
RESULTS = Path(__file__).resolve().parent / "results" / "bench_http.json"
VARIANTS = ("bare", "decorated_first", "decorated_replay", "middleware_first", "middleware_replay")
PATHS = {
    "bare": "/bare/orders",
    "decorated_first": "/orders",
    "decorated_replay": "/orders",
    "middleware_first": "/mw/orders",
    "middleware_replay": "/mw/orders",
}
TARGET = ("decorated_first", "bare", 1.5)  # decorated first calls cost at most 1.5x bare ones


# ---------------------------------------------------------------------------------------------
# The server side (``uvicorn --factory bench_http:create_app``)
# ---------------------------------------------------------------------------------------------
def create_app() -> Any:
    """The example app (``examples/fastapi_app.py``, whose ``POST /orders`` is decorated) plus the
    same endpoint bare at ``/bare/orders`` and behind the middleware at ``/mw/orders``."""
    from fastapi import FastAPI, Request, Response

    from examples import fastapi_app as example
    from idempotent.contrib.asgi import IdempotencyMiddleware

    place = example.create_order.__wrapped__  # type: ignore[attr-defined]

    def bare(
        order: example.OrderIn, request: Request, response: Response, session: example.SessionDep
    ) -> example.Order:
        created: example.Order = place(order, request, response, session)
        session.commit()
        return created

    app = example.app
    app.post("/bare/orders", status_code=201)(bare)
    plain = FastAPI()
    plain.post("/orders", status_code=201)(bare)
    app.mount("/mw", IdempotencyMiddleware(plain, ttl_seconds=3600))
    return app


# ---------------------------------------------------------------------------------------------
# The client side
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """uvicorn serving :func:`create_app` in a child process."""

    def __init__(self, url: str, suffix: str) -> None:
        self.port = _free_port()
        env = dict(os.environ, DATABASE_URL=url)
        env.update(ORDERS_TABLE=f"bench_orders_{suffix}", IDEMPOTENCY_TABLE=f"bench_keys_{suffix}")
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "benchmarks"), env.get("PYTHONPATH", "")])
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "bench_http:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                httpx.get(f"{self.base}/docs", timeout=1)
            except httpx.HTTPError:
                ready.wait(0.1)
            else:
                return
        raise SystemExit("the benchmark server did not start")

    def _drain(self, ready: threading.Event) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            sys.stderr.write(line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def _batch(client: Any, variant: str, keys: list[str], concurrency: int, latencies: list[int]) -> float:
    """Send one request per key (None: no key) with ``concurrency`` in flight; return seconds.

    Each request's own time, in nanoseconds, is appended to ``latencies``."""
    queue = list(keys)
    body = {"item": "tea", "quantity": 2}
    failures: list[str] = []

    async def worker() -> None:
        while queue:
            key = queue.pop()
            headers = {"Idempotency-Key": key} if key else {}
            sent = time.perf_counter_ns()
            response = await client.post(PATHS[variant], json=body, headers=headers)
            latencies.append(time.perf_counter_ns() - sent)
            replayed = response.headers.get("idempotent-replayed") == "true"
            if response.status_code != 201 or replayed != variant.endswith("_replay"):
                failures.append(
                    f"{variant}: {response.status_code} replayed={replayed} {response.text[:200]}"
                )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"unexpected responses, e.g. {failures[0]}")
    return elapsed


async def _run(
    base: str, rounds: int, per_round: int, warmup: int, concurrency: int
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Requests per second of each variant, and each timed request's latency in nanoseconds."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    totals = dict.fromkeys(VARIANTS, 0.0)
    latencies: dict[str, list[int]] = {variant: [] for variant in VARIANTS}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        for index in range(rounds + 1):
            count = warmup if index == 0 else per_round
            first_keys = {v: [uuid.uuid4().hex for _ in range(count)] for v in ("decorated", "middleware")}
            order = list(VARIANTS) if index % 2 else list(reversed(VARIANTS))
            # first calls of a round come before its replays, which repeat their keys
            order.sort(key=lambda v: v.endswith("_replay"))
            for variant in order:
                family = variant.split("_", 1)[0]
                keys = [""] * count if variant == "bare" else first_keys[family]
                timed: list[int] = latencies[variant] if index else []
                seconds = await _batch(client, variant, keys, concurrency, timed)
                if index:
                    totals[variant] += seconds
    rates = {variant: rounds * per_round / seconds for variant, seconds in totals.items()}
    return rates, latencies


def measure(
    url: str, rounds: int, per_round: int, warmup: int, concurrency: int
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Start the server on ``url``, time every variant, stop it and drop its tables."""
    suffix = uuid.uuid4().hex[:8]
    server = Server(url, suffix)
    try:
        return asyncio.run(_run(server.base, rounds, per_round, warmup, concurrency))
    finally:
        server.stop()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS bench_orders_{suffix}, bench_keys_{suffix}")
        engine.dispose()


#: (variant, name in ``run.py``'s table, the variant its ratio is taken against)
ROWS = (
    ("bare", "FastAPI bare", ""),
    ("decorated_first", "FastAPI @idempotent_route first", "bare"),
    ("decorated_replay", "FastAPI @idempotent_route replay", "bare"),
    ("middleware_first", "FastAPI middleware first", "bare"),
    ("middleware_replay", "FastAPI middleware replay", "bare"),
)


def scenario(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``run.py``'s ``http`` scenario (shaped by ``run.row``).

    calls/s is the throughput with 8 requests in flight (Flask: one at a time); p50/p99 and the
    ratio are per-request latencies, the ratio against the bare endpoint of the same server."""
    from run import row

    rounds, per_round, warmup = (2, 40, 20) if quick else (6, 300, 100)
    concurrency = 8
    rows: list[dict[str, Any]] = []
    try:
        rates, latencies = measure(DEFAULT_POSTGRES_URL, rounds, per_round, warmup, concurrency)
    except (SystemExit, Exception) as exc:  # a server that fails to start is reported, never faked
        rows.append(row("http", "postgresql", "FastAPI (uvicorn)", None, note=f"not run: {exc}"))
    else:
        names = {variant: name for variant, name, _ in ROWS}
        for variant, name, reference in ROWS:
            ref = latencies[reference] if reference else None
            note = "" if reference else f"uvicorn, {concurrency} in flight, {rounds} rounds of {per_round}"
            out = row("http", "postgresql", name, latencies[variant], names.get(reference, ""), ref, note)
            out["calls_per_s"] = round(rates[variant], 1)
            rows.append(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="the PostgreSQL database")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (default 6)")
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per variant per round (default 300)"
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="untimed requests per variant first (default 100)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args()

    rates, _ = measure(args.postgres_url, args.rounds, args.requests, args.warmup, args.concurrency)

    bare = rates["bare"]
    print(f"{'variant':<20} {'requests/s':>11} {'time vs bare':>13}")
    for variant in VARIANTS:
        print(f"{variant:<20} {rates[variant]:>11.0f} {bare / rates[variant]:>12.2f}x")
    variant, reference, limit = TARGET
    ratio = rates[reference] / rates[variant]
    verdict = "met" if ratio <= limit else "MISSED"
    print(f"target: {variant} at most {limit}x the time of {reference}: {ratio:.2f}x, {verdict}")
    report = {
        "benchmark": "bench_http",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "concurrency": args.concurrency,
        "requests_per_second": rates,
        "time_vs_bare": {v: bare / r for v, r in rates.items()},
        "target": {
            "variant": variant,
            "reference": reference,
            "limit": limit,
            "ratio": ratio,
            "met": ratio <= limit,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
