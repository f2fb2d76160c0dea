"""Create the idempotency keys table (schema version 1).

Revision ID: 90375989d197
Revises:
Create Date: 2025-11-23

The root of the ``idempotent`` branch. Everything is written out literally: this file must
keep creating the same table whatever later releases change in ``idempotent.schema``.
Only the table's name and schema come from ``target()`` (``-x idempotent_table=NAME``,
``-x idempotent_schema=NAME``).

On MySQL and MariaDB the key columns are binary, no-pad utf8mb4, chosen per server:
``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8. A ``mysql+pymysql://``
URL to a MariaDB server has the dialect name ``mysql``: the server is told by ``is_mariadb``
(offline, ``--sql``, only a ``mariadb://`` URL says MariaDB).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from idempotent.migrate import target

revision = "90375989d197"
down_revision = None
branch_labels = ("idempotent",)
depends_on = None


def _key_string() -> sa.types.TypeEngine[str]:
    dialect = op.get_context().dialect
    if dialect.name in ("mysql", "mariadb"):
        collation = "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
        return mysql.VARCHAR(255, charset="utf8mb4", collation=collation)
    return sa.String(255)


def upgrade() -> None:
    table, schema = target(context.config)
    op.create_table(
        table,
        sa.Column("scope", _key_string(), nullable=False),
        sa.Column("key", _key_string(), nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("result_codec", sa.String(32), nullable=True),
        sa.Column("result", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=True),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("scope", "key"),
        schema=schema,
        comment="idempotent keys table, schema version 1",
        mysql_charset="utf8mb4",
        mariadb_charset="utf8mb4",
    )
    op.create_index(f"ix_{table}_expires_at", table, ["expires_at"], schema=schema)


def downgrade() -> None:
    table, schema = target(context.config)
    op.drop_index(f"ix_{table}_expires_at", table_name=table, schema=schema)
    op.drop_table(table, schema=schema)
