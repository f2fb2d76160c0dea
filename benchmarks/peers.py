"""The trivial-body scenario: ``idempotent`` and the peers users would pick instead, like for like.

Every system wraps the same function body (return a small dict, no business write) with its
documented setup against the machine's services, and offers two callables: ``first`` (a new key
each call) and ``replay`` (the key of the latest first call). A peer that cannot be set up raises
:class:`Unavailable` with the reason, which the report prints instead of numbers.

Used by ``benchmarks/run.py``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench_core
import sqlalchemy as sa

from idempotent import SQLStore, idempotent
from idempotent.schema import make_table

POSTGRES_URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("IDEMPOTENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Unavailable(Exception):
    """A system that cannot be measured here; the message says why."""


@dataclass
class System:
    """One system's callables for the trivial body, and how to tear it down."""

    name: str
    database: str
    durable_first_call: bool
    run: dict[str, Callable[[], None]] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for step in reversed(self.cleanup):
            step()


def _body(order_id: int) -> dict[str, Any]:
    return {"order": order_id, "status": "accepted"}


def _pair(system: System, call: Callable[[Any], None], new_key: Callable[[], Any]) -> System:
    """``first`` calls with a new key each time; ``replay`` repeats the latest one."""
    last: list[Any] = []

    def first() -> None:
        key = new_key()
        call(key)
        last[:] = [key]

    def replay() -> None:
        call(last[0])

    system.run = {"first": first, "replay": replay}
    return system


def _ids() -> Callable[[], int]:
    counter = itertools.count(1)
    return lambda: next(counter)


def idempotent_sql(url: str, database: str, suffix: str, mode: str = "transaction") -> System:
    """``@idempotent`` on a pooled ``Connection`` (transaction mode) or on the store's engine (lease)."""
    engine = (
        sa.create_engine(url, isolation_level="READ COMMITTED")
        if database == "postgresql"
        else (sa.create_engine(url))
    )
    table = make_table(sa.MetaData(), f"bench_trivial_{mode[:2]}_{suffix}")
    table.create(engine)
    store = SQLStore(engine, table.name)
    system = System(f"idempotent ({mode})", database, durable_first_call=True)
    system.cleanup += [engine.dispose, lambda: table.drop(engine)]

    if mode == "lease":

        @idempotent(key_from="order_id", scope="bench.trivial", mode="lease", store=store)
        def leased(order_id: int) -> dict[str, Any]:
            return _body(order_id)

        return _pair(system, leased, _ids())

    @idempotent(key_from="order_id", scope="bench.trivial", store=store)
    def place(conn: sa.Connection, order_id: int) -> dict[str, Any]:
        return _body(order_id)

    def call(order_id: int) -> None:
        with engine.connect() as conn:
            place(conn, order_id)

    return _pair(system, call, _ids())


def hand_lease_statements(table: sa.Table) -> tuple[Any, Any, Any]:
    """Lease mode's statements by hand on PostgreSQL: the claim (``INSERT ... ON CONFLICT DO
    NOTHING RETURNING owner`` on the server clock), the fenced result UPDATE, the replay's SELECT."""
    now = "CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)"
    claim = sa.text(
        f"INSERT INTO {table.name} (scope, key, fingerprint, status, owner, locked_until, created_at, "
        f"expires_at) VALUES (:scope, :key, NULL, 'in_progress', :owner, {now} + 60000, {now}, "
        f"{now} + 86400000) ON CONFLICT (scope, key) DO NOTHING RETURNING owner"
    )
    c = table.c
    complete = bench_core._hand_written("postgresql", table)[1]  # the fenced result UPDATE
    stored = sa.select(c.status, c.result).where(
        c.scope == sa.bindparam("k_scope"), c.key == sa.bindparam("k_key")
    )
    return claim, complete, stored


def hand_written_lease(url: str, suffix: str) -> System:
    """Lease mode's two statements written by hand on PostgreSQL: claim (autocommit), fenced result.

    The claim is ``INSERT ... ON CONFLICT DO NOTHING RETURNING owner`` on the server clock, the result
    an ``UPDATE ... WHERE owner = :owner``, each committed at once; a replay is one autocommit SELECT.
    """
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    table = make_table(sa.MetaData(), f"bench_hand_lease_{suffix}")
    table.create(engine)
    claim, complete, stored = hand_lease_statements(table)
    import json

    def call(order_id: int) -> None:
        key = str(order_id)
        with engine.connect() as conn:
            row = conn.execute(stored, {"k_scope": "bench.hand", "k_key": key}).first()
            if row is not None and row.status == "completed":
                json.loads(row.result)
                return
            owner = uuid.uuid4().hex
            won = conn.execute(claim, {"scope": "bench.hand", "key": key, "owner": owner}).first()
            assert won is not None, "hand-written lease claim lost"
            result = json.dumps(_body(order_id))
            done = conn.execute(
                complete, {"k_scope": "bench.hand", "k_key": key, "k_owner": owner, "k_result": result}
            )
            assert done.rowcount == 1

    system = System("hand-written lease SQL", "postgresql", durable_first_call=True)
    system.cleanup += [engine.dispose, lambda: table.drop(engine)]
    return _pair(system, call, _ids())


def _redis_client() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise Unavailable("redis-py is not installed: pip install -e '.[bench]'") from exc
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis at {REDIS_URL} is not reachable: {exc}") from exc
    return client


def _drop_redis_prefix(client: Any, prefix: str) -> Callable[[], None]:
    def drop() -> None:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()

    return drop


def idempotent_redis(suffix: str) -> System:
    """``@idempotent(mode="lease")`` on this library's Redis store, like for like with the Redis peers."""
    try:
        from idempotent.redis import RedisStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise Unavailable(f"idempotent has no Redis store in this checkout ({exc})") from exc
    client = _redis_client()
    prefix = f"bench_ir_{suffix}:"
    store = RedisStore.from_url(REDIS_URL, prefix=prefix)

    @idempotent(key_from="order_id", scope="bench.trivial", mode="lease", store=store)
    def place(order_id: int) -> dict[str, Any]:
        return _body(order_id)

    system = System("idempotent (Redis, lease)", "redis", durable_first_call=False)
    system.cleanup.append(_drop_redis_prefix(client, prefix))
    return _pair(system, place, _ids())


def powertools_redis(suffix: str) -> System:
    """AWS Lambda Powertools ``idempotent_function`` with its Redis persistence layer."""
    try:
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
        from aws_lambda_powertools.utilities.idempotency.persistence.redis import RedisCachePersistenceLayer
    except ImportError as exc:
        raise Unavailable(f"aws-lambda-powertools[redis] is not importable: {exc}") from exc
    client = _redis_client()
    prefix = f"bench_pt_{suffix}"
    layer = RedisCachePersistenceLayer(client=client)
    config = IdempotencyConfig(event_key_jmespath="order_id", expires_after_seconds=86400)

    @idempotent_function(
        data_keyword_argument="order", persistence_store=layer, config=config, key_prefix=prefix
    )
    def place(order: dict[str, Any]) -> dict[str, Any]:
        return _body(order["order_id"])

    system = System("Powertools (Redis)", "redis", durable_first_call=False)
    system.cleanup.append(_drop_redis_prefix(client, prefix))
    return _pair(system, lambda key: place(order={"order_id": key}), _ids())


class _Loop:
    """One event loop kept for the whole run: idemkit's decorator is async-native."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        self.loop.close()


def idemkit_system(backend_name: str, suffix: str, loop: _Loop) -> System:
    """idemkit's ``@idempotent`` (async, driven by one kept event loop) on Redis or PostgreSQL."""
    try:
        import idemkit
        from idemkit import MethodConfig
    except ImportError as exc:
        raise Unavailable(f"idemkit is not importable: {exc}") from exc
    system: System
    if backend_name == "redis":
        _redis_client().close()
        namespace = f"bench_ik_{suffix}"
        backend = idemkit.RedisBackend.from_url(REDIS_URL, namespace=namespace)
        system = System("idemkit (Redis)", "redis", durable_first_call=False)

        def drop() -> None:
            client = _redis_client()
            _drop_redis_prefix(client, namespace)()

        system.cleanup.append(drop)
    else:
        try:
            from idemkit.backends.postgres import PostgresBackend, init_pg
        except ImportError as exc:
            raise Unavailable(f"idemkit[postgres] is not importable: {exc}") from exc
        dsn = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
        table = f"bench_ik_{suffix}"
        loop.run(init_pg(dsn, table=table))
        backend = PostgresBackend.from_url(dsn, table=table, min_size=1, max_size=4)
        system = System("idemkit (PostgreSQL)", "postgresql", durable_first_call=True)
        engine = sa.create_engine(POSTGRES_URL)

        def drop_table() -> None:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            engine.dispose()

        system.cleanup.append(drop_table)
    system.cleanup.append(lambda: loop.run(backend.aclose()))
    config = MethodConfig(key_fields=["order_id"], scope=lambda _call: "bench")

    @idemkit.idempotent(backend=backend, config=config)
    async def place(*, order_id: int) -> dict[str, Any]:
        return _body(order_id)

    return _pair(system, lambda key: loop.run(place(order_id=key)), _ids())


def drf_idempotency(suffix: str) -> System:
    """drf-idempotency's middleware in front of a DRF view, database backend on PostgreSQL.

    Django is set up in this process (settings configured in code, the package's migration run
    into a schema of its own, dropped at the end); requests go through Django's test ``Client``.
    ``bare view`` is the same view called without a key (the middleware passes it through).
    """
    try:
        import django
        from django.conf import settings
    except ImportError as exc:
        raise Unavailable(f"Django is not importable: {exc}") from exc
    url = sa.engine.make_url(POSTGRES_URL)
    schema = f"bench_drf_{suffix}"
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")

    def drop_schema() -> None:
        from django.db import connections

        connections.close_all()
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        engine.dispose()

    if settings.configured:
        raise Unavailable("Django settings were already configured in this process")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",  # noqa: S106 - a throwaway in-process benchmark setting
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__ + "_drf_urls",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "rest_framework",
            "drf_idempotency",
        ],
        # The Quick Start's middleware. The per-view ``@idempotent()`` under ``@api_view`` (also
        # documented) fails with version 1.0.0: it renders the response before DRF has chosen a
        # renderer (AssertionError ".accepted_renderer not set on Response").
        MIDDLEWARE=["drf_idempotency.middleware.IdempotencyMiddleware"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.database,
                "USER": url.username or "",
                "HOST": url.host or "127.0.0.1",
                "PORT": str(url.port or 5432),
                "OPTIONS": {"options": f"-c search_path={schema}"},
            }
        },
        IDEMPOTENCY={"BACKEND": "drf_idempotency.backends.database.DatabaseBackend"},
        REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": [], "DEFAULT_PERMISSION_CLASSES": []},
        USE_TZ=True,
    )
    try:
        django.setup()
        import sys
        import types

        from django.core.management import call_command
        from django.test import Client
        from django.urls import path
        from rest_framework.decorators import api_view
        from rest_framework.response import Response

        call_command("migrate", "drf_idempotency", verbosity=0)

        @api_view(["POST"])
        def place(request: Any) -> Any:
            return Response(_body(int(request.data["order_id"])), status=201)

        @api_view(["POST"])
        def place_bare(request: Any) -> Any:
            return Response(_body(int(request.data["order_id"])), status=201)

        urls = types.ModuleType(__name__ + "_drf_urls")
        urls.urlpatterns = [path("orders", place), path("orders-bare", place_bare)]  # type: ignore[attr-defined]
        sys.modules[urls.__name__] = urls
    except Exception as exc:
        drop_schema()
        raise Unavailable(f"drf-idempotency could not be set up: {type(exc).__name__}: {exc}") from exc

    client = Client()

    def call(order_id: int, route: str = "orders") -> None:
        # The bare route is called without the header, so the middleware lets it through.
        headers = {"Idempotency-Key": f"k-{order_id}"} if route == "orders" else {}
        response = client.post(
            f"/{route}", {"order_id": order_id}, content_type="application/json", headers=headers
        )
        assert response.status_code == 201, response.content

    system = System("drf-idempotency (DB)", "postgresql", durable_first_call=True)
    system.cleanup.append(drop_schema)
    _pair(system, call, _ids())
    ids = _ids()
    system.run["bare view"] = lambda: call(ids(), "orders-bare")
    return system
