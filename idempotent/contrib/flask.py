"""Flask views with the ``Idempotency-Key`` contract: ``@idempotent_route()``.

::

    from idempotent.contrib.flask import idempotent_route

    @app.post("/orders")
    @idempotent_route(principal_from=lambda request: request.authorization.token)
    def create_order():
        db.session.add(Order(**request.get_json()))
        return {"status": "created"}, 201

The decorator goes *below* the route decorator (Flask registers what the route decorator
receives). A request with an ``Idempotency-Key`` header runs the view once; the response it
returns (any form Flask accepts: str, bytes, dict, list, ``(body, status)``,
``(body, status, headers)``, ``(body, headers)``, a ``Response``, ``jsonify(...)``) is turned
into a ``Response`` and stored with its status, headers and body; a retry with the same key gets
that response again, byte for byte, plus ``Idempotent-Replayed: true``. The rules (eligible
methods, key syntax, scope, fingerprint, 400/409/422 problems) are those of
:mod:`idempotent.http`.

Transaction mode: the key and the stored response are written through the view's SQLAlchemy
session and commit with the view's own writes, by the decorator (the request is the unit of
work). The session is ``session=`` (a ``Session``, a ``Connection``, a ``scoped_session`` such
as Flask-SQLAlchemy's ``db.session``, or a zero-argument callable returning one), else
Flask-SQLAlchemy's session when the extension is registered on the app. Without either, the
view runs in lease mode on the engine given to ``idempotent.configure`` (or fails with a clear
error when ``mode="transaction"`` was asked for).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from typing_extensions import Unpack

try:
    from flask import Response, current_app, request
except ImportError as exc:  # pragma: no cover - exercised without Flask installed
    raise ImportError("idempotent.contrib.flask needs Flask: pip install 'idempotent[flask]'") from exc

import sqlalchemy as sa
from sqlalchemy.orm import Session, SessionTransactionOrigin

from idempotent.errors import ConfigurationError
from idempotent.http import HTTPRequest, Policy, PolicyOptions, StoredResponse

__all__ = ["idempotent_route", "to_response"]

F = TypeVar("F", bound=Callable[..., Any])

#: Set in the WSGI environ by :class:`idempotent.contrib.wsgi.IdempotencyMiddleware`.
MIDDLEWARE_MARK = "idempotent.middleware"
_UNWRAP_LIMIT = 3


def to_response(stored: StoredResponse) -> Response:
    """A Flask ``Response`` with exactly the stored status, headers and body."""
    response = Response(stored.body, status=stored.status)
    response.headers.clear()
    for name, value in stored.headers:
        response.headers.add(name, value)
    return response


def _capture(response: Response) -> StoredResponse | None:
    """The response to store; None for a streamed body (a generator, ``send_file``): in lease
    mode it is sent without being stored."""
    if response.is_streamed:
        return None
    return StoredResponse.capture(response.status_code, response.headers.items(), response.get_data())


def _capture_complete(response: Response) -> StoredResponse:
    """The response to store in transaction mode, where a streamed one is an error: not storing it
    would roll the view's writes back while the response reports them done."""
    stored = _capture(response)
    if stored is None:
        raise ConfigurationError(
            "an idempotent_route view returned a streamed response (a generator or send_file), whose "
            "body cannot be stored for replay; its writes are rolled back. Return a complete body, or "
            "use mode='lease' (streamed responses are then sent without being stored)"
        )
    return stored


def _resolve_session(given: Any) -> Session | sa.Connection | None:
    """The Session/Connection behind ``given`` (a handle, a scoped_session, a zero-arg callable),
    or Flask-SQLAlchemy's session when ``given`` is None."""
    obj = given
    if obj is None:
        extension = current_app.extensions.get("sqlalchemy")
        obj = getattr(extension, "session", None)
        if obj is None:
            return None
    for _ in range(_UNWRAP_LIMIT):
        if isinstance(obj, (Session, sa.Connection)):
            return obj
        if not callable(obj):
            break
        obj = obj()
    if isinstance(obj, (Session, sa.Connection)):
        return obj
    raise ConfigurationError(
        f"idempotent_route(session=...) must give a SQLAlchemy Session or Connection (or a scoped_session "
        f"or zero-argument callable returning one), not {type(obj).__name__}"
    )


def _commit_autobegun(handle: Session | sa.Connection) -> None:
    """Commit what the view wrote on a request without a key, as the decorator does with one; a
    transaction the view began explicitly (``session.begin()``) is left to it."""
    if isinstance(handle, Session):
        transaction = handle.get_transaction()
        if transaction is not None and transaction.origin is SessionTransactionOrigin.AUTOBEGIN:
            handle.commit()
    elif handle.in_transaction():
        handle.commit()


def _describe(policy: Policy) -> HTTPRequest:
    rule = request.url_rule
    return HTTPRequest(
        method=request.method,
        path=request.path,
        headers=list(request.headers.items()),
        body=request.get_data(cache=True),
        route=rule.rule if rule is not None else None,
        query=request.query_string.decode("latin-1"),
        principal=policy.principal(request),
    )


def idempotent_route(*, session: Any = None, **options: Unpack[PolicyOptions]) -> Callable[[F], F]:
    """Make a Flask view (a function or a ``MethodView`` method) idempotent per request.

    ``session``: where the view's database transaction is (see the module docs); default
    Flask-SQLAlchemy's ``db.session`` when registered. ``options`` are those of
    :class:`idempotent.http.Policy`: ``principal_from`` (called with Flask's ``request``;
    put the account or tenant in the scope so callers never share keys), ``required``,
    ``header``, ``key_from_body``, ``mode``, ``commit`` (default True), ``ttl``, ``wait``,
    ``store``, ``store_server_errors``, ``problem_base``... The wrapper is a plain function; an
    ``async def`` view is run to completion inside it the way Flask runs async views (install
    ``flask[async]``), and the session stays the sync one.
    """
    Policy.from_options("idempotent_route", options, also=["session"])  # fails where it is written

    def decorate(view: F) -> F:
        policy = Policy.from_options(
            "idempotent_route", {"name": f"{view.__module__}.{view.__qualname__}", **options}
        )
        explicit_mode = policy.mode

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            def run_view() -> Any:
                # An async view runs to completion here, as Flask runs it (its ``async`` extra).
                return current_app.ensure_sync(view)(*args, **kwargs)

            def call() -> Response:
                return current_app.make_response(run_view())

            if not policy.eligible(request.method):
                return run_view()
            handle = None if explicit_mode == "lease" else _resolve_session(session)
            if not policy.applies(request.method, request.headers.items()):
                response = call()  # no key: no idempotency, but the same unit of work
                if handle is not None and policy.commit and response.status_code < 500:
                    _commit_autobegun(handle)
                return response
            if MIDDLEWARE_MARK in request.environ:
                raise ConfigurationError(
                    f"{view.__qualname__} is decorated with idempotent_route and the app also runs "
                    "idempotent.contrib.wsgi.IdempotencyMiddleware: both would claim the same key; "
                    "use one of them for this route"
                )
            if handle is None and explicit_mode == "transaction":
                raise ConfigurationError(
                    f"{view.__qualname__} uses idempotent_route in transaction mode but has no database "
                    "session: pass session=db.session (or a Session/Connection, or a callable returning "
                    "one), register Flask-SQLAlchemy on the app, or use mode='lease'"
                )
            render = _capture if handle is None else _capture_complete
            result = policy.run(_describe(policy), call, render, session=handle)
            return to_response(result) if isinstance(result, StoredResponse) else result

        wrapper.__idempotent_route__ = policy  # type: ignore[attr-defined]
        return cast("F", wrapper)

    return decorate
