"""Fixtures for the store tests: a RedisStore on the test server under a random key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.services import REDIS_URL, require

redis = pytest.importorskip("redis", reason="the redis extra is not installed")


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove every key under ``prefix``."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    require(REDIS_URL, "Redis")
    prefix = f"idem-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_prefix: str) -> Iterator[redis.Redis]:
    """A sync client on the test server."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()
