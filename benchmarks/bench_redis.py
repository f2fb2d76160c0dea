"""RedisStore against AWS Lambda Powertools' idempotency utility, on the same Redis, in one run.

Variants, timed in interleaved rounds so that machine noise hits them alike:

* ``idem-first`` / ``idem-replay``: ``@idempotent(mode="lease", store=RedisStore(redis.Redis))``,
  a new key each call / a key that already completed;
* ``pt-first`` / ``pt-replay``: Powertools' ``@idempotent_function`` with its
  ``RedisCachePersistenceLayer`` on a ``redis.Redis`` to the same server;
* ``idem-async-first`` / ``idem-async-replay``: the same decorator on an ``async def`` function
  with a ``redis.asyncio.Redis`` client. Powertools has no async form (its decorator and its
  persistence layers are synchronous), so the async rows are compared with its sync numbers
  (what it costs when called on the event loop, blocking it), and with
* ``pt-thread-first`` / ``pt-thread-replay``: Powertools' function called from async code with
  ``asyncio.to_thread``, as async code must run blocking calls.

Each function takes one ``order`` dict and returns a small dict, so the numbers are the
libraries' own cost: key and payload hashing, the Redis round trips, result encoding.

    pip install -e '.[bench]'
    python benchmarks/bench_redis.py                         # 127.0.0.1:6379, 2000 calls per variant
    python benchmarks/bench_redis.py --url redis://host:6379/0 --calls 5000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from idempotent import idempotent
from idempotent.redis import RedisStore

try:
    import aws_lambda_powertools
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import RedisCachePersistenceLayer
except ImportError:  # pragma: no cover
    raise SystemExit("install the bench extra: pip install -e '.[bench]'") from None

DEFAULT_URL = os.environ.get("IDEMPOTENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
OUTPUT = Path(__file__).parent / "results" / "bench_redis.json"
PAIRS = (("idem-first", "pt-first"), ("idem-replay", "pt-replay"))
ASYNC_PAIRS = (("idem-async-first", "pt-first"), ("idem-async-replay", "pt-replay"))
THREAD_PAIRS = (("idem-async-first", "pt-thread-first"), ("idem-async-replay", "pt-thread-replay"))


def sync_variants(url: str, prefix: str) -> dict[str, Callable[[], Any]]:
    """The four sync variants; each call of a returned callable is one timed call."""
    client = redis.Redis.from_url(url)
    store = RedisStore(client, prefix=prefix)
    numbers = itertools.count()

    @idempotent(key_from=lambda order: order["id"], scope="bench.redis", mode="lease", store=store)
    def ours(order: dict[str, Any]) -> dict[str, Any]:
        return {"id": order["id"], "status": "ok"}

    theirs = _powertools(client, prefix)

    replayed = {"id": "replayed", "amount": 100}
    ours(order=replayed)
    theirs(order=replayed)
    return {
        "idem-first": lambda: ours(order={"id": f"o{next(numbers)}", "amount": 100}),
        "idem-replay": lambda: ours(order=replayed),
        "pt-first": lambda: theirs(order={"id": f"o{next(numbers)}", "amount": 100}),
        "pt-replay": lambda: theirs(order=replayed),
    }


def _powertools(client: redis.Redis, prefix: str) -> Callable[..., Any]:
    """Powertools' decorator with its Redis persistence layer on ``client``, around the bench's function."""
    with warnings.catch_warnings():  # 3.x announces the rename to CachePersistenceLayer (same class)
        warnings.simplefilter("ignore", DeprecationWarning)
        layer = RedisCachePersistenceLayer(client=client)
    config = IdempotencyConfig(expires_after_seconds=24 * 3600)

    @idempotent_function(
        data_keyword_argument="order", persistence_store=layer, config=config, key_prefix=prefix + "pt"
    )
    def theirs(order: dict[str, Any]) -> dict[str, Any]:
        return {"id": order["id"], "status": "ok"}

    return theirs


def async_variants(url: str, prefix: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The async variants (made inside the running loop: the client belongs to it), and
    Powertools called from async code the way it must be, in a worker thread."""
    store = RedisStore(redis.asyncio.Redis.from_url(url), prefix=prefix)
    numbers = itertools.count()
    theirs = _powertools(redis.Redis.from_url(url), prefix)

    @idempotent(key_from=lambda order: order["id"], scope="bench.aredis", mode="lease", store=store)
    async def ours(order: dict[str, Any]) -> dict[str, Any]:
        return {"id": order["id"], "status": "ok"}

    replayed = {"id": "replayed", "amount": 100}
    theirs(order=replayed)
    return {
        "idem-async-first": lambda: ours(order={"id": f"o{next(numbers)}", "amount": 100}),
        "idem-async-replay": lambda: ours(order=replayed),
        "pt-thread-first": lambda: asyncio.to_thread(theirs, order={"id": f"t{next(numbers)}"}),
        "pt-thread-replay": lambda: asyncio.to_thread(theirs, order=replayed),
    }


def measure(
    sync: dict[str, Callable[[], Any]],
    make_async: Callable[[], dict[str, Callable[[], Awaitable[Any]]]],
    calls: int,
    rounds: int,
    loop: str = "asyncio",
) -> dict[str, list[float]]:
    """Seconds per call of every variant, one sample per round; each round runs them all."""
    per_round = max(1, calls // rounds)
    samples: dict[str, list[float]] = {}

    async def main() -> None:
        variants = make_async()
        for afn in variants.values():  # warm up: open the connection, load the scripts
            await afn()
        for fn in sync.values():
            fn()
        for _ in range(rounds):
            for name, fn in sync.items():
                start = time.perf_counter()
                for _ in range(per_round):
                    fn()
                samples.setdefault(name, []).append((time.perf_counter() - start) / per_round)
            for name, afn in variants.items():
                start = time.perf_counter()
                for _ in range(per_round):
                    await afn()
                samples.setdefault(name, []).append((time.perf_counter() - start) / per_round)

    if loop == "uvloop":
        import uvloop  # the bench extra installs it

        uvloop.run(main())
    else:
        asyncio.run(main())
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis URL (default {DEFAULT_URL})")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per variant (default 2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the whole run (default asyncio; uvloop is what uvicorn[standard] runs on)",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"JSON report (default {OUTPUT})")
    args = parser.parse_args()
    os.environ.pop("POWERTOOLS_IDEMPOTENCY_DISABLED", None)  # it would turn Powertools off
    # Outside Lambda, Powertools warns on every first call that it has no Lambda context.
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    server = redis.Redis.from_url(args.url)
    info = server.info("server")
    print(
        f"Python {platform.python_version()}, redis-py {redis.__version__}, Redis {info['redis_version']}, "
        f"aws-lambda-powertools {getattr(aws_lambda_powertools, '__version__', '?')}, "
        f"{args.calls} calls per variant, {args.loop} event loop"
    )
    try:
        samples = measure(
            sync_variants(args.url, prefix),
            lambda: async_variants(args.url, prefix),
            args.calls,
            args.rounds,
            args.loop,
        )
    finally:
        keys = list(server.scan_iter(match=prefix + "*", count=1000))
        if keys:
            server.delete(*keys)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{'variant':<19} {'µs/call':>9} {'calls/s':>9}   {'vs Powertools (sync)':>20}")
    ratios: dict[str, float] = {}
    for ours, theirs in PAIRS + ASYNC_PAIRS:
        ratio = medians[ours] / medians[theirs]
        ratios[f"{ours}/{theirs}"] = ratio
        print(f"{ours:<19} {medians[ours] * 1e6:9.0f} {1 / medians[ours]:9.0f}   {ratio:19.2f}x")
    for name in ("pt-first", "pt-replay"):
        print(f"{name:<19} {medians[name] * 1e6:9.0f} {1 / medians[name]:9.0f}   {'1.00x':>20}")
    print("(Powertools has no async API: the async rows are compared with its sync calls, which would")
    print(" block the event loop; below, with those calls in a worker thread, as async code runs them.)")
    threaded: dict[str, float] = {}
    for ours, theirs in THREAD_PAIRS:
        threaded[f"{ours}/{theirs}"] = ratio = medians[ours] / medians[theirs]
        print(f"{ours:<19} {'':>9} {'':>9}   {ratio:19.2f}x {theirs} ({medians[theirs] * 1e6:.0f} µs)")
    met = all(value <= 1.0 for value in ratios.values())
    print(f"target: every ratio <= 1.00 (at least as fast as Powertools): {'met' if met else 'NOT met'}")
    report = {
        "python": platform.python_version(),
        "redis_server": info["redis_version"],
        "calls": args.calls,
        "rounds": args.rounds,
        "median_us": {name: round(value * 1e6, 1) for name, value in medians.items()},
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "ratios_to_powertools_in_a_thread": {name: round(value, 3) for name, value in threaded.items()},
        "target_met": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
