"""``RedisStore``: keys in Redis, for lease mode, the HTTP middleware and Celery tasks.

Install with ``pip install 'idempotent[redis]'``::

    import redis
    from idempotent import idempotent
    from idempotent.redis import RedisStore

    store = RedisStore(redis.Redis.from_url("redis://localhost:6379/0"), prefix="idem:")

    @idempotent(key_from="payment_id", mode="lease", store=store)
    def charge(payment_id: str, amount: int) -> dict[str, str]: ...

Every step is one atomic operation of the server, never a read followed by a separate write.
A claim is ``SET key record NX PX ms GET``: it stores the new in-progress record only when
there is none and returns the record already there; its time of creation is the key's own
expiry time (``PEXPIRETIME``) minus the ``PX`` it was given, both on the server's clock. The
server's ``TIME`` is read in the same round trip, for the caller's decision about a record it
finds. Renewal, completion, release and takeover are Lua scripts (``EVALSHA``; sent with
``SCRIPT LOAD`` only when the server answers ``NOSCRIPT``) that act only while the caller's
owner token holds the key, with times from ``TIME``. Each record is one string under
``prefix`` + the key, and expires by itself once its ``ttl`` and, while it runs, its lease have
passed: no purge is needed. Every step is safe to send again after a lost reply (the client's
``retry`` setting), because each carries its owner's token.

Redis cannot share a transaction with your database, so transaction mode is refused: use
``mode="lease"`` (at-least-once, with crash recovery) or the SQL store. Needs Redis 7.0 or
later (``SET ... NX GET``, ``PEXPIRETIME``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from typing import Any

try:
    import redis as _redis
    import redis.asyncio as _aredis
    from redis.asyncio.connection import ConnectionPool as _AsyncPool
    from redis.connection import ConnectionPool as _SyncPool
    from redis.exceptions import NoScriptError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("idempotent.redis needs the redis package: pip install 'idempotent[redis]'") from exc

import anyio

from idempotent._ticker import Ticker
from idempotent.core import ClaimRequest, Existing, Record
from idempotent.errors import ConfigurationError
from idempotent.stores import record_key

__all__ = ["RedisStore"]

#: Each record is one string:
#:
#:     <len(owner)>:<owner><status><created>,<locked_until - created_at>,
#:     <expires_at - created_at>,<fingerprint>,<result_codec>,<error_type>,<result>\n
#:     <fingerprint><result_codec><error_type><result>
#:
#: after ``<status>`` (one letter: ``i``, ``c``, ``f``) the header gives byte lengths (-1:
#: None) of the texts after its newline. ``<created>`` is ``created_at``, epoch milliseconds
#: on the server's clock plus the writer's offset, or, in a record stored by the claim's
#: ``SET`` (which cannot read the clock), ``*`` and ``PX - offset``: ``created_at`` is then
#: the key's ``PEXPIRETIME`` minus that number. Owner first: "is it still mine and in
#: progress?" is one comparison of the record's start with ``<len>:<owner>i``.
_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[1]
"""

#: The record ``v`` under KEYS[1]: its ``created_at`` (``ca``, a number), then as text
#: ``locked_until - created_at`` and ``expires_at - created_at`` (``dlu``, ``dea``) and where
#: the rest starts (``rest``), read from ``at`` (just after the status letter).
_CREATED = """
local star, ca, dlu, dea, rest = string.match(v, '^(%*?)(%-?%d+),(%d+),(%d+)()', at)
if star == '*' then ca = redis.call('PEXPIRETIME', KEYS[1]) - ca else ca = tonumber(ca) end
"""

#: ARGV: offset, the owner's mark ``<len>:<owner>i``; the script goes on only while it holds
#: the key in progress (``v`` is the record, ``at`` where its header starts).
_HELD = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local at = #ARGV[2] + 1
if string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then
"""

#: ARGV: offset, owner's mark, lease ms.
_RENEW = (
    _HELD
    + """
  return 0
end
"""
    + _CREATED
    + _NOW
    + """
local lu = now + ARGV[3]
local record = ARGV[2] .. string.format('%d', ca) .. ',' .. string.format('%d', lu - ca) .. ',' .. dea
  .. string.sub(v, rest)
redis.call('SET', KEYS[1], record, 'PX', string.format('%d', math.max(1, math.max(lu, ca + dea) - now)))
return 1
"""
)

#: ARGV: offset, owner's mark, the outcome's mark (``<len>:<owner><c|f>``), how long the
#: outcome is kept at least (ms: the caller's wait, so that waiters see it), the header after
#: expires_at and the texts. A completion sent again after a lost reply finds its own outcome.
_COMPLETE = (
    _HELD
    + """
  if string.sub(v, 1, #ARGV[3]) == ARGV[3] then return 1 end
  return 0
end
"""
    + _CREATED
    + _NOW
    + """
local ea = math.max(ca + dea, now + ARGV[4])
if ea <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
local record = ARGV[3] .. string.format('%d', ca) .. ',' .. dlu .. ','
  .. string.format('%d', ea - ca) .. ARGV[5]
redis.call('SET', KEYS[1], record, 'PX', string.format('%d', ea - now))
return 1
"""
)

#: ARGV: offset, owner's mark.
_RELEASE = (
    _HELD
    + """
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""
)

#: ARGV: offset. Returns now (no record) or {now, record, its PEXPIRETIME}.
_READ = (
    _NOW
    + """
local v = redis.call('GET', KEYS[1])
if not v then return now end
return {now, v, redis.call('PEXPIRETIME', KEYS[1])}
"""
)

#: ARGV: offset, the new owner's mark, the header after created_at and the texts, the key's
#: expiry (ms), then the replaced record's owner's mark (with its status letter) and
#: locked_until. Replaces the record only while it is still the one seen (or is gone);
#: returns now (claimed) or {now, record, its PEXPIRETIME}.
_TAKEOVER = (
    _NOW
    + """
local v = redis.call('GET', KEYS[1])
if v then
  local at = #ARGV[5] + 1
  local same = string.sub(v, 1, #ARGV[5]) == ARGV[5]
  if same then
"""
    + _CREATED
    + """
    same = ca + dlu == tonumber(ARGV[6])
  end
  if not same then return {now, v, redis.call('PEXPIRETIME', KEYS[1])} end
end
redis.call('SET', KEYS[1], ARGV[2] .. string.format('%d', now) .. ARGV[3], 'PX', ARGV[4])
return now
"""
)


class _Script:
    """A Lua script and its SHA1, as ``EVALSHA`` names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()  # noqa: S324  (the name Redis gives a script)


RENEW, COMPLETE, RELEASE, READ, TAKEOVER = (
    _Script(s) for s in (_RENEW, _COMPLETE, _RELEASE, _READ, _TAKEOVER)
)

_LETTER = {"in_progress": b"i", "completed": b"c", "failed": b"f"}
_STATUS = {ord(letter): status for status, letter in _LETTER.items()}
_EVALSHA, _ONE, _SET, _NX, _PX, _GET, _TIME = b"EVALSHA", b"1", b"SET", b"NX", b"PX", b"GET", b"TIME"

#: Errors after which redis-py has closed the connection: the command is sent again through
#: the client's own retrying path (every step is safe to send again).
_DROPPED = (_redis.ConnectionError, _redis.TimeoutError)
#: redis-py before 5.3 asks for the command's name when lending a connection.
_NAMED = tuple(int(part) for part in _redis.__version__.split(".")[:2] if part.isdigit()) < (5, 3)


def _pack(commands: tuple[tuple[bytes, ...], ...]) -> list[bytes]:
    """``commands`` (every argument bytes) in the Redis protocol, as one piece."""
    pieces = []
    for command in commands:
        pieces.append(b"*%d\r\n" % len(command))
        pieces.extend([b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command])
    return [b"".join(pieces)]


def _replies(conn: Any, count: int) -> list[Any]:
    """``count`` replies from ``conn``, all read even when one is an error (then raised)."""
    replies, error = [], None
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # read whole: the connection stays in step
            error = error or exc
    if error is not None:
        raise error
    return replies


async def _areplies(conn: Any, count: int) -> list[Any]:
    """:func:`_replies`, awaited."""
    replies, error = [], None
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            error = error or exc
    if error is not None:
        raise error
    return replies


async def _parsed(conn: Any, count: int) -> list[Any]:
    """:func:`_areplies` read by the connection's parser itself, without ``read_response``'s
    timer and bookkeeping (:func:`_aexchange` keeps the timeout and closes the connection on a
    failure). The parser answers an error reply with the exception, which is raised once every
    reply was read."""
    read = getattr(conn, "_read_response_from_parser", None)
    if read is None:
        return await _areplies(conn, count)
    replies, error = [], None
    for _ in range(count):
        reply = await read()
        if isinstance(reply, ResponseError):
            error = error or reply
        else:
            replies.append(reply)
    if error is not None:
        raise error
    return replies


def _execute(client: Any, commands: tuple[tuple[bytes, ...], ...]) -> list[Any] | None:
    """The raw replies of ``commands``, sent together on one pooled connection (one round
    trip, without redis-py's per-command retry wrapper and metrics); None when the
    connection dropped (redis-py closed it) or the client keeps a single connection: the
    caller then sends them through the client's own methods, which retry."""
    if client.connection is not None:  # a single-connection client locks its connection
        return None
    pool = client.connection_pool
    conn = _sync_borrow(pool)
    borrowed = conn is not None
    if not borrowed:
        conn = pool.get_connection(commands[0][0]) if _NAMED else pool.get_connection()
    try:
        conn.send_packed_command(_pack(commands))
        return _replies(conn, len(commands))
    except _DROPPED:
        return None
    finally:
        if borrowed:
            with pool._lock:
                borrowed = _give_back(pool, conn)
        if not borrowed:
            pool.release(conn)


def _abort(loop: asyncio.AbstractEventLoop, conn: Any) -> None:
    """Close the transport of a connection whose exchange outlived its socket timeout: the
    exchange then fails as a dropped connection does and is sent again through the client,
    where redis-py's own timeouts apply."""
    writer = getattr(conn, "_writer", None)
    if writer is not None:
        writer.transport.abort()


#: Per pool, the watchdog of its connections' async exchanges (see :func:`_aexchange`).
_watchdogs: weakref.WeakKeyDictionary[Any, Ticker[Any]] = weakref.WeakKeyDictionary()


def _watch(pool: Any, conn: Any, timeout: float) -> Ticker[Any]:
    """Put ``conn``'s exchange under the watchdog of ``pool`` on the running loop."""
    loop = asyncio.get_running_loop()
    dog = _watchdogs.get(pool)
    if dog is None or dog.loop() is not loop:
        dog = _watchdogs[pool] = Ticker(loop, _abort)
    dog.add(loop, conn, timeout)
    return dog


async def _aexchange(pool: Any, conn: Any, data: list[bytes], count: int) -> list[Any]:
    """Send ``data`` on ``conn`` and read ``count`` replies, bounded by the connection's socket
    timeout through a watchdog per pool and event loop (:class:`~idempotent._ticker.Ticker`)
    rather than redis-py's timer per send and per reply, each of which costs about a quarter
    of a loopback round trip (an async first call had five). A timeout so fires up to a quarter
    of it late (at most 1 s).

    A connection with health checks, or one not connected yet, goes through redis-py's send as
    before. Failures end as in redis-py: the connection closed, its ``ConnectionError``
    raised (or the reply's ``ResponseError``, once every reply was read).
    """
    writer = getattr(conn, "_writer", None)
    checked = getattr(conn, "health_check_interval", 1)
    if writer is None or checked or not conn.is_connected:
        await conn.send_packed_command(data, check_health=True)
        return await _areplies(conn, count)
    timeout = conn.socket_timeout
    dog = None if timeout is None else _watch(pool, conn, timeout)
    try:
        writer.writelines(data)
        await writer.drain()
        return await _parsed(conn, count)
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise _redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
    except ResponseError:
        raise  # every reply was read: the connection is in step
    except BaseException:
        await conn.disconnect(nowait=True)  # an exchange cut short leaves the stream out of step
        raise
    finally:
        if dog is not None:
            dog.due.pop(conn, None)


def _plain(pool: Any, kind: Any) -> bool:
    """Whether :func:`_borrow` may lend from ``pool``: redis-py's own pool class (not a
    subclass such as the blocking or Sentinel pools), no credential provider (it re-authenticates
    connections as they are released), no client-side cache, the attributes it relies on there."""
    return (
        type(pool) is kind
        and pool.connection_kwargs.get("credential_provider") is None
        and getattr(pool, "cache", None) is None
        and hasattr(pool, "_available_connections")
        and hasattr(pool, "_in_use_connections")
    )


def _borrow(pool: Any) -> Any:
    """An idle, connected connection taken straight from ``pool``'s list, or None.

    redis-py's ``get_connection()`` and ``release()`` also probe the socket for unread data
    and record pool metrics and events: 10-14% of a sync first call on a local Redis, less on
    an async one (benchmarks/bench_redis_client.py). Taking the newest idle connection and putting it back
    are list operations (under the pool's lock in a sync pool; between two awaits nothing else
    runs on an event loop); the two metrics skipped cancel out. A connection that went bad
    while idle fails its exchange, which then ends as a dropped connection does: sent again
    through the client, which reconnects. A pool not :func:`_plain`, a pool of another process
    (after ``fork()``), no idle connection, or one not connected or marked for reconnection:
    redis-py's path.
    """
    available = pool._available_connections
    if not available:
        return None
    conn = available[-1]
    connected = getattr(conn, "is_connected", None)
    if connected is None:  # sync connections of redis-py 5.0 have no is_connected: their socket
        connected = getattr(conn, "_sock", None) is not None
    if not connected or getattr(conn, "_should_reconnect", False):
        return None
    available.pop()
    pool._in_use_connections.add(conn)
    return conn


def _give_back(pool: Any, conn: Any) -> bool:
    """Return a connection :func:`_borrow` took; False when it must be reconnected first
    (then the caller hands it to redis-py's ``release()``, after putting it back in use)."""
    if getattr(conn, "_should_reconnect", False):
        return False
    pool._in_use_connections.discard(conn)
    pool._available_connections.append(conn)
    return True


def _sync_borrow(pool: Any) -> Any:
    """:func:`_borrow` on a sync pool: under its lock, in the process that made it."""
    if not _plain(pool, _SyncPool) or getattr(pool, "pid", None) != os.getpid():
        return None
    with pool._lock:
        return _borrow(pool)


async def _aexecute(client: Any, commands: tuple[tuple[bytes, ...], ...]) -> list[Any] | None:
    """:func:`_execute` on a ``redis.asyncio.Redis``."""
    if client.single_connection_client:
        return None
    pool = client.connection_pool
    conn = _borrow(pool) if _plain(pool, _AsyncPool) else None
    borrowed = conn is not None
    if not borrowed:
        conn = await (pool.get_connection(commands[0][0]) if _NAMED else pool.get_connection())
    try:
        return await _aexchange(pool, conn, _pack(commands), len(commands))
    except _DROPPED:
        return None
    finally:
        if not borrowed or not _give_back(pool, conn):
            await pool.release(conn)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _mark(owner: str, letter: bytes) -> bytes:
    """How a record of ``owner`` in status ``letter`` starts."""
    raw = _raw(owner)
    return b"%d:%s%s" % (len(raw), raw, letter)


def _claim_rest(request: ClaimRequest) -> bytes:
    """A new claim's record after ``<created>``."""
    fingerprint = request.fingerprint
    if fingerprint is None:
        return b",%d,%d,-1,-1,-1,-1\n" % (request.lease_ms, request.ttl_ms)
    fp = _raw(fingerprint)
    return b",%d,%d,%d,-1,-1,-1\n%s" % (request.lease_ms, request.ttl_ms, len(fp), fp)


def _outcome_rest(*texts: str | None) -> bytes:
    """A completed record after ``expires_at - created_at``: the lengths of ``texts``
    (fingerprint, codec, error type, result), a newline, the texts."""
    raws = [None if text is None else _raw(text) for text in texts]
    lengths = b",".join([b"-1" if raw is None else b"%d" % len(raw) for raw in raws])
    return b"," + lengths + b"\n" + b"".join([raw for raw in raws if raw is not None])


def _ms(time_reply: Any) -> int:
    """Epoch milliseconds of a ``TIME`` reply (raw, or redis-py's ``(seconds, micros)``)."""
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


def _decode(scope: str, key: str, value: Any, now: int, expiry: Any = None) -> Existing | None:
    """The record stored as ``value`` (``expiry``: its key's ``PEXPIRETIME``), read at ``now``;
    None for a claim's record read without its key's expiry (its creation time)."""
    if value.__class__ is str:  # a client with decode_responses=True
        value = _raw(value)
    colon = value.index(b":")
    at = colon + 1 + int(value[:colon])
    owner = _text(value[colon + 1 : at])
    status = _STATUS[value[at]]
    end = value.index(b"\n", at)
    created, lease, ttl, *lengths = value[at + 1 : end].split(b",")
    if created[:1] == b"*":
        if expiry is None:
            return None
        # A key whose expiry was removed behind the store's back (PERSIST) has no known creation
        # time: its lease counts as ended, so callers see it as abandoned, not as running forever.
        ca = int(expiry) - int(created[1:]) if int(expiry) >= 0 else now - int(lease)
    else:
        ca = int(created)
    texts: list[str | None] = []
    at = end + 1
    for length in map(int, lengths):
        if length < 0:
            texts.append(None)
        else:
            texts.append(_text(value[at : at + length]))
            at += length
    fingerprint, codec, error_type, result = texts
    record = Record(
        scope, key, fingerprint, status, owner, ca + int(lease), ca, ca + int(ttl), codec, result, error_type
    )
    return Existing(record, now)


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

    # -- sending ----------------------------------------------------------------------------------
    def _sync_client(self) -> Any:
        client = self.client
        if client is None:
            raise ConfigurationError(
                f"{self!r} has only an async client, which plain (sync) functions cannot use: give it a "
                "redis.Redis too, RedisStore(redis.Redis(...), async_client=...), or use RedisStore.from_url"
            )
        return client

    def _eval(self, script: _Script, key: bytes, *args: bytes) -> Any:
        client: Any = self._sync_client()
        command = (_EVALSHA, script.sha, _ONE, key, self._offset_arg, *args)
        try:
            replies = _execute(client, (command,))
            return client.execute_command(*command) if replies is None else replies[0]
        except NoScriptError:
            client.script_load(script.source)
            return client.execute_command(*command)

    async def _aeval(self, script: _Script, key: bytes, *args: bytes) -> Any:
        client: Any = self.async_client
        if client is None:
            return await anyio.to_thread.run_sync(lambda: self._eval(script, key, *args))
        command = (_EVALSHA, script.sha, _ONE, key, self._offset_arg, *args)
        try:
            replies = await _aexecute(client, (command,))
            return await client.execute_command(*command) if replies is None else replies[0]
        except NoScriptError:
            await client.script_load(script.source)
            return await client.execute_command(*command)

    # -- claim: SET NX GET and TIME in one round trip; a takeover is a script ------------------------
    def _claim_commands(self, request: ClaimRequest) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        px = max(1, request.lease_ms, request.ttl_ms)
        value = b"%s*%d%s" % (_mark(request.owner, b"i"), px - self._offset_ms, _claim_rest(request))
        return (_SET, self._key(request.scope, request.key), value, _NX, _PX, b"%d" % px, _GET), (_TIME,)

    def _takeover_args(self, request: ClaimRequest, seen: Record) -> tuple[Any, ...]:
        key = self._key(request.scope, request.key)
        mark, seen_mark = _mark(request.owner, b"i"), _mark(seen.owner, _LETTER.get(seen.status, b"?"))
        expiry = b"%d" % max(1, request.lease_ms, request.ttl_ms)
        return TAKEOVER, key, mark, _claim_rest(request), expiry, seen_mark, b"%d" % seen.locked_until

    def _found(self, request: ClaimRequest, replies: list[Any]) -> Existing | None:
        """The record a claim found (its ``SET`` answered the old value), read at ``TIME``; None
        for a claim's record, whose creation time is its key's expiry (read it with :meth:`read`)."""
        old, time = replies
        return _decode(request.scope, request.key, old, _ms(time) + self._offset_ms)

    def _answer(self, scope: str, key: str, reply: Any) -> Existing | None:
        """A read's or takeover's reply: now, or [now, record, its key's expiry]."""
        if reply.__class__ is int:
            return None
        return _decode(scope, key, reply[1], int(reply[0]), reply[2])

    def claim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """Claim ``request``'s key (None), or return the stored record and the server's clock."""
        scope, key = request.scope, request.key
        if replacing is not None:
            return self._answer(scope, key, self._eval(*self._takeover_args(request, replacing)))
        client: Any = self._sync_client()
        commands = self._claim_commands(request)
        while True:
            replies = _execute(client, commands)
            if replies is None:  # through the client's own (retrying) path
                replies = [client.execute_command(*commands[0], get=True), client.execute_command(_TIME)]
            if replies[0] is None:
                return None
            found = self._found(request, replies) or self.read(scope, key)
            if found is not None:
                return found
            # the record was released in between: claim again

    async def aclaim(self, request: ClaimRequest, replacing: Record | None = None) -> Existing | None:
        """:meth:`claim`, awaited."""
        scope, key = request.scope, request.key
        if replacing is not None:
            return self._answer(scope, key, await self._aeval(*self._takeover_args(request, replacing)))
        client: Any = self.async_client
        if client is None:
            return await anyio.to_thread.run_sync(self.claim, request)
        commands = self._claim_commands(request)
        while True:
            replies = await _aexecute(client, commands)
            if replies is None:
                old = await client.execute_command(*commands[0], get=True)
                replies = [old, await client.execute_command(_TIME)]
            if replies[0] is None:
                return None
            found = self._found(request, replies) or await self.aread(scope, key)
            if found is not None:
                return found

    # -- the other steps: scripts ------------------------------------------------------------------
    def _complete_args(
        self, request: ClaimRequest, status: str, codec: str | None, result: str | None, error: str | None
    ) -> tuple[Any, ...]:
        key = self._key(request.scope, request.key)
        mark, outcome = _mark(request.owner, b"i"), _mark(request.owner, _LETTER[status])
        rest = _outcome_rest(request.fingerprint, codec, error, result)
        return COMPLETE, key, mark, outcome, b"%d" % request.wait_ms, rest

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
        return bool(self._eval(*self._complete_args(request, status, codec, result, error_type)))

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
        return bool(await self._aeval(*self._complete_args(request, status, codec, result, error_type)))

    def renew(self, request: ClaimRequest) -> bool:
        """Push the lease while ``request.owner`` holds the key in progress."""
        key = self._key(request.scope, request.key)
        return bool(self._eval(RENEW, key, _mark(request.owner, b"i"), b"%d" % request.lease_ms))

    async def arenew(self, request: ClaimRequest) -> bool:
        """:meth:`renew`, awaited."""
        key = self._key(request.scope, request.key)
        return bool(await self._aeval(RENEW, key, _mark(request.owner, b"i"), b"%d" % request.lease_ms))

    def release(self, request: ClaimRequest) -> bool:
        """Delete the record while ``request.owner`` holds it in progress."""
        return bool(self._eval(RELEASE, self._key(request.scope, request.key), _mark(request.owner, b"i")))

    async def arelease(self, request: ClaimRequest) -> bool:
        """:meth:`release`, awaited."""
        key = self._key(request.scope, request.key)
        return bool(await self._aeval(RELEASE, key, _mark(request.owner, b"i")))

    def read(self, scope: str, key: str) -> Existing | None:
        """The stored record and the server's clock, or None."""
        return self._answer(scope, key, self._eval(READ, self._key(scope, key)))

    async def aread(self, scope: str, key: str) -> Existing | None:
        """:meth:`read`, awaited."""
        return self._answer(scope, key, await self._aeval(READ, self._key(scope, key)))
