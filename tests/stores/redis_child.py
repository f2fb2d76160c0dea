"""A worker process for the Redis crash test: claims a key in lease mode, says ``reached`` on
stdout, then blocks reading stdin until it is killed.

``python -m tests.stores.redis_child URL PREFIX SCOPE KEY LEASE``
"""

from __future__ import annotations

import sys

import redis

from idempotent import idempotent
from idempotent.redis import RedisStore


def main(url: str, prefix: str, scope: str, key: str, lease: str) -> int:
    store = RedisStore(redis.Redis.from_url(url), prefix=prefix)

    @idempotent(key_from="key", scope=scope, mode="lease", lease=float(lease), store=store)
    def work(key: str) -> str:
        sys.stdout.write("reached\n")
        sys.stdout.flush()
        sys.stdin.readline()
        return "child"

    work(key)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
