"""The worker scenarios once more on the Redis broker (kombu's Redis transport restores a rejected
message itself; its keys get a random prefix so suites can share the server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.contrib_celery import scenarios
from tests.contrib_celery.harness import REDIS_BROKER_URL, CeleryEnv, celery_env
from tests.services import require


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryEnv]:
    """One worker for this module, on Redis, with tables on every reachable database."""
    require(REDIS_BROKER_URL, "Redis")
    prefix = f"idem-test-{uuid.uuid4().hex[:10]}:"
    options = {
        "global_keyprefix": prefix,
        # Longer than any test: a message is restored because its pool process died, never because
        # a running task outlived the visibility timeout.
        "visibility_timeout": 3600,
    }
    try:
        with celery_env(Path(tmp_path_factory.mktemp("celery-redis")), REDIS_BROKER_URL, options) as running:
            yield running
    finally:
        client = redis.Redis.from_url(REDIS_BROKER_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.mark.parametrize("point", ["write", "commit"])
def test_worker_killed_before_ack_one_order(env: CeleryEnv, point: str) -> None:
    """Redis broker: a pool process SIGKILLed after the order write, before the ack: one order row."""
    scenarios.killed_then_redelivered(env, "postgresql", point)


def test_two_sends_same_business_key(env: CeleryEnv) -> None:
    """Redis broker: two sends of one order, one row, equal results."""
    scenarios.two_sends_one_order(env, "postgresql")


def test_retry_after_transient_failure_writes_once(env: CeleryEnv) -> None:
    """Redis broker: self.retry() after a transient failure writes once."""
    scenarios.retry_writes_once(env, "postgresql")


def test_lease_taken_over_after_the_lease_not_before(env: CeleryEnv) -> None:
    """Redis broker: lease mode takeover after the lease, not before."""
    scenarios.lease_taken_over_after_expiry(env, "sqlite")
