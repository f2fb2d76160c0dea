"""The Django app: with ``INSTALLED_APPS += ["idempotent.contrib.django"]``, ``manage.py migrate``
creates the keys table (see ``_schema``) and ``manage.py check`` validates the ``IDEMPOTENT``
setting and the configuration of async views."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.apps import AppConfig
from django.core import checks

from idempotent.errors import ConfigurationError


class IdempotentConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """``idempotent.contrib.django`` as an app, labelled ``idempotent``."""

    name = "idempotent.contrib.django"
    label = "idempotent"
    verbose_name = "Idempotency keys"

    def ready(self) -> None:
        checks.register(check_settings, checks.Tags.compatibility)


def check_settings(app_configs: Any = None, **_: Any) -> list[checks.CheckMessage]:
    """``manage.py check`` of the ``IDEMPOTENT`` setting and of the async views; each message
    names the fix.

    - ``idempotent.E001``: the setting, or the middleware, cannot work (an unknown entry, nowhere
      to keep keys, an option of the wrong kind).
    - ``idempotent.E002``: an async view under ``idempotent_view()`` (a function view, or a
      class-based view decorated on ``dispatch`` or a handler) cannot run: it needs lease mode (a
      store that commits on its own, no ``mode='transaction'``, no ``using=``), and before Django
      5.1 a decorated async handler method cannot work at all.
    - ``idempotent.W001``: with the middleware, requests for the URLconf's async views would fail
      under ASGI, where they run in lease mode (under WSGI they run as sync views do).
    """
    from django.conf import settings  # noqa: PLC0415 - after the app registry

    from idempotent.contrib.django._adapter import (  # noqa: PLC0415
        DJANGO_VERSION,
        MIDDLEWARE_OWNER,
        async_method_needs_django_51,
        resolve,
    )

    middleware = "idempotent.contrib.django.IdempotencyMiddleware"
    with_middleware = middleware in settings.MIDDLEWARE
    messages: list[checks.CheckMessage] = []
    if getattr(settings, "IDEMPOTENT", None) is not None or with_middleware:
        try:
            resolve("settings.IDEMPOTENT", {}, None)
        except ConfigurationError as exc:
            return [checks.Error(str(exc), id="idempotent.E001")]
    views = _views()
    if DJANGO_VERSION < (5, 1):
        messages += [
            checks.Error(str(async_method_needs_django_51(name)), id="idempotent.E002")
            for name in _async_methods_made_sync(views)
        ]
    async_views = [view for view in views if iscoroutinefunction(view)]
    plain = []
    for view in async_views:
        decorated = _decoration(view)
        if decorated is None:
            plain.append(view)
            continue
        try:
            resolve(_name(view), decorated.options, decorated.using, is_async=True)
        except ConfigurationError as exc:
            messages.append(checks.Error(str(exc), id="idempotent.E002"))
    if with_middleware and plain:
        try:
            resolve(MIDDLEWARE_OWNER, {}, None, is_async=True)
        except ConfigurationError as exc:
            names = ", ".join(sorted({_name(view) for view in plain}))
            messages.append(
                checks.Warning(
                    f"under ASGI, keyed requests for the async views {names} will fail: {exc}",
                    id="idempotent.W001",
                )
            )
    return messages


def _views() -> list[Any]:
    """The views of the project's URLconf; none when it cannot be loaded (Django's own checks
    report that)."""
    from django.urls import URLPattern, URLResolver, get_resolver  # noqa: PLC0415

    def walk(patterns: Any) -> Iterator[Any]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            elif isinstance(pattern, URLPattern):
                yield pattern.callback

    try:
        return list(walk(get_resolver().url_patterns))
    except Exception:  # an URLconf that does not import: Django's urls checks say why
        return []


def _handlers(view: Any) -> Iterator[tuple[Any, str, Any]]:
    """``(class, name, method)`` for each HTTP handler of a class-based view (none for a function)."""
    cls: Any = getattr(view, "view_class", None)
    for name in getattr(cls, "http_method_names", ()):
        handler = getattr(cls, name, None)
        if handler is not None:
            yield cls, name, handler


def _decoration(view: Any) -> Any:
    """The ``idempotent_view()`` configuration of a URLconf view; None when it has none. A
    class-based view carries it on ``dispatch`` (copied onto the ``as_view()`` function) or on a
    handler (``post``, ...) through ``method_decorator``, with the decorator's options."""
    found = getattr(view, "__idempotent_view__", None)
    if found is not None:
        return found
    for _, _, handler in _handlers(view):
        found = getattr(handler, "__idempotent_view__", None)
        if found is not None:
            return found
    return None


def _async_methods_made_sync(views: list[Any]) -> list[str]:
    """The async handlers of class-based views under ``method_decorator(idempotent_view())``
    that Django before 5.1 turned into sync methods."""
    found = {
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for view in views
        for cls, name, handler in _handlers(view)
        if getattr(handler, "__idempotent_view__", None) is not None
        and iscoroutinefunction(getattr(handler, "__wrapped__", None))
        and not iscoroutinefunction(handler)
    }
    return sorted(found)


def _name(view: Any) -> str:
    target = getattr(view, "view_class", view)
    return f"{target.__module__}.{target.__qualname__}"
