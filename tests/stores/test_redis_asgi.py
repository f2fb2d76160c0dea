"""RedisStore and get/set stores behind the ASGI middleware, which needs nothing but the store
protocol (skipped while the ASGI integration is not installed)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import redis
import redis.asyncio

from idempotent.errors import IdempotencyWarning
from idempotent.redis import RedisStore
from idempotent.stores import GetSetStore
from tests.services import REDIS_URL
from tests.stores.doubles import CachedResponses

pytest.importorskip("starlette")
pytest.importorskip("idempotent.contrib.asgi")
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from idempotent.contrib.asgi import IdempotencyMiddleware


def _app(runs: list[int], store: Any) -> Any:
    async def create(request: Request) -> Response:
        runs.append(1)
        return JSONResponse({"order": len(runs)}, status_code=201)

    return IdempotencyMiddleware(Starlette(routes=[Route("/orders", create, methods=["POST"])]), store=store)


def test_asgi_middleware_on_redis(redis_prefix: str) -> None:
    """The ASGI middleware with store=RedisStore(redis.asyncio.Redis): one run, the replay marked."""
    runs: list[int] = []
    store = RedisStore(redis.asyncio.Redis.from_url(REDIS_URL), prefix=redis_prefix)
    with TestClient(_app(runs, store)) as client:
        first = client.post("/orders", headers={"Idempotency-Key": "a-1"}, json={"n": 1})
        second = client.post("/orders", headers={"Idempotency-Key": "a-1"}, json={"n": 1})
        other = client.post("/orders", headers={"Idempotency-Key": "a-1"}, json={"n": 2})
    assert (first.status_code, first.json()) == (201, {"order": 1})
    assert (second.status_code, second.json()) == (201, {"order": 1})
    assert second.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert runs == [1]


def test_asgi_middleware_takes_a_get_set_store() -> None:
    """A bare get/set store works in the middleware (wrapped in GetSetStore, with a warning)."""
    runs: list[int] = []
    inner = CachedResponses()
    with TestClient(_app(runs, inner)) as client:
        with pytest.warns(IdempotencyWarning, match="in flight"):
            first = client.post("/orders", headers={"Idempotency-Key": "g-1"}, json={})
        second = client.post("/orders", headers={"Idempotency-Key": "g-1"}, json={})
    assert first.json() == second.json() == {"order": 1}
    assert runs == [1]
    assert len(inner.data) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdempotencyWarning)
        with TestClient(_app(runs, GetSetStore(CachedResponses()))) as client:
            assert client.post("/orders", headers={"Idempotency-Key": "g-2"}, json={}).status_code == 201
