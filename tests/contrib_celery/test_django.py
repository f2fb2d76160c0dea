"""Celery tasks writing through the Django ORM: the key's statements run on Django's connection
inside ``transaction.atomic()``, so they commit and roll back with the ORM's writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from idempotent import SQLStore
from idempotent.contrib.celery import idempotent_task
from tests.services import DATABASES, database_urls

pytest.importorskip("django")

from django.db import connections, models, transaction

from tests.django_db import order_tables


class DjangoDb:
    """A Django database alias with an order model and a keys table of random names."""

    def __init__(self, alias: str, order: type[models.Model], store: SQLStore) -> None:
        self.alias = alias
        self.order = order
        self.store = store

    def count(self, ref: str) -> int:
        return int(self.order.objects.using(self.alias).filter(ref=ref).count())

    def keys(self) -> int:
        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {self.store.table.name}")
            return int(cursor.fetchone()[0])


@pytest.fixture(params=DATABASES)
def djdb(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[DjangoDb]:
    """Each database as a Django alias (PostgreSQL through psycopg, MariaDB through PyMySQL)."""
    url, _ = database_urls(request.param, tmp_path)
    with order_tables(url, "idem_celery_tests", __name__) as (alias, order, keys, _):
        yield DjangoDb(alias, order, SQLStore(None, keys.name))


def _task(djdb: DjangoDb, fail_first: bool = False) -> Any:
    app = Celery(f"dj-{uuid.uuid4().hex[:6]}", set_as_current=False)
    runs: list[str] = []

    @app.task(bind=True, name="tests.django.place")
    @idempotent_task(key_from="ref", django=djdb.alias, store=djdb.store, scope="tests.django.place")
    def place(self: Any, ref: str, amount: int) -> dict[str, Any]:
        runs.append(ref)
        order = djdb.order.objects.using(djdb.alias).create(ref=ref, amount=amount)
        if fail_first and len(runs) == 1:
            raise ConnectionError("the warehouse API timed out")
        return {"order_id": order.pk, "ref": ref}

    place.runs = runs
    return place


def test_django_orm_write_once_and_replay(djdb: DjangoDb) -> None:
    """Two runs with one key: the ORM row and the key commit together once, the second run replays."""
    place = _task(djdb)
    first = place.apply(kwargs={"ref": "d-1", "amount": 4}).get()
    second = place.apply(kwargs={"ref": "d-1", "amount": 4}).get()
    assert first == second
    assert place.runs == ["d-1"]
    assert djdb.count("d-1") == 1
    assert djdb.keys() == 1


def test_django_failure_rolls_back_the_write_with_the_key(djdb: DjangoDb) -> None:
    """The body raises after its ORM write: row and key roll back together, and the next run writes once."""
    place = _task(djdb, fail_first=True)
    assert place.apply(kwargs={"ref": "d-2", "amount": 4}).state == "FAILURE"
    assert djdb.count("d-2") == 0
    assert djdb.keys() == 0
    assert place.apply(kwargs={"ref": "d-2", "amount": 4}).get()["ref"] == "d-2"
    assert djdb.count("d-2") == 1


def test_django_inside_the_callers_atomic_block(djdb: DjangoDb) -> None:
    """Run inside the caller's atomic(): the key joins it, so the caller's rollback takes both away."""
    place = _task(djdb)

    class Abort(Exception):
        pass

    seen: list[int] = []

    def unit_of_work() -> None:
        with transaction.atomic(using=djdb.alias):
            place.apply(kwargs={"ref": "d-3", "amount": 1}).get()
            seen.append(djdb.count("d-3"))
            raise Abort

    with pytest.raises(Abort):
        unit_of_work()
    assert seen == [1]
    assert djdb.count("d-3") == 0
    assert djdb.keys() == 0
    place.apply(kwargs={"ref": "d-3", "amount": 1}).get()
    assert place.runs == ["d-3", "d-3"]
    assert djdb.count("d-3") == 1
