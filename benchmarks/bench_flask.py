"""Flask through a real server: requests per second of a bare order endpoint, the same endpoint
under ``@idempotent_route``, and under the WSGI middleware, first requests and replays.

Variants, timed round-robin in one run so that machine noise hits them alike:

* ``bare``: ``POST /bare`` inserts one order row and commits (no key sent, no decorator);
* ``route-first``: ``POST /orders`` under ``@idempotent_route()`` with a new key per request
  (claim, insert, store the response, commit: one transaction);
* ``route-replay``: the same with a key that already completed;
* ``mw-first`` / ``mw-replay``: ``POST /bare`` of an app wrapped in ``IdempotencyMiddleware``
  (lease mode: claim committed, endpoint's own transaction, response committed).

The server is werkzeug's threaded WSGI server in a child process, speaking HTTP/1.1 with
keep-alive; the client sends one request at a time over one connection, so the numbers are
per-request latency turned into requests per second.

    python benchmarks/bench_flask.py                    # PostgreSQL on 127.0.0.1
    python benchmarks/bench_flask.py --url sqlite --requests 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

DEFAULT_URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
VARIANTS = ("bare", "route-first", "route-replay", "mw-first", "mw-replay")


def build_app(url: str, suffix: str) -> Any:
    """The benchmark's Flask app (imported in the server process only)."""
    from flask import Flask, request
    from flask_sqlalchemy import SQLAlchemy
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from idempotent import configure
    from idempotent.contrib.flask import idempotent_route
    from idempotent.contrib.wsgi import IdempotencyMiddleware
    from idempotent.schema import make_table

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)
    orders = sa.Table(
        f"bench_orders_{suffix}",
        db.metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("item", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
    )
    make_table(db.metadata, f"bench_keys_{suffix}")
    with app.app_context():
        db.create_all()
        configure(db.engine, table=f"bench_keys_{suffix}")

    def insert() -> dict[str, Any]:
        data = request.get_json()
        result = db.session.execute(orders.insert().values(item=data["item"], quantity=data["quantity"]))
        return {"id": int(result.inserted_primary_key[0]), **data}

    @app.post("/bare")
    def bare() -> Any:
        order = insert()
        db.session.commit()
        return order, 201, {"Location": f"/orders/{order['id']}"}

    @app.post("/orders")
    @idempotent_route()
    def create() -> Any:
        order = insert()
        return order, 201, {"Location": f"/orders/{order['id']}"}

    return DispatcherMiddleware(app, {"/mw": IdempotencyMiddleware(app.wsgi_app)})


def serve(url: str, suffix: str, port: int) -> None:
    """Child process: serve the app until killed."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    WSGIRequestHandler.protocol_version = "HTTP/1.1"  # keep-alive, as a production server
    server = make_server("127.0.0.1", port, build_app(url, suffix), threaded=True)
    print("ready", flush=True)
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(url: str, requests: int, warmup: int) -> dict[str, list[float]]:
    """Start the server on ``url``, time every variant (seconds per request), stop it."""
    suffix = uuid.uuid4().hex[:8]
    port = _free_port()
    command = [sys.executable, __file__, "--serve", "--url", url, "--suffix", suffix, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    if server.stdout.readline().strip() != "ready":
        raise SystemExit("the benchmark server did not start")
    threading.Thread(target=server.stdout.read, daemon=True).start()
    body = {"item": "tea", "quantity": 1}
    counter = iter(range(10**9))
    paths = {
        "bare": ("/bare", None),
        "route-first": ("/orders", "new"),
        "route-replay": ("/orders", "replayed"),
        "mw-first": ("/mw/bare", "new"),
        "mw-replay": ("/mw/bare", "replayed"),
    }
    timings: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def once(variant: str, *, first: bool = False) -> float:
                path, kind = paths[variant]
                headers = {}
                if kind == "new":
                    headers["Idempotency-Key"] = f"k{next(counter)}"
                elif kind == "replayed":
                    headers["Idempotency-Key"] = f"replayed-{variant}"
                start = time.perf_counter()
                response = client.post(path, json=body, headers=headers)
                elapsed = time.perf_counter() - start
                if response.status_code != 201:
                    raise SystemExit(f"{variant}: HTTP {response.status_code} {response.text}")
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                if replayed != (kind == "replayed" and not first):
                    raise SystemExit(f"{variant}: unexpected replay marker {replayed}")
                return elapsed

            for variant in VARIANTS:  # the replay keys exist before timing starts
                once(variant, first=True)
            for _ in range(warmup):
                for variant in VARIANTS:
                    once(variant)
            for _ in range(requests):
                for variant in VARIANTS:
                    timings[variant].append(once(variant))
    finally:
        server.kill()
        server.wait()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            for table in (f"bench_orders_{suffix}", f"bench_keys_{suffix}"):
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
    return timings


def run(url: str, requests: int, warmup: int) -> dict[str, Any]:
    timings = measure(url, requests, warmup)
    bare = statistics.median(timings["bare"])
    return {
        variant: {
            "requests_per_s": 1.0 / statistics.median(samples),
            "median_ms": statistics.median(samples) * 1000,
            "vs_bare": statistics.median(samples) / bare,
        }
        for variant, samples in timings.items()
    }


#: (variant, name in ``run.py``'s table, the variant its ratio is taken against)
ROWS = (
    ("bare", "Flask bare", ""),
    ("route-first", "Flask @idempotent_route first", "bare"),
    ("route-replay", "Flask @idempotent_route replay", "bare"),
    ("mw-first", "Flask middleware first", "bare"),
    ("mw-replay", "Flask middleware replay", "bare"),
)


def scenario(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``run.py``'s ``http`` scenario (shaped by ``run.row``): one request at a time."""
    from run import row

    requests, warmup = (40, 10) if quick else (1000, 50)
    try:
        timings = measure(DEFAULT_URL, requests, warmup)
    except (SystemExit, Exception) as exc:  # a server that fails to start is reported, never faked
        return [row("http", "postgresql", "Flask (werkzeug)", None, note=f"not run: {exc}")]
    samples = {variant: [round(t * 1e9) for t in times] for variant, times in timings.items()}
    names = {variant: name for variant, name, _ in ROWS}
    note = f"werkzeug threaded server, one request at a time, {requests} per variant"
    return [
        row(
            "http",
            "postgresql",
            name,
            samples[variant],
            names.get(ref, ""),
            samples.get(ref),
            "" if ref else note,
        )
        for variant, name, ref in ROWS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="database URL ('sqlite' for a temporary file)")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per variant")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_flask.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suffix", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.suffix, args.port)
        return
    url = args.url
    if url == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    results = run(url, args.requests, args.warmup)
    print(f"{'variant':<14}{'req/s':>10}{'median ms':>12}{'x bare':>9}")
    for variant, row in results.items():
        print(f"{variant:<14}{row['requests_per_s']:>10.0f}{row['median_ms']:>12.2f}{row['vs_bare']:>9.2f}")
    report = {
        "benchmark": "bench_flask",
        "url": sa.make_url(url).render_as_string(hide_password=True),
        "requests": args.requests,
        "python": platform.python_version(),
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
