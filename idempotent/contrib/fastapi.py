"""Idempotent FastAPI routes: ``@idempotent_route()`` below the route decorator.

::

    from idempotent.contrib.fastapi import idempotent_route

    @app.post("/orders", status_code=201, response_model=OrderOut)
    @idempotent_route(principal_from=lambda request: request.headers.get("authorization"))
    def create_order(order: OrderIn, db: Session = Depends(get_db)) -> Order: ...

The endpoint keeps its dependencies, body models, response model, status code and OpenAPI
entry; the ``Idempotency-Key`` header is added to its parameters (so it appears in the OpenAPI
document) and the response is rendered the way FastAPI renders it, inside the unit of work, so
that exactly those bytes are stored. The session is the endpoint's first ``Session`` or
``AsyncSession`` argument (usually a ``Depends``), or the one ``session="name"`` names: the stored
response commits with the endpoint's writes. Because the request is the unit of work, a
transaction that a dependency auto-began (an auth lookup) is committed too (``commit=True``).
An endpoint without a session claims its key in lease mode on the engine given to ``configure``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from typing_extensions import Unpack

try:
    import anyio.from_thread
    from fastapi import Header, Request, Response
    from fastapi.datastructures import DefaultPlaceholder
    from fastapi.routing import serialize_response
    from fastapi.utils import is_body_allowed_for_status_code
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("idempotent.contrib.fastapi needs FastAPI: pip install 'idempotent[fastapi]'") from exc

from idempotent.contrib.starlette import (
    body_from_thread,
    passed_through,
    passed_through_async,
    request_for,
    request_headers,
    stored_from,
    to_response,
)
from idempotent.errors import ConfigurationError
from idempotent.http import (
    Policy,
    PolicyOptions,
    StoredResponse,
    find_session,
)

__all__ = ["idempotent_route"]

F = TypeVar("F", bound=Callable[..., Any])

_REQUEST = "idempotent_request_"
_RESPONSE = "idempotent_response_"
_KEY = "idempotent_key_"
_SERIALIZE_OPTIONS = frozenset(inspect.signature(serialize_response).parameters)


async def _render(request: Request, value: Any, sub_response: Response, is_coroutine: bool) -> Response:
    """The response FastAPI would build from the endpoint's return value: response model,
    status code, response class and the headers set on the injected ``Response``."""
    if isinstance(value, Response):
        return value
    route: Any = request.scope.get("route")
    field = getattr(route, "response_field", None)
    response_class = getattr(route, "response_class", None)
    dump_json = field is not None and isinstance(response_class, DefaultPlaceholder)
    options: dict[str, Any] = {
        "field": field,
        "response_content": value,
        "include": getattr(route, "response_model_include", None),
        "exclude": getattr(route, "response_model_exclude", None),
        "by_alias": getattr(route, "response_model_by_alias", True),
        "exclude_unset": getattr(route, "response_model_exclude_unset", False),
        "exclude_defaults": getattr(route, "response_model_exclude_defaults", False),
        "exclude_none": getattr(route, "response_model_exclude_none", False),
        "is_coroutine": is_coroutine,
        "dump_json": dump_json,
    }
    content = await serialize_response(**{k: v for k, v in options.items() if k in _SERIALIZE_OPTIONS})
    args: dict[str, Any] = {}
    status = getattr(route, "status_code", None) or sub_response.status_code
    if sub_response.status_code:
        status = sub_response.status_code
    if status is not None:
        args["status_code"] = status
    if dump_json and "dump_json" in _SERIALIZE_OPTIONS:
        response = Response(content=content, media_type="application/json", **args)
    else:
        actual: Any = (
            response_class.value if isinstance(response_class, DefaultPlaceholder) else response_class
        )
        if actual is None:
            from fastapi.responses import JSONResponse  # noqa: PLC0415  (outside a route only)

            actual = JSONResponse
        response = actual(content, **args)
    if not is_body_allowed_for_status_code(response.status_code):
        response.body = b""
        response.headers["content-length"] = "0"
    response.headers.raw.extend(sub_response.headers.raw)
    return response


def _annotated(params: Sequence[inspect.Parameter], cls: type) -> str | None:
    """The name of the parameter annotated with ``cls`` (FastAPI injects it into one only)."""
    for param in params:
        annotation = param.annotation
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        if isinstance(annotation, type) and issubclass(annotation, cls):
            return param.name
    return None


def _render_here(request: Request, value: Any, sub_response: Response) -> Response:
    """:func:`_render` from the worker thread of a sync endpoint, without a trip to the event
    loop: that trip would wait for a free worker thread while this one holds the database
    transaction, and with every worker busy on the same key nothing would move. FastAPI's
    serialization awaits nothing when told it runs on the loop, so its coroutine completes at
    once; should a later version await inside, the coroutine is run on the loop instead."""
    coroutine = _render(request, value, sub_response, True)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    return anyio.from_thread.run(_render, request, value, sub_response, True)


def _signature(
    endpoint: Callable[..., Any], header: str, required: bool
) -> tuple[inspect.Signature, str, str, bool, bool]:
    """The endpoint's signature with resolved annotations plus the request, the sub-response (the
    endpoint's own parameters of those types when it has them) and the key header (documented in
    OpenAPI; read again raw, so a repeated field is a 400). Also the names of the request and
    sub-response parameters and whether the endpoint takes them itself."""
    signature = inspect.signature(endpoint)
    try:
        hints = typing.get_type_hints(endpoint, include_extras=True)
    except Exception:  # FastAPI resolves the annotations itself then, as without the decorator
        hints = {}
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    names = {p.name for p in params}
    for name in (_REQUEST, _RESPONSE, _KEY):
        if name in names:
            raise ConfigurationError(
                f"{endpoint.__qualname__} has a parameter named {name}, which is reserved"
            )
    description = (
        "A unique value per operation: a retry with the same value gets the first response back "
        "(marked Idempotent-Replayed: true) instead of running again."
        + (" Required." if required else " Optional: without it the request runs as usual.")
    )
    own_request, own_response = _annotated(params, Request), _annotated(params, Response)
    extra = []
    if own_request is None:
        extra.append(inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    if own_response is None:
        extra.append(inspect.Parameter(_RESPONSE, inspect.Parameter.KEYWORD_ONLY, annotation=Response))
    extra.append(
        inspect.Parameter(
            _KEY,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[
                str | None, Header(alias=header, description=description, convert_underscores=False)
            ],
            default=None,
        )
    )
    positional = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    signature = signature.replace(
        parameters=[*positional, *extra, *rest],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    return (
        signature,
        own_request or _REQUEST,
        own_response or _RESPONSE,
        own_request is not None,
        own_response is not None,
    )


def idempotent_route(*, session: str | None = None, **options: Unpack[PolicyOptions]) -> Callable[[F], F]:
    """Make a FastAPI path operation idempotent; put it directly below ``@app.post(...)``.

    ``session`` names the parameter holding the ``Session``/``AsyncSession`` (default: the first
    argument that is one). ``principal_from(request)`` names the caller, so two callers never
    share a key. ``mode=None`` is transaction mode when the endpoint receives a session, lease
    mode otherwise. Every other option is :class:`idempotent.http.Policy`'s. Sync endpoints need a
    sync ``Session``, async ones an ``AsyncSession``.
    """

    def decorate(endpoint: F) -> F:
        name = f"{endpoint.__module__}.{endpoint.__qualname__}"
        policy = Policy.from_options(
            "idempotent.contrib.fastapi.idempotent_route", {"name": name, **options}, also=("session",)
        )
        signature, request_name, response_name, own_request, own_response = _signature(
            endpoint, policy.header, policy.required
        )
        if session is not None and session not in signature.parameters:
            raise ConfigurationError(f"session={session!r} names no parameter of {name}")
        split = _splitter(session, request_name, response_name, own_request, own_response)
        is_coroutine = inspect.iscoroutinefunction(endpoint)
        wrapper = (
            _async_wrapper(endpoint, policy, split)
            if is_coroutine
            else _sync_wrapper(endpoint, policy, split)
        )
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


Split = Callable[[dict[str, Any]], tuple[Request, Response, Any]]


def _splitter(
    session: str | None, request: str, response: str, own_request: bool, own_response: bool
) -> Split:
    """Take the request, sub-response and session out of the endpoint's keyword arguments,
    leaving exactly the endpoint's own."""

    def split(kwargs: dict[str, Any]) -> tuple[Request, Response, Any]:
        found_request = kwargs[request] if own_request else kwargs.pop(request)
        found_response = kwargs[response] if own_response else kwargs.pop(response)
        kwargs.pop(_KEY, None)
        handle = kwargs.get(session) if session is not None else find_session(kwargs.values())
        return found_request, found_response, handle

    return split


def _async_wrapper(endpoint: Callable[..., Any], policy: Policy, split: Split) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, sub_response, handle = split(kwargs)
        if not policy.applies(request.method, request_headers(request)):
            value = await endpoint(*args, **kwargs)
            await passed_through_async(policy, handle)
            return value
        described = request_for(policy, request, await request.body())

        async def call() -> Response:
            return await _render(request, await endpoint(*args, **kwargs), sub_response, True)

        result = await policy.run_async(described, call, stored_from, session=handle)
        return to_response(result) if isinstance(result, StoredResponse) else result

    return wrapper


def _sync_wrapper(endpoint: Callable[..., Any], policy: Policy, split: Split) -> Callable[..., Any]:
    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request, sub_response, handle = split(kwargs)
        if not policy.applies(request.method, request_headers(request)):
            value = endpoint(*args, **kwargs)
            passed_through(policy, handle)
            return value
        # FastAPI runs sync endpoints in a worker thread; the body and the rendering are async in
        # FastAPI, and are completed from here (see body_from_thread and _render_here).
        body = body_from_thread(request)

        def call() -> Response:
            return _render_here(request, endpoint(*args, **kwargs), sub_response)

        result = policy.run(request_for(policy, request, body), call, stored_from, session=handle)
        return to_response(result) if isinstance(result, StoredResponse) else result

    return wrapper
