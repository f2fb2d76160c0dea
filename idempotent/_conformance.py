"""``StoreConformance``: the tests every lease store must pass, for pytest (imported lazily by
:mod:`idempotent.testing`, so the library never needs pytest)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from idempotent.core import (
    AsyncLeaseStore,
    ClaimAborted,
    ClaimBlocked,
    ClaimRequest,
    Existing,
    LeaseStore,
    Outcome,
    Record,
    Status,
    decide,
)
from idempotent.errors import KeyReused

__all__ = ["StoreConformance"]

_IN_PROGRESS = Status.IN_PROGRESS.value
_COMPLETED = Status.COMPLETED.value
_FAILED = Status.FAILED.value
#: Seconds one store call may take before the test fails (instead of hanging).
_CALL_TIMEOUT = 120.0
#: A claim that meets a transient conflict (ClaimAborted, ClaimBlocked) is sent again this often.
_CLAIM_ATTEMPTS = 5


def _every_allowed_character_keys(every_code_point: bool) -> list[str]:
    """Keys of 255 characters that together use every allowed code point (U+0001 to U+10FFFF
    without the surrogates; only U+0001 to U+07FF unless ``every_code_point``), then short keys
    that stores tend to confuse."""
    end = 0x110000 if every_code_point else 0x800
    run = [chr(c) for c in range(1, end) if not 0xD800 <= c <= 0xDFFF]
    keys = ["".join(run[start : start + 255]) for start in range(0, len(run), 255)]
    keys += [
        "ABC", "abc", "é", "e", "e\u0301", "a", "a ", " a", "a\t", "a\n", "\u00a0",
        "\ufeff", "\u2028", "\ue000", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff",
        "*", "?", "[a]", "{tag}", "%", "_", "'", '"', "\\", ":", "0:x", "1:a:b",
        "\U0010ffff" * 255, "k" * 255, "7",
    ]  # fmt: skip
    return keys


class _Api:
    """One side (blocking or async) of a store's lease-store methods, called the same way."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.store, name)(*args, **kwargs)

    def claim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """Claim, sending it again after a transient conflict, as the core does."""
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                return self.call("claim", request, replacing)  # type: ignore[no-any-return]
            except (ClaimAborted, ClaimBlocked):
                if attempt == _CLAIM_ATTEMPTS - 1:
                    raise
        raise AssertionError  # pragma: no cover

    def renew(self, request: ClaimRequest) -> bool:
        return bool(self.call("renew", request))

    def complete(self, request: ClaimRequest, **outcome: Any) -> bool:
        return bool(self.call("complete", request, **outcome))

    def release(self, request: ClaimRequest) -> bool:
        return bool(self.call("release", request))

    def read(self, scope: str, key: str) -> Existing | None:
        return self.call("read", scope, key)  # type: ignore[no-any-return]

    def run_function(self, make: Callable[[bool], Callable[..., Any]], *args: Any) -> Any:
        """Call the function ``make(is_async)`` builds with ``args``."""
        return make(False)(*args)


class _AsyncApi(_Api):
    """The ``a``-methods, run on an event loop in a thread of their own (so that the tests,
    written once, call them from any number of threads)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(store)
        self.loop = loop

    def wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.wait(getattr(self.store, "a" + name)(*args, **kwargs))

    def run_function(self, make: Callable[[bool], Callable[..., Any]], *args: Any) -> Any:
        return self.wait(make(True)(*args))


class StoreConformance:
    """The behaviour the decision core relies on, as pytest tests any lease store can run.

    Subclass it in a test module and give a ``store`` fixture returning your store; every test
    runs once through the blocking methods and once through the ``a``-methods (each side is
    skipped when the store does not implement it)::

        from idempotent.testing import StoreConformance

        class TestMyStore(StoreConformance):
            @pytest.fixture
            def store(self, conformance_mode):       # "sync" or "async", if the store cares
                return MyStore(..., prefix=uuid.uuid4().hex)

    Time moves through :meth:`advance` (by default ``store.clock_offset += seconds``), never by
    sleeping. Override :meth:`close_async` to close async clients on the test's event loop. A
    store that is knowingly not atomic (:class:`idempotent.stores.GetSetStore`) sets
    ``atomic = False`` to skip the concurrency tests.
    """

    #: How many callers race for one key in the concurrency tests.
    claimers = 50
    #: False for a store without atomic claims: the concurrency tests are skipped.
    atomic = True
    #: The key test uses every code point of Unicode (4,361 keys of 255 characters); False
    #: limits it to U+0001-U+07FF plus the edges of Unicode, for stores slow to write 4,000 keys.
    every_code_point = True

    # -- fixtures and hooks ------------------------------------------------------------------------
    @pytest.fixture
    def store(self) -> Any:
        """The store under test: override this fixture."""
        pytest.fail("subclass StoreConformance and give it a `store` fixture returning your store")

    @pytest.fixture(params=["sync", "async"])
    def conformance_mode(self, request: pytest.FixtureRequest) -> str:
        """Which side of the protocol the test calls: ``"sync"`` or ``"async"``."""
        return str(request.param)

    @pytest.fixture
    def api(self, store: Any, conformance_mode: str) -> Iterator[_Api]:
        """The store's methods of the side under test."""
        if conformance_mode == "sync":
            if not isinstance(store, LeaseStore):
                pytest.skip(f"{store!r} has no blocking lease-store methods")
            yield _Api(store)
            return
        if not isinstance(store, AsyncLeaseStore):
            pytest.skip(f"{store!r} has no async lease-store methods")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="conformance-loop", daemon=True)
        thread.start()
        api = _AsyncApi(store, loop)
        try:
            yield api
        finally:
            try:
                api.wait(self.close_async(store))
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()

    def advance(self, store: Any, seconds: float) -> None:
        """Move the store's clock forward by ``seconds``."""
        store.clock_offset += seconds

    async def close_async(self, store: Any) -> None:
        """Called on the test's event loop after an async test: close async clients here."""

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def request(
        scope: str,
        key: str = "k",
        *,
        owner: str | None = None,
        fingerprint: str | None = "v1:conformance",
        ttl: float = 60.0,
        lease: float = 10.0,
    ) -> ClaimRequest:
        """A claim of ``(scope, key)`` by a new owner (``ttl``/``lease`` in seconds)."""
        return ClaimRequest(
            scope, key, fingerprint, owner or uuid.uuid4().hex, int(ttl * 1000), int(lease * 1000), 5000
        )

    @staticmethod
    def scope() -> str:
        """A scope no other test uses."""
        return f"conformance.{uuid.uuid4().hex[:12]}"

    def _race(self, work: Callable[[int], Any]) -> list[Any]:
        """Run ``work(i)`` for ``claimers`` threads released together; their results in order."""
        if not self.atomic:
            pytest.skip("this store does not claim atomically")
        barrier = threading.Barrier(self.claimers)
        results: list[Any] = [None] * self.claimers
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                barrier.wait()
                results[i] = work(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(self.claimers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def _lease_ended(self, api: _Api, store: Any, scope: str) -> tuple[ClaimRequest, ClaimRequest, Existing]:
        """An owner's claim whose lease has ended, and what a new caller's claim finds."""
        old = self.request(scope, lease=10)
        assert api.claim(old) is None
        self.advance(store, 11)
        new = self.request(scope)
        found = api.claim(new)
        assert found is not None
        assert found.record.owner == old.owner
        return old, new, found

    # -- claim ---------------------------------------------------------------------------------------
    def test_claim_stores_an_in_progress_record(self, api: _Api) -> None:
        """A claim of a new key stores an in-progress record with the owner, fingerprint and times
        from the store's clock; a second claim finds it and changes nothing."""
        scope = self.scope()
        first = self.request(scope, ttl=60, lease=10)
        assert api.claim(first) is None
        seen = api.read(scope, "k")
        assert seen is not None
        record = seen.record
        assert (record.scope, record.key, record.owner) == (scope, "k", first.owner)
        assert (record.status, record.fingerprint, record.result, record.error_type) == (
            _IN_PROGRESS, "v1:conformance", None, None,
        )  # fmt: skip
        assert record.locked_until == record.created_at + 10_000
        assert record.expires_at == record.created_at + 60_000
        assert record.created_at <= seen.now < record.locked_until
        assert abs(seen.now - time.time() * 1000) < 300_000, "the clock must be epoch milliseconds"
        again = api.claim(self.request(scope))
        assert again is not None and again.record == record

    def test_claim_without_fingerprint(self, api: _Api) -> None:
        """A claim without a fingerprint stores none (None, not an empty string)."""
        scope = self.scope()
        assert api.claim(self.request(scope, fingerprint=None)) is None
        seen = api.read(scope, "k")
        assert seen is not None and seen.record.fingerprint is None

    def test_read_of_an_unknown_key(self, api: _Api) -> None:
        """Reading a key never claimed answers None."""
        assert api.read(self.scope(), "absent") is None

    def test_atomic_claim_under_concurrent_claimers(self, api: _Api) -> None:
        """Of ``claimers`` simultaneous claims of one key exactly one wins; every other one
        finds the winner's record."""
        scope = self.scope()
        requests = [self.request(scope) for _ in range(self.claimers)]
        results = self._race(lambda i: api.claim(requests[i]))
        winners = [i for i, found in enumerate(results) if found is None]
        assert len(winners) == 1
        owner = requests[winners[0]].owner
        assert {found.record.owner for found in results if found is not None} == {owner}

    # -- leases ------------------------------------------------------------------------------------------
    def test_live_lease_makes_others_wait(self, api: _Api, store: Any) -> None:
        """While the lease runs, another caller is told to wait about as long as it has left;
        a live lease wins even over an expired ttl."""
        scope = self.scope()
        assert api.claim(self.request(scope, ttl=1, lease=30)) is None
        self.advance(store, 5)
        found = api.claim(self.request(scope))
        assert found is not None
        verdict = decide(found.record, "v1:conformance", found.now)
        assert verdict.outcome is Outcome.WAIT
        assert 20 < verdict.retry_after <= 25.5

    def test_lease_expiry_and_takeover(self, api: _Api, store: Any) -> None:
        """After the lease ends a caller takes the key over by replacing the record it saw;
        the record is then the new owner's."""
        scope = self.scope()
        _, new, found = self._lease_ended(api, store, scope)
        assert decide(found.record, "v1:conformance", found.now).outcome is Outcome.TAKEOVER
        assert api.claim(new, found.record) is None
        seen = api.read(scope, "k")
        assert seen is not None and seen.record.owner == new.owner
        assert seen.record.status == _IN_PROGRESS and seen.record.created_at >= found.record.created_at

    def test_takeover_is_atomic(self, api: _Api, store: Any) -> None:
        """Of ``claimers`` callers replacing the same expired claim exactly one wins."""
        scope = self.scope()
        assert api.claim(self.request(scope, lease=10)) is None
        self.advance(store, 11)
        stale = api.read(scope, "k")
        assert stale is not None
        requests = [self.request(scope) for _ in range(self.claimers)]
        results = self._race(lambda i: api.claim(requests[i], stale.record))
        winners = [i for i, found in enumerate(results) if found is None]
        assert len(winners) == 1
        assert {f.record.owner for f in results if f is not None} == {requests[winners[0]].owner}

    def test_replacing_a_record_that_changed_fails(self, api: _Api, store: Any) -> None:
        """A takeover based on a record its owner has renewed since is refused."""
        scope = self.scope()
        owner = self.request(scope, lease=10)
        assert api.claim(owner) is None
        self.advance(store, 11)
        stale = api.read(scope, "k")
        assert stale is not None
        assert api.renew(owner)
        found = api.claim(self.request(scope), stale.record)
        assert found is not None and found.record.owner == owner.owner
        assert decide(found.record, "v1:conformance", found.now).outcome is Outcome.WAIT

    def test_stale_owner_is_fenced(self, api: _Api, store: Any) -> None:
        """Once its key was taken over, the old owner can no longer renew, complete or release it."""
        scope = self.scope()
        old, new, found = self._lease_ended(api, store, scope)
        assert api.claim(new, found.record) is None
        assert not api.renew(old)
        assert not api.complete(old, status=_COMPLETED, codec="json", result='"late"')
        assert not api.release(old)
        seen = api.read(scope, "k")
        assert seen is not None and seen.record.owner == new.owner and seen.record.result is None
        assert api.complete(new, status=_COMPLETED, codec="json", result='"fresh"')
        seen = api.read(scope, "k")
        assert seen is not None and seen.record.result == '"fresh"'

    def test_renewal_extends_the_lease(self, api: _Api, store: Any) -> None:
        """A renewal moves ``locked_until`` to now + lease on the store's clock, so the key stays
        held past the first lease; only its owner can renew."""
        scope = self.scope()
        owner = self.request(scope, lease=60)
        assert api.claim(owner) is None
        self.advance(store, 40)
        assert api.renew(owner)
        seen = api.read(scope, "k")
        assert seen is not None
        assert seen.now - 10_000 <= seen.record.locked_until - 60_000 <= seen.now
        self.advance(store, 40)
        found = api.claim(self.request(scope))
        assert found is not None and found.record.owner == owner.owner
        assert decide(found.record, "v1:conformance", found.now).outcome is Outcome.WAIT
        assert not api.renew(self.request(scope))

    # -- outcomes -----------------------------------------------------------------------------------------
    def test_complete_then_replay(self, api: _Api) -> None:
        """The owner's completion is stored and every later claim finds it; completing twice with
        another outcome, or by someone else, is refused."""
        scope = self.scope()
        owner = self.request(scope)
        assert api.claim(owner) is None
        assert not api.complete(self.request(scope), status=_COMPLETED, codec="json", result="1")
        assert api.complete(owner, status=_COMPLETED, codec="json", result='{"id": 7}')
        found = api.claim(self.request(scope))
        assert found is not None
        record = found.record
        assert (record.status, record.result_codec, record.result) == (_COMPLETED, "json", '{"id": 7}')
        assert decide(record, "v1:conformance", found.now).outcome is Outcome.REPLAY
        assert decide(record, "v1:other", found.now).outcome is Outcome.MISMATCH
        assert not api.complete(owner, status=_FAILED, codec="json", result="[]", error_type="x.Y")
        assert not api.release(owner)
        assert not api.renew(owner)

    def test_none_result(self, api: _Api) -> None:
        """A completion without codec or result stores neither."""
        scope = self.scope()
        owner = self.request(scope)
        assert api.claim(owner) is None
        assert api.complete(owner, status=_COMPLETED, codec=None, result=None)
        seen = api.read(scope, "k")
        assert seen is not None and (seen.record.result_codec, seen.record.result) == (None, None)

    def test_stored_error(self, api: _Api) -> None:
        """A failure is stored with its type and arguments and found by the next claim."""
        scope = self.scope()
        owner = self.request(scope)
        assert api.claim(owner) is None
        assert api.complete(
            owner, status=_FAILED, codec="json", result='["card declined"]', error_type="shop.Declined"
        )
        found = api.claim(self.request(scope))
        assert found is not None
        record = found.record
        assert (record.status, record.error_type, record.result) == (
            _FAILED, "shop.Declined", '["card declined"]',
        )  # fmt: skip
        assert decide(record, "v1:conformance", found.now).outcome is Outcome.RAISE_STORED

    def test_ttl_expiry(self, api: _Api, store: Any) -> None:
        """Past its ttl a completed record counts as absent: the next caller replaces it."""
        scope = self.scope()
        # A minute of margin on each side, so a slow statement on a loaded machine changes nothing.
        owner = self.request(scope, ttl=3600)
        assert api.claim(owner) is None
        assert api.complete(owner, status=_COMPLETED, codec="json", result="1")
        self.advance(store, 3540)
        found = api.claim(self.request(scope))
        assert found is not None and decide(found.record, None, found.now).outcome is Outcome.REPLAY
        self.advance(store, 61)
        new = self.request(scope)
        found = api.claim(new)
        if found is not None:  # still stored (not removed by the store itself): replaced
            assert decide(found.record, None, found.now).outcome is Outcome.TAKEOVER
            assert api.claim(new, found.record) is None
        seen = api.read(scope, "k")
        assert seen is not None and seen.record.owner == new.owner
        assert (seen.record.status, seen.record.result) == (_IN_PROGRESS, None)

    def test_outcome_is_kept_at_least_the_wait(self, api: _Api, store: Any) -> None:
        """A call that outlived its ttl still stores its outcome, kept at least the caller's
        ``wait`` (5 s here) from then on, so a duplicate that waited for it replays it."""
        scope = self.scope()
        owner = self.request(scope, ttl=1, lease=30)
        assert api.claim(owner) is None
        self.advance(store, 2)
        assert api.complete(owner, status=_COMPLETED, codec="json", result="1")
        self.advance(store, 3)
        found = api.claim(self.request(scope))
        assert found is not None
        assert decide(found.record, "v1:conformance", found.now).outcome is Outcome.REPLAY

    def test_release_on_failure(self, api: _Api) -> None:
        """Releasing deletes the owner's claim, so the next caller claims at once; nobody else
        can release it."""
        scope = self.scope()
        owner = self.request(scope)
        assert api.claim(owner) is None
        assert not api.release(self.request(scope))
        assert api.read(scope, "k") is not None
        assert api.release(owner)
        assert api.read(scope, "k") is None
        assert api.claim(self.request(scope)) is None

    # -- values and keys ---------------------------------------------------------------------------------
    def test_value_of_one_mebibyte(self, api: _Api) -> None:
        """A 1 MiB result (multi-byte text) comes back exactly."""
        scope = self.scope()
        owner = self.request(scope)
        chunk = "aé€\U0001d11e"  # 1 + 2 + 3 + 4 UTF-8 bytes
        text = chunk * (1024 * 1024 // 10)
        assert api.claim(owner) is None
        assert api.complete(owner, status=_COMPLETED, codec="json", result=text)
        found = api.claim(self.request(scope))
        assert found is not None and found.record.result == text

    def test_keys_with_every_allowed_character(self, api: _Api) -> None:
        """Keys (1-255 characters, no NUL) of every character stay distinct and come back exactly:
        case, accents, trailing spaces and store syntax (``:``, ``*``, ``{}``, ``%``) included."""
        scope = self.scope()
        keys = _every_allowed_character_keys(self.every_code_point)
        owners = {}
        for key in keys:
            request = self.request(scope, key)
            owners[key] = request.owner
            assert api.claim(request) is None, f"key {key[:20]!r} collided with another key"
        for key in keys:
            seen = api.read(scope, key)
            assert seen is not None and (seen.record.key, seen.record.owner) == (key, owners[key])
        odd_scope = scope + ":é\U0001f600 {x}"
        assert api.claim(self.request(odd_scope, "k")) is None
        seen = api.read(odd_scope, "k")
        assert seen is not None and seen.record.scope == odd_scope

    # -- through the decorator -----------------------------------------------------------------------
    def test_lease_mode_function(self, api: _Api, store: Any) -> None:
        """``@idempotent(mode="lease", store=...)`` runs a function once per key on the store and
        replays its result; another payload with the same key is refused."""
        from idempotent import idempotent  # noqa: PLC0415

        scope = self.scope()
        runs: list[int] = []

        def make(is_async: bool) -> Callable[..., Any]:
            if is_async:

                @idempotent(key_from="order_id", scope=scope, mode="lease", store=store)
                async def place_async(order_id: str, amount: int) -> dict[str, int]:
                    runs.append(amount)
                    return {"amount": amount}

                return place_async

            @idempotent(key_from="order_id", scope=scope, mode="lease", store=store)
            def place(order_id: str, amount: int) -> dict[str, int]:
                runs.append(amount)
                return {"amount": amount}

            return place

        assert api.run_function(make, "o-1", 5) == {"amount": 5}
        assert api.run_function(make, "o-1", 5) == {"amount": 5}
        with pytest.raises(KeyReused):
            api.run_function(make, "o-1", 6)
        assert runs == [5]
