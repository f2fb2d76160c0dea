"""``@idempotent`` and ``configure()``: the public entry points."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import threading
import typing
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session
from typing_extensions import ParamSpec

from idempotent import _drivers, _unsaved, core, stores
from idempotent._connect import describe
from idempotent._sql import SQLStore
from idempotent.codec import DEFAULT_MAX_BYTES, JsonCodec, Serializer
from idempotent.errors import ConfigurationError, IdempotencyWarning, MissingKey, TableMissing
from idempotent.events import Hook, Hooks
from idempotent.fingerprint import VERSION as FP_VERSION
from idempotent.fingerprint import digest
from idempotent.keys import explain_none, normalise_key, normalise_scope, resolve_path
from idempotent.schema import DEFAULT_TABLE

__all__ = ["configure", "idempotent"]

P = ParamSpec("P")
R = TypeVar("R")

Seconds = float | int | dt.timedelta
Mode = Literal["transaction", "lease"]

DEFAULT_TTL = 24 * 3600.0
DEFAULT_LEASE = 60.0
DEFAULT_WAIT = 10.0


@dataclasses.dataclass
class _Defaults:
    store: Any = None
    ttl: float = DEFAULT_TTL
    lease: float = DEFAULT_LEASE
    wait: float = DEFAULT_WAIT
    max_result_bytes: int = DEFAULT_MAX_BYTES
    serializer: Serializer = dataclasses.field(default_factory=JsonCodec)
    hooks: tuple[Hook, ...] = ()
    retries: int = core.CLAIM_RETRIES


_defaults = _Defaults(store=SQLStore())
_defaults_lock = threading.Lock()


def _seconds(value: Seconds, name: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{name} must be a number of seconds >= 0 or a timedelta, not {value!r}")
    return float(value)


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"retries must be an int >= 0 (extra attempts of an aborted unit), not {value!r}"
        )
    return value


def _max_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"max_result_bytes must be a positive number of bytes, not {value!r}; every stored result "
            "takes some (None is 4), so a function that should store nothing returns None"
        )
    return value


def configure(
    engine: Any = None,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    *,
    store: Any = None,
    ttl: Seconds = DEFAULT_TTL,
    lease: Seconds = DEFAULT_LEASE,
    wait: Seconds = DEFAULT_WAIT,
    max_result_bytes: int = DEFAULT_MAX_BYTES,
    serializer: Serializer | None = None,
    hooks: Sequence[Hook] = (),
    clock_offset: float = 0.0,
    retries: int = core.CLAIM_RETRIES,
) -> None:
    """Set process-wide defaults, once at start-up. Every decorator option overrides them.

    ``engine`` is needed only for lease mode and the command line: transaction mode runs on the
    session or connection each call receives. ``table``/``schema`` name the keys table (the same
    values ``make_table``, the migration and the CLI take). ``store`` replaces the SQL store.
    ``retries`` bounds how often a unit the decorator owns is run again after the database
    aborted it (deadlock, serialization failure), with jittered backoff.
    """
    if store is None:
        store = SQLStore(engine, table, schema, clock_offset=clock_offset)
    new = _Defaults(
        store=store,
        ttl=_seconds(ttl, "ttl"),
        lease=_seconds(lease, "lease"),
        wait=_seconds(wait, "wait"),
        max_result_bytes=_max_bytes(max_result_bytes),
        serializer=serializer or JsonCodec(),
        hooks=tuple(hooks),
        retries=_retries(retries),
    )
    with _defaults_lock:
        global _defaults  # noqa: PLW0603  (process-wide defaults are this function's purpose)
        _defaults = new


def default_store() -> Any:
    """The store ``configure`` set (an engine-less SQL store on ``idempotency_keys`` until then)."""
    return _defaults.store


_UNSET: Any = object()

#: Weight of the latest call in a function's moving replay rate.
_RATE_WEIGHT = 0.1
#: From this replay rate on, decorator-owned calls (and lease-mode calls on the SQL store) look for
#: a stored result with one autocommit read before claiming (PostgreSQL with psycopg). That read
#: makes a replay one round trip instead of three (lease mode: a plain SELECT instead of the claim)
#: but costs a first call one more: it pays off only while retries are frequent, as in a retry
#: storm or a client that always retries. Three replays in a row reach it.
PEEK_AT = 0.25
_EMPTY: Any = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    """A decorator's options merged with the ``configure`` defaults they were computed from."""

    defaults: _Defaults
    store: Any
    ttl_ms: int
    lease_ms: int
    wait_ms: int
    wait: float
    lease: float
    serializer: Serializer
    max_bytes: int
    hooks: Hooks
    retries: int


def _fast_binder(signature: inspect.Signature) -> tuple[tuple[str, ...], int, tuple[Any, ...]] | None:
    """Parameter names, how many may be positional, and defaults, when every parameter is a plain
    or keyword-only one (no ``/``, ``*args``, ``**kwargs``); None otherwise."""
    params = list(signature.parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind not in kinds for p in params):
        return None
    positional = sum(1 for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params), positional, tuple(p.default for p in params)


class _Spec:
    """Everything decided at decoration time."""

    def __init__(
        self,
        func: Callable[..., Any],
        key_from: str | Callable[..., Any],
        scope: str | None,
        session: str | Callable[[], Any] | None,
        mode: str,
        ttl: Any,
        lease: Any,
        wait: Any,
        fingerprint: bool | Sequence[str] | Callable[..., Any],
        store_errors: Sequence[type[BaseException]],
        serializer: Serializer | None,
        commit: bool,
        required: bool,
        store: Any,
        max_result_bytes: int | None,
        hooks: Sequence[Hook],
        retries: Any = _UNSET,
    ) -> None:
        self.func = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.signature = inspect.signature(func)
        params = self.signature.parameters
        if mode not in ("transaction", "lease"):
            raise ConfigurationError(f"mode must be 'transaction' or 'lease', not {mode!r}")
        self.mode = mode
        if isinstance(key_from, str):
            head = key_from.split(".", 1)[0]
            if head not in params:
                raise ConfigurationError(
                    f"key_from={key_from!r} names no parameter of {self.name}; its parameters are "
                    f"{', '.join(params) or 'none'}"
                )
        elif not callable(key_from):
            raise ConfigurationError("key_from must be a parameter name (dotted paths allowed) or a callable")
        self.key_from = key_from
        #: How messages name the key's source: the parameter path, or the callable's qualname.
        self.key_name = key_from if isinstance(key_from, str) else _callable_name(key_from)
        if isinstance(session, str) and session.split(".", 1)[0] not in params:
            raise ConfigurationError(
                f"session={session!r} names no parameter of {self.name}; its parameters are "
                f"{', '.join(params) or 'none'} (dotted paths such as 'self.session' are allowed)"
            )
        self.session = session
        if scope is None:
            scope = f"{func.__module__}:{func.__qualname__}"
            if func.__module__ == "__main__" or "<locals>" in func.__qualname__:
                warnings.warn(
                    f"{self.name} gets the scope {scope!r}, which changes between runs or programs; "
                    "give it a stable one with @idempotent(..., scope='orders.place')",
                    IdempotencyWarning,
                    stacklevel=3,  # _Spec -> decorate -> the line applying the decorator
                )
        self.scope = normalise_scope(scope)
        self.skip = {n for n in list(params)[:1] if n in ("self", "cls")}
        if isinstance(session, str):
            self.skip.add(session.split(".", 1)[0])  # the session, or the object that carries it
        if fingerprint is True:
            self.fp_names: tuple[str, ...] | None = None
            self.fp_func: Callable[..., Any] | None = None
        elif fingerprint is False or fingerprint is None:
            self.fp_names, self.fp_func = (), None
        elif callable(fingerprint):
            self.fp_names, self.fp_func = None, fingerprint
        else:
            names = tuple(fingerprint)
            missing = [n for n in names if n not in params]
            if missing:
                raise ConfigurationError(
                    f"fingerprint names no parameter {', '.join(missing)} of {self.name}"
                )
            self.fp_names, self.fp_func = names, None
        self.fp_disabled = fingerprint is False or fingerprint is None
        for cls in store_errors:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ConfigurationError(f"store_errors takes exception classes, not {cls!r}")
        self.store_errors = tuple(store_errors)
        self.serializer = serializer
        self.commit = commit
        self.required = required
        if store is not None:  # a store that cannot serve this mode fails at decoration
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", IdempotencyWarning)  # warned once, at the first call
                stores.resolve(store, mode, self.name)
        self.store = store
        self.max_result_bytes = None if max_result_bytes is None else _max_bytes(max_result_bytes)
        self.hooks = tuple(hooks)
        self.ttl = None if ttl is _UNSET else _seconds(ttl, "ttl")
        self.lease = None if lease is _UNSET else _seconds(lease, "lease")
        self.wait = None if wait is _UNSET else _seconds(wait, "wait")
        self.retries = None if retries is _UNSET else _retries(retries)
        self._hint: Any = _UNSET
        self.replay_rate = 0.0
        self._fast_bind = _fast_binder(self.signature)
        self._settings: _Settings | None = None

    def observe(self, replayed: bool) -> None:
        """Track how often recent calls replayed (a moving average; races only blur it)."""
        self.replay_rate = self.replay_rate * (1.0 - _RATE_WEIGHT) + (_RATE_WEIGHT if replayed else 0.0)

    @property
    def return_hint(self) -> Any:
        if self._hint is _UNSET:
            self._hint = _return_hint(self.func)
        return self._hint

    # -- per call -------------------------------------------------------------------------------
    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """``signature.bind(*args, **kwargs)`` plus ``apply_defaults()``: the arguments by name, in
        parameter order. Signatures without ``/``, ``*args`` or ``**kwargs`` are bound directly; any
        call the direct way cannot bind (a missing or unexpected argument) goes through ``bind``,
        which raises the usual TypeError."""
        fast = self._fast_bind
        if fast is not None:
            names, positional, defaults = fast
            given = len(args)
            if not kwargs and given == positional == len(names):
                return dict(zip(names, args, strict=True))
            if given <= positional:
                arguments: dict[str, Any] = {}
                used = 0
                for index, name in enumerate(names):
                    if index < given:
                        if name in kwargs:
                            break
                        arguments[name] = args[index]
                    elif name in kwargs:
                        arguments[name] = kwargs[name]
                        used += 1
                    elif defaults[index] is not _EMPTY:
                        arguments[name] = defaults[index]
                    else:
                        break
                else:
                    if used == len(kwargs):
                        return arguments
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: dict[str, Any]) -> str | None:
        if isinstance(self.key_from, str):
            try:
                raw = resolve_path(self.key_from, arguments)
            except AttributeError as exc:
                raise ConfigurationError(f"key_from={self.key_from!r} of {self.name}: {exc}") from None
        else:
            raw = self.key_from(*args, **kwargs)
        key = normalise_key(raw)
        if key is None and self.required:
            raise MissingKey(
                f"{self.name} was called without an idempotency key ({self._why_none(arguments)}); pass one, "
                "or decorate with required=False to run such calls without idempotency"
            )
        return key

    def _why_none(self, arguments: dict[str, Any]) -> str:
        if isinstance(self.key_from, str):
            return explain_none(self.key_from, arguments)
        return f"{self.key_name} returned None"

    def handle(self, arguments: dict[str, Any]) -> Any:
        if isinstance(self.session, str):
            obj = resolve_path(self.session, arguments)
        elif self.session is not None:
            obj = self.session()
        else:
            obj = next((v for v in arguments.values() if _drivers.is_handle(v)), None)
        if obj is not None and not _drivers.is_handle(obj):
            unwrap = getattr(obj, "registry", None)  # scoped_session / async_scoped_session
            if unwrap is not None and callable(obj):
                obj = obj()
        if obj is None and self.mode == "transaction":
            # An Engine has no transaction to join: say so before the fingerprint trips over it.
            obj = next((v for v in arguments.values() if _is_engine(v)), None)
        if _is_engine(obj) and self.mode == "transaction":
            raise ConfigurationError(
                f"{self.name} received an Engine: pass a Session or Connection, not an Engine. Its key "
                "commits in the transaction of the Session or Connection the function writes through, and "
                "an Engine has none; open one, e.g. `with Session(engine) as session: f(session, ...)` "
                "(the decorator then begins and commits the transaction)"
            )
        return obj

    def fingerprint(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: dict[str, Any]
    ) -> str | None:
        if self.fp_disabled:
            return None
        if self.fp_func is not None:
            value = self.fp_func(*args, **kwargs)
            return f"{FP_VERSION}:" + hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()
        if self.fp_names is not None:
            chosen = {n: arguments[n] for n in self.fp_names}
        else:
            chosen = {n: v for n, v in arguments.items() if n not in self.skip and not _drivers.is_handle(v)}
            if self.mode == "transaction" and any(_is_engine(v) for v in chosen.values()):
                self.handle(arguments)  # raises "pass a Session or Connection, not an Engine" when it is one
        return digest(chosen, self.name)

    def settings(self) -> _Settings:
        """This decorator's options merged with the ``configure`` defaults, computed once per
        ``configure`` call (it replaces the defaults object, which is never changed in place)."""
        settings = self._settings
        defaults = _defaults
        if settings is None or settings.defaults is not defaults:
            ttl = self.ttl if self.ttl is not None else defaults.ttl
            lease = self.lease if self.lease is not None else defaults.lease
            wait = self.wait if self.wait is not None else defaults.wait
            settings = self._settings = _Settings(
                defaults=defaults,
                store=stores.resolve(
                    self.store if self.store is not None else defaults.store, self.mode, self.name
                ),
                ttl_ms=int(ttl * 1000),
                lease_ms=int(lease * 1000),
                wait_ms=int(wait * 1000),
                wait=wait,
                lease=lease,
                serializer=self.serializer or defaults.serializer,
                max_bytes=self.max_result_bytes
                if self.max_result_bytes is not None
                else defaults.max_result_bytes,
                hooks=Hooks(defaults.hooks + self.hooks),
                retries=self.retries if self.retries is not None else defaults.retries,
            )
        return settings

    def plan(self, key: str, fingerprint: str | None, scope: str | None = None) -> core.Plan[Any]:
        settings = self.settings()
        store = settings.store
        request = core.ClaimRequest(
            scope or self.scope,
            key,
            fingerprint,
            core.new_owner(),
            settings.ttl_ms,
            settings.lease_ms,
            settings.wait_ms,
            own=self.mode == "lease",
        )
        return core.Plan(
            store=store,
            request=request,
            wait=settings.wait,
            serializer=settings.serializer,
            return_hint=self.return_hint,
            max_bytes=settings.max_bytes,
            store_errors=self.store_errors,
            hooks=settings.hooks,
            function=self.name,
            commit=self.commit,
            lease=settings.lease,
            extra={"engine": getattr(store, "engine", None)},
            retries=settings.retries,
        )

    def prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], is_async: bool
    ) -> tuple[core.Plan[Any], core.Steps[Any], Any] | None:
        """Return the plan, its flow and the handle; None to run the function without idempotency."""
        arguments = self.arguments(args, kwargs)
        key = self.key(args, kwargs, arguments)
        if key is None:
            return None
        fingerprint = self.fingerprint(args, kwargs, arguments)
        return self.start(key, fingerprint, lambda: self.handle(arguments), is_async)

    def start(
        self,
        key: str,
        fingerprint: str | None,
        session: Callable[[], Any],
        is_async: bool,
        scope: str | None = None,
    ) -> tuple[core.Plan[Any], core.Steps[Any], Any]:
        """The plan, flow and handle of a call whose key and fingerprint are known; ``session``
        returns the caller's Session/Connection (looked up only when the mode needs it)."""
        plan = self.plan(key, fingerprint, scope)
        raw: Any = plan.store
        handle: Any = None
        if self.mode == "transaction" and getattr(raw, "atomic", False):
            obj = session()
            if obj is None:
                raise ConfigurationError(
                    f"{self.name} runs in transaction mode but received no Session, Connection, AsyncSession "
                    "or AsyncConnection: pass one as an argument, name it with session=..., or use "
                    "mode='lease' for work without a database transaction"
                )
            handle = _drivers.async_handle_for(obj) if is_async else _drivers.sync_handle_for(obj)
            _drivers.check_atomic(handle.sync if is_async else handle.obj, self.name)
            plan.store = raw.for_dialect(handle.dialect)
            plan.owned = not handle.in_transaction()
            plan.peek = self.replay_rate >= PEEK_AT
            if plan.commit and not plan.owned and handle.is_session and not handle.autobegun():
                plan.commit = False  # the caller began this transaction explicitly: it commits
            return plan, core.transaction_flow(plan), handle
        if self.mode == "lease" and getattr(raw, "atomic", False):
            if raw.engine is None:
                raise _drivers.missing_lease_engine(self.name)
            if not is_async and not isinstance(raw.engine, sa.Engine) and hasattr(raw.engine, "sync_engine"):
                raise ConfigurationError(
                    f"{self.name} is a plain function in lease mode, but its store's engine is an "
                    "AsyncEngine, which only async functions can use: give the store a sync engine "
                    "(sa.create_engine), or make the function async def"
                )
            plan.store = raw.for_dialect(raw.engine.dialect)
            plan.extra["renew"] = True
            plan.peek = self.replay_rate >= PEEK_AT
            if isinstance(raw, SQLStore):
                _check_sqlite_self_wait(self.name, session(), raw)
            return plan, core.lease_flow(plan), None
        plan.store = raw.for_dialect(None)
        plan.extra["renew"] = self.mode == "lease"
        return plan, core.lease_flow(plan), None


def _name_database(exc: TableMissing, plan: core.Plan[Any], handle: Any) -> None:
    """Add the database the keys table was looked for in (password masked) to ``exc``'s message."""
    try:
        if handle is not None:
            obj = getattr(handle, "sync", handle.obj)
            bind = obj.get_bind() if handle.is_session else obj.engine
        else:
            bind = plan.extra["engine"]
        where = describe(getattr(bind, "engine", bind).url)
    except Exception:  # the message stays as it was: the error itself is what matters
        return
    if exc.args and isinstance(exc.args[0], str) and " in " + where not in exc.args[0]:
        exc.args = (exc.args[0].replace(" does not exist;", f" does not exist in {where};", 1), *exc.args[1:])


def _is_engine(value: object) -> bool:
    """An ``Engine`` or ``AsyncEngine`` (an ``AsyncConnection`` also has ``sync_engine``)."""
    if isinstance(value, sa.Engine):
        return True
    return isinstance(getattr(value, "sync_engine", None), sa.Engine) and not _drivers.is_handle(value)


def _callable_name(func: Callable[..., Any]) -> str:
    """A callable as messages name it: ``module.qualname``, never ``<function <lambda> at 0x...>``."""
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{getattr(func, '__module__', None) or '?'}.{name}"


def _return_hint(func: Callable[..., Any]) -> Any:
    """The return annotation, resolved; also when other annotations name things imported locally."""
    try:
        return typing.get_type_hints(func, include_extras=True).get("return", typing.Any)
    except Exception:  # noqa: S110  (resolve the return annotation alone below)
        pass
    raw = getattr(func, "__annotations__", {}).get("return", typing.Any)
    if not isinstance(raw, str):
        return raw
    namespace = dict(getattr(func, "__globals__", {}))
    closure = inspect.getclosurevars(func)
    namespace.update(closure.nonlocals)
    try:
        return eval(raw, namespace)  # noqa: S307  (the function's own annotation, as get_type_hints does)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot resolve the return annotation {raw!r} of {func.__qualname__} ({exc}); results are "
            "rebuilt from it, so import that name at module level"
        ) from exc


def _check_sqlite_self_wait(name: str, obj: Any, store: SQLStore) -> None:
    """Lease mode inside the caller's open SQLite write transaction would wait on itself."""
    if store.engine is None or store.engine.dialect.name != "sqlite":
        return
    if not isinstance(obj, (Session, sa.Connection)) or not obj.in_transaction():
        return  # async handles are not inspected (their driver lives on another thread)
    dbapi = _drivers.SyncHandle(obj).connection().connection.driver_connection
    if getattr(dbapi, "in_transaction", False):
        raise ConfigurationError(
            f"{name} uses lease mode on SQLite while the caller's connection holds an open write "
            "transaction on the same database: the claim would wait for that transaction, i.e. for itself. "
            "Commit first, or use transaction mode"
        )


def idempotent(
    func: Callable[..., Any] | None = None,
    *,
    key_from: str | Callable[..., Any] | None = None,
    scope: str | None = None,
    session: str | Callable[[], Any] | None = None,
    mode: Mode = "transaction",
    ttl: Seconds = _UNSET,
    lease: Seconds = _UNSET,
    wait: Seconds = _UNSET,
    fingerprint: bool | Sequence[str] | Callable[..., Any] = True,
    store_errors: Sequence[type[BaseException]] = (),
    serializer: Serializer | None = None,
    commit: bool = False,
    required: bool = True,
    store: Any = None,
    max_result_bytes: int | None = None,
    hooks: Sequence[Hook] = (),
    retries: int = _UNSET,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a function safe to retry: the first call with a key runs it, later calls replay its result.

    In the default transaction mode the key is claimed, the function runs and its result is
    stored in the same database transaction as the function's own writes (see the README for
    owned and joined transactions). ``mode="lease"`` commits the claim at once instead, for work
    whose effect is outside the database.
    """
    if func is not None:
        raise ConfigurationError(
            "use @idempotent(key_from=...): the decorator needs to know where the key is"
        )
    if key_from is None:
        raise ConfigurationError(
            "@idempotent needs key_from=: a parameter name such as 'order_id', or a callable"
        )

    def decorate(target: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
            raise TypeError(
                f"@idempotent cannot wrap the generator {target.__qualname__}: its body runs after the call "
                "returns, outside the transaction that records the key. Return a list instead"
            )
        if getattr(target, "__idempotent__", None) is not None:
            raise ConfigurationError(
                f"{target.__qualname__} is already decorated with @idempotent; decorate it once"
            )
        if isinstance(target, (staticmethod, classmethod)):
            raise ConfigurationError("put @idempotent below @staticmethod/@classmethod, next to the function")
        spec = _Spec(
            target, key_from, scope, session, mode, ttl, lease, wait, fingerprint, store_errors,
            serializer, commit, required, store, max_result_bytes, hooks, retries,
        )  # fmt: skip
        if inspect.iscoroutinefunction(target):
            wrapper = _async_wrapper(spec, target)
        else:
            wrapper = _sync_wrapper(spec, target)
        wrapper.__idempotent__ = spec  # type: ignore[attr-defined]
        return typing.cast("Callable[P, R]", wrapper)

    return decorate


def _sync_wrapper(spec: _Spec, target: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(target)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prepared = spec.prepare(args, kwargs, is_async=False)
        if prepared is None:
            return target(*args, **kwargs)
        plan, flow, handle = prepared
        token = _unsaved.enter(plan, handle)
        try:
            result = _drivers.run_sync(plan, flow, handle, lambda: target(*args, **kwargs))
        except TableMissing as exc:
            _name_database(exc, plan, handle)
            raise
        finally:
            _unsaved.leave(token)
            spec.observe(plan.replayed)
        _unsaved.after_call(plan, handle)
        return result

    return wrapper


def _async_wrapper(spec: _Spec, target: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(target)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        prepared = spec.prepare(args, kwargs, is_async=True)
        if prepared is None:
            return await target(*args, **kwargs)
        plan, flow, handle = prepared
        token = _unsaved.enter(plan, handle)
        try:
            result = await _drivers.run_async(plan, flow, handle, lambda: target(*args, **kwargs))
        except TableMissing as exc:
            _name_database(exc, plan, handle)
            raise
        finally:
            _unsaved.leave(token)
            spec.observe(plan.replayed)
        _unsaved.after_call(plan, handle)
        return result

    return wrapper


class Guard:
    """Run calls under a key, scope and fingerprint that the caller computed.

    ``@idempotent`` reads those from a function's arguments; an integration that computes them
    from something else (an HTTP request) hands them to :meth:`run` or :meth:`run_async` and gets
    the decorator's claim, run, store and replay, in transaction or lease mode. ``name`` appears
    in errors and hooks; ``return_hint`` is what results are rebuilt as on replay. The options
    are the decorator's and default to the ``configure`` values in the same way.
    """

    def __init__(
        self,
        name: str,
        *,
        return_hint: Any = Any,
        mode: Mode = "transaction",
        ttl: Seconds = _UNSET,
        lease: Seconds = _UNSET,
        wait: Seconds = _UNSET,
        store_errors: Sequence[type[BaseException]] = (),
        serializer: Serializer | None = None,
        commit: bool = False,
        store: Any = None,
        max_result_bytes: int | None = None,
        hooks: Sequence[Hook] = (),
    ) -> None:
        def call() -> Any:  # pragma: no cover - stands for the calls run() receives
            raise AssertionError

        call.__qualname__ = call.__name__ = name
        self._spec = _Spec(
            call, call, name, None, mode, ttl, lease, wait, False, store_errors, serializer, commit,
            True, store, max_result_bytes, hooks,
        )  # fmt: skip
        self._spec._hint = return_hint
        self._spec.name = name

    @property
    def mode(self) -> str:
        """``"transaction"`` or ``"lease"``."""
        return self._spec.mode

    def run(
        self,
        call: Callable[[], R],
        *,
        key: str,
        scope: str,
        fingerprint: str | None,
        session: Any = None,
    ) -> tuple[R, bool]:
        """Run ``call`` once for ``(scope, key)``: return its result, or the stored one, and
        whether it was replayed. ``session`` (transaction mode) is the caller's Session or
        Connection; raises what the decorator raises (KeyReused, InProgress, ...)."""
        plan, flow, handle = self._spec.start(
            key, fingerprint, lambda: session, False, normalise_scope(scope)
        )
        try:
            return _drivers.run_sync(plan, flow, handle, call), plan.replayed
        finally:
            self._spec.observe(plan.replayed)  # frequent replays read before they claim

    async def run_async(
        self,
        call: Callable[[], Awaitable[R]],
        *,
        key: str,
        scope: str,
        fingerprint: str | None,
        session: Any = None,
    ) -> tuple[R, bool]:
        """:meth:`run` for coroutines; ``session`` is an AsyncSession or AsyncConnection."""
        plan, flow, handle = self._spec.start(key, fingerprint, lambda: session, True, normalise_scope(scope))
        try:
            return await _drivers.run_async(plan, flow, handle, call), plan.replayed
        finally:
            self._spec.observe(plan.replayed)
