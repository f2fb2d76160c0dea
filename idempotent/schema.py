"""The version-1 keys table, attached to the user's own metadata.

One row per ``(scope, key)``. Times are BIGINT epoch milliseconds (UTC) read from the
database server's clock, never ``DateTime`` (which round-trips differently per database).
On MySQL/MariaDB the key columns are binary, no-pad utf8mb4 so that keys differing only in
case, accent or trailing space stay distinct whatever the server's default collation is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

__all__ = ["DEFAULT_TABLE", "SCHEMA_VERSION", "KeyString", "make_table"]

DEFAULT_TABLE = "idempotency_keys"
SCHEMA_VERSION = 1

#: Column lengths shared by the table, the key rules and the migrations.
KEY_LENGTH = 255
FINGERPRINT_LENGTH = 80
STATUS_LENGTH = 16
OWNER_LENGTH = 64
CODEC_LENGTH = 32
ERROR_TYPE_LENGTH = 255

MARIADB_KEY_COLLATION = "utf8mb4_nopad_bin"
MYSQL_KEY_COLLATION = "utf8mb4_0900_bin"


class KeyString(sa.types.TypeDecorator[str]):
    """``VARCHAR(255)``; on MySQL/MariaDB binary, no-pad utf8mb4 (chosen per server, not per URL)."""

    impl = sa.String(KEY_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            collation = (
                MARIADB_KEY_COLLATION if getattr(dialect, "is_mariadb", False) else MYSQL_KEY_COLLATION
            )
            return dialect.type_descriptor(mysql.VARCHAR(KEY_LENGTH, charset="utf8mb4", collation=collation))
        return dialect.type_descriptor(sa.String(KEY_LENGTH))


def result_text() -> sa.types.TypeEngine[str]:
    """TEXT, LONGTEXT on MySQL and MariaDB under either dialect name (TEXT there holds only 64 KB)."""
    return sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def make_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE, schema: str | None = None) -> sa.Table:
    """Return the keys table attached to ``metadata`` (so Alembic autogenerate sees it).

    Calling it twice for the same name and schema returns the table already attached.
    """
    full = f"{schema}.{name}" if schema else name
    existing = metadata.tables.get(full)
    if existing is not None:
        return existing
    return sa.Table(
        name,
        metadata,
        sa.Column("scope", KeyString(), primary_key=True, nullable=False),
        sa.Column("key", KeyString(), primary_key=True, nullable=False),
        sa.Column("fingerprint", sa.String(FINGERPRINT_LENGTH), nullable=True),
        sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),
        sa.Column("owner", sa.String(OWNER_LENGTH), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("result_codec", sa.String(CODEC_LENGTH), nullable=True),
        sa.Column("result", result_text(), nullable=True),
        sa.Column("error_type", sa.String(ERROR_TYPE_LENGTH), nullable=True),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
        schema=schema,
        mysql_charset="utf8mb4",
        mariadb_charset="utf8mb4",
        comment=f"idempotent keys table, schema version {SCHEMA_VERSION}",
    )
