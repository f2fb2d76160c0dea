"""Idempotent Starlette endpoints: ``@idempotent_route()`` on a function or ``HTTPEndpoint`` method.

::

    from idempotent.contrib.starlette import idempotent_route

    @idempotent_route(session=lambda request: request.state.db)
    async def create_order(request: Request) -> Response: ...

    class Orders(HTTPEndpoint):
        @idempotent_route()
        async def post(self, request: Request) -> Response: ...

With ``session`` (a callable receiving the request and returning its ``Session`` or
``AsyncSession``) the stored response commits with the endpoint's writes (transaction mode);
without it the claim commits at once on the engine given to ``configure`` (lease mode). The
HTTP contract itself (key header, scope, fingerprint, replay, problems) is
:class:`idempotent.http.Policy`'s; this module only adapts Starlette's request and response.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from typing_extensions import Unpack

try:
    import anyio.from_thread
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "idempotent.contrib.starlette needs Starlette: pip install 'idempotent[starlette]'"
    ) from exc

from idempotent.errors import ConfigurationError
from idempotent.http import (
    HTTPRequest,
    Policy,
    PolicyOptions,
    StoredResponse,
)

__all__ = [
    "body_from_thread",
    "idempotent_route",
    "passed_through",
    "passed_through_async",
    "request_for",
    "request_headers",
    "stored_from",
    "to_response",
]

F = TypeVar("F", bound=Callable[..., Any])


def _latin1(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in pairs]


def request_headers(request: Request) -> list[tuple[str, str]]:
    """The request's header fields as text pairs, a repeated field appearing repeatedly."""
    return _latin1(request.scope["headers"])


def request_for(policy: Policy, request: Request, body: bytes) -> HTTPRequest:
    """Describe a Starlette (or FastAPI) request for the HTTP core. The route template is the
    matched route's path (with the mount prefix, ``root_path``), else the request path."""
    scope = request.scope
    return HTTPRequest(
        method=request.method,
        path=request.url.path,
        headers=request_headers(request),
        body=body,
        route=route_template(scope),
        query=scope.get("query_string", b"").decode("latin-1"),
        principal=policy.principal(request),
    )


def route_template(scope: Any) -> str | None:
    """The path template of the route that matched (``/shops/{shop}/orders/{id}``), with the
    application's ``root_path`` and the templates of the mounts on the way; None when none did.

    Starlette 1.0 and FastAPI record the matched route in the scope, which is all it takes
    outside a ``Mount``. Under one, ``root_path`` holds the mount's matched path (``/shops/s1``),
    not its template; and Starlette before 1.0 records no route. Then the router's routes are
    matched again, from the top, as the router matched them.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    root = scope.get("root_path", "")
    top_root = scope.get("app_root_path", root)
    if path is not None and root == top_root:
        return f"{root}{path}"
    router = scope.get("router") or getattr(scope.get("app"), "router", None)
    found = None
    if router is not None:
        found = _match_template(getattr(router, "routes", ()), {**scope, "root_path": top_root}, top_root)
    if found is None and path is not None:
        return f"{root}{path}"
    return found


def _match_template(routes: Any, scope: dict[str, Any], prefix: str) -> str | None:
    from starlette.routing import Match  # noqa: PLC0415

    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a route type this cannot match again: give up, as without a route
            return None
        if match is not Match.FULL:
            continue
        inner = getattr(route, "routes", None)
        path = getattr(route, "path", None)
        if inner is not None and path is not None:  # a Mount: look among its routes
            return _match_template(inner, {**scope, **child}, prefix + path)
        return None if path is None else prefix + path
    return None


def body_from_thread(request: Request) -> bytes:
    """The request body, from the worker thread a sync endpoint runs in: the copy the framework
    already read, else read on the event loop."""
    cached = getattr(request, "_body", None)  # set by Request.body() once the body was read
    if isinstance(cached, bytes):
        return cached
    return anyio.from_thread.run(request.body)


def stored_from(response: Response) -> StoredResponse:
    """The :class:`StoredResponse` of a complete Starlette response. A streamed one
    (``StreamingResponse``, ``FileResponse``) has no body to store: ConfigurationError."""
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ConfigurationError(
            f"an idempotent route returned a {type(response).__name__}, whose streamed body cannot be "
            "stored for replay: return a complete Response, or leave this route to IdempotencyMiddleware "
            "(which passes streamed responses through without storing them)"
        )
    return StoredResponse.capture(response.status_code, _latin1(response.raw_headers), bytes(body))


def to_response(stored: StoredResponse) -> Response:
    """A Starlette ``Response`` sending ``stored`` exactly: status, every header in order, body."""
    response = Response(content=stored.body, status_code=stored.status)
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers]
    if stored.header("content-length") is None and stored.body:
        raw.append((b"content-length", str(len(stored.body)).encode("latin-1")))
    response.raw_headers = raw
    return response


def passed_through(policy: Policy, handle: Any) -> None:
    """After an endpoint ran without idempotency (no key): commit its session like a keyed
    request's, so the route behaves the same either way (``commit=True``, the default)."""
    if policy.commit and handle is not None and handle.in_transaction():
        handle.commit()


async def passed_through_async(policy: Policy, handle: Any) -> None:
    """:func:`passed_through` for an ``AsyncSession``/``AsyncConnection``."""
    if policy.commit and handle is not None and handle.in_transaction():
        await handle.commit()


def idempotent_route(
    *, session: Callable[[Request], Any] | None = None, **options: Unpack[PolicyOptions]
) -> Callable[[F], F]:
    """Make a Starlette endpoint (a function or an ``HTTPEndpoint`` method, sync or async)
    idempotent under the ``Idempotency-Key`` contract of :class:`idempotent.http.Policy`.

    ``session(request)`` returns the ``Session``/``AsyncSession`` the endpoint writes through
    (``request.state.db``, say): the response is then stored in the same transaction, committed
    by default (``commit``). Without it the claim is a lease on the configured engine.
    ``principal_from(request)`` names the caller; every option is :class:`Policy`'s.
    The endpoint must return a complete ``Response`` (not a streamed one).
    """
    if session is not None and not callable(session):
        raise ConfigurationError("session must be a callable: session(request) -> Session or AsyncSession")

    def decorate(endpoint: F) -> F:
        name = f"{endpoint.__module__}.{endpoint.__qualname__}"
        policy = Policy.from_options(
            "idempotent.contrib.starlette.idempotent_route", {"name": name, **options}, also=("session",)
        )

        def find_request(args: tuple[Any, ...]) -> Request:
            for arg in args:
                if isinstance(arg, Request):
                    return arg
            raise ConfigurationError(f"{name} received no starlette Request; is it a Starlette endpoint?")

        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = find_request(args)
                if not policy.applies(request.method, request_headers(request)):
                    response = await endpoint(*args, **kwargs)
                    await passed_through_async(policy, session(request) if session is not None else None)
                    return response
                described = request_for(policy, request, await request.body())
                result = await policy.run_async(
                    described,
                    lambda: endpoint(*args, **kwargs),
                    stored_from,
                    session=session(request) if session is not None else None,
                )
                return to_response(result) if isinstance(result, StoredResponse) else result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            request = find_request(args)
            if not policy.applies(request.method, request_headers(request)):
                response = endpoint(*args, **kwargs)
                passed_through(policy, session(request) if session is not None else None)
                return response
            body = body_from_thread(request)
            result = policy.run(
                request_for(policy, request, body),
                lambda: endpoint(*args, **kwargs),
                stored_from,
                session=session(request) if session is not None else None,
            )
            return to_response(result) if isinstance(result, StoredResponse) else result

        return sync_wrapper  # type: ignore[return-value]

    return decorate
