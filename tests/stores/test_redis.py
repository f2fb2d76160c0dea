"""RedisStore against the real Redis server: races, a killed client, cut connections, the
server's clock and key expiry, script loading, and the errors users meet."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from idempotent import InProgress, configure, idempotent
from idempotent.core import ClaimRequest, Outcome, decide
from idempotent.errors import ConfigurationError
from idempotent.redis import _NAMED, READ, RedisStore, _Script
from tests.proxy import Proxy
from tests.services import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
CALLERS = 50


@pytest.fixture
def store(redis_client: redis.Redis, redis_prefix: str) -> RedisStore:
    """A RedisStore with a sync client under a random prefix."""
    return RedisStore(redis_client, prefix=redis_prefix)


def test_fifty_concurrent_calls_run_the_function_once(store: RedisStore) -> None:
    """50 threads calling a lease-mode function with one key: it runs once, all get its result."""
    runs: list[int] = []
    barrier = threading.Barrier(CALLERS)
    started, release = threading.Event(), threading.Event()

    @idempotent(key_from="key", scope="tests.redis.race", mode="lease", wait=60, store=store)
    def work(key: str) -> dict[str, int]:
        runs.append(1)
        started.set()
        release.wait(30)
        return {"runs": len(runs)}

    results: list[Any] = []

    def call() -> None:
        barrier.wait()
        results.append(work("same"))

    threads = [threading.Thread(target=call) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    started.wait(30)  # the winner is inside the function: let it finish while the others wait
    release.set()
    for thread in threads:
        thread.join()
    assert runs == [1]
    assert results == [{"runs": 1}] * CALLERS


def test_fifty_concurrent_async_calls_run_the_function_once(redis_prefix: str) -> None:
    """50 tasks on the async client: one run, 50 equal results."""
    runs: list[int] = []

    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        store = RedisStore(client, prefix=redis_prefix)
        started, gate = asyncio.Event(), asyncio.Event()

        @idempotent(key_from="key", scope="tests.redis.arace", mode="lease", wait=60, store=store)
        async def work(key: str) -> str:
            runs.append(1)
            started.set()
            await gate.wait()
            return "done"

        calls = [asyncio.create_task(work("same")) for _ in range(CALLERS)]
        await started.wait()
        gate.set()
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["done"] * CALLERS
    assert runs == [1]


def test_killed_client_is_taken_over_after_its_lease(store: RedisStore, redis_prefix: str) -> None:
    """A process SIGKILLed inside the function keeps the key until its lease ends (by the
    server's clock), then the next caller takes over and runs once."""
    scope, key, lease = "tests.redis.crash", f"k-{uuid.uuid4().hex[:6]}", 30
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.stores.redis_child", REDIS_URL, redis_prefix, scope, key, str(lease)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "reached"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    runs: list[str] = []

    @idempotent(key_from="key", scope=scope, mode="lease", wait=0, lease=lease, store=store)
    def work(key: str) -> str:
        runs.append(key)
        return "parent"

    store.clock_offset = lease - 1
    with pytest.raises(InProgress):
        work(key)
    store.clock_offset = lease + 1
    assert work(key) == "parent"
    assert work(key) == "parent"
    assert runs == [key]


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A cutting proxy in front of the Redis server."""
    address = urlsplit(REDIS_URL)
    with Proxy(address.hostname or "127.0.0.1", address.port or 6379) as running:
        yield running


@pytest.mark.parametrize("cut", ["request", "reply"])
def test_connection_cut_during_a_claim(proxy: Proxy, redis_prefix: str, cut: str) -> None:
    """A connection cut while the claim is on the wire (before Redis saw it, or after Redis
    claimed but before the reply arrived): the client reconnects, sends the claim again, and
    the function still runs exactly once."""
    client = redis.Redis(host="127.0.0.1", port=proxy.port)
    store = RedisStore(client, prefix=redis_prefix)
    runs: list[str] = []

    @idempotent(key_from="key", scope="tests.redis.cut", mode="lease", wait=0, store=store)
    def work(key: str) -> str:
        runs.append(key)
        return f"ran {key}"

    assert work("warm-up") == "ran warm-up"  # scripts loaded, connection open
    (proxy.drop_next_request if cut == "request" else proxy.drop_next_reply)()
    assert work("cut") == "ran cut"
    assert proxy.cuts == 1
    assert proxy.accepted == 2
    assert work("cut") == "ran cut"
    assert runs == ["warm-up", "cut"]
    client.close()


def test_lease_times_come_from_the_server_clock(store: RedisStore, redis_client: redis.Redis) -> None:
    """The claim's times are the server's TIME, and the Redis key expires with the later of its
    ttl and its lease (a running call is never evicted by its ttl)."""
    seconds, micros = redis_client.time()
    server_ms = seconds * 1000 + micros // 1000
    request = ClaimRequest("tests.redis.clock", "k", None, "owner", 2_000, 30_000, 0)
    assert store.claim(request) is None
    seen = store.read("tests.redis.clock", "k")
    assert seen is not None
    assert 0 <= seen.record.created_at - server_ms < 5_000
    key = store.redis_key("tests.redis.clock", "k")
    assert 25_000 < redis_client.pttl(key) <= 30_000
    assert store.complete(request, status="completed", codec="json", result="1")
    assert 0 < redis_client.pttl(key) <= 2_000


def test_noscript_falls_back_to_loading_the_script(store: RedisStore, redis_client: redis.Redis) -> None:
    """A script the server does not know (NOSCRIPT) is loaded once and run."""
    assert store.claim(ClaimRequest("tests.redis.noscript", "k", None, "o", 1000, 1000, 0)) is None
    fresh = _Script(READ.source + f"\n-- {uuid.uuid4().hex}\n")
    assert redis_client.script_exists(fresh.sha) == [False]
    reply = store._eval(fresh, store.redis_key("tests.redis.noscript", "k"))
    assert redis_client.script_exists(fresh.sha) == [True]
    seen = store._answer("tests.redis.noscript", "k", reply)
    assert seen is not None and seen.record.owner == "o"


def test_transaction_mode_is_refused(store: RedisStore) -> None:
    """Transaction mode on RedisStore is a ConfigurationError saying why and what to use."""
    with pytest.raises(ConfigurationError, match=r"cannot join the transaction.*mode='lease'"):

        @idempotent(key_from="key", store=store, scope="tests.redis.tx")
        def work(key: str) -> int:
            return 1


def test_transaction_mode_is_refused_for_a_configured_store(store: RedisStore) -> None:
    """The same error when RedisStore is the configure() default, at the first call."""
    from idempotent import decorator

    saved = decorator._defaults

    @idempotent(key_from="key", scope="tests.redis.tx2")
    def work(key: str) -> int:
        return 1

    configure(store=store)
    try:
        with pytest.raises(ConfigurationError, match="cannot join the transaction"):
            work("k")
    finally:
        decorator._defaults = saved


def test_sync_function_needs_a_sync_client(redis_prefix: str) -> None:
    """A plain function on a store with only an async client gets an error naming the fix."""
    store = RedisStore(redis.asyncio.Redis.from_url(REDIS_URL), prefix=redis_prefix)

    @idempotent(key_from="key", scope="tests.redis.noclient", mode="lease", store=store)
    def work(key: str) -> int:
        return 1

    with pytest.raises(ConfigurationError, match=r"redis\.Redis too"):
        work("k")


def test_async_function_on_a_sync_client(store: RedisStore) -> None:
    """An async function on a store with only a sync client works (calls run in a thread)."""
    runs: list[str] = []

    @idempotent(key_from="key", scope="tests.redis.thread", mode="lease", store=store)
    async def work(key: str) -> str:
        runs.append(key)
        return "ok"

    async def scenario() -> list[str]:
        return [await work("a"), await work("a")]

    assert asyncio.run(scenario()) == ["ok", "ok"]
    assert runs == ["a"]


def test_bad_client_is_named() -> None:
    """Something that is not a Redis client is refused with what to pass instead."""
    with pytest.raises(ConfigurationError, match=r"redis\.Redis or redis\.asyncio\.Redis"):
        RedisStore("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="needs a client"):
        RedisStore()


def test_client_with_decoded_responses(redis_prefix: str) -> None:
    """A client made with decode_responses=True works too: records and results come back as text."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    store = RedisStore(client, prefix=redis_prefix)
    runs: list[str] = []

    @idempotent(key_from="key", scope="tests.redis.decoded", mode="lease", store=store)
    def work(key: str) -> dict[str, str]:
        runs.append(key)
        return {"text": "é€😀"}

    assert work("k") == work("k") == {"text": "é€😀"}
    assert runs == ["k"]
    client.close()


def test_cancelled_async_call_releases_its_key(redis_prefix: str) -> None:
    """An async call cancelled inside the function releases its claim (in a shielded step), so a
    retry runs at once."""
    runs: list[str] = []

    async def scenario() -> Any:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        store = RedisStore(client, prefix=redis_prefix)
        inside, never = asyncio.Event(), asyncio.Event()

        @idempotent(key_from="key", scope="tests.redis.cancel", mode="lease", wait=0, store=store)
        async def work(key: str, block: bool) -> str:
            runs.append(key)
            inside.set()
            if block:
                await never.wait()
            return "done"

        task = asyncio.create_task(work("k", True))
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        try:
            assert await store.aread("tests.redis.cancel", "k") is None
            return await work("k", False)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == "done"
    assert runs == ["k", "k"]


@pytest.mark.parametrize("cut", ["request", "reply"])
def test_connection_cut_during_a_completion(proxy: Proxy, redis_prefix: str, cut: str) -> None:
    """A connection cut while the completion is on the wire: it is sent again on a new
    connection, and a completion its owner already stored answers True, so the call returns
    its result once and the key replays it."""
    client = redis.Redis(host="127.0.0.1", port=proxy.port)
    store = RedisStore(client, prefix=redis_prefix)
    runs: list[str] = []

    @idempotent(key_from="key", scope="tests.redis.cutdone", mode="lease", wait=0, store=store)
    def work(key: str) -> str:
        runs.append(key)
        if key == "cut":  # the next request on the wire is the completion
            (proxy.drop_next_request if cut == "request" else proxy.drop_next_reply)()
        return f"ran {key}"

    assert work("warm-up") == "ran warm-up"
    assert work("cut") == "ran cut"
    assert proxy.cuts == 1
    assert work("cut") == "ran cut"
    assert runs == ["warm-up", "cut"]
    seen = store.read("tests.redis.cutdone", "cut")
    assert seen is not None and seen.record.status == "completed"
    client.close()


@pytest.mark.parametrize("cut", ["request", "reply"])
def test_async_connection_cut_during_a_completion(proxy: Proxy, redis_prefix: str, cut: str) -> None:
    """The same cut on ``redis.asyncio``: the completion goes again on a new connection, the
    call returns its result once and the key replays it."""
    runs: list[str] = []

    async def scenario() -> list[str]:
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port)
        store = RedisStore(client, prefix=redis_prefix)

        @idempotent(key_from="key", scope="tests.redis.acutdone", mode="lease", wait=0, store=store)
        async def work(key: str) -> str:
            runs.append(key)
            if key == "cut":
                (proxy.drop_next_request if cut == "request" else proxy.drop_next_reply)()
            return f"ran {key}"

        try:
            results = [await work("warm-up"), await work("cut"), await work("cut")]
            seen = await store.aread("tests.redis.acutdone", "cut")
            assert seen is not None and seen.record.status == "completed"
            return results
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["ran warm-up", "ran cut", "ran cut"]
    assert proxy.cuts == 1
    assert runs == ["warm-up", "cut"]


def test_async_client_with_health_checks(redis_prefix: str) -> None:
    """An async client with ``health_check_interval`` keeps its health checks: the store sends
    through redis-py's own send, which pings a connection idle for longer than the interval."""
    runs: list[str] = []

    async def scenario() -> list[str]:
        client = redis.asyncio.Redis.from_url(REDIS_URL, health_check_interval=1)
        store = RedisStore(client, prefix=redis_prefix)
        pings = 0
        pool = client.connection_pool
        conn = await (pool.get_connection("PING") if _NAMED else pool.get_connection())
        original = type(conn).check_health

        async def counted(self: Any) -> None:
            nonlocal pings
            pings += 1
            await original(self)

        await pool.release(conn)
        type(conn).check_health = counted  # type: ignore[method-assign]

        @idempotent(key_from="key", scope="tests.redis.health", mode="lease", store=store)
        async def work(key: str) -> str:
            runs.append(key)
            return "ok"

        try:
            results = [await work("h"), await work("h")]
        finally:
            type(conn).check_health = original  # type: ignore[method-assign]
            await client.aclose()
        assert pings >= 2  # one per command sent: the claim, the completion, the replay
        return results

    assert asyncio.run(scenario()) == ["ok", "ok"]
    assert runs == ["h"]


def test_record_is_one_string_with_its_creation_in_the_key_expiry(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """A claim stores one string; a second claim finds it and reads its creation time from the
    key's expiry; after a renewal and a completion the times stay those of the claim."""
    request = ClaimRequest("tests.redis.layout", "k", "v1:fp", "owner-1", 60_000, 10_000, 0)
    assert store.claim(request) is None
    key = store.redis_key("tests.redis.layout", "k")
    assert redis_client.type(key) == b"string"
    first = store.read("tests.redis.layout", "k")
    assert first is not None
    found = store.claim(ClaimRequest("tests.redis.layout", "k", "v1:fp", "owner-2", 60_000, 10_000, 0))
    assert found is not None and found.record == first.record
    assert found.now >= first.record.created_at
    assert store.renew(request)
    renewed = store.read("tests.redis.layout", "k")
    assert renewed is not None
    assert renewed.record.created_at == first.record.created_at
    assert renewed.record.expires_at == first.record.expires_at
    assert renewed.record.locked_until >= first.record.locked_until
    assert store.complete(request, status="completed", codec="json", result="1")
    done = store.read("tests.redis.layout", "k")
    assert done is not None
    assert done.record.created_at == first.record.created_at
    assert done.record.expires_at == first.record.expires_at
    assert done.record.locked_until == renewed.record.locked_until


@pytest.mark.parametrize(
    ("holder", "other"),
    [("abc", "ab"), ("ab", "abc"), ("12:ab", "12"), ("x", "1:x"), ("o\n1,2", "o\n1,")],
)
def test_only_the_whole_owner_token_holds_the_key(store: RedisStore, holder: str, other: str) -> None:
    """Renewal, completion and release compare the whole owner token: a token that is a prefix
    or an extension of the holder's (or looks like the record's own layout) is refused."""
    scope = f"tests.redis.owner.{uuid.uuid4().hex[:8]}"
    mine = ClaimRequest(scope, "k", None, holder, 60_000, 10_000, 0)
    theirs = ClaimRequest(scope, "k", None, other, 60_000, 10_000, 0)
    assert store.claim(mine) is None
    assert not store.renew(theirs)
    assert not store.complete(theirs, status="completed", codec="json", result="1")
    assert not store.release(theirs)
    assert store.complete(mine, status="completed", codec="json", result="2")
    seen = store.read(scope, "k")
    assert seen is not None and (seen.record.owner, seen.record.result) == (holder, "2")


def test_texts_keep_their_separators_and_empty_texts(store: RedisStore) -> None:
    """Owner, fingerprint, codec, error type and result come back exactly, separators of the
    record's layout and empty texts (not None) included."""
    odd = ":,\n*-1\u00e9\U0001f600"
    request = ClaimRequest("tests.redis.texts", "k", odd + "fp", odd + "owner", 60_000, 10_000, 0)
    assert store.claim(request) is None
    found = store.claim(ClaimRequest("tests.redis.texts", "k", None, "other", 60_000, 10_000, 0))
    assert found is not None
    assert (found.record.owner, found.record.fingerprint) == (odd + "owner", odd + "fp")
    assert store.complete(request, status="failed", codec="", result=odd, error_type="")
    seen = store.read("tests.redis.texts", "k")
    assert seen is not None
    record = seen.record
    assert (record.status, record.result_codec, record.result, record.error_type) == ("failed", "", odd, "")
    assert record.fingerprint == odd + "fp"
    empty = ClaimRequest("tests.redis.texts", "e", "", "o", 60_000, 10_000, 0)
    assert store.claim(empty) is None
    seen = store.read("tests.redis.texts", "e")
    assert seen is not None and seen.record.fingerprint == ""


def test_completion_sent_again_answers_true(store: RedisStore) -> None:
    """A completion its owner already stored (a retry after a lost reply) answers True;
    another outcome afterwards is refused."""
    request = ClaimRequest("tests.redis.again", "k", None, "owner", 60_000, 10_000, 0)
    assert store.claim(request) is None
    assert store.complete(request, status="completed", codec="json", result="1")
    assert store.complete(request, status="completed", codec="json", result="1")
    assert not store.complete(request, status="failed", codec="json", result="[]", error_type="x.Y")
    seen = store.read("tests.redis.again", "k")
    assert seen is not None and (seen.record.status, seen.record.result) == ("completed", "1")


def test_claim_again_when_the_found_claim_is_released_meanwhile(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """A claim that finds another caller's claim reads its creation time in a second step; if
    that claim was released in between, the claim is made again instead of reporting a claim
    it did not make."""
    holder = ClaimRequest("tests.redis.gone", "k", None, "holder", 60_000, 10_000, 0)
    late = ClaimRequest("tests.redis.gone", "k", None, "late", 60_000, 10_000, 0)

    class Releasing(RedisStore):
        releases = 0

        def read(self, scope: str, key: str) -> Any:
            if not self.releases:  # between the claim's SET and its read of the expiry
                self.releases += 1
                assert self.release(holder)
            return super().read(scope, key)

    store = Releasing(redis_client, prefix=redis_prefix)
    assert store.claim(holder) is None
    assert store.claim(late) is None
    assert store.releases == 1
    seen = RedisStore(redis_client, prefix=redis_prefix).read("tests.redis.gone", "k")
    assert seen is not None and seen.record.owner == "late"


def test_a_key_of_another_type_is_an_error_and_the_connection_stays_usable(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """A key holding something else (a hash) makes the claim fail with Redis's error; the
    claim's second reply is still read, so the next command on the connection gets its own."""
    redis_client.hset(store.redis_key("tests.redis.type", "k"), "a", "b")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.claim(ClaimRequest("tests.redis.type", "k", None, "o", 60_000, 10_000, 0))
    assert store.claim(ClaimRequest("tests.redis.type", "other", None, "o", 60_000, 10_000, 0)) is None
    seen = store.read("tests.redis.type", "other")
    assert seen is not None and seen.record.owner == "o"


def test_single_connection_clients(redis_prefix: str) -> None:
    """Clients made with single_connection_client=True (sync and async) work through the
    client's own command path."""
    runs: list[str] = []
    sync_client = redis.Redis.from_url(REDIS_URL, single_connection_client=True)
    store = RedisStore(sync_client, prefix=redis_prefix)

    @idempotent(key_from="key", scope="tests.redis.single", mode="lease", store=store)
    def work(key: str) -> str:
        runs.append(key)
        return "sync"

    assert work("s") == work("s") == "sync"

    async def scenario() -> list[str]:
        client = redis.asyncio.Redis.from_url(REDIS_URL, single_connection_client=True)
        astore = RedisStore(client, prefix=redis_prefix)

        @idempotent(key_from="key", scope="tests.redis.asingle", mode="lease", store=astore)
        async def awork(key: str) -> str:
            runs.append(key)
            return "async"

        try:
            return [await awork("a"), await awork("a")]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["async", "async"]
    assert runs == ["s", "a"]
    sync_client.close()


def test_claim_without_its_key_expiry_counts_as_abandoned(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """A claim whose key lost its expiry behind the store's back (PERSIST) has no known creation
    time: another caller's claim finds it with its lease ended instead of waiting forever."""
    scope = "tests.redis.persist"
    assert store.claim(ClaimRequest(scope, "k", None, "holder", 60_000, 10_000, 0)) is None
    assert redis_client.persist(store.redis_key(scope, "k"))
    found = store.claim(ClaimRequest(scope, "k", None, "other", 60_000, 10_000, 0))
    assert found is not None and found.record.owner == "holder"
    assert decide(found.record, None, found.now).outcome is Outcome.TAKEOVER


def _upper(store: RedisStore, scope: str, runs: list[str] | None = None) -> Any:
    """A lease-mode function on ``store`` returning its key in capitals (recorded in ``runs``)."""

    @idempotent(key_from="key", scope=scope, mode="lease", store=store)
    def work(key: str) -> str:
        if runs is not None:
            runs.append(key)
        return key.upper()

    return work


def _count_lends(pool: Any) -> list[int]:
    """Count the connections ``pool`` lends through redis-py's ``get_connection()``."""
    lent = [0]
    original = pool.get_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        lent[0] += 1
        return original(*args, **kwargs)

    pool.get_connection = counted
    return lent


def _assert_pool_balanced(pool: Any) -> None:
    """Nothing left in use, and no idle connection listed twice."""
    assert len(pool._in_use_connections) == 0
    idle = pool._available_connections
    assert len({id(conn) for conn in idle}) == len(idle)


def test_sync_calls_from_threads_leave_the_pool_balanced(redis_prefix: str) -> None:
    """8 threads making first calls and replays on one client: every call gets its own result,
    the steps take idle connections straight from the pool (redis-py's lending is not used once
    the connections exist), and afterwards no connection is left in use or listed twice."""
    client = redis.Redis.from_url(REDIS_URL)
    store = RedisStore(client, prefix=redis_prefix)
    runs: list[str] = []

    work = _upper(store, "tests.redis.pool", runs)

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                key = f"t{n}-{i}"
                assert work(key) == work(key) == key.upper()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(runs) == len(set(runs)) == 200
        _assert_pool_balanced(client.connection_pool)
        lent = _count_lends(client.connection_pool)
        assert work("after") == "AFTER" and work("after") == "AFTER"
        assert lent == [0]
        assert client.ping()
    finally:
        client.close()


def test_fifty_async_tasks_leave_the_pool_balanced(redis_prefix: str) -> None:
    """50 concurrent tasks, each a first call and its replay: right results, one run per key,
    no connection left in use or listed twice, and sequential calls then lend no connection
    through redis-py."""
    runs: list[str] = []

    async def scenario() -> list[int]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        store = RedisStore(client, prefix=redis_prefix)

        @idempotent(key_from="key", scope="tests.redis.apool", mode="lease", store=store)
        async def work(key: str) -> str:
            runs.append(key)
            await asyncio.sleep(0)  # let the other tasks interleave with this one's steps
            return key.upper()

        async def twice(key: str) -> None:
            assert await work(key) == key.upper()
            assert await work(key) == key.upper()

        try:
            await asyncio.gather(*(twice(f"a{n}") for n in range(CALLERS)))
            _assert_pool_balanced(client.connection_pool)
            lent = [0]
            original = client.connection_pool.get_connection

            async def counted(*args: Any, **kwargs: Any) -> Any:
                lent[0] += 1
                return await original(*args, **kwargs)

            client.connection_pool.get_connection = counted  # type: ignore[method-assign]
            assert await work("after") == "AFTER" and await work("after") == "AFTER"
            counted_lends = list(lent)
            assert await client.ping()
            return counted_lends
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [0]
    assert sorted(runs) == sorted([f"a{n}" for n in range(CALLERS)] + ["after"])


def _kill_clients(name: str) -> int:
    """Close, from the server side, every connection of clients named ``name``."""
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        ids = [entry["id"] for entry in admin.client_list() if entry.get("name") == name]
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        admin.close()


def test_idle_connection_closed_by_the_server(redis_prefix: str) -> None:
    """A pooled connection the server closed while idle: the next first call still runs once
    and completes (its step is sent again on a new connection), and its replay is served."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL, client_name=name)
    store = RedisStore(client, prefix=redis_prefix)
    runs: list[str] = []

    work = _upper(store, "tests.redis.idle", runs)

    try:
        assert work("one") == "ONE"
        assert _kill_clients(name) == 1
        assert work("two") == "TWO"
        assert work("two") == "TWO"
        assert runs == ["one", "two"]
        _assert_pool_balanced(client.connection_pool)
    finally:
        client.close()


def test_async_idle_connection_closed_by_the_server(redis_prefix: str) -> None:
    """:func:`test_idle_connection_closed_by_the_server` on the async client."""
    name = f"idem-{uuid.uuid4().hex[:8]}"
    runs: list[str] = []

    async def scenario() -> list[str]:
        client = redis.asyncio.Redis.from_url(REDIS_URL, client_name=name)
        store = RedisStore(client, prefix=redis_prefix)

        @idempotent(key_from="key", scope="tests.redis.aidle", mode="lease", store=store)
        async def work(key: str) -> str:
            runs.append(key)
            return key.upper()

        try:
            results = [await work("one")]
            assert _kill_clients(name) == 1
            results += [await work("two"), await work("two")]
            _assert_pool_balanced(client.connection_pool)
            return results
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["ONE", "TWO", "TWO"]
    assert runs == ["one", "two"]


def test_pool_of_another_process_goes_through_redis_py(redis_prefix: str) -> None:
    """A pool made by another process (as after ``fork()``) is never lent from directly: the
    call goes through redis-py, which starts the pool afresh for this process."""
    client = redis.Redis.from_url(REDIS_URL)
    store = RedisStore(client, prefix=redis_prefix)

    work = _upper(store, "tests.redis.fork")

    try:
        assert work("x") == "X"
        pool = client.connection_pool
        inherited = list(pool._available_connections)
        pool.pid = os.getpid() + 1  # what a forked child sees: its parent's pool
        assert work("y") == "Y"
        assert pool.pid == os.getpid()  # redis-py reset the pool for this process
        assert not any(conn in pool._available_connections for conn in inherited)
    finally:
        client.close()


def test_pool_subclasses_go_through_redis_py(redis_prefix: str) -> None:
    """A blocking pool (a redis-py subclass with its own lending rules) lends every connection
    itself; calls work as with the plain pool."""
    pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=2)
    client = redis.Redis(connection_pool=pool)
    store = RedisStore(client, prefix=redis_prefix)

    work = _upper(store, "tests.redis.blocking")

    try:
        assert work("warm") == "WARM"
        lent = _count_lends(pool)
        assert work("b") == "B" and work("b") == "B"
        assert lent[0] >= 3  # claim, completion, replay
    finally:
        client.close()


def test_async_reply_that_never_comes_ends_at_the_socket_timeout(proxy: Proxy, redis_prefix: str) -> None:
    """An async claim whose reply never arrives on a connection that stays open (a stalled
    network): the exchange is given up after the client's ``socket_timeout``, the claim is sent
    again on a new connection, and the function runs exactly once."""
    runs: list[str] = []

    async def scenario() -> list[str]:
        client = redis.asyncio.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.5)
        store = RedisStore(client, prefix=redis_prefix)

        @idempotent(key_from="key", scope="tests.redis.stall", mode="lease", store=store)
        async def work(key: str) -> str:
            runs.append(key)
            return f"ran {key}"

        try:
            results = [await work("warm-up")]
            proxy.hold_next_reply()
            results += [await work("held"), await work("held")]
            return results
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ["ran warm-up", "ran held", "ran held"]
    assert proxy.held == 1
    assert proxy.accepted == 2  # the stalled connection was given up for a new one
    assert runs == ["warm-up", "held"]
