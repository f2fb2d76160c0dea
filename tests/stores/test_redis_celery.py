"""RedisStore behind Celery tasks, which need nothing but the store protocol (skipped while the
Celery integration is not installed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from idempotent.redis import RedisStore

celery = pytest.importorskip("celery")
idempotent_task = pytest.importorskip("idempotent.contrib.celery").idempotent_task


def test_celery_task_on_redis(redis_client: redis.Redis, redis_prefix: str) -> None:
    """A lease-mode Celery task with store=RedisStore runs once per task id and replays."""
    app = celery.Celery(f"redis-store-{uuid.uuid4().hex[:6]}", set_as_current=False)
    store = RedisStore(redis_client, prefix=redis_prefix)
    runs: list[int] = []

    @app.task(bind=True, name=f"tests.redis.notify.{uuid.uuid4().hex[:6]}")
    @idempotent_task(store=store, mode="lease", scope="tests.redis.celery")
    def notify(self: Any, order_id: int) -> int:
        runs.append(order_id)
        return order_id * 2

    task_id = str(uuid.uuid4())
    assert notify.apply(args=(21,), task_id=task_id).get() == 42
    assert notify.apply(args=(21,), task_id=task_id).get() == 42
    assert runs == [21]
    assert store.read("tests.redis.celery", f"{notify.name}:{task_id}") is not None
