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
from idempotent.stores import record_key

__all__ = ["RedisStore"]

#: Each record is one string: a header line, then the texts it gives the lengths of.
#:
#:     <status><created_at>,<locked_until - created_at>,<expires_at - created_at>,
#:     <owner>,<fingerprint>,<result_codec>,<error_type>,<result>\n   (byte lengths; -1: None)
#:     <owner><fingerprint><result_codec><error_type><result>
#:
#: The status is one letter (``i``, ``c``, ``f``). Times are epoch milliseconds on the server's
#: clock plus the caller's offset (``ARGV[1]``); ``created_at`` is the claim script's ``TIME``.
_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[1]
"""

#: The record under KEYS[1] (``v``), its header and where its owner starts, and whether
#: ARGV[2] is its owner (``mine``).
_OWNER = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local st, ca, dlu, dea, ol, p = string.match(v, '^(%a)(%-?%d+),(%-?%d+),(%-?%d+),(%d+),[^\\n]*\\n()')
local mine = tonumber(ol) == #ARGV[2] and string.sub(v, p, p + #ARGV[2] - 1) == ARGV[2]
"""

#: ARGV: offset, the header after created_at and the texts (``,lease,ttl,...\n owner fp``),
#: the key's expiry (ms). Returns now (claimed) or {now, record}.
_CLAIM = (
    _NOW
    + """
local old = redis.call('GET', KEYS[1])
if old then return {now, old} end
redis.call('SET', KEYS[1], 'i' .. string.format('%d', now) .. ARGV[2], 'PX', ARGV[3])
return now
"""
)

#: ARGV: as for the claim, then the replaced record's owner, status letter and locked_until.
_TAKEOVER = (
    _NOW
    + """
local v = redis.call('GET', KEYS[1])
if v then
  local st, ca, dlu, ol, p = string.match(v, '^(%a)(%-?%d+),(%-?%d+),%-?%d+,(%d+),[^\\n]*\\n()')
  if not (st == ARGV[5] and ca + dlu == tonumber(ARGV[6]) and tonumber(ol) == #ARGV[4]
      and string.sub(v, p, p + #ARGV[4] - 1) == ARGV[4]) then
    return {now, v}
  end
end
redis.call('SET', KEYS[1], 'i' .. string.format('%d', now) .. ARGV[2], 'PX', ARGV[3])
return now
"""
)

#: ARGV: offset, owner, lease ms.
_RENEW = (
    _OWNER
    + _NOW
    + """
if not mine or st ~= 'i' then return 0 end
local lu = now + ARGV[3]
redis.call('SET', KEYS[1], 'i' .. ca .. ',' .. string.format('%d', lu - ca) .. ',' .. dea .. string.sub(v, #st + #ca + #dlu + #dea + 3),
  'PX', math.max(1, math.max(lu, ca + dea) - now))
return 1
"""
)

#: ARGV: offset, owner, status letter, how long the outcome is kept at least (ms: the caller's
#: wait, so that waiters see it), the header after expires_at and the texts.
_COMPLETE = (
    _OWNER
    + """
if not mine then return 0 end
if st == ARGV[3] then return 1 end
if st ~= 'i' then return 0 end
"""
    + _NOW
    + """
local ea = math.max(ca + dea, now + ARGV[4])
if ea <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('SET', KEYS[1], ARGV[3] .. ca .. ',' .. dlu .. ',' .. string.format('%d', ea - ca) .. ARGV[5],
  'PX', ea - now)
return 1
"""
)

#: ARGV: offset, owner.
_RELEASE = (
    _OWNER
    + """
if not mine or st ~= 'i' then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
)

#: ARGV: offset. Returns now (no record) or {now, record}.
_READ = (
    _NOW
    + """
local v = redis.call('GET', KEYS[1])
if v then return {now, v} end
return now
"""
)


class _Script:
    """A Lua script and its SHA1, as ``EVALSHA`` names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()  # noqa: S324  (the name Redis gives a script)


CLAIM, TAKEOVER, RENEW, COMPLETE, RELEASE, READ = (
    _Script(s) for s in (_CLAIM, _TAKEOVER, _RENEW, _COMPLETE, _RELEASE, _READ)
)

_LETTER = {"in_progress": b"i", "completed": b"c", "failed": b"f"}
_STATUS = {ord(letter): status for status, letter in _LETTER.items()}
_EVALSHA, _ONE = b"EVALSHA", b"1"


#: Errors after which redis-py has closed the connection: the command is sent again through
#: the client's own retrying path (every step is safe to send again).
_DROPPED = (_redis.ConnectionError, _redis.TimeoutError)
#: redis-py before 5.3 asks for the command's name when lending a connection.
_NAMED = tuple(int(part) for part in _redis.__version__.split(".")[:2] if part.isdigit()) < (5, 3)


def _execute(client: Any, command: tuple[Any, ...]) -> Any:
    """``client.execute_command(*command)`` on a pooled connection, without the per-call retry
    wrapper and metrics; a dropped connection falls back to ``execute_command`` (retries)."""
    if client.connection is not None:  # a single-connection client locks its connection
        return client.execute_command(*command)
    pool = client.connection_pool
    conn = pool.get_connection(command[0]) if _NAMED else pool.get_connection()
    try:
        conn.send_command(*command)
        return conn.read_response()
    except _DROPPED:
        pass
    finally:
        pool.release(conn)
    return client.execute_command(*command)


async def _aexecute(client: Any, command: tuple[Any, ...]) -> Any:
    """:func:`_execute` on a ``redis.asyncio.Redis``."""
    if client.single_connection_client:  # it locks its one connection
        return await client.execute_command(*command)
    pool = client.connection_pool
    conn = await (pool.get_connection(command[0]) if _NAMED else pool.get_connection())
    try:
        await conn.send_command(*command)
        return await conn.read_response()
    except _DROPPED:
        pass
    finally:
        await pool.release(conn)
    return await client.execute_command(*command)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _texts(*texts: str | None) -> bytes:
    """``,<len>,...\\n`` and the texts (UTF-8, -1 for None), as the record's header ends."""
    raws = [b"" if text is None else _raw(text) for text in texts]
    lengths = b",".join([b"-1" if text is None else b"%d" % len(raw) for text, raw in zip(texts, raws)])
    return b"," + lengths + b"\n" + b"".join(raws)


def _claim_tail(request: ClaimRequest) -> bytes:
    """What follows ``created_at`` in a new claim's record."""
    owner = _raw(request.owner)
    fingerprint = request.fingerprint
    if fingerprint is None:
        return b",%d,%d,%d,-1,-1,-1,-1\n%s" % (request.lease_ms, request.ttl_ms, len(owner), owner)
    fp = _raw(fingerprint)
    return b",%d,%d,%d,%d,-1,-1,-1\n%s%s" % (request.lease_ms, request.ttl_ms, len(owner), len(fp), owner, fp)


def _decode(scope: str, key: str, reply: Any) -> Existing | None:
    """The record and the server's clock in a claim's or read's reply (None: no record)."""
    if reply.__class__ is int:
        return None
    now, value = reply
    if value.__class__ is str:  # a client with decode_responses=True
        value = _raw(value)
    end = value.index(b"\n")
    created, lease, ttl, *lengths = (int(n) for n in value[1:end].split(b","))
    texts: list[str | None] = []
    at = end + 1
    for length in lengths:
        if length < 0:
            texts.append(None)
        else:
            texts.append(_text(value[at : at + length]))
            at += length
    owner, fingerprint, codec, error_type, result = texts
    record = Record(
        scope, key, fingerprint, _STATUS[value[0]], owner or "", created + lease, created, created + ttl,
        codec, result, error_type,
    )  # fmt: skip
    return Existing(record, int(now))


class RedisStore:
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
        self._offset_arg = b"%d" % self._offset_ms

    def redis_key(self, scope: str, key: str) -> bytes:
        """The Redis key of ``(scope, key)``: the prefix, the scope's length, the scope, the key."""
        return _raw(self.prefix + record_key(scope, key))

    def _key(self, scope: str, key: str) -> bytes:
        # redis_key() without the call: f"{len(scope)}:{scope}:{key}" is record_key()'s layout.
        return f"{self.prefix}{len(scope)}:{scope}:{key}".encode("utf-8", "surrogatepass")

    # -- sending scripts ----------------------------------------------------------------------------
    def _eval(self, script: _Script, key: bytes, *args: Any) -> Any:
        client = self.client
        if client is None:
            raise ConfigurationError(
                f"{self!r} has only an async client, which plain (sync) functions cannot use: give it a "
                "redis.Redis too, RedisStore(redis.Redis(...), async_client=...), or use RedisStore.from_url"
            )
        command = (_EVALSHA, script.sha, _ONE, key, self._offset_arg, *args)
        try:
            return _execute(client, command)
        except NoScriptError:
            client.script_load(script.source)
            return _execute(client, command)

    async def _aeval(self, script: _Script, key: bytes, *args: Any) -> Any:
        client = self.async_client
        if client is None:
            return await anyio.to_thread.run_sync(lambda: self._eval(script, key, *args))
        command = (_EVALSHA, script.sha, _ONE, key, self._offset_arg, *args)
        try:
            return await _aexecute(client, command)
        except NoScriptError:
            await client.script_load(script.source)
            return await _aexecute(client, command)

    # -- each step: its script and arguments, and what its reply means ------------------------------
    def _claim_call(self, request: ClaimRequest, replacing: Record | None) -> tuple[Any, ...]:
        key = self._key(request.scope, request.key)
        expiry = b"%d" % max(request.lease_ms, request.ttl_ms)
        if replacing is None:
            return CLAIM, key, _claim_tail(request), expiry
        seen = (_raw(replacing.owner), _LETTER.get(replacing.status, b"?"), b"%d" % replacing.locked_until)
        return TAKEOVER, key, _claim_tail(request), expiry, *seen

    def _complete_call(
        self, request: ClaimRequest, status: str, codec: str | None, result: str | None, error_type: str | None
    ) -> tuple[Any, ...]:
        owner = _raw(request.owner)
        letter = _LETTER[status]
        texts = _texts(request.owner, request.fingerprint, codec, error_type, result)
        return COMPLETE, self._key(request.scope, request.key), owner, letter, b"%d" % request.wait_ms, texts

    def claim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """Claim ``request``'s key (None), or return the stored record and the server's clock."""
        return _decode(request.scope, request.key, self._eval(*self._claim_call(request, replacing)))

    async def aclaim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """:meth:`claim`, awaited."""
        return _decode(request.scope, request.key, await self._aeval(*self._claim_call(request, replacing)))

    def complete(
        self,
        request: ClaimRequest,
        *,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None = None,
    ) -> bool:
        """Store the outcome while ``request.owner`` holds the key in progress."""
        return bool(self._eval(*self._complete_call(request, status, codec, result, error_type)))

    async def acomplete(
        self,
        request: ClaimRequest,
        *,
        status: str,
        codec: str | None,
        result: str | None,
        error_type: str | None = None,
    ) -> bool:
        """:meth:`complete`, awaited."""
        return bool(await self._aeval(*self._complete_call(request, status, codec, result, error_type)))

    def renew(self, request: ClaimRequest) -> bool:
        """Push the lease while ``request.owner`` holds the key in progress."""
        key = self._key(request.scope, request.key)
        return bool(self._eval(RENEW, key, _raw(request.owner), b"%d" % request.lease_ms))

    async def arenew(self, request: ClaimRequest) -> bool:
        """:meth:`renew`, awaited."""
        key = self._key(request.scope, request.key)
        return bool(await self._aeval(RENEW, key, _raw(request.owner), b"%d" % request.lease_ms))

    def release(self, request: ClaimRequest) -> bool:
        """Delete the record while ``request.owner`` holds it in progress."""
        return bool(self._eval(RELEASE, self._key(request.scope, request.key), _raw(request.owner)))

    async def arelease(self, request: ClaimRequest) -> bool:
        """:meth:`release`, awaited."""
        return bool(await self._aeval(RELEASE, self._key(request.scope, request.key), _raw(request.owner)))

    def read(self, scope: str, key: str) -> Existing | None:
        """The stored record and the server's clock, or None."""
        return _decode(scope, key, self._eval(READ, self._key(scope, key)))

    async def aread(self, scope: str, key: str) -> Existing | None:
        """:meth:`read`, awaited."""
        return _decode(scope, key, await self._aeval(READ, self._key(scope, key)))
