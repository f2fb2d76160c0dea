"""What the Redis client side costs `RedisStore`: round trips, the reply parser, the async send.

Three measurements, each side by side in one process (variants alternate, medians compared):

* ``round trip``: one ``SET`` through redis-py's ``client.set()`` and through the store's own
  path (``_execute``/``_aexecute``: packed by the store, sent on a pooled connection), on a sync
  and on an asyncio client;
* ``parser``: a lease-mode first call on ``RedisStore``, sync and async, with hiredis (redis-py's
  C reply parser, in the ``redis`` extra) and with redis-py's Python parser;
* ``async send``: an async first call and replay with the store's exchange (sent and read with
  the socket timeout kept by a watchdog) and with redis-py's ``send_packed_command`` and
  ``read_response`` (a timer around each send and each reply);
* ``pool lending``: a lease-mode first call, sync and async, with the store taking idle
  connections straight from the pool and with redis-py's ``get_connection()``/``release()``.

    .venv/bin/python benchmarks/bench_redis_client.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _HiredisParser, _RESP2Parser

import idempotent.redis as store_module
from idempotent import idempotent
from idempotent.redis import RedisStore, _aexecute, _execute

URL = os.environ.get("IDEMPOTENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
OUTPUT = Path(__file__).parent / "results" / "bench_redis_client.json"
Timed = Callable[[], Any]


async def _timed(calls: dict[str, Timed], rounds: int, per_round: int) -> dict[str, float]:
    """Median µs per call of each variant; a variant may return an awaitable (then awaited)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up
        for _ in range(20):
            out = call()
            if isinstance(out, Awaitable):
                await out
    rng = random.Random(11)
    for _ in range(rounds):
        order = list(calls.items())
        rng.shuffle(order)
        for name, call in order:
            for _ in range(per_round):
                start = time.perf_counter_ns()
                out = call()
                if isinstance(out, Awaitable):
                    await out
                samples[name].append((time.perf_counter_ns() - start) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def _lease_function(store: RedisStore, scope: str, is_async: bool) -> Callable[[str], Any]:
    if is_async:

        @idempotent(key_from="order", scope=scope, mode="lease", store=store)
        async def afn(order: str) -> dict[str, str]:
            return {"order": order}

        return afn

    @idempotent(key_from="order", scope=scope, mode="lease", store=store)
    def fn(order: str) -> dict[str, str]:
        return {"order": order}

    return fn


async def measure(rounds: int, per_round: int, prefix: str) -> dict[str, dict[str, float]]:
    ids = itertools.count()
    sync_client = redis.Redis.from_url(URL)
    async_client = redis.asyncio.Redis.from_url(URL)
    key = (prefix + "rt").encode()
    command = ((b"SET", key, b"v"),)
    results: dict[str, dict[str, float]] = {}
    results["round trip"] = await _timed(
        {
            "sync client.set()": lambda: sync_client.set(key, b"v"),
            "sync store path": lambda: _execute(sync_client, command),
            "async client.set()": lambda: async_client.set(key, b"v"),
            "async store path": lambda: _aexecute(async_client, command),
        },
        rounds,
        per_round,
    )
    clients: list[Any] = []
    parsers: dict[str, Timed] = {}
    for name, parser, is_async in (
        ("sync hiredis", _HiredisParser, False),
        ("sync Python parser", _RESP2Parser, False),
        ("async hiredis", _AsyncHiredisParser, True),
        ("async Python parser", _AsyncRESP2Parser, True),
    ):
        factory = redis.asyncio.Redis if is_async else redis.Redis
        client = factory.from_url(URL, parser_class=parser)
        clients.append(client)
        function = _lease_function(RedisStore(client, prefix=prefix), f"bench.client.{name}", is_async)
        parsers[name] = lambda function=function: function(str(next(ids)))
    results["parser"] = await _timed(parsers, rounds, per_round)

    exchange = store_module._aexchange

    async def through_redis_py(pool: Any, conn: Any, data: list[bytes], count: int) -> list[Any]:
        await conn.send_packed_command(data, check_health=True)  # a timer per send
        return await store_module._areplies(conn, count)  # and one per reply

    function = _lease_function(RedisStore(async_client, prefix=prefix), "bench.client.send", True)

    def with_send(ours: bool, replay: bool) -> Timed:
        async def call() -> None:
            store_module._aexchange = exchange if ours else through_redis_py
            try:
                await function("replayed" if replay else str(next(ids)))
            finally:
                store_module._aexchange = exchange

        return call

    results["async send"] = await _timed(
        {
            "first, store's send": with_send(True, False),
            "first, redis-py's send": with_send(False, False),
            "replay, store's send": with_send(True, True),
            "replay, redis-py's send": with_send(False, True),
        },
        rounds,
        per_round,
    )
    plain = store_module._plain
    lending: dict[str, Timed] = {}
    for is_async, client in ((False, sync_client), (True, async_client)):
        store = RedisStore(client, prefix=prefix)
        function = _lease_function(store, f"bench.client.lend.{is_async}", is_async)
        for direct in (True, False):

            def call(function: Any = function, direct: bool = direct) -> Any:
                store_module._plain = plain if direct else (lambda pool, kind: False)
                try:
                    out = function(str(next(ids)))
                finally:
                    store_module._plain = plain
                return out

            side = "async" if is_async else "sync"
            lending[f"{side}, {'straight from the pool' if direct else 'redis-py lends'}"] = call
    results["pool lending"] = await _timed(lending, rounds, per_round)
    for client in clients:
        if isinstance(client, redis.asyncio.Redis):
            await client.aclose()
        else:
            client.close()
    await async_client.aclose()
    for stale in sync_client.scan_iter(match=prefix + "*", count=1000):
        sync_client.delete(stale)
    sync_client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls a variant, a round (default 200)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"JSON report (default {OUTPUT})")
    args = parser.parse_args()
    prefix = f"bench-client-{uuid.uuid4().hex[:8]}:"
    results = asyncio.run(measure(args.rounds, args.calls, prefix))
    print(f"Python {platform.python_version()}, redis-py {redis.__version__}; median µs per call")
    pairs = {
        "round trip": (("sync store path", "sync client.set()"), ("async store path", "async client.set()"),
                       ("async store path", "sync store path")),
        "parser": (("sync hiredis", "sync Python parser"), ("async hiredis", "async Python parser")),
        "async send": (("first, store's send", "first, redis-py's send"),
                       ("replay, store's send", "replay, redis-py's send")),
        "pool lending": (("sync, straight from the pool", "sync, redis-py lends"),
                         ("async, straight from the pool", "async, redis-py lends")),
    }  # fmt: skip
    for section, medians in results.items():
        print(f"\n{section}")
        for name, value in medians.items():
            print(f"  {name:<30} {value:8.1f}")
        for ours, theirs in pairs[section]:
            print(f"  {ours} / {theirs}: {medians[ours] / medians[theirs]:.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"python": platform.python_version(), "results": results}, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
