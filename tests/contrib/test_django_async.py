"""Async Django views and the middleware in an async stack, end to end, in lease mode.

Requests go through Django's ``AsyncClient`` to the async views of
tests/contrib/django_async_urls.py, which write an order row with the ORM's async methods on
SQLite, PostgreSQL and MariaDB (each a Django database alias). The keys live in a SQL store on
an ``AsyncEngine`` (aiosqlite, psycopg, aiomysql) on the same database, and in Redis: Django's
transactions cannot span an async view, so the claim commits first and the response is stored
after the view.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest
import sqlalchemy as sa

pytest.importorskip("django")

import tests.contrib.django_settings  # noqa: F401  (configures Django first)

# isort: split
from asgiref.sync import iscoroutinefunction
from django.core import checks
from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings

from idempotent import SQLStore
from idempotent.contrib.django import IdempotencyMiddleware, _adapter, idempotent_view
from idempotent.errors import ConfigurationError
from idempotent.events import Event, EventInfo
from tests.contrib.django_async_urls import ASTATE
from tests.contrib.django_urls import STATE, Boom
from tests.django_db import order_tables
from tests.services import DATABASES, REDIS_URL, database_urls, require

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MIDDLEWARE = "idempotent.contrib.django.IdempotencyMiddleware"
Scenario = Callable[[AsyncClient], Awaitable[Any]]


@dataclass
class Site:
    """One database under test: a Django alias, its order model, the keys table and its URLs."""

    name: str
    alias: str
    order: Any
    keys: sa.Table
    engine: sa.Engine
    async_url: str

    def count(self) -> int:
        """Order rows, read through Django (outside the event loop)."""
        return int(self.order.objects.using(self.alias).count())

    def key_rows(self) -> list[Any]:
        """Rows of the keys table, read on a fresh connection."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.keys)).all())

    def run(self, scenario: Scenario, store: str = "sql", **entries: Any) -> Any:
        """Run ``scenario`` with an ``AsyncClient`` in a new event loop, the keys in a store on an
        ``AsyncEngine`` (``store="redis"``: in Redis) and ``entries`` added to ``IDEMPOTENT``."""

        async def main() -> Any:
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(self.async_url)
            if store == "redis":
                from idempotent.redis import RedisStore

                keys: Any = RedisStore.from_url(REDIS_URL, prefix=f"idem-dj-{uuid.uuid4().hex[:8]}:")
            else:
                keys = SQLStore(engine, self.keys.name)
            setting = {"DATABASE": self.alias, "STORE": keys, "PRINCIPAL_FROM": principal, **entries}
            try:
                with override_settings(IDEMPOTENT=setting):
                    return await scenario(AsyncClient())
            finally:
                await engine.dispose()
                if store == "redis":
                    await keys.async_client.aclose()
                    keys.client.close()

        return asyncio.run(main())


def principal(request: Any) -> str | None:
    """The caller, from a header."""
    return request.headers.get("X-Account")


@pytest.fixture(params=DATABASES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """Each database as a Django alias, with fresh order and keys tables, and the async URLconf."""
    url, async_url = database_urls(request.param, tmp_path)
    with order_tables(url, "idem_async_tests", __name__) as (alias, order, keys, engine):
        ASTATE.reset(alias, order)
        STATE.reset(alias, order)
        override = override_settings(
            ROOT_URLCONF="tests.contrib.django_async_urls", MIDDLEWARE=[], ALLOWED_HOSTS=["testserver"]
        )
        override.enable()
        try:
            yield Site(request.param, alias, order, keys, engine, async_url)
        finally:
            override.disable()


async def post(
    client: AsyncClient, path: str, body: dict[str, Any], key: str | None = "k-1", **headers: str
) -> Any:
    """POST ``body`` as JSON with the key header (None: without it)."""
    if key is not None:
        headers[KEY] = key
    return await client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def problem(response: Any) -> dict[str, Any]:
    """The problem document of an error response (checking its media type)."""
    assert response["Content-Type"] == "application/problem+json"
    return dict(json.loads(response.content))


def same_response(first: Any, again: Any) -> None:
    """``again`` is the replay of ``first``: same status, body and headers, marked, no cookie."""
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again[REPLAYED] == "true"
    assert REPLAYED not in first
    for name in ("Content-Type", "Location", "X-Run"):
        assert again[name] == first[name]
    assert "session_hint" in first.cookies and "session_hint" not in again.cookies


# -- the request contract ------------------------------------------------------------------------


BEFORE_DJANGO_51 = django.VERSION[:2] < (5, 1)
NEEDS_51 = "method_decorator keeps async methods async from Django 5.1 (before it: refused, tested below)"


@pytest.mark.parametrize(
    "path",
    [
        "/shops/acme/orders/",
        pytest.param("/method/", marks=pytest.mark.skipif(BEFORE_DJANGO_51, reason=NEEDS_51)),
        "/dispatch/",
    ],
)
def test_async_view_runs_once_and_replays(site: Site, path: str) -> None:
    """An async function view, an async class-based view's decorated ``post`` and one decorated
    on ``dispatch``: the first
    request runs and stores; a retry gets the same status, body and headers plus
    ``Idempotent-Replayed: true`` without running; the key with another body is a 422."""

    async def scenario(client: AsyncClient) -> tuple[Any, Any, Any]:
        first = await post(client, path, {"ref": "a", "amount": 5})
        again = await post(client, path, {"ref": "a", "amount": 5})
        other = await post(client, path, {"ref": "a", "amount": 6})
        return first, again, other

    first, again, other = site.run(scenario)
    assert first.status_code == 201
    same_response(first, again)
    assert other.status_code == 422
    assert problem(other)["type"].endswith("key-reused")
    assert len(ASTATE.runs) == 1
    assert site.count() == 1
    assert len(site.key_rows()) == 1


def test_async_method_under_method_decorator_before_django_51_is_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before Django 5.1 ``method_decorator`` makes an async method sync, so the view would answer
    with an unawaited coroutine: the request is a ConfigurationError naming the two fixes, and
    the view does not run. (Django 5.1 and later: the version is pretended.)"""
    monkeypatch.setattr(_adapter, "DJANGO_VERSION", (4, 2))

    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(ConfigurationError) as info:
            await post(client, "/method/", {"ref": "a"})
        message = str(info.value)
        assert "OrderView.post" in message and "Django 5.1" in message
        assert 'name="dispatch"' in message

    site.run(scenario)
    assert ASTATE.runs == []
    assert site.key_rows() == []


def account_from_database(request: Any) -> str | None:
    """A ``principal_from`` that queries the database, as reading ``request.user`` does: it must
    be called where Django allows sync ORM queries."""
    ASTATE.order.objects.using(ASTATE.alias).exists()
    return request.headers.get("X-Account")


@pytest.mark.parametrize("path", ["/shops/acme/orders/", "/aplain/1/"])
def test_async_principal_from_may_query_the_database(site: Site, path: str) -> None:
    """``principal_from`` runs outside the event loop (it may read ``request.user``, a lazy ORM
    query): two accounts sending the same key each get their own run; each retry its replay.
    With the decorator and with the middleware."""

    async def scenario(client: AsyncClient) -> list[Any]:
        return [
            await post(client, path, {"ref": "a"}, **{"X-Account": account})
            for account in ("alice", "bob", "alice", "bob")
        ]

    middleware = [MIDDLEWARE] if path.startswith("/aplain/") else []
    with override_settings(MIDDLEWARE=middleware):
        alice, bob, alice_again, bob_again = site.run(scenario, PRINCIPAL_FROM=account_from_database)
    assert alice.status_code == bob.status_code == 201
    assert alice.content != bob.content
    same_response(alice, alice_again)
    same_response(bob, bob_again)
    assert len(ASTATE.runs) == 2
    assert len(site.key_rows()) == 2


def test_async_view_without_key_runs_every_time(site: Site) -> None:
    """A request without the header runs the async view as usual, every time, and keeps nothing."""

    async def scenario(client: AsyncClient) -> list[Any]:
        return [await post(client, "/shops/acme/orders/", {"ref": "a"}, key=None) for _ in range(2)]

    responses = site.run(scenario)
    assert [r.status_code for r in responses] == [201, 201]
    assert site.count() == 2
    assert site.key_rows() == []


def test_async_view_raising_stores_nothing_and_the_retry_runs(site: Site) -> None:
    """An async view that raises after writing: the exception reaches Django, no response is
    stored, and the retry with the same key runs the view again (lease mode: the first row,
    written before the error, stays; nothing rolls it back)."""

    async def scenario(client: AsyncClient) -> Any:
        ASTATE.fail_next = True
        with pytest.raises(Boom):
            await post(client, "/shops/acme/orders/", {"ref": "a"})
        assert site.key_rows() == []
        return await post(client, "/shops/acme/orders/", {"ref": "a"})

    retry = site.run(scenario)
    assert retry.status_code == 201
    assert REPLAYED not in retry
    assert ASTATE.runs == ["async-function", "async-function"]
    assert site.count() == 2
    assert len(site.key_rows()) == 1


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_async_refusals_and_server_errors_are_not_stored(site: Site, status: int) -> None:
    """A refusal (401, 403, 429) or a 5xx from an async view is sent but not stored: the retry
    with the same request and key runs the view again."""

    async def scenario(client: AsyncClient) -> list[Any]:
        return [await post(client, "/shops/acme/orders/", {"ref": "a", "status": status}) for _ in range(2)]

    responses = site.run(scenario)
    assert [r.status_code for r in responses] == [status, status]
    assert all(REPLAYED not in r for r in responses)
    assert len(ASTATE.runs) == 2
    assert site.key_rows() == []


def test_async_concurrent_duplicate_waits_and_replays(site: Site) -> None:
    """A duplicate arriving while the first request's async view runs waits for it and gets its
    response replayed: the view runs once."""
    waited = asyncio.Event()

    def hook(info: EventInfo) -> None:
        if info.event is Event.WAITED:
            waited.set()

    async def scenario(client: AsyncClient) -> tuple[Any, Any]:
        ASTATE.hold, ASTATE.started = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(post(client, "/shops/acme/orders/", {"ref": "a"}))
        await ASTATE.started.wait()  # the first request holds the key and is inside the view
        second = asyncio.ensure_future(post(client, "/shops/acme/orders/", {"ref": "a"}))
        await waited.wait()  # the duplicate found the claim and is waiting
        ASTATE.hold.set()
        return await first, await second

    first, second = site.run(scenario, WAIT=30, HOOKS=[hook])
    assert first.status_code == 201
    same_response(first, second)
    assert ASTATE.runs == ["async-function"]
    assert site.count() == 1


def test_async_concurrent_duplicate_gets_409_after_wait(site: Site) -> None:
    """A duplicate still finding the first request running after ``wait`` gets a 409 problem with
    ``Retry-After``; the first request then completes and stores its response."""

    async def scenario(client: AsyncClient) -> tuple[Any, Any, Any]:
        ASTATE.hold, ASTATE.started = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(post(client, "/shops/acme/orders/", {"ref": "a"}))
        await ASTATE.started.wait()
        second = await post(client, "/shops/acme/orders/", {"ref": "a"})
        ASTATE.hold.set()
        ASTATE.hold = None
        done = await first
        return done, second, await post(client, "/shops/acme/orders/", {"ref": "a"})

    first, second, replay = site.run(scenario, WAIT=0.2)
    assert second.status_code == 409
    assert problem(second)["type"].endswith("in-progress")
    assert int(second["Retry-After"]) >= 1
    assert first.status_code == 201
    same_response(first, replay)
    assert ASTATE.runs == ["async-function"]


def test_async_view_on_redis(site: Site) -> None:
    """The keys in Redis (a store that never joins a transaction): runs once and replays."""
    require(REDIS_URL, "Redis")

    async def scenario(client: AsyncClient) -> tuple[Any, Any]:
        first = await post(client, "/shops/acme/orders/", {"ref": "a"})
        return first, await post(client, "/shops/acme/orders/", {"ref": "a"})

    first, again = site.run(scenario, store="redis")
    assert first.status_code == 201
    same_response(first, again)
    assert ASTATE.runs == ["async-function"]
    assert site.key_rows() == []


# -- transaction mode --------------------------------------------------------------------------


def test_async_view_with_transaction_mode_asked_is_refused(site: Site) -> None:
    """``IDEMPOTENT['MODE'] = 'transaction'`` cannot hold for an async view: its request is a
    ConfigurationError naming the cause and the fix, and the view does not run. (The same
    option on the decorator of an async view fails when the module is imported.)"""

    path, fix = "/shops/acme/orders/", "Give the view mode='lease'"

    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(ConfigurationError) as info:
            await post(client, path, {"ref": "a"})
        message = str(info.value)
        assert "async view" in message and "transaction mode" in message and fix in message

    site.run(scenario, MODE="transaction")
    assert ASTATE.runs == []

    async def view(request: Any) -> HttpResponse:  # pragma: no cover - never runs
        return HttpResponse()

    with pytest.raises(ConfigurationError, match=r"async view.*mode='lease'"):
        idempotent_view(mode="transaction")(view)

    path, fix = "/aplain/1/", "Set IDEMPOTENT['MODE'] = 'lease'"
    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        site.run(scenario, MODE="transaction")  # the middleware, for an undecorated async view
    assert ASTATE.runs == []


def test_async_view_with_using_is_refused() -> None:
    """``using=`` names the Django database whose transaction the key joins; an async view has no
    such transaction, so the decorator refuses it (naming the fixes) instead of ignoring it."""

    async def view(request: Any) -> HttpResponse:  # pragma: no cover - never runs
        return HttpResponse()

    with pytest.raises(ConfigurationError) as info:
        idempotent_view(using="default")(view)
    message = str(info.value)
    assert "async view" in message and "using='default'" in message
    assert "store=SQLStore(engine)" in message and "def view" in message

    def sync_view(request: Any) -> HttpResponse:  # pragma: no cover - never runs
        return HttpResponse()

    assert callable(idempotent_view(using="default")(sync_view))  # a def view keeps using=


@pytest.mark.skipif(BEFORE_DJANGO_51, reason=NEEDS_51)
def test_manage_py_check_reports_async_views_that_cannot_run(site: Site) -> None:
    """``manage.py check`` finds what only async views would hit at their first keyed request:
    E002 for a decorated async function view, W001 (under ASGI only) for async views behind the
    middleware, each naming the fix; a configuration they can run with reports nothing."""

    def messages(**setting: Any) -> list[Any]:
        with override_settings(IDEMPOTENT={"DATABASE": site.alias, **setting}):
            return [m for m in checks.run_checks() if m.id.startswith("idempotent.")]

    lease_store = SQLStore(site.engine, site.keys.name)
    assert messages(STORE=lease_store) == []
    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        assert messages(STORE=lease_store) == []

    decorated = ["OrderDispatchView", "OrderView", "orders"]  # dispatch, post, a function view
    found = messages(MODE="transaction")
    assert [m.id for m in found] == ["idempotent.E002"] * 3
    assert sorted(m.msg.split(" ")[0].rsplit(".", 1)[1] for m in found) == decorated
    assert all("async view" in m.msg and "mode='lease'" in m.msg for m in found)

    atomic_store = SQLStore(None, site.keys.name)  # no engine: it cannot run lease mode
    found = messages(STORE=atomic_store)
    assert [m.id for m in found] == ["idempotent.E002"] * 3
    assert all("IDEMPOTENT['STORE']" in m.msg and "store=... on the view" in m.msg for m in found)

    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        found = messages(MODE="transaction")
    warnings = [m for m in found if m.id == "idempotent.W001"]
    assert len(warnings) == 1 and len(found) == 4
    assert "under ASGI" in warnings[0].msg and "django_async_urls.aplain " in warnings[0].msg
    assert "IDEMPOTENT['MODE'] = 'lease'" in warnings[0].msg
    assert not any(name in warnings[0].msg for name in decorated)  # those have their own E002


@pytest.mark.skipif(not BEFORE_DJANGO_51, reason="Django 5.1's method_decorator keeps async methods async")
def test_manage_py_check_reports_async_methods_made_sync_before_django_51(site: Site) -> None:
    """Before Django 5.1, ``manage.py check`` reports an async method under
    ``method_decorator(idempotent_view())`` (E002, naming the two fixes)."""
    store = SQLStore(site.engine, site.keys.name)
    with override_settings(IDEMPOTENT={"DATABASE": site.alias, "STORE": store}):
        found = [m for m in checks.run_checks() if m.id.startswith("idempotent.")]
    assert [m.id for m in found] == ["idempotent.E002"]
    assert "OrderView.post" in found[0].msg and "Django 5.1" in found[0].msg


def test_async_view_by_default_uses_lease_mode_on_the_store(site: Site) -> None:
    """Without a mode, on a Django database that supports transaction mode, an async view runs
    in lease mode: the claim is committed on the store before the view runs (visible on another
    connection while the view is held)."""
    seen: list[list[Any]] = []

    async def scenario(client: AsyncClient) -> Any:
        ASTATE.hold, ASTATE.started = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(post(client, "/shops/acme/orders/", {"ref": "a"}))
        await ASTATE.started.wait()
        seen.append(site.key_rows())
        ASTATE.hold.set()
        return await first

    assert site.run(scenario).status_code == 201
    assert len(seen[0]) == 1  # the claim, committed while the view was still running
    assert len(site.key_rows()) == 1


def test_async_view_without_a_lease_store_is_refused(site: Site) -> None:
    """With a store that cannot commit on its own (no engine), an async view's keyed request is a
    ConfigurationError naming the store to give."""

    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(ConfigurationError, match=r"lease mode.*IDEMPOTENT\['STORE'\]"):
            await post(client, "/shops/acme/orders/", {"ref": "a"})

    site.run(scenario, STORE=SQLStore(table=site.keys.name))
    assert ASTATE.runs == []


# -- the middleware ------------------------------------------------------------------------------


def test_middleware_is_async_in_an_async_stack() -> None:
    """Given an async ``get_response`` the middleware is a coroutine function; given a sync one it
    stays sync."""

    async def async_next(request: Any) -> Any:  # pragma: no cover - never called
        return None

    with override_settings(IDEMPOTENT={"STORE": SQLStore(sa.create_engine("sqlite://"))}):
        assert iscoroutinefunction(IdempotencyMiddleware(async_next))
        assert not iscoroutinefunction(IdempotencyMiddleware(lambda request: None))


def test_middleware_async_stack_guards_an_async_view(site: Site) -> None:
    """``IdempotencyMiddleware`` in an async stack: an undecorated async view runs once per key,
    the retry is replayed, another body is a 422, a refusal is not stored."""

    async def scenario(client: AsyncClient) -> list[Any]:
        return [
            await post(client, "/aplain/1/", {"ref": "a"}),
            await post(client, "/aplain/1/", {"ref": "a"}),
            await post(client, "/aplain/1/", {"ref": "b"}),
            await post(client, "/aplain/1/", {"ref": "c", "status": 403}, key="k-2"),
            await post(client, "/aplain/1/", {"ref": "c", "status": 403}, key="k-2"),
        ]

    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        first, again, other, refused, refused_again = site.run(scenario)
    assert first.status_code == 201
    same_response(first, again)
    assert other.status_code == 422
    assert refused.status_code == refused_again.status_code == 403
    assert ASTATE.runs == ["async-plain", "async-plain", "async-plain"]
    assert len(site.key_rows()) == 1


def test_middleware_async_stack_keeps_transaction_mode_for_a_sync_view(site: Site) -> None:
    """In an async stack a sync view still runs in transaction mode, on Django's connection (the
    store on the ``AsyncEngine`` only names the table): the key commits with its writes, so a
    view raising after its write leaves neither the row nor the key."""

    async def scenario(client: AsyncClient) -> list[Any]:
        with pytest.raises(Boom):
            await post(client, "/plain/1/", {"ref": "a", "fail": True})
        return [await post(client, "/plain/1/", {"ref": "a"}) for _ in range(2)]

    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        first, again = site.run(scenario)
    assert first.status_code == 201
    same_response(first, again)
    assert STATE.runs == ["plain", "plain"]
    assert site.count() == 1  # the failed run's row rolled back with its key
    assert len(site.key_rows()) == 1


def test_middleware_sync_stack_is_unchanged(site: Site) -> None:
    """With the sync ``Client`` (a sync stack) the middleware serves a sync view in transaction
    mode as before: once per key, replayed."""
    with override_settings(
        MIDDLEWARE=[MIDDLEWARE],
        IDEMPOTENT={"DATABASE": site.alias, "STORE": SQLStore(site.engine, site.keys.name)},
    ):
        client = Client()
        responses = [
            client.post("/plain/1/", data='{"ref": "a"}', content_type="application/json", headers={KEY: "s"})
            for _ in range(2)
        ]
    same_response(*responses)
    assert STATE.runs == ["plain"]
    assert site.count() == 1
