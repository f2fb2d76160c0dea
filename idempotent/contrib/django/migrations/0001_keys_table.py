"""The keys table, created by ``manage.py migrate`` in each database it migrates."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import migrations

from idempotent.contrib.django import _schema


def create(apps: Any, schema_editor: Any) -> None:
    _schema.create(schema_editor)


def drop(apps: Any, schema_editor: Any) -> None:
    _schema.drop(schema_editor)


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no type information
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    # Not in a transaction of its own: MySQL/MariaDB cannot roll DDL back and refuse it inside one.
    operations: ClassVar[list[Any]] = [migrations.RunPython(create, drop, atomic=False)]
