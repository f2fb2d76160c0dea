"""Celery: task bodies that run once per key under redelivery, retries and duplicate sends.

Put ``@idempotent_task(...)`` *below* the task decorator, next to the function::

    @app.task(bind=True, acks_late=True)
    @idempotent_task(key_from="order_id", session_factory=SessionLocal)
    def place_order(self, session, order_id, amount): ...

or use ``base=IdempotentTask`` with ``idempotency={...}`` holding the same options. The
decisions are the ones of :func:`idempotent.idempotent`; this module only adapts a Celery task to
them: where the key comes from, where the session comes from, and what Celery's own control-flow
exceptions mean.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

try:
    from celery import Task, current_task
    from celery.exceptions import Retry, TaskPredicate
    from celery.local import Proxy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("idempotent.contrib.celery needs Celery: pip install 'idempotent[celery]'") from exc

from idempotent.decorator import Mode, idempotent
from idempotent.errors import ConfigurationError, InProgress, MissingKey

__all__ = ["IdempotentTask", "idempotent_task"]

F = TypeVar("F", bound=Callable[..., Any])

_MAX_KEY = 255


class _NotCompleted(BaseException):
    """Carries Celery's Retry/Ignore/Reject through the decorator, which releases the key for it.

    A BaseException, so that no ``store_errors`` entry (``Exception`` included) records it as the
    task's outcome.
    """

    def __init__(self, predicate: TaskPredicate) -> None:
        super().__init__(predicate)
        self.predicate = predicate


def _is_task(obj: object) -> bool:
    # type(): a Celery Proxy answers isinstance() by evaluating itself, which registers the task.
    return issubclass(type(obj), (Task, Proxy))


def _running_task(args: tuple[Any, ...]) -> Any:
    """The task this call runs as: ``self`` of a bound task, else Celery's current task."""
    if args and isinstance(args[0], Task):
        return args[0]
    return current_task._get_current_object()


def _default_key(*args: Any, **kwargs: Any) -> str:
    """The task's name and the request id: the same for a redelivery and for ``self.retry()``."""
    task = _running_task(args)
    request_id = getattr(getattr(task, "request", None), "id", None) if task is not None else None
    if not request_id:
        raise MissingKey(
            "this task's idempotency key is its Celery request id, and it was called outside a worker "
            "(no request id): run it through a worker or task.apply(), or give idempotent_task(key_from=...)"
        )
    name = str(task.name)
    if len(name) + 1 + len(str(request_id)) > _MAX_KEY:
        name = name[: _MAX_KEY - 2 - len(str(request_id))]
    return f"{name}:{request_id}"


def idempotent_task(
    func: Callable[..., Any] | None = None,
    *,
    key_from: str | Callable[..., Any] | None = None,
    session_factory: Callable[[], Any] | None = None,
    session: str | Callable[[], Any] | None = None,
    mode: Mode | None = None,
    django: str | None = None,
    in_progress_delay: float | None = None,
    **options: Any,
) -> Any:
    """Make a Celery task body run once per key; put it *below* ``@app.task``/``@shared_task``.

    - ``key_from``: a parameter name (dotted paths allowed) or a callable, as for ``@idempotent``.
      Default: the task name plus the Celery request id, which a redelivery and ``self.retry()``
      keep; name a business argument (``key_from="order_id"``) to make two separate sends of the
      same order one.
    - ``session_factory``: a ``sessionmaker`` (or ``engine.connect``); every run opens one, passes
      it as the parameter named by ``session`` (default ``"session"``), and the decorator begins,
      commits and closes it: the key commits with the task's writes (transaction mode).
    - ``session``: without a factory, a zero-argument callable returning the session in use
      (``scoped_session``), as for ``@idempotent``.
    - ``django``: the alias of a Django database (``"default"``) whose ORM the task writes through:
      the run is wrapped in ``transaction.atomic(using=...)`` and the key commits with its writes.
    - ``mode``: ``"transaction"`` when a session is given, else ``"lease"`` (effects outside the
      database; the claim commits on the store's engine, or on any ``store=``).
    - ``in_progress_delay``: a delivery that finds its key still held by another run is sent again
      after this many seconds (default: what is left of the holder's lease).

    Every other keyword argument (``scope``, ``ttl``, ``lease``, ``wait``, ``fingerprint``,
    ``store_errors``, ``store``, ...) is passed to :func:`idempotent.idempotent`. Celery's
    ``Retry``, ``Ignore`` and ``Reject`` are not completions: the key is released (in transaction
    mode, with the writes).
    """
    if func is not None:
        return idempotent_task()(func)
    if django is not None:
        if session_factory is not None or session is not None:
            raise ConfigurationError("give either django= or a SQLAlchemy session_factory/session, not both")
        session = _django_session(django)
    if mode is None:
        mode = "transaction" if (session_factory is not None or session is not None) else "lease"
    if session_factory is not None:
        if not callable(session_factory):
            raise ConfigurationError(
                f"session_factory must be a callable returning a Session, such as a sessionmaker, "
                f"not {session_factory!r}"
            )
        if mode != "transaction":
            raise ConfigurationError(
                "session_factory opens and commits a session per run, which is transaction mode; "
                "with mode='lease' open your own session inside the task"
            )
        if session is not None and not isinstance(session, str):
            raise ConfigurationError(
                "with session_factory, session= names the parameter that receives the session "
                "(default 'session'), so it must be a string"
            )
    if (
        mode == "transaction"
        and session_factory is None
        and session is None
        and getattr(options.get("store"), "atomic", True)
    ):
        raise ConfigurationError(
            "a Celery task receives no database session in its message: give idempotent_task a "
            "session_factory=sessionmaker(...) (opened, committed and closed per run) or session=<callable>, "
            "or use mode='lease' for effects outside the database"
        )
    if in_progress_delay is not None and (
        isinstance(in_progress_delay, bool)
        or not isinstance(in_progress_delay, (int, float))
        or in_progress_delay < 0
    ):
        raise ConfigurationError(
            f"in_progress_delay must be a number of seconds >= 0, not {in_progress_delay!r}"
        )

    def decorate(target: F) -> F:
        if _is_task(target):
            raise ConfigurationError(
                "@idempotent_task is above the task decorator, so Celery registered the undecorated "
                "function and every run would skip it; put it below: @app.task(...) (or @shared_task) "
                "first, then @idempotent_task(...), then def"
            )
        if inspect.iscoroutinefunction(target):
            raise ConfigurationError(
                f"{target.__qualname__} is async def, but Celery runs task bodies as plain functions"
            )
        signature = inspect.signature(target)
        param = None
        if session_factory is not None:
            param = session if isinstance(session, str) else "session"
            if param not in signature.parameters:
                raise ConfigurationError(
                    f"session_factory needs a parameter to pass the session to: {target.__qualname__} "
                    f"has no parameter {param!r} (its parameters are {', '.join(signature.parameters)}); "
                    "add one, or name it with session='...'"
                )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inner = idempotent(
                key_from=key_from if key_from is not None else _default_key,
                session=param if param is not None else session,
                mode=mode,
                **options,
            )(_shield(target))
        for warning in caught:  # shown at the user's decorator line, not at this one
            warnings.warn(warning.message, warning.category, stacklevel=2)
        call = _with_session(inner, signature, param, session_factory)

        @functools.wraps(target)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(args, kwargs)
            except _NotCompleted as signal:
                predicate = signal.predicate
            except InProgress as exc:
                again = _send_again(_running_task(args), exc, in_progress_delay)
                if again is None:
                    raise
                raise again from exc
            raise predicate

        if param is not None:
            public = [p for name, p in signature.parameters.items() if name != param]
            run.__signature__ = signature.replace(parameters=public)  # type: ignore[attr-defined]
        else:
            run.__signature__ = signature  # type: ignore[attr-defined]
        run.__idempotent__ = inner.__idempotent__  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _django_session(using: str) -> Callable[[], Any]:
    from idempotent._django import DjangoTransaction  # noqa: PLC0415  (only for Django projects)

    if not isinstance(using, str) or not using:
        raise ConfigurationError(f"django= takes a database alias such as 'default', not {using!r}")
    return lambda: DjangoTransaction(using)


def _shield(target: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(target)
    def body(*args: Any, **kwargs: Any) -> Any:
        try:
            return target(*args, **kwargs)
        except TaskPredicate as exc:
            raise _NotCompleted(exc) from None

    return body


def _with_session(
    inner: Callable[..., Any],
    signature: inspect.Signature,
    param: str | None,
    factory: Callable[[], Any] | None,
) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """How a run calls the decorated body: as given, or with a fresh session passed as ``param``."""
    if param is None or factory is None:
        return lambda args, kwargs: inner(*args, **kwargs)
    public = signature.replace(parameters=[p for n, p in signature.parameters.items() if n != param])

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        given = public.bind(*args, **kwargs).arguments
        handle = factory()
        try:
            arguments = {
                name: handle if name == param else given[name]
                for name in signature.parameters
                if name == param or name in given
            }
            full = inspect.BoundArguments(signature, arguments)
            result = inner(*full.args, **full.kwargs)
            if handle.in_transaction():
                # Only a run without a key (required=False) gets here with its writes pending: the
                # decorator commits or rolls back every transaction it began itself.
                handle.commit()
            return result
        finally:
            handle.close()

    return call


def _send_again(task: Any, exc: InProgress, delay: float | None) -> Retry | None:
    """Send the running request again for later; None where it cannot be (eager or direct calls).

    The copy keeps the request id and its ``retries`` count: waiting for another run is not a
    failure of this one, so it does not use up ``max_retries``. It ends because the other run
    finishes (the copy replays its result) or its lease runs out (the copy takes over).
    """
    request = getattr(task, "request", None)
    if task is None or request is None or request.called_directly or request.is_eager or not request.id:
        return None
    countdown = exc.retry_after if delay is None else float(delay)
    again = task.signature_from_request(request, countdown=countdown)
    again.apply_async()
    return Retry(exc=exc, when=countdown, sig=again)


class IdempotentTask(Task):  # type: ignore[misc]  # Celery ships no type information
    """A task base class: ``@app.task(base=IdempotentTask, idempotency={"key_from": "order_id"})``.

    ``idempotency`` holds the keyword arguments of :func:`idempotent_task`; a subclass may set
    defaults in its own ``idempotency``, which a task's entries override one by one.
    """

    idempotency: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None:
            return  # an abstract base (its run is the subclass's)
        options: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            options.update(klass.__dict__.get("idempotency") or {})
        bound = not isinstance(run, staticmethod)
        fun = run if bound else run.__func__
        wrapped = idempotent_task(**options)(fun)
        cls.run = wrapped if bound else staticmethod(wrapped)
        app = cls.__dict__.get("app")
        if app is not None and "__header__" in cls.__dict__:  # made by app.task from the raw function
            cls.__header__ = app.type_checker(wrapped, bound=bound)
