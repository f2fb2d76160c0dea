"""``@idempotent_view()``: Django views (and Django REST framework views) with the
``Idempotency-Key`` contract."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from typing_extensions import Unpack

from idempotent.contrib.django import _adapter
from idempotent.errors import ConfigurationError
from idempotent.http import HTTPRequest, Policy, PolicyOptions

__all__ = ["idempotent_view"]

F = TypeVar("F", bound=Callable[..., Any])


def idempotent_view(
    *args: Any, using: str | None = None, **options: Unpack[PolicyOptions]
) -> Callable[[F], F]:
    """Make a Django view idempotent per request: ``@idempotent_view()``.

    On a function view put it below ``@api_view``/``@require_POST`` and the like (any order
    works) and above nothing that replaces the request. On a class-based view use Django's
    ``method_decorator``: ``@method_decorator(idempotent_view())`` on ``post``/``put``/...,
    or ``@method_decorator(idempotent_view(), name="dispatch")`` on the class.

    ``using``: the Django database whose transaction the key joins (default
    ``IDEMPOTENT['DATABASE']``, else ``'default'``). ``options`` are those of
    :class:`idempotent.http.Policy` (``principal_from``, called with the request the view
    receives; ``required``; ``mode``; ``store``; ``ttl``; ``wait``; ...), over the
    ``IDEMPOTENT`` setting's entries. Transaction mode (the default on SQLite, PostgreSQL and
    MySQL/MariaDB) runs the view inside ``transaction.atomic(using=...)``, or in a savepoint of
    the one ``ATOMIC_REQUESTS`` opened, with the key's statements on Django's own connection.

    An ``async def`` view runs in lease mode (Django's transactions cannot span an async view):
    the claim commits at once on the store (``IDEMPOTENT['STORE']``, ``store=`` or the
    ``configure`` engine; an ``AsyncEngine`` is awaited, a sync engine runs in a thread), is
    renewed while the view runs, and the response is stored after it returns. Without the mode
    set it switches to lease mode; an explicit ``mode='transaction'`` or ``using=`` is a
    ConfigurationError.
    """
    if args:
        raise ConfigurationError(
            "idempotent_view is a decorator factory: write @idempotent_view() with parentheses "
            "(or @method_decorator(idempotent_view()) on a class-based view's method)"
        )
    Policy.from_options("idempotent_view", {"mode": "lease", **options}, also=["using"])  # fails here

    def decorate(view: F) -> F:
        if isinstance(view, type):
            raise ConfigurationError(
                f"idempotent_view() cannot decorate the class {view.__qualname__} itself: write "
                '@method_decorator(idempotent_view(), name="dispatch") above the class, or '
                "@method_decorator(idempotent_view()) above its post/put/patch/delete methods"
            )
        owner = f"{view.__module__}.{view.__qualname__}"
        on_handler = getattr(view, "__name__", None) != "dispatch"  # a function view or a handler method
        is_async = iscoroutinefunction(view) or _async_dispatch(view)
        if is_async:
            _adapter.refuse_async(owner, options, using)  # a ConfigurationError at import time
            if _sync_method_wrapper(view):
                raise _adapter.async_method_needs_django_51(owner)
        resolved = _adapter.Resolved(owner, {"name": owner, **options}, using, is_async=is_async)
        guarded = f"idempotent_view on {view.__qualname__}"

        def enter(request: Any) -> tuple[_adapter.Config, HTTPRequest] | None:
            """The configuration and the described request of a keyed request; None to run the
            view as is."""
            http_request = _adapter.http_request_of(request)
            if http_request is None:
                raise ConfigurationError(
                    f"{view.__qualname__} received {type(request).__name__} where a request belongs: on a "
                    "method of a class-based view write @method_decorator(idempotent_view()) (from "
                    "django.utils.decorators), not @idempotent_view() alone"
                )
            config = resolved.get()
            policy = config.policy
            pairs = _adapter.header_pairs(http_request, policy.header)
            if not policy.applies(str(http_request.method), pairs):
                return None
            if getattr(http_request, _adapter.MARK, None) is not None:
                if on_handler and getattr(http_request, _adapter.MARK_HANDLER, False):
                    # A guarded handler calling another (DRF's partial_update calls update): the
                    # outer guard already runs this request once.
                    return None
                raise ConfigurationError(
                    f"{view.__qualname__} is guarded twice for one request ("
                    f"{getattr(http_request, _adapter.MARK)} already claimed its key): keep one of "
                    "IdempotencyMiddleware, idempotent_view on dispatch, idempotent_view on the method"
                )
            setattr(http_request, _adapter.MARK, guarded)
            setattr(http_request, _adapter.MARK_HANDLER, on_handler)
            _adapter.check_atomic_requests(config, "idempotent_view", view_started=True)
            match = getattr(http_request, "resolver_match", None)
            route = getattr(match, "route", None) if match is not None else None
            return config, _adapter.describe(http_request, policy, pairs, route, request)

        if is_async:

            @functools.wraps(view)
            async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                # in a thread: principal_from may read request.user, a lazy ORM query
                entered = await sync_to_async(enter)(request)
                if entered is None:
                    return await view(request, *args, **kwargs)
                config, described = entered

                async def call() -> Any:
                    return _adapter.rendered(await view(request, *args, **kwargs), request)

                return await _adapter.run_async(config, described, call)

            async_wrapper.__idempotent_view__ = resolved  # type: ignore[attr-defined]
            return cast("F", async_wrapper)

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
            entered = enter(request)
            if entered is None:
                return view(request, *args, **kwargs)
            config, described = entered

            def call() -> Any:
                return _adapter.rendered(view(request, *args, **kwargs), request)

            return _adapter.run(config, described, call, guarded)

        wrapper.__idempotent_view__ = resolved  # type: ignore[attr-defined]
        return cast("F", wrapper)

    return decorate


def _sync_method_wrapper(view: Callable[..., Any]) -> bool:
    """Whether ``view`` is an async method handed over by a ``method_decorator`` that makes it
    sync (Django before 5.1): Django would then get the coroutine back instead of a response."""
    return (
        _adapter.DJANGO_VERSION < (5, 1)
        and isinstance(view, functools.partial)
        and inspect.ismethod(view.func)
        and iscoroutinefunction(view.func)
    )


def _async_dispatch(view: Callable[..., Any]) -> bool:
    """Whether ``view`` is the ``dispatch`` of an async class-based view, as ``method_decorator``
    hands it over (a partial of the bound method): a sync method returning the async handler's
    coroutine."""
    if getattr(view, "__name__", None) != "dispatch":
        return False
    instance = getattr(getattr(view, "func", None), "__self__", None)
    return bool(getattr(type(instance), "view_is_async", False))
