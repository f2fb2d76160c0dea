"""RedisStore behind the WSGI middleware, which needs nothing but the store protocol (skipped
while the WSGI integration is not installed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from idempotent.redis import RedisStore

pytest.importorskip("werkzeug")
IdempotencyMiddleware = pytest.importorskip("idempotent.contrib.wsgi").IdempotencyMiddleware
from werkzeug.test import Client  # noqa: E402


def test_wsgi_middleware_on_redis(redis_client: redis.Redis, redis_prefix: str) -> None:
    """The WSGI middleware with store=RedisStore(redis.Redis): one run, the replay marked, another
    body with the same key refused."""
    runs: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(environ["wsgi.input"].read())
        payload = json.dumps({"order": len(runs)}).encode()
        start_response("201 Created", [("Content-Type", "application/json")])
        return [payload]

    store = RedisStore(redis_client, prefix=redis_prefix)
    client = Client(IdempotencyMiddleware(app, store=store, ttl_seconds=3600))

    def post(body: bytes) -> Any:
        return client.post("/orders", data=body, headers={"Idempotency-Key": "w-1"})

    first, second, other = post(b"a"), post(b"a"), post(b"b")
    assert (first.status_code, first.get_json()) == (201, {"order": 1})
    assert (second.status_code, second.get_json()) == (201, {"order": 1})
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert runs == [b"a"]
