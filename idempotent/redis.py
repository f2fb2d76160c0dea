"""``RedisStore``: keys in Redis, for lease mode, the HTTP middleware and Celery tasks.

Install with ``pip install 'idempotent[redis]'``::

    import redis
    from idempotent import idempotent
    from idempotent.redis import RedisStore

    store = RedisStore(redis.Redis.from_url("redis://localhost:6379/0"), prefix="idem:")

    @idempotent(key_from="payment_id", mode="lease", store=store)
    def charge(payment_id: str, amount: int) -> dict[str, str]: ...

Every step is one Lua script run atomically by the server (``EVALSHA``; the script is sent
with ``SCRIPT LOAD`` only when the server answers ``NOSCRIPT``): a claim is never a read
followed by a write. Lease times come from the server's clock (``TIME`` inside the scripts),
so clients with skewed clocks agree. Each record is a hash under ``prefix`` + the key, and
expires by itself (``PEXPIRE``) once its ``ttl`` and, while it runs, its lease have passed:
no purge is needed. The scripts are safe to send again after a lost reply (the client's
``retry`` setting), because each claim, renewal and completion carries its owner's token.

Redis cannot share a transaction with your database, so transaction mode is refused: use
``mode="lease"`` (at-least-once, with crash recovery) or the SQL store.
"""

from __future__ import annotations

import hashlib
from typing import Any

try:
    import redis as _redis
    import redis.asyncio as _aredis
    from redis.exceptions import NoScriptError
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("idempotent.redis needs the redis package: pip install 'idempotent[redis]'") from exc

import anyio

from idempotent.core import ClaimRequest, Existing, Record
from idempotent.errors import ConfigurationError
from idempotent.stores import LeaseMethods, record_key

__all__ = ["RedisStore"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local k = KEYS[1]
"""

#: ARGV: clock offset, owner, lease ms, ttl ms, has fingerprint, fingerprint, replacing?,
#: replaced owner, replaced status, replaced locked_until.
_CLAIM = (
    _NOW
    + """
local cur = redis.call('HMGET', k, 'fp', 'st', 'ow', 'lu', 'ca', 'ea', 'rc', 'r', 'et')
if cur[3] then
  if not (ARGV[7] == '1' and cur[3] == ARGV[8] and cur[2] == ARGV[9] and cur[4] == ARGV[10]) then
    return {0, now, cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]}
  end
  redis.call('DEL', k)
end
local lu = now + tonumber(ARGV[3])
local ea = now + tonumber(ARGV[4])
if ARGV[5] == '1' then
  redis.call('HSET', k, 'st', 'in_progress', 'ow', ARGV[2], 'lu', string.format('%d', lu),
    'ca', string.format('%d', now), 'ea', string.format('%d', ea), 'fp', ARGV[6])
else
  redis.call('HSET', k, 'st', 'in_progress', 'ow', ARGV[2], 'lu', string.format('%d', lu),
    'ca', string.format('%d', now), 'ea', string.format('%d', ea))
end
redis.call('PEXPIRE', k, math.max(1, math.max(lu, ea) - now))
return {1, now}
"""
)

#: ARGV: clock offset, owner, lease ms.
_RENEW = (
    _NOW
    + """
local cur = redis.call('HMGET', k, 'ow', 'st', 'ea')
if cur[1] ~= ARGV[2] or cur[2] ~= 'in_progress' then return 0 end
local lu = now + tonumber(ARGV[3])
redis.call('HSET', k, 'lu', string.format('%d', lu))
redis.call('PEXPIRE', k, math.max(1, math.max(lu, tonumber(cur[3])) - now))
return 1
"""
)

#: ARGV: clock offset, owner, status, then flag and value of result_codec, result, error_type,
#: then how long the outcome is kept at least (ms: the caller's wait, so that waiters see it).
_COMPLETE = (
    _NOW
    + """
local cur = redis.call('HMGET', k, 'ow', 'st', 'ea')
if cur[1] ~= ARGV[2] then return 0 end
if cur[2] == ARGV[3] then return 1 end
if cur[2] ~= 'in_progress' then return 0 end
local ea = math.max(tonumber(cur[3]), now + tonumber(ARGV[10]))
local left = ea - now
if left <= 0 then
  redis.call('DEL', k)
  return 1
end
local set, gone = {'st', ARGV[3], 'ea', string.format('%d', ea)}, {}
local names = {'rc', 'r', 'et'}
for i = 1, 3 do
  if ARGV[2 + 2 * i] == '1' then
    set[#set + 1] = names[i]
    set[#set + 1] = ARGV[3 + 2 * i]
  else
    gone[#gone + 1] = names[i]
  end
end
redis.call('HSET', k, unpack(set))
if #gone > 0 then redis.call('HDEL', k, unpack(gone)) end
redis.call('PEXPIRE', k, left)
return 1
"""
)

#: ARGV: clock offset, owner.
_RELEASE = (
    _NOW
    + """
local cur = redis.call('HMGET', k, 'ow', 'st')
if cur[1] ~= ARGV[2] or cur[2] ~= 'in_progress' then return 0 end
redis.call('DEL', k)
return 1
"""
)

#: ARGV: clock offset.
_READ = (
    _NOW
    + """
local cur = redis.call('HMGET', k, 'fp', 'st', 'ow', 'lu', 'ca', 'ea', 'rc', 'r', 'et')
if not cur[3] then return {0, now} end
return {0, now, cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]}
"""
)


class _Script:
    """A Lua script and its SHA1, as ``EVALSHA`` names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324  (the name Redis gives a script)


CLAIM, RENEW, COMPLETE, RELEASE, READ = (_Script(s) for s in (_CLAIM, _RENEW, _COMPLETE, _RELEASE, _READ))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return str(value)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _optional(value: str | None) -> tuple[str, bytes]:
    return ("0", b"") if value is None else ("1", _raw(value))


class RedisStore(LeaseMethods):
    """Idempotency keys in Redis; implements the sync and async lease-store protocols.

    ``client`` is a ``redis.Redis`` (for plain functions, Celery tasks, WSGI) or a
    ``redis.asyncio.Redis`` (for ``async def`` functions, ASGI); give the other kind as
    ``async_client=`` to serve both, or build both with :meth:`from_url`. An async function on a
    store with only a sync client runs its Redis calls in a worker thread; a plain function on a
    store with only an async client is a :class:`ConfigurationError`. ``prefix`` starts every
    Redis key (``"idempotent:"`` by default). ``clock_offset`` (seconds) is added to the server's
    clock, so tests move time forward without sleeping.
    """

    #: Not atomic with the caller's database writes: lease mode only.
    atomic = False

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = "idempotent:",
        clock_offset: float = 0.0,
    ) -> None:
        if isinstance(client, _aredis.Redis):
            client, async_client = async_client, client
        if client is not None and not isinstance(client, _redis.Redis):
            raise ConfigurationError(
                f"RedisStore takes a redis.Redis or redis.asyncio.Redis client, not {client!r}"
            )
        if async_client is not None and not isinstance(async_client, _aredis.Redis):
            raise ConfigurationError(f"async_client must be a redis.asyncio.Redis, not {async_client!r}")
        if client is None and async_client is None:
            raise ConfigurationError(
                "RedisStore needs a client: RedisStore(redis.Redis(...)), "
                "RedisStore(redis.asyncio.Redis(...)) "
                "or RedisStore.from_url('redis://localhost:6379/0')"
            )
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be text, not {prefix!r}")
        self.client = client
        self.async_client = async_client
        self.prefix = prefix
        self.clock_offset = clock_offset

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "idempotent:", **kwargs: Any) -> RedisStore:
        """A store with a sync and an async client on ``url`` (``kwargs`` go to both clients)."""
        return cls(
            _redis.Redis.from_url(url, **kwargs),
            async_client=_aredis.Redis.from_url(url, **kwargs),
            prefix=prefix,
        )

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"

    @property
    def clock_offset(self) -> float:
        """Seconds added to the server's clock."""
        return self._offset_ms / 1000.0

    @clock_offset.setter
    def clock_offset(self, seconds: float) -> None:
        self._offset_ms = round(seconds * 1000)

    def redis_key(self, scope: str, key: str) -> bytes:
        """The Redis key of ``(scope, key)``: the prefix, the scope's length, the scope, the key."""
        return _raw(self.prefix + record_key(scope, key))

    # -- sending scripts ----------------------------------------------------------------------------
    def _eval(self, script: _Script, key: bytes, args: tuple[Any, ...]) -> Any:
        client = self.client
        if client is None:
            raise ConfigurationError(
                f"{self!r} has only an async client, which plain (sync) functions cannot use: give it a "
                "redis.Redis too, RedisStore(redis.Redis(...), async_client=...), or use RedisStore.from_url"
            )
        try:
            return client.evalsha(script.sha, 1, key, self._offset_ms, *args)
        except NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, 1, key, self._offset_ms, *args)

    async def _aeval(self, script: _Script, key: bytes, args: tuple[Any, ...]) -> Any:
        client = self.async_client
        if client is None:
            return await anyio.to_thread.run_sync(self._eval, script, key, args)
        try:
            return await client.evalsha(script.sha, 1, key, self._offset_ms, *args)
        except NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, 1, key, self._offset_ms, *args)

    # -- LeaseMethods hooks: one script per step; arguments and answers shared by both sides -------
    def _script(self, name: str, args: tuple[Any, ...]) -> tuple[_Script, bytes, tuple[Any, ...]]:
        """The script, Redis key and script arguments of one protocol step."""
        if name == "read":
            return READ, self.redis_key(*args), ()
        request = args[0]
        key = self.redis_key(request.scope, request.key)
        owner = _raw(request.owner)
        if name == "claim":
            return CLAIM, key, self._claim_args(request, args[1])
        if name == "renew":
            return RENEW, key, (owner, request.lease_ms)
        if name == "release":
            return RELEASE, key, (owner,)
        status, codec, result, error_type = args[1:]
        outcome = (*_optional(codec), *_optional(result), *_optional(error_type))
        return COMPLETE, key, (owner, status, *outcome, request.wait_ms)

    def _answer(self, name: str, args: tuple[Any, ...], reply: Any) -> Any:
        if name == "claim":
            return self._record(args[0].scope, args[0].key, reply)
        if name == "read":
            return self._record(args[0], args[1], reply)
        return bool(reply)

    def _step(self, name: str, args: tuple[Any, ...]) -> Any:
        return self._answer(name, args, self._eval(*self._script(name, args)))

    async def _astep(self, name: str, args: tuple[Any, ...]) -> Any:
        return self._answer(name, args, await self._aeval(*self._script(name, args)))

    def _claim_args(self, request: ClaimRequest, replacing: Record | None) -> tuple[Any, ...]:
        has_fp, fp = _optional(request.fingerprint)
        seen: tuple[Any, ...] = ("0", b"", b"", b"")
        if replacing is not None:
            seen = ("1", _raw(replacing.owner), replacing.status, str(int(replacing.locked_until)))
        return (_raw(request.owner), request.lease_ms, request.ttl_ms, has_fp, fp, *seen)

    @staticmethod
    def _record(scope: str, key: str, reply: Any) -> Existing | None:
        if len(reply) < 3:
            return None
        fp, st, ow, lu, ca, ea, rc, r, et = reply[2:11]
        record = Record(
            scope, key, _text(fp), _text(st) or "", _text(ow) or "", int(lu), int(ca), int(ea),
            _text(rc), _text(r), _text(et),
        )  # fmt: skip
        return Existing(record, int(reply[1]))
