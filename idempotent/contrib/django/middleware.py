"""``IdempotencyMiddleware``: every view of a Django project under the ``Idempotency-Key`` contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.urls import Resolver404, resolve

from idempotent.contrib.django import _adapter
from idempotent.errors import ConfigurationError

__all__ = ["IdempotencyMiddleware"]

_UNMATCHED: Any = object()


def _match(request: Any) -> Any:
    """The ``ResolverMatch`` of the request's path; None when no URL pattern matches."""
    try:
        return resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return None


def _route(match: Any) -> str | None:
    """The route template of a match (``orders/<int:pk>/``); None without one."""
    return str(match.route) if match is not None and match.route else None


class IdempotencyMiddleware:
    """Run each request carrying an ``Idempotency-Key`` once; add it to ``MIDDLEWARE``.

    ``MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
    "idempotent.contrib.django.IdempotencyMiddleware", ...]`` (below the middleware that sets
    what ``principal_from`` reads). Its options are the ``IDEMPOTENT`` setting's entries
    (``DATABASE``, ``MODE``, ``STORE``, ``TTL_SECONDS``, ``PRINCIPAL_FROM``, ``REQUIRED``, ...).

    Transaction mode (the default on SQLite, PostgreSQL and MySQL/MariaDB) runs the rest of the
    chain, the view included, inside ``transaction.atomic()`` on ``IDEMPOTENT['DATABASE']`` (default
    ``'default'``), so the key and the stored response commit with the view's writes; a view
    under ``ATOMIC_REQUESTS`` runs in a savepoint of it. Lease mode (``'MODE': 'lease'``, or a
    store that cannot join a transaction) claims on the store first and stores the response
    after. The scope's route is the URL pattern the request resolves to; ``principal_from`` is
    called with the ``HttpRequest``.

    Sync and async: in an async middleware stack (ASGI, every middleware async-capable) a request
    for an ``async def`` view runs in lease mode, as ``idempotent_view`` does on one (Django's
    transactions cannot span an async view; an explicit ``'MODE': 'transaction'`` is a
    ConfigurationError for it); a request for a sync view in transaction mode runs in a thread,
    the view included, as Django runs a sync-only middleware, so its key still commits with the
    view's writes.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        if not callable(get_response):
            raise ConfigurationError(
                "IdempotencyMiddleware is a Django middleware: list "
                "'idempotent.contrib.django.IdempotencyMiddleware' in settings.MIDDLEWARE"
            )
        self.get_response = get_response
        owner = _adapter.MIDDLEWARE_OWNER
        self._resolved = _adapter.Resolved(owner, {"name": owner}, None)
        self._resolved_async = _adapter.Resolved(owner, {"name": owner}, None, is_async=True)
        self._resolved.get()  # a wrong setting fails when Django loads the middleware
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._serve_async(request)
        return self._serve(request, self.get_response)

    def _serve(self, request: Any, get_response: Callable[[Any], Any], match: Any = _UNMATCHED) -> Any:
        config = self._resolved.get()
        policy = config.policy
        pairs = _adapter.header_pairs(request, policy.header)
        if not policy.applies(str(request.method), pairs):
            return get_response(request)
        setattr(request, _adapter.MARK, "IdempotencyMiddleware")
        _adapter.check_atomic_requests(config, "IdempotencyMiddleware", view_started=False)
        route = _route(_match(request) if match is _UNMATCHED else match)
        described = _adapter.describe(request, policy, pairs, route, request)

        def call() -> Any:
            return _adapter.rendered(get_response(request), request)

        return _adapter.run(config, described, call, "IdempotencyMiddleware")

    async def _serve_async(self, request: Any) -> Any:
        config = self._resolved.get()
        policy = config.policy
        pairs = _adapter.header_pairs(request, policy.header)
        if not policy.applies(str(request.method), pairs):
            return await self.get_response(request)
        match = _match(request)
        if config.using is not None:
            if match is None or not iscoroutinefunction(match.func):
                # Transaction mode for a sync view: the rest of the chain in one thread, as Django
                # runs a sync-only middleware, so the view's ORM writes share the transaction.
                serve = sync_to_async(self._serve, thread_sensitive=True)
                return await serve(request, async_to_sync(self.get_response), match)
            config = self._resolved_async.get()
        setattr(request, _adapter.MARK, "IdempotencyMiddleware")
        # in a thread: principal_from may read request.user, a lazy ORM query
        describe = sync_to_async(_adapter.describe)
        described = await describe(request, config.policy, pairs, _route(match), request)

        async def call() -> Any:
            return _adapter.rendered(await self.get_response(request), request)

        return await _adapter.run_async(config, described, call)
