"""Django views, Django REST framework views and the Django middleware, end to end.

Requests go through Django's test ``Client`` (DRF's ``APIClient`` for DRF views) to the views of
tests/contrib/django_urls.py, which write an order row through the Django ORM on SQLite,
PostgreSQL and MariaDB (each a Django database alias built from the same URLs as the other
tests). Transaction mode is the default: the key is written on Django's own connection, so it
commits and rolls back with the order row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytest.importorskip("django")
pytest.importorskip("rest_framework")

import tests.contrib.django_settings  # noqa: F401  (configures Django before DRF is imported)

# isort: split
from django.core import checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings
from django.test.client import encode_multipart
from rest_framework.test import APIClient

from idempotent import SQLStore, migrate
from idempotent.contrib.django import idempotent_view
from idempotent.errors import ConfigurationError, TableMissing
from tests.contrib.django_urls import STATE, Boom
from tests.django_db import django_alias, order_tables
from tests.services import DATABASES, database_urls

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MIDDLEWARE = "idempotent.contrib.django.IdempotencyMiddleware"


def principal(request: Any) -> str | None:
    """The caller, from a header (works on Django's and DRF's requests alike)."""
    return request.headers.get("X-Account")


@dataclass
class Site:
    """One database under test: a Django alias, its order model and keys table."""

    name: str
    alias: str
    order: Any
    keys: sa.Table
    engine: sa.Engine
    settings: dict[str, Any]

    def count(self) -> int:
        """Order rows, read through Django."""
        return int(self.order.objects.using(self.alias).count())

    def key_rows(self) -> list[Any]:
        """Rows of the keys table, read on a fresh connection."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.keys)).all())

    def idempotent(self, **entries: Any) -> dict[str, Any]:
        """The IDEMPOTENT setting of this site with ``entries`` changed."""
        return {**self.settings["IDEMPOTENT"], **entries}


@pytest.fixture(params=DATABASES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """Each database as a Django alias, with fresh order and keys tables, and the test URLconf."""
    url, _ = database_urls(request.param, tmp_path)
    with order_tables(url, "idem_view_tests", __name__) as (alias, order, keys, engine):
        STATE.reset(alias, order)
        values = {
            "ROOT_URLCONF": "tests.contrib.django_urls",
            "MIDDLEWARE": [],
            "ALLOWED_HOSTS": ["testserver"],
            "IDEMPOTENT": {
                "DATABASE": alias,
                "STORE": SQLStore(engine, keys.name),
                "PRINCIPAL_FROM": principal,
            },
        }
        override = override_settings(**values)
        override.enable()
        try:
            yield Site(request.param, alias, order, keys, engine, values)
        finally:
            override.disable()
            connections[alias].settings_dict["ATOMIC_REQUESTS"] = False
            connections[alias].settings_dict["OPTIONS"] = {}


def post(client: Any, path: str, body: dict[str, Any], key: str | None = "k-1", **headers: str) -> Any:
    """POST ``body`` as JSON with the key header (None: without it)."""
    if key is not None:
        headers[KEY] = key
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def problem(response: Any) -> dict[str, Any]:
    """The problem document of an error response (checking its media type)."""
    assert response["Content-Type"] == "application/problem+json"
    return dict(json.loads(response.content))


# -- the request contract ------------------------------------------------------------------------


def test_first_request_runs_once_and_a_retry_replays_it(site: Site) -> None:
    """A retry gets the first response again (status, body, headers) plus Idempotent-Replayed,
    without running the view: one order row, one key row; the cookie is never replayed."""
    first = post(Client(), "/shops/north/orders/", {"ref": "a-1"})
    retry = post(Client(), "/shops/north/orders/", {"ref": "a-1"})
    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert json.loads(first.content)["where"] == "function"
    for name in ("Content-Type", "Location", "X-Run"):
        assert retry[name] == first[name]
    assert REPLAYED not in first
    assert retry[REPLAYED] == "true"
    assert "session_hint" in first.cookies
    assert "session_hint" not in retry.cookies
    assert STATE.runs == ["function"]
    assert site.count() == 1
    [row] = site.key_rows()
    assert row.status == "completed"
    assert row.scope == "http POST shops/<str:shop>/orders/"  # the route template, not the path


def test_frequent_retries_read_the_stored_response_first(site: Site) -> None:
    """Once most requests to a view are retries, a retry on SQLite or MySQL/MariaDB reads the
    stored response with one SELECT on Django's connection, outside any transaction, instead of
    claiming the key (PostgreSQL claims as before); the replay and the 422 are unchanged."""
    path = "/shops/north/orders/"
    first = post(Client(), path, {"ref": "a-1"})
    for _ in range(4):
        assert post(Client(), path, {"ref": "a-1"}).content == first.content
    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql.split(maxsplit=1)[0].upper())
        return execute(sql, params, many, context)

    with connections[site.alias].execute_wrapper(record):
        retry = post(Client(), path, {"ref": "a-1"})
    reused = post(Client(), path, {"ref": "a-2"})
    assert retry.status_code == 201 and retry.content == first.content and retry[REPLAYED] == "true"
    assert reused.status_code == 422
    if site.name != "postgresql":
        assert sent == ["SELECT"], sent
    else:  # the claim: an INSERT (a CTE around it on PostgreSQL)
        assert {"INSERT", "WITH"} & set(sent), sent
    assert not connections[site.alias].in_atomic_block
    assert STATE.runs == ["function"]
    assert (site.count(), len(site.key_rows())) == (1, 1)


def test_same_key_with_another_body_or_path_is_422(site: Site) -> None:
    """The same key with another body, or on another path of the same route, is a 422 problem and
    never runs the view."""
    post(Client(), "/shops/north/orders/", {"ref": "a-1"})
    other_body = post(Client(), "/shops/north/orders/", {"ref": "a-2"})
    other_path = post(Client(), "/shops/south/orders/", {"ref": "a-1"})
    for response in (other_body, other_path):
        assert response.status_code == 422
        assert problem(response)["type"].endswith("key-reused")
    assert STATE.runs == ["function"]
    assert site.count() == 1


def test_key_errors_are_400_problems(site: Site) -> None:
    """No key where one is required, a repeated header (Django joins it with a comma) and an
    over-long key are 400 problems; nothing runs."""
    missing = post(Client(), "/required/", {"ref": "m"}, key=None)
    assert missing.status_code == 400
    assert problem(missing)["type"].endswith("missing-key")
    repeated = post(Client(), "/required/", {"ref": "m"}, key="k-1, k-2")
    assert repeated.status_code == 400
    assert "appears 2 times" in problem(repeated)["detail"]
    too_long = post(Client(), "/required/", {"ref": "m"}, key="x" * 256)
    assert too_long.status_code == 400
    assert problem(too_long)["type"].endswith("invalid-key")
    assert STATE.runs == []
    assert site.count() == 0


def test_quoted_keys_are_sf_strings(site: Site) -> None:
    """A quoted key is an RFC 8941 string: ``"k-1"`` is the key ``k-1`` (a retry sent bare
    replays it), and a comma inside the quotes is part of the key, not a second field."""
    first = post(Client(), "/required/", {"ref": "q"}, key='"k-1"')
    bare = post(Client(), "/required/", {"ref": "q"}, key="k-1")
    assert first.status_code == bare.status_code == 201
    assert bare[REPLAYED] == "true"
    comma = post(Client(), "/required/", {"ref": "q2"}, key='"a,b"')
    assert comma.status_code == 201
    assert sorted(row.key for row in site.key_rows()) == ["a,b", "k-1"]
    assert site.count() == 2


def test_without_a_key_the_view_runs_every_time(site: Site) -> None:
    """Keys are opt-in per request: without the header, or for GET, the view just runs."""
    post(Client(), "/shops/north/orders/", {"ref": "n"}, key=None)
    post(Client(), "/shops/north/orders/", {"ref": "n"}, key=None)
    assert site.count() == 2
    assert site.key_rows() == []


def test_a_view_raising_after_its_write_leaves_neither_row_nor_key(site: Site) -> None:
    """The view writes its row, then raises: the row and the key roll back together, and the
    retry runs the view again and commits once."""
    with pytest.raises(Boom):
        post(Client(), "/shops/north/orders/", {"ref": "f", "fail": True})
    assert site.count() == 0
    assert site.key_rows() == []
    STATE.runs.clear()
    again = post(Client(), "/shops/north/orders/", {"ref": "f"})
    assert again.status_code == 201
    assert STATE.runs == ["function"]
    assert site.count() == 1


def test_server_errors_are_not_stored(site: Site) -> None:
    """A 5xx answer is sent but not stored; its writes roll back with the claim, and a retry runs."""
    failed = post(Client(), "/shops/north/orders/", {"ref": "s", "status": 503})
    assert failed.status_code == 503
    assert site.count() == 0
    assert site.key_rows() == []
    again = post(Client(), "/shops/north/orders/", {"ref": "s", "status": 503})
    assert again.status_code == 503
    assert REPLAYED not in again
    assert STATE.runs == ["function", "function"]


def test_principals_never_share_a_key(site: Site) -> None:
    """Two callers sending the same key each get their own run and their own replay."""
    alice = post(Client(), "/shops/north/orders/", {"ref": "p"}, **{"X-Account": "alice"})
    bob = post(Client(), "/shops/north/orders/", {"ref": "p"}, **{"X-Account": "bob"})
    assert alice.status_code == bob.status_code == 201
    assert REPLAYED not in bob
    assert json.loads(alice.content)["id"] != json.loads(bob.content)["id"]
    again = post(Client(), "/shops/north/orders/", {"ref": "p"}, **{"X-Account": "bob"})
    assert again.content == bob.content
    assert again[REPLAYED] == "true"
    assert site.count() == 2
    assert sorted(row.scope for row in site.key_rows()) == [
        "http POST shops/<str:shop>/orders/ @alice",
        "http POST shops/<str:shop>/orders/ @bob",
    ]


def test_a_transaction_marked_for_rollback_stores_nothing(site: Site) -> None:
    """A view that calls ``transaction.set_rollback(True)`` commits nothing: its response is sent,
    the key is not kept, and the retry runs again."""
    response = post(Client(), "/shops/north/orders/", {"ref": "r", "rollback": True})
    assert response.status_code == 201
    assert site.count() == 0
    assert site.key_rows() == []
    post(Client(), "/shops/north/orders/", {"ref": "r", "rollback": True})
    assert STATE.runs == ["function", "function"]


def test_a_request_still_running_gets_409_then_the_replay(site: Site) -> None:
    """With wait=0, a duplicate arriving while the first request runs gets 409 with Retry-After;
    after the first commits, the retry replays it."""
    if site.name == "sqlite":  # the duplicate waits for the write lock: Django's busy timeout
        connections[site.alias].settings_dict["OPTIONS"] = {"timeout": 0.2}
        connections[site.alias].close()
    STATE.hold = threading.Event()
    results: list[Any] = []
    with override_settings(IDEMPOTENT=site.idempotent(WAIT=0)):

        def first() -> None:
            try:
                results.append(post(Client(), "/shops/north/orders/", {"ref": "w"}))
            finally:
                connections.close_all()

        thread = threading.Thread(target=first)
        thread.start()
        try:
            assert STATE.started.wait(30)
            busy = post(Client(), "/shops/north/orders/", {"ref": "w"})
        finally:
            STATE.hold.set()
            thread.join()
    assert busy.status_code == 409
    assert problem(busy)["type"].endswith("in-progress")
    assert int(busy["Retry-After"]) >= 1
    STATE.hold = None
    retry = post(Client(), "/shops/north/orders/", {"ref": "w"})
    assert retry.status_code == 201
    assert retry[REPLAYED] == "true"
    assert retry.content == results[0].content
    assert site.count() == 1


def test_concurrent_duplicates_run_the_view_once(site: Site) -> None:
    """Eight threads send the same request at once (a Barrier), each with its own Client and
    database connection: one run, one order row, eight identical 201 bodies, seven replays."""
    count = 8
    barrier = threading.Barrier(count)
    responses: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            client = Client()
            barrier.wait()
            response = post(client, "/shops/north/orders/", {"ref": "c"})
            with lock:
                responses.append(response)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [201] * count
    assert len({r.content for r in responses}) == 1
    assert sum(r.get(REPLAYED) == "true" for r in responses) == count - 1
    assert STATE.runs == ["function"]
    assert site.count() == 1


# -- ATOMIC_REQUESTS -----------------------------------------------------------------------------


def test_under_atomic_requests_the_key_joins_the_request_transaction(site: Site) -> None:
    """With ATOMIC_REQUESTS the view already runs in a transaction: the key joins it (a
    savepoint), commits with it and replays; a raising view takes row and key away together."""
    connections[site.alias].settings_dict["ATOMIC_REQUESTS"] = True
    first = post(Client(), "/shops/north/orders/", {"ref": "ar"})
    retry = post(Client(), "/shops/north/orders/", {"ref": "ar"})
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    with pytest.raises(Boom):
        post(Client(), "/shops/north/orders/", {"ref": "ar2", "fail": True}, key="k-2")
    assert site.count() == 1
    assert [row.key for row in site.key_rows()] == ["k-1"]


def test_under_atomic_requests_a_drf_error_response_rolls_back_and_is_not_stored(site: Site) -> None:
    """DRF turns a ValidationError into a 400 and marks the ATOMIC_REQUESTS transaction for
    rollback: the row and the key go, the 400 is sent, and a corrected retry runs."""
    connections[site.alias].settings_dict["ATOMIC_REQUESTS"] = True
    invalid = APIClient().post(
        "/api/dispatch/", {"ref": "v", "invalid": True}, format="json", headers={KEY: "v"}
    )
    assert invalid.status_code == 400
    assert site.count() == 0
    assert site.key_rows() == []
    again = APIClient().post(
        "/api/dispatch/", {"ref": "v", "invalid": True}, format="json", headers={KEY: "v"}
    )
    assert again.status_code == 400
    assert REPLAYED not in again
    assert STATE.runs == ["drf-dispatch", "drf-dispatch"]


def test_middleware_under_atomic_requests_stores_a_drf_error_response_without_its_writes(site: Site) -> None:
    """With the middleware the key's transaction is the outer one and ATOMIC_REQUESTS's a
    savepoint in it: DRF's rollback of a ValidationError undoes the view's row only, and the 400
    commits with the key, so a retry gets that 400 back without running the view."""
    connections[site.alias].settings_dict["ATOMIC_REQUESTS"] = True
    body = {"ref": "v", "invalid": True}
    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        first = APIClient().post("/api/plain/", body, format="json", headers={KEY: "v"})
        retry = APIClient().post("/api/plain/", body, format="json", headers={KEY: "v"})
    assert first.status_code == retry.status_code == 400
    assert (retry.content, retry[REPLAYED]) == (first.content, "true")
    assert STATE.runs == ["drf-plain"]
    assert site.count() == 0
    assert [row.status for row in site.key_rows()] == ["completed"]


def test_atomic_requests_on_another_database_than_the_keys_is_refused(site: Site, tmp_path: Path) -> None:
    """ATOMIC_REQUESTS on another database than the keys' would commit the key apart from the
    view's writes: the decorator and the middleware refuse with an error naming the fix."""
    other = django_alias(f"sqlite:///{tmp_path / 'other.db'}")
    connections[other].settings_dict["ATOMIC_REQUESTS"] = True
    try:
        with pytest.raises(ConfigurationError) as info:
            post(Client(), "/shops/north/orders/", {"ref": "x"})
        with override_settings(MIDDLEWARE=[MIDDLEWARE]), pytest.raises(ConfigurationError) as middleware:
            post(Client(), "/plain/1/", {"ref": "x"})
    finally:
        connections[other].settings_dict["ATOMIC_REQUESTS"] = False
        connections[other].close()
    for error in (info.value, middleware.value):
        assert "ATOMIC_REQUESTS" in str(error)
        assert f"IDEMPOTENT['DATABASE'] = {other!r}" in str(error)
    assert site.count() == 0


# -- class-based views and DRF -------------------------------------------------------------------


def test_class_based_view_decorated_on_dispatch(site: Site) -> None:
    """``@method_decorator(idempotent_view(), name="dispatch")`` guards every handler; POST and
    PUT with one key are separate scopes."""
    first = post(Client(), "/class/", {"ref": "cb"})
    retry = post(Client(), "/class/", {"ref": "cb"})
    put = Client().put(
        "/class/", data=json.dumps({"ref": "cb"}), content_type="application/json", headers={KEY: "k-1"}
    )
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    assert put.status_code == 201
    assert REPLAYED not in put
    assert STATE.runs == ["class", "class-put"]
    assert sorted(row.scope for row in site.key_rows()) == ["http POST class/", "http PUT class/"]


def test_class_based_view_method_decorated(site: Site) -> None:
    """``@method_decorator(idempotent_view())`` on ``post``."""
    first = post(Client(), "/method/", {"ref": "m"})
    retry = post(Client(), "/method/", {"ref": "m"})
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    assert site.count() == 1


def test_drf_api_view_method(site: Site) -> None:
    """A DRF ``APIView.post`` decorated with method_decorator receives DRF's Request; its Response
    is rendered (JSON) before it is stored, and a retry replays it. A ValidationError raised
    after the write stores nothing and rolls the row back."""
    client = APIClient()
    first = client.post("/api/orders/", {"ref": "d", "amount": 2}, format="json", headers={KEY: "d"})
    retry = client.post("/api/orders/", {"ref": "d", "amount": 2}, format="json", headers={KEY: "d"})
    assert first.status_code == retry.status_code == 201
    assert json.loads(retry.content) == {"id": first.data["id"], "ref": "d"}
    assert retry.content == first.content
    assert retry["Content-Type"] == first["Content-Type"] == "application/json"
    assert retry["X-Run"] == "1"
    assert retry[REPLAYED] == "true"
    invalid = client.post("/api/orders/", {"ref": "e", "invalid": True}, format="json", headers={KEY: "e"})
    assert invalid.status_code == 400
    assert site.count() == 1
    assert [row.key for row in site.key_rows()] == ["d"]


def test_a_multipart_body_parsed_before_the_handler_still_fingerprints(site: Site) -> None:
    """A DRF permission class parsed a multipart upload before the decorated handler (Django then
    keeps no raw body): its fields and file contents stand for the body, so the same upload
    replays and another file under the key is 422."""

    def send(content: bytes) -> Any:
        upload = SimpleUploadedFile("receipt.txt", content, content_type="text/plain")
        return APIClient().post(
            "/api/peeked/", {"ref": "up", "receipt": upload}, format="multipart", headers={KEY: "u"}
        )

    first = send(b"paid in full")
    retry = send(b"paid in full")
    other = send(b"paid in half")
    assert first.status_code == 201
    assert json.loads(first.content)["bytes"] == 12
    assert (retry.content, retry[REPLAYED]) == (first.content, "true")
    assert other.status_code == 422
    assert STATE.runs == ["drf-peeked"]
    assert site.count() == 1


def test_a_json_body_parsed_before_the_handler_still_fingerprints(site: Site) -> None:
    """A DRF permission class read a JSON body before the decorated handler: the same key with
    another body is still a 422, not a replay of the first order."""
    client = APIClient()
    first = client.post("/api/peeked-json/", {"ref": "j", "amount": 1}, format="json", headers={KEY: "j"})
    other = client.post("/api/peeked-json/", {"ref": "j", "amount": 2}, format="json", headers={KEY: "j"})
    assert first.status_code == 201
    assert other.status_code == 422
    assert STATE.runs == ["drf-peeked-json"]


def _multipart(boundary: str, ref: str, *files: bytes) -> tuple[bytes, str]:
    """A form with ``ref`` and ``files`` as ``receipt`` fields, encoded with ``boundary``."""
    uploads = [SimpleUploadedFile(f"r{n}.pdf", data, "application/pdf") for n, data in enumerate(files)]
    body = encode_multipart(boundary, {"ref": ref, "receipt": uploads})
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_multipart_retry_with_another_boundary_replays(site: Site) -> None:
    """Clients draw a new multipart boundary for every request: a retry of the same form with the
    same key replays, a changed field or file (the second of two under one name included) is a
    422; the fingerprint is the parsed fields and the files' contents, not the raw bytes."""

    def send(boundary: str, ref: str, *files: bytes) -> Any:
        body, content_type = _multipart(boundary, ref, *files)
        return Client().generic("POST", "/receipts/", body, content_type=content_type, headers={KEY: "m"})

    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        first = send("a1b2c3", "mp", b"one", b"two")
        retry = send("d4e5f6", "mp", b"one", b"two")
        other_file = send("g7h8i9", "mp", b"one", b"TWO")
        other_field = send("j0k1l2", "mq", b"one", b"two")
    assert first.status_code == 201
    assert json.loads(first.content)["bytes"] == 6
    assert (retry.content, retry[REPLAYED]) == (first.content, "true")
    assert other_file.status_code == other_field.status_code == 422
    assert STATE.runs == ["receipts"]
    assert site.count() == 1


def test_a_keyed_upload_is_not_held_to_data_upload_max_memory_size(site: Site) -> None:
    """Django streams the files of a multipart POST outside ``DATA_UPLOAD_MAX_MEMORY_SIZE``; a
    keyed upload larger than that limit runs and replays as an unkeyed one runs, instead of
    Django's 400 for a body read whole."""
    data = b"%PDF" + b"x" * 4096
    with override_settings(MIDDLEWARE=[MIDDLEWARE], DATA_UPLOAD_MAX_MEMORY_SIZE=1024):
        body, content_type = _multipart("big0", "big", data)
        first = Client().generic("POST", "/receipts/", body, content_type=content_type, headers={KEY: "b"})
        retry = Client().generic("POST", "/receipts/", body, content_type=content_type, headers={KEY: "b"})
    assert first.status_code == 201
    assert json.loads(first.content)["bytes"] == len(data)
    assert (retry.content, retry[REPLAYED]) == (first.content, "true")
    assert site.count() == 1


def test_drf_dispatch_stores_drf_error_responses(site: Site) -> None:
    """Decorated on ``dispatch``, the view answers what DRF made of an exception: a 400 is
    stored and replayed like any 4xx answer (without ATOMIC_REQUESTS its write commits)."""
    client = APIClient()
    first = client.post("/api/dispatch/", {"ref": "v", "invalid": True}, format="json", headers={KEY: "v"})
    retry = client.post("/api/dispatch/", {"ref": "v", "invalid": True}, format="json", headers={KEY: "v"})
    assert first.status_code == retry.status_code == 400
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    assert STATE.runs == ["drf-dispatch"]


def test_drf_dispatch_does_not_store_an_authentication_refusal(site: Site) -> None:
    """Decorated on ``dispatch``, a request DRF refuses before the handler (401: no token) is not
    stored: the client's retry with the token and the same key runs the view and is then
    replayed, even where ``principal_from`` cannot tell the two requests apart."""
    client = APIClient()
    body = {"ref": "t", "amount": 1}
    with override_settings(IDEMPOTENT=site.idempotent(PRINCIPAL_FROM=None)):
        refused = client.post("/api/authenticated/", body, format="json", headers={KEY: "t"})
        assert refused.status_code == 401
        assert REPLAYED not in refused
        assert site.key_rows() == []
        auth = {KEY: "t", "Authorization": "Token good"}
        first = client.post("/api/authenticated/", body, format="json", headers=auth)
        retry = client.post("/api/authenticated/", body, format="json", headers=auth)
    assert first.status_code == 201
    assert REPLAYED not in first
    assert (retry.status_code, retry.content, retry[REPLAYED]) == (201, first.content, "true")
    assert STATE.runs == ["drf-authenticated"]
    assert site.count() == 1


@pytest.mark.parametrize("status", [401, 403, 429])
@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_refusals_are_not_stored(site: Site, status: int, mode: str) -> None:
    """A 401, 403 or 429 answer (what ``login_required``, a permission or a throttle returns once
    the middleware is above it) is sent but not stored: the retry runs the view again, and in
    transaction mode the refused request's writes roll back with its key."""
    with override_settings(MIDDLEWARE=[MIDDLEWARE], IDEMPOTENT=site.idempotent(MODE=mode)):
        first = post(Client(), "/plain/3/", {"ref": "no", "status": status})
        retry = post(Client(), "/plain/3/", {"ref": "no", "status": status})
    assert first.status_code == retry.status_code == status
    assert REPLAYED not in retry
    assert STATE.runs == ["plain", "plain"]
    assert site.key_rows() == []
    assert site.count() == (0 if mode == "transaction" else 2)


@pytest.mark.parametrize("method", ["put", "patch"])
def test_drf_viewset_handler_calling_another_guarded_handler(site: Site, method: str) -> None:
    """``update`` and ``partial_update`` both decorated, and PATCH running ``update`` through
    ``partial_update`` (as DRF's ``UpdateModelMixin`` does): the request is guarded once, runs
    once and replays, instead of being refused as guarded twice."""
    client = APIClient()
    send = getattr(client, method)
    first = send("/api/viewset/7/", {"ref": "vs"}, format="json", headers={KEY: "vs"})
    retry = send("/api/viewset/7/", {"ref": "vs"}, format="json", headers={KEY: "vs"})
    assert first.status_code == 200
    assert (retry.content, retry[REPLAYED]) == (first.content, "true")
    assert STATE.runs == ["viewset-update"]
    assert site.count() == 1
    [row] = site.key_rows()
    assert row.scope.startswith(f"http {method.upper()} api/viewset/<str:pk>/")


def test_drf_function_view(site: Site) -> None:
    """``@api_view`` above ``@idempotent_view()``: DRF parses, the decorator guards the rest."""
    client = APIClient()
    first = client.post("/api/function/", {"ref": "f", "amount": 1}, format="json", headers={KEY: "f"})
    retry = client.post("/api/function/", {"ref": "f", "amount": 1}, format="json", headers={KEY: "f"})
    other = client.post("/api/function/", {"ref": "f", "amount": 9}, format="json", headers={KEY: "f"})
    assert first.status_code == 201
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    assert other.status_code == 422
    assert site.count() == 1


# -- the middleware ------------------------------------------------------------------------------


def test_middleware_guards_undecorated_views(site: Site) -> None:
    """``IdempotencyMiddleware`` in MIDDLEWARE: a plain view runs once per key, its row and key
    commit together, the scope has the route the request resolved to, and a raising view
    leaves nothing behind."""
    with override_settings(MIDDLEWARE=[MIDDLEWARE]):
        first = post(Client(), "/plain/7/", {"ref": "mw"})
        retry = post(Client(), "/plain/7/", {"ref": "mw"})
        assert retry.content == first.content
        assert retry[REPLAYED] == "true"
        assert "session_hint" not in retry.cookies
        with pytest.raises(Boom):
            post(Client(), "/plain/7/", {"ref": "mw2", "fail": True}, key="k-2")
        no_key = post(Client(), "/plain/7/", {"ref": "mw3"}, key=None)
    assert no_key.status_code == 201
    assert STATE.runs == ["plain", "plain", "plain"]
    assert site.count() == 2
    [row] = site.key_rows()
    assert row.scope == "http POST plain/<int:pk>/"


def test_middleware_in_lease_mode(site: Site) -> None:
    """``IDEMPOTENT['MODE'] = 'lease'``: the claim commits on the store's engine, the response is
    stored after the view, and a retry replays it."""
    with override_settings(MIDDLEWARE=[MIDDLEWARE], IDEMPOTENT=site.idempotent(MODE="lease")):
        first = post(Client(), "/plain/1/", {"ref": "lm"})
        retry = post(Client(), "/plain/1/", {"ref": "lm"})
    assert retry.content == first.content
    assert retry[REPLAYED] == "true"
    assert site.count() == 1


def test_middleware_and_decorated_view_on_one_request_is_an_error(site: Site) -> None:
    """Both would claim the same key: the decorated view refuses, naming the two."""
    with override_settings(MIDDLEWARE=[MIDDLEWARE]), pytest.raises(ConfigurationError) as info:
        post(Client(), "/shops/north/orders/", {"ref": "x"})
    assert "IdempotencyMiddleware" in str(info.value)
    assert site.count() == 0


# -- streamed responses, lease mode --------------------------------------------------------------


def test_streamed_responses(site: Site) -> None:
    """In lease mode a streamed response is sent but not stored (a retry runs again); in
    transaction mode it is an error, and the view's row is rolled back."""
    first = post(Client(), "/streamed/", {"ref": "st"})
    assert first.status_code == 201
    assert b"".join(first.streaming_content).startswith(b"order ")
    post(Client(), "/streamed/", {"ref": "st"})
    assert STATE.runs == ["streamed", "streamed"]
    with pytest.raises(ConfigurationError, match="streamed"):
        post(Client(), "/streamed-tx/", {"ref": "st2"}, key="k-2")
    assert site.count() == 2


# -- configuration errors ------------------------------------------------------------------------


def test_misplaced_decorators_are_refused(site: Site) -> None:
    """``@idempotent_view()`` on a method without method_decorator, twice on one request, without
    parentheses, on a class, or in transaction mode on an async view: each a ConfigurationError
    naming the fix."""
    with pytest.raises(ConfigurationError, match="method_decorator"):
        post(Client(), "/misdecorated/", {"ref": "x"})
    with pytest.raises(ConfigurationError, match="guarded twice"):
        post(Client(), "/twice/", {"ref": "x"})
    with pytest.raises(ConfigurationError, match=r"@idempotent_view\(\)"):
        idempotent_view(lambda request: None)
    with pytest.raises(ConfigurationError, match='name="dispatch"'):
        idempotent_view()(type("SomeView", (), {}))

    async def async_view(request: Any) -> Any:  # pragma: no cover - never runs
        return None

    with pytest.raises(ConfigurationError, match=r"cannot run in transaction mode.*mode='lease'"):
        idempotent_view(mode="transaction")(async_view)
    with pytest.raises(ConfigurationError, match="no option"):
        idempotent_view(principal=principal)  # type: ignore[call-arg]
    assert site.count() == 0


def test_nowhere_to_keep_keys_is_refused(site: Site) -> None:
    """Without a supported database and without a lease store, the first request (and Django's
    system check) fails with an error naming DATABASES, using= and store=; so does transaction
    mode on such a database and an unknown IDEMPOTENT entry."""
    atomic_store = SQLStore(None, site.keys.name)  # no engine: it cannot run lease mode
    cases = {
        "nowhere to keep idempotency keys": {"STORE": atomic_store},  # 'default' is Django's dummy
        "transaction mode needs SQLite": {
            "STORE": atomic_store,
            "MODE": "transaction",
            "DATABASE": "missing",
        },
        "has no entry TTL": {"DATABASE": site.alias, "TTL": 5},
    }
    for message, entries in cases.items():
        with override_settings(IDEMPOTENT=entries):
            with pytest.raises(ConfigurationError, match=message):
                post(Client(), "/shops/north/orders/", {"ref": "x"})
            errors = [e for e in checks.run_checks() if e.id == "idempotent.E001"]
            assert len(errors) == 1
            assert message in errors[0].msg
    assert site.count() == 0


def test_manage_py_migrate_creates_and_drops_the_keys_table(site: Site) -> None:
    """With the app installed, ``manage.py migrate idempotent`` creates the table named by
    IDEMPOTENT['STORE'] in the migrated database, at the revision ``idempotent migrate``
    records; views then keep their keys in it; ``migrate idempotent zero`` drops it."""
    name = f"idem_mig_{uuid.uuid4().hex[:10]}"
    introspection = connections[site.alias].introspection
    had_recorder = "django_migrations" in introspection.table_names()
    with override_settings(IDEMPOTENT=site.idempotent(STORE=SQLStore(site.engine, name))):
        call_command("migrate", "idempotent", database=site.alias, verbosity=0)
        try:
            assert name in introspection.table_names()
            assert migrate.current(site.engine, table=name) == migrate.head()
            first = post(Client(), "/shops/north/orders/", {"ref": "mg"})
            retry = post(Client(), "/shops/north/orders/", {"ref": "mg"})
            assert (retry.content, retry[REPLAYED]) == (first.content, "true")
            with site.engine.connect() as conn:
                assert conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one() == 1
        finally:
            call_command("migrate", "idempotent", "zero", database=site.alias, verbosity=0)
            if not had_recorder:
                with connections[site.alias].schema_editor() as editor:
                    editor.execute("DROP TABLE django_migrations")
    assert name not in introspection.table_names()
    assert site.count() == 1


@pytest.mark.parametrize("guard", ["decorator", "middleware"])
def test_a_missing_keys_table_names_the_django_app_and_migrate(site: Site, guard: str) -> None:
    """Without the keys table in Django's database (the app left out of INSTALLED_APPS, or
    ``migrate`` not run), the first keyed request fails with TableMissing telling the Django way
    to create it, not a SQLAlchemy URL to migrate; nothing is written."""
    missing = f"idem_absent_{uuid.uuid4().hex[:8]}"
    path = "/plain/1/" if guard == "middleware" else "/shops/north/orders/"
    middleware = [MIDDLEWARE] if guard == "middleware" else []
    store = SQLStore(site.engine, missing)
    with override_settings(MIDDLEWARE=middleware, IDEMPOTENT=site.idempotent(STORE=store)):
        with pytest.raises(TableMissing) as info:
            post(Client(), path, {"ref": "nt"})
    message = str(info.value)
    assert "'idempotent.contrib.django' to INSTALLED_APPS" in message
    assert "manage.py migrate" in message
    assert repr(missing) in message
    assert f"Django's {site.alias!r} database" in message
    assert site.count() == 0


def test_import_needs_no_django_and_the_contrib_names_its_extra() -> None:
    """``import idempotent`` loads no Django; without Django the contrib names the extra."""
    code = (
        "import sys\nimport idempotent\nassert 'django' not in sys.modules\n"
        "sys.modules['django'] = None\n"
        "try:\n    import idempotent.contrib.django\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'idempotent[django]'" in out.stdout


# -- the checker's fix ---------------------------------------------------------------------------

UNFIXED_VIEWS = '''\
"""Views written before idempotency keys."""

import json

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from tests.contrib.django_urls import STATE


@require_POST
def create_order(request):
    data = json.loads(request.body)
    order = STATE.order.objects.using(STATE.alias).create(ref=data["ref"], amount=1)
    return JsonResponse({"id": order.pk}, status=201)
'''

UNFIXED_URLS = """\
from django.urls import path

from . import views

urlpatterns = [path("orders/", views.create_order)]
"""


def test_check_fix_on_a_django_project_imports_runs_and_rechecks_clean(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``idempotent check --fix`` decorates the Django view with ``@idempotent_view()`` and says,
    once, that the app must be installed and migrated (the keys table); the fixed project checks
    clean, and its view replays a retry (one row)."""
    from idempotent.cli import main

    package = tmp_path / f"djshop_{uuid.uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "views.py").write_text(UNFIXED_VIEWS, encoding="utf-8")
    (package / "urls.py").write_text(UNFIXED_URLS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix"]) == 0
    err = capsys.readouterr().err
    assert err.count("Then, once: add 'idempotent.contrib.django' to INSTALLED_APPS") == 1
    assert "python manage.py migrate" in err
    fixed = (package / "views.py").read_text(encoding="utf-8")
    assert "from idempotent.contrib.django import idempotent_view" in fixed
    assert "@require_POST\n@idempotent_view()\ndef create_order" in fixed
    assert main(["check", "-q"]) == 0

    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with override_settings(ROOT_URLCONF=f"{package.name}.urls"):
            first = post(Client(), "/orders/", {"ref": "fx"})
            again = post(Client(), "/orders/", {"ref": "fx"})
    finally:
        for name in [n for n in sys.modules if n.startswith(package.name)]:
            del sys.modules[name]
    assert first.status_code == 201
    assert (again.content, again[REPLAYED]) == (first.content, "true")
    assert site.count() == 1
