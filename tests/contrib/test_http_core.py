"""The framework-free HTTP core: key header, scope, fingerprint, stored responses and problems.

The database tests drive ``Policy.run``/``run_async`` the way an adapter does, on every database
through its sync and async driver.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempotent import InvalidKey
from idempotent.http import HTTPRequest, Policy, ResponseCodec, StoredResponse, parse_key
from idempotent.testing import MemoryStore
from tests.conftest import Db

# -- the key header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ([], None),
        (["abc-123"], "abc-123"),
        (["  abc  "], "abc"),
        (['"8e03978e-40d5"'], "8e03978e-40d5"),
        ([r'"a\"b\\c"'], 'a"b\\c'),
        (['"k";v=1'], "k"),
        (['unquoted "inner"'], 'unquoted "inner"'),
    ],
)
def test_parse_key_accepts_bare_and_structured_values(values: list[str], key: str | None) -> None:
    """Bare values are kept as sent; quoted ones are RFC 8941 strings with their escapes undone."""
    assert parse_key(values) == key


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["a", "b"], "appears 2 times"),
        (['"unterminated'], "structured-field string"),
        ([r'"bad \n escape"'], "structured-field string"),
        (['"tail" junk'], "structured-field string"),
        (['"caf\u00e9"'], "structured-field string"),
        ([""], "1 to 255 characters"),
        (['""'], "1 to 255 characters"),
        (["x" * 256], "1 to 255 characters"),
        (["a\x00b"], "1 to 255 characters"),
    ],
)
def test_parse_key_refuses_bad_fields(values: list[str], reason: str) -> None:
    """A repeated field, a malformed string or a key outside 1-255 characters is InvalidKey."""
    with pytest.raises(InvalidKey, match=reason):
        parse_key(values)


def test_parse_key_accepts_the_longest_key() -> None:
    """255 characters is the limit, inclusive."""
    assert parse_key(["k" * 255]) == "k" * 255


# -- stored responses -------------------------------------------------------------------------


def test_capture_never_keeps_cookies_or_hop_by_hop_headers() -> None:
    """Set-Cookie, hop-by-hop fields, fields named by Connection and the replay marker are dropped."""
    stored = StoredResponse.capture(
        201,
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", "session=secret"),
            ("set-cookie", "other=1"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "p"),
            ("Transfer-Encoding", "chunked"),
            ("Keep-Alive", "timeout=5"),
            ("Idempotent-Replayed", "true"),
            ("Location", "/orders/1"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ],
        b"{}",
    )
    assert stored.headers == (
        ("Content-Type", "application/json"),
        ("Location", "/orders/1"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    )
    assert stored.replayed().headers[-1] == ("Idempotent-Replayed", "true")


@pytest.mark.parametrize("body", [b'{"id": 1, "name": "\xc3\xa9t\xc3\xa9"}', b"\x00\xff\xfe binary"])
def test_response_codec_round_trips_text_and_binary_bodies(body: bytes) -> None:
    """Status, every header in order and the body bytes come back equal."""
    codec = ResponseCodec()
    stored = StoredResponse(201, (("Content-Type", "x/y"), ("X-A", "1"), ("X-A", "2")), body)
    assert codec.loads(codec.dumps(stored, StoredResponse), StoredResponse) == stored


# -- policy pieces ----------------------------------------------------------------------------


def _request(body: bytes = b'{"item": "tea"}', key: str | None = "k1", **changes: Any) -> HTTPRequest:
    headers = [("content-type", "application/json")]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    fields: dict[str, Any] = {
        "method": "POST",
        "path": "/orders",
        "route": "/orders",
        "headers": headers,
        "body": body,
    }
    fields.update(changes)
    return HTTPRequest(**fields)


def test_scope_is_method_route_and_principal() -> None:
    """Requests on one route template share a scope per caller; the principal keeps callers apart."""
    policy = Policy(store=MemoryStore())
    one = _request(path="/orders/1", route="/orders/{id}", method="put")
    two = _request(path="/orders/2", route="/orders/{id}", method="PUT")
    assert policy.scope(one) == policy.scope(two) == "http PUT /orders/{id}"
    alice = _request(principal="alice")
    assert policy.scope(alice) == "http POST /orders @alice"
    assert policy.scope(_request(route=None, path="/raw")) == "http POST /raw"


def test_fingerprint_covers_method_path_query_and_body_only() -> None:
    """Method, path, query and body change the fingerprint; other headers and the key do not."""
    policy = Policy(store=MemoryStore())
    base = policy.fingerprint(_request())
    assert base.startswith("v1:")
    assert policy.fingerprint(_request(key="other", headers=[("x-trace", "1")])) == base
    assert policy.fingerprint(_request(body=b'{"item": "cake"}')) != base
    assert policy.fingerprint(_request(query="a=1")) != base
    assert policy.fingerprint(_request(path="/orders/")) != base
    assert policy.fingerprint(_request(method="PUT")) != base


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> HTTPRequest:
    """A POST whose ``multipart/form-data`` body holds ``parts`` (name, file name or None, content)."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "\r\nContent-Type: application/octet-stream" if filename else ""
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}{kind}\r\n\r\n".encode() + content + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    headers = [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    return HTTPRequest("POST", "/upload", headers=headers, body=body)


def test_multipart_fingerprint_ignores_the_boundary() -> None:
    """Clients draw a new multipart boundary per request: a retry of the same form (fields and
    files, binary content with CR/LF inside) has the first request's fingerprint; another file
    content, file name or field value does not."""
    policy = Policy.from_options("test", {})
    picture = b"\x89PNG\r\n\x1a\n\x00\xff--not-a-boundary\r\n"
    form = [
        ("title", None, b"holiday"),
        ("tag", None, b"a"),
        ("tag", None, b"b"),
        ("photo", "p.png", picture),
    ]
    first = policy.fingerprint(_multipart("----first7MA4YWxkTrZu0gW", form))
    assert policy.fingerprint(_multipart("retry-9f8e7d", form)) == first
    reordered = [form[3], form[0], form[1], form[2]]  # names in another order, values of a name kept
    assert policy.fingerprint(_multipart("x", reordered)) == first
    for changed in (
        [*form[:3], ("photo", "p.png", picture + b"!")],
        [*form[:3], ("photo", "q.png", picture)],
        [("title", None, b"work"), *form[1:]],
        [form[0], form[2], form[1], form[3]],  # the values of one name in another order
    ):
        assert policy.fingerprint(_multipart("----first7MA4YWxkTrZu0gW", changed)) != first
    plain = HTTPRequest("POST", "/upload", headers=[("Content-Type", "text/plain")], body=b"--x\r\n")
    assert policy.fingerprint(plain) != first


def test_applies_only_to_eligible_methods_with_a_key() -> None:
    """GET/HEAD/OPTIONS and requests without the header need nothing, unless a key is required."""
    policy = Policy(store=MemoryStore())
    headers = [("IDEMPOTENCY-KEY", "k")]
    assert policy.applies("post", headers)
    assert policy.applies("DELETE", headers)
    assert not policy.applies("GET", headers)
    assert not policy.applies("OPTIONS", headers)
    assert not policy.applies("POST", [("x", "y")])
    assert Policy(store=MemoryStore(), required=True).applies("POST", [])
    assert Policy(store=MemoryStore(), header="X-Request-Id").applies("POST", [("x-request-id", "1")])


def test_problem_documents_are_rfc9457_with_a_configurable_type() -> None:
    """Missing and invalid keys are 400 problem+json documents whose type starts with problem_base."""
    policy = Policy(store=MemoryStore(), required=True, problem_base="https://api.example/problems/")
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        return "ran"

    missing = policy.run(_request(key=None), call, _render)
    invalid = policy.run(_request(key="x" * 300), call, _render)
    assert calls == []
    for response, slug in ((missing, "missing-key"), (invalid, "invalid-key")):
        assert isinstance(response, StoredResponse)
        assert response.status == 400
        assert response.header("content-type") == "application/problem+json"
        document = json.loads(response.body)
        assert document["type"] == f"https://api.example/problems/{slug}"
        assert document["status"] == 400
        assert document["title"] and document["detail"]


def _render(result: Any) -> StoredResponse:
    status, body = result if isinstance(result, tuple) else (201, str(result).encode())
    return StoredResponse.capture(status, [("content-type", "text/plain"), ("set-cookie", "s=1")], body)


def test_requests_without_key_or_of_other_methods_pass_through() -> None:
    """No header (not required) and GET run the call every time and store nothing."""
    store = MemoryStore()
    policy = Policy(store=store)
    assert policy.run(_request(key=None), lambda: "a", _render) == "a"
    assert policy.run(_request(key=None), lambda: "b", _render) == "b"
    assert policy.run(_request(method="GET"), lambda: "c", _render) == "c"
    assert store.records == {}


def test_key_from_body_makes_identical_requests_one() -> None:
    """With key_from_body, a request without header is keyed by principal + request: a repeat replays."""
    policy = Policy(store=MemoryStore(), key_from_body=True)
    runs: list[int] = []

    def call() -> str:
        runs.append(1)
        return f"order {len(runs)}"

    first = policy.run(_request(key=None, principal="a"), call, _render)
    again = policy.run(_request(key=None, principal="a"), call, _render)
    other = policy.run(_request(key=None, principal="b"), call, _render)
    assert first == "order 1"
    assert isinstance(again, StoredResponse) and again.body == b"order 1"
    assert other == "order 2"


def test_in_progress_is_409_with_retry_after() -> None:
    """A duplicate arriving while the first request runs gets 409 and Retry-After once ``wait`` is over."""
    policy = Policy(store=MemoryStore(), mode="lease", wait=0)
    started, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        return "first"

    worker = threading.Thread(target=lambda: results.append(policy.run(_request(), slow, _render)))
    worker.start()
    started.wait(10)
    duplicate = policy.run(_request(), lambda: "second", _render)
    release.set()
    worker.join(10)
    assert isinstance(duplicate, StoredResponse)
    assert duplicate.status == 409
    assert int(duplicate.header("retry-after") or 0) >= 1
    assert json.loads(duplicate.body)["type"].endswith("in-progress")
    assert results == ["first"]


# -- on real databases ------------------------------------------------------------------------


class _Orders:
    """An adapter-like caller: a view inserting one order per run, through Policy.run/run_async."""

    def __init__(self, db: Db, **options: Any) -> None:
        self.db = db
        self.policy = Policy(store=db.store, **options)

    def post(self, request: HTTPRequest, status: int = 201) -> Any:
        orders = self.db.orders
        if not self.db.is_async:
            with Session(self.db.engine) as session:

                def view() -> tuple[int, bytes]:
                    row = session.execute(orders.insert().values(ref="r", amount=1))
                    return status, json.dumps({"id": row.inserted_primary_key[0]}).encode()

                return self.policy.run(request, view, _render, session=session)

        from sqlalchemy.ext.asyncio import AsyncSession

        async def go() -> Any:
            async with AsyncSession(self.db.async_engine) as session:

                async def view() -> tuple[int, bytes]:
                    row = await session.execute(orders.insert().values(ref="r", amount=1))
                    return status, json.dumps({"id": row.inserted_primary_key[0]}).encode()

                return await self.policy.run_async(request, view, _render, session=session)

        return self.db.run(go())


def test_first_run_replay_and_reuse_on_every_database(db: Db) -> None:
    """One order row; the retry replays status, headers and body with Idempotent-Replayed; another
    body with the same key is a 422 problem; the row commits with the response (transaction mode)."""
    shop = _Orders(db)
    first = shop.post(_request())
    assert first[0] == 201
    replay = shop.post(_request())
    assert isinstance(replay, StoredResponse)
    assert replay.status == 201
    assert replay.body == first[1]
    assert replay.headers == (("content-type", "text/plain"), ("Idempotent-Replayed", "true"))
    reused = shop.post(_request(body=b'{"item": "cake"}'))
    assert isinstance(reused, StoredResponse) and reused.status == 422
    assert json.loads(reused.body)["type"].endswith("key-reused")
    assert db.count() == 1
    assert len(db.key_rows()) == 1


def test_frequent_retries_read_the_stored_response_first(db: Db) -> None:
    """Once most requests with a key are retries, a retry reads the stored response with one
    SELECT instead of claiming the key; the replay, the 422 for another body and a new key's
    first run are unchanged."""
    shop = _Orders(db)
    first = shop.post(_request())
    for _ in range(4):
        assert shop.post(_request()).body == first[1]
    engine = db.async_engine.sync_engine if db.is_async else db.engine
    seen: list[list[str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen[-1].append(statement.split(maxsplit=1)[0].upper())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        outcomes = []
        for request in (_request(), _request(body=b'{"item": "cake"}'), _request(key="k2")):
            seen.append([])
            outcomes.append(shop.post(request))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    replay, reused, other = outcomes
    assert isinstance(replay, StoredResponse) and (replay.status, replay.body) == (201, first[1])
    assert isinstance(reused, StoredResponse) and reused.status == 422
    assert other[0] == 201 and other[1] != first[1]
    assert seen[0] == ["SELECT"], seen[0]
    assert "INSERT" in seen[2]  # the new key: claimed and run
    assert db.count() == 2
    assert len(db.key_rows()) == 2


def test_principals_never_share_a_key(db: Db) -> None:
    """Two callers sending the same key each get their own order and their own response."""
    shop = _Orders(db)
    alice = shop.post(_request(principal="alice"))
    bob = shop.post(_request(principal="bob"))
    assert alice[1] != bob[1]
    alice_again = shop.post(_request(principal="alice"))
    assert alice_again.body == alice[1]
    assert db.count() == 2


def test_server_errors_are_not_stored_and_roll_back(db: Db) -> None:
    """A 5xx response is sent but not kept: its writes roll back and a retry runs again."""
    shop = _Orders(db)
    failed = shop.post(_request(), status=503)
    assert failed[0] == 503
    assert db.count() == 0
    assert db.key_rows() == []
    assert shop.post(_request())[0] == 201
    assert db.count() == 1


def test_store_server_errors_keeps_them(db: Db) -> None:
    """With store_server_errors=True a 5xx response is replayed like any other."""
    shop = _Orders(db, store_server_errors=True)
    failed = shop.post(_request(), status=500)
    replay = shop.post(_request())
    assert isinstance(replay, StoredResponse)
    assert (replay.status, replay.body) == (500, failed[1])
    assert db.count() == 1


def test_lease_mode_without_session(sync_db: Db) -> None:
    """Without a session the policy claims in lease mode on the store's engine, and replays."""
    policy = Policy(store=sync_db.store)
    runs: list[int] = []

    def view() -> tuple[int, bytes]:
        runs.append(1)
        return 201, b"made"

    assert policy.run(_request(), view, _render) == (201, b"made")
    replay = policy.run(_request(), view, _render)
    assert isinstance(replay, StoredResponse) and replay.body == b"made"
    assert runs == [1]
    with sync_db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_db.keys)).scalar_one() == 1
