"""The Django app: with ``INSTALLED_APPS += ["idempotent.contrib.django"]``, ``manage.py migrate``
creates the keys table (see ``_schema``) and ``manage.py check`` validates the ``IDEMPOTENT``
setting."""

from __future__ import annotations

from typing import Any

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
    """``idempotent.E001`` when the ``IDEMPOTENT`` setting, or the middleware, cannot work (an
    unknown entry, nowhere to keep keys, an option of the wrong kind); the message names the fix."""
    from django.conf import settings  # noqa: PLC0415 - after the app registry

    from idempotent.contrib.django._adapter import resolve  # noqa: PLC0415

    middleware = "idempotent.contrib.django.IdempotencyMiddleware"
    if getattr(settings, "IDEMPOTENT", None) is None and middleware not in settings.MIDDLEWARE:
        return []
    try:
        resolve("settings.IDEMPOTENT", {}, None)
    except ConfigurationError as exc:
        return [checks.Error(str(exc), id="idempotent.E001")]
    return []
