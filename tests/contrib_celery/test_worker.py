"""Idempotent Celery tasks on a real worker process and the RabbitMQ broker (no eager mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contrib_celery import scenarios
from tests.contrib_celery.harness import RABBITMQ_URL, CeleryEnv, celery_env, rabbitmq_available
from tests.services import DATABASES


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryEnv]:
    """One worker for this module, on RabbitMQ, with tables on every reachable database."""
    rabbitmq_available()
    with celery_env(Path(tmp_path_factory.mktemp("celery")), RABBITMQ_URL) as running:
        yield running


@pytest.mark.parametrize("point", ["write", "commit"])
@pytest.mark.parametrize("database", DATABASES)
def test_worker_killed_before_ack_one_order(env: CeleryEnv, database: str, point: str) -> None:
    """A pool process SIGKILLed after the order write (before or after its commit) but before the ack:
    the redelivered task runs or replays, and there is exactly one order row."""
    scenarios.killed_then_redelivered(env, database, point)


@pytest.mark.parametrize("point", ["write", "commit"])
@pytest.mark.parametrize("database", DATABASES)
def test_django_orm_worker_killed_before_ack_one_order(env: CeleryEnv, database: str, point: str) -> None:
    """The same kill with a task writing through the Django ORM (django=alias): exactly one order row."""
    scenarios.killed_then_redelivered(env, database, point, task="djorder")


@pytest.mark.parametrize("database", DATABASES)
def test_two_sends_same_business_key(env: CeleryEnv, database: str) -> None:
    """Two sends with the same business key: one order row, both AsyncResults give the same value."""
    scenarios.two_sends_one_order(env, database)


@pytest.mark.parametrize("database", DATABASES)
def test_retry_after_transient_failure_writes_once(env: CeleryEnv, database: str) -> None:
    """self.retry() after a transient failure: the body's write happens once."""
    scenarios.retry_writes_once(env, database)


@pytest.mark.parametrize("database", DATABASES)
def test_lease_taken_over_after_the_lease_not_before(env: CeleryEnv, database: str) -> None:
    """Lease mode: a task whose pool process dies mid-call is taken over after the lease, not before."""
    scenarios.lease_taken_over_after_expiry(env, database)
