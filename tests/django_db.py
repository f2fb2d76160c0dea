"""Django, configured once per process, and the test databases as Django database aliases.

Shared by the Celery tasks that write through the Django ORM and the Django view tests, so
whichever runs first configures Django and the others add their aliases to the same settings.
Anything else a suite needs (URLconf, middleware) it sets with ``override_settings``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from idempotent.schema import make_table

#: The apps every suite gets; the keys' app itself is among them, so its start-up runs here.
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "idempotent.contrib.django",
]


def configure() -> None:
    """Configure Django for this process, once: no database yet (each suite adds its aliases)."""
    import django  # only the suites that use Django need it
    from django.conf import settings

    if not settings.configured:
        settings.configure(DATABASES={}, USE_TZ=True, INSTALLED_APPS=INSTALLED_APPS, SECRET_KEY="tests-only")  # noqa: S106
        django.setup()


def django_alias(url: str) -> str:
    """Make the database at ``url`` a Django alias (configuring Django on first use); return the alias."""
    from django.db import connections

    configure()
    parsed = sa.make_url(url)
    alias = f"idem_{uuid.uuid5(uuid.NAMESPACE_URL, url).hex[:10]}"
    if alias in connections.settings:
        return alias
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database}
    else:
        if backend != "postgresql":
            import pymysql

            pymysql.install_as_MySQLdb()  # Django's MySQL backend on PyMySQL, the driver the tests use
        database = {
            "ENGINE": f"django.db.backends.{'postgresql' if backend == 'postgresql' else 'mysql'}",
            "NAME": parsed.database,
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
        }
    connections.settings[alias] = connections.configure_settings({"default": {}, alias: database})[alias]
    return alias


@contextlib.contextmanager
def order_tables(url: str, app_label: str, module: str) -> Iterator[tuple[str, Any, sa.Table, sa.Engine]]:
    """The database at ``url`` as a Django alias, with a fresh orders model (``ref``, ``amount``)
    of ``app_label`` defined in ``module`` and a fresh keys table, both dropped afterwards.
    Yields the alias, the model, the keys table and a SQLAlchemy engine on the database."""
    from django.db import connections, models

    alias = django_alias(url)
    suffix = uuid.uuid4().hex[:10]
    meta = type("Meta", (), {"app_label": app_label, "db_table": f"dj_orders_{suffix}"})
    fields = {"ref": models.CharField(max_length=100), "amount": models.IntegerField()}
    order = type(f"Order{suffix}", (models.Model,), {"__module__": module, "Meta": meta, **fields})
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    keys = make_table(metadata, f"idem_keys_{suffix}")
    metadata.create_all(engine)
    with connections[alias].schema_editor() as editor:
        editor.create_model(order)
    try:
        yield alias, order, keys, engine
    finally:
        with connections[alias].schema_editor() as editor:
            editor.delete_model(order)
        connections[alias].close()
        metadata.drop_all(engine)
        engine.dispose()
