"""Every store of the library passes the conformance kit it ships: memory, SQL (three
databases, sync and async engines), Redis (sync and async clients), and get/set stores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from idempotent import SQLStore
from idempotent.schema import make_table
from idempotent.stores import GetSetStore
from idempotent.testing import MemoryStore, StoreConformance
from tests.services import DATABASES, REDIS_URL, database_urls
from tests.stores.doubles import CachedResponses, DictGetSet


class TestMemoryStore(StoreConformance):
    """The in-memory store."""

    @pytest.fixture
    def store(self) -> MemoryStore:
        """A fresh MemoryStore."""
        return MemoryStore()


class TestSQLStore(StoreConformance):
    """The SQL store on SQLite, PostgreSQL and MariaDB: a sync engine for the blocking methods,
    an AsyncEngine for the async ones. Keys sample Unicode (U+0001-U+07FF and its edges): every
    code point, 4,361 keys, passes too but takes minutes on six database connections."""

    every_code_point = False

    @pytest.fixture(params=DATABASES)
    def store(
        self, request: pytest.FixtureRequest, conformance_mode: str, tmp_path: Any
    ) -> Iterator[SQLStore]:
        """A SQLStore on a fresh keys table."""
        url, async_url = database_urls(request.param, tmp_path)
        table = make_table(sa.MetaData(), f"idem_conf_{uuid.uuid4().hex[:10]}")
        engine = (
            sa.create_engine(url, pool_size=10, max_overflow=10)
            if request.param != "sqlite"
            else (sa.create_engine(url, connect_args={"timeout": 30}))
        )
        table.create(engine)
        try:
            if conformance_mode == "sync":
                yield SQLStore(engine, table.name)
            else:
                from sqlalchemy.ext.asyncio import create_async_engine

                kwargs: dict[str, Any] = {"poolclass": NullPool}
                if request.param == "sqlite":
                    kwargs["connect_args"] = {"timeout": 30}
                yield SQLStore(create_async_engine(async_url, **kwargs), table.name)
        finally:
            table.drop(engine)
            engine.dispose()

    async def close_async(self, store: Any) -> None:
        """Dispose of the AsyncEngine on its event loop."""
        await store.engine.dispose()


class TestRedisStore(StoreConformance):
    """RedisStore on the test server, through its sync and its async client."""

    @pytest.fixture
    def store(self, redis_prefix: str, conformance_mode: str) -> Iterator[Any]:
        """A RedisStore under a random prefix."""
        import redis
        import redis.asyncio

        from idempotent.redis import RedisStore

        if conformance_mode == "sync":
            client = redis.Redis.from_url(REDIS_URL)
            yield RedisStore(client, prefix=redis_prefix)
            client.close()
        else:
            yield RedisStore(redis.asyncio.Redis.from_url(REDIS_URL), prefix=redis_prefix)

    async def close_async(self, store: Any) -> None:
        """Close the async client on its event loop."""
        await store.async_client.aclose()


class TestGetSetStore(StoreConformance):
    """GetSetStore over sync and async get/set stores: everything but atomicity."""

    atomic = False

    @pytest.fixture
    def store(self, conformance_mode: str) -> GetSetStore:
        """A GetSetStore over a dict, sync or async."""
        return GetSetStore(DictGetSet() if conformance_mode == "sync" else CachedResponses())


def test_every_store_implements_both_protocols(redis_prefix: str) -> None:
    """The SQL, memory, Redis and get/set stores are instances of LeaseStore and AsyncLeaseStore."""
    import redis

    from idempotent.redis import RedisStore
    from idempotent.stores import AsyncLeaseStore, LeaseStore

    stores = [
        SQLStore(sa.create_engine("sqlite://")),
        MemoryStore(),
        RedisStore(redis.Redis.from_url(REDIS_URL), prefix=redis_prefix),
        GetSetStore(DictGetSet()),
    ]
    for store in stores:
        assert isinstance(store, LeaseStore), store
        assert isinstance(store, AsyncLeaseStore), store
    assert not isinstance(DictGetSet(), LeaseStore)
