"""``IdempotencyMiddleware``: every view of a Django project under the ``Idempotency-Key`` contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import Resolver404, resolve

from idempotent.contrib.django import _adapter
from idempotent.errors import ConfigurationError

__all__ = ["IdempotencyMiddleware"]


def _route(request: Any) -> str | None:
    """The route template the request resolves to (``orders/<int:pk>/``); None when none matches."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return None
    return str(match.route) if match.route else None


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

    Sync only: under ASGI Django runs it (and the views after it) in a thread, as it does for
    every sync middleware.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        if not callable(get_response):
            raise ConfigurationError(
                "IdempotencyMiddleware is a Django middleware: list "
                "'idempotent.contrib.django.IdempotencyMiddleware' in settings.MIDDLEWARE"
            )
        self.get_response = get_response
        self._resolved = _adapter.Resolved(type(self).__qualname__, {"name": type(self).__qualname__}, None)
        self._resolved.get()  # a wrong setting fails when Django loads the middleware

    def __call__(self, request: Any) -> Any:
        config = self._resolved.get()
        policy = config.policy
        pairs = _adapter.header_pairs(request, policy.header)
        if not policy.applies(str(request.method), pairs):
            return self.get_response(request)
        setattr(request, _adapter.MARK, "IdempotencyMiddleware")
        _adapter.check_atomic_requests(config, "IdempotencyMiddleware", view_started=False)
        described = _adapter.describe(request, policy, pairs, _route(request), request)

        def call() -> Any:
            return _adapter.rendered(self.get_response(request), request)

        return _adapter.run(config, described, call, "IdempotencyMiddleware")
