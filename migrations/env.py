"""Alembic environment for the keys table on its own (``idempotent migrate``).

Projects with an Alembic environment of their own never run this file: they list the
library's ``versions`` directory in their ``version_locations`` and their ``env.py`` runs
the revisions. This one records the applied revision in a version table named after the
keys table (``<table>_version``, in the keys table's schema), never in ``alembic_version``.

:mod:`idempotent.migrate` hands over an open connection (or, for ``--sql``, the URL) in
``config.attributes``; run directly by ``alembic``, it connects to ``sqlalchemy.url``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from idempotent.migrate import target, version_table_name

config = context.config
table, schema = target(config)
version_table = version_table_name(table)


def run_online(connection: sa.Connection) -> None:
    context.configure(connection=connection, version_table=version_table, version_table_schema=schema)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("set sqlalchemy.url to produce SQL for a database")
        context.configure(
            url=url, literal_binds=True, version_table=version_table, version_table_schema=schema
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run_online(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url to migrate a database")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            run_online(connection)
    finally:
        engine.dispose()


main()
