"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Write every type, length and option out literally: never call ``make_table()`` or other
library code that describes the schema, so that later releases cannot rewrite history.
Only the table's name and schema come from ``target()``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
${imports if imports else ""}
from idempotent.migrate import target

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    table, schema = target(context.config)
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    table, schema = target(context.config)
    ${downgrades if downgrades else "pass"}
