"""The keys table in a Django database: what the app's migration runs.

The statements are those of ``idempotent migrate`` (the library's own Alembic revisions,
rendered offline for the connection's database), version table included, so the table can be
upgraded later by either tool.
"""

from __future__ import annotations

from typing import Any

from idempotent import decorator
from idempotent.contrib.django._adapter import SUPPORTED_VENDORS, setting_options
from idempotent.migrate import upgrade_sql, version_table_name

_URLS = {"sqlite": "sqlite://", "postgresql": "postgresql://", "mysql": "mysql://"}


def keys_table() -> tuple[str, str | None]:
    """The keys table's name and schema: ``IDEMPOTENT['STORE']``'s table, else the ``configure`` one."""
    store = setting_options().get("store") or decorator.default_store()
    table = getattr(store, "table", None)
    if table is None:  # a store without a SQL table (Redis): the default name
        return "idempotency_keys", None
    return str(table.name), table.schema


def _statements(script: str) -> list[str]:
    statements = []
    for chunk in script.split(";\n"):
        lines = [line for line in chunk.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        text = "\n".join(lines).strip()
        if text and text.upper() not in ("BEGIN", "COMMIT"):
            statements.append(text)
    return statements


def create(schema_editor: Any) -> None:
    """Create the keys table on the migrated database, unless it exists (``idempotent migrate``
    made it) or the database is not one the library supports."""
    connection = schema_editor.connection
    if connection.vendor not in SUPPORTED_VENDORS:
        return
    name, schema = keys_table()
    if schema is None and name in connection.introspection.table_names():
        return
    url = _URLS[connection.vendor]
    if connection.vendor == "mysql" and getattr(connection, "mysql_is_mariadb", False):
        url = "mariadb://"
    for statement in _statements(upgrade_sql(url, table=name, schema=schema)):
        schema_editor.execute(statement)


def drop(schema_editor: Any) -> None:
    """Drop the keys table and its version table (``manage.py migrate idempotent zero``)."""
    connection = schema_editor.connection
    if connection.vendor not in SUPPORTED_VENDORS:
        return
    name, schema = keys_table()
    quote = connection.ops.quote_name
    prefix = f"{quote(schema)}." if schema else ""
    for table in (name, version_table_name(name)):
        schema_editor.execute(f"DROP TABLE IF EXISTS {prefix}{quote(table)}")
