"""The HTTP contract of idempotency, once for every framework: sans-IO, no framework import.

A framework adapter (``idempotent.contrib.fastapi``, ``.flask``, ``.asgi``, ...) describes the
incoming request as an :class:`HTTPRequest`, hands a :class:`Policy` the call that produces the
framework's response plus a ``render`` function that turns that response into a
:class:`StoredResponse`, and sends whatever :meth:`Policy.run` (or :meth:`Policy.run_async`)
returns::

    policy = Policy(principal_from=lambda request: request.user_id)   # once, per view or app

    def view(framework_request):
        request = HTTPRequest(
            method=framework_request.method,
            path=framework_request.path,
            route="/orders/<int:id>",              # the route template, or None for the path
            query=framework_request.query_string,  # raw, without "?"
            headers=framework_request.header_pairs,
            body=framework_request.body,
            principal=policy.principal(framework_request),
        )
        result = policy.run(request, call_the_view, render, session=db_session)
        if isinstance(result, StoredResponse):      # a replay or a problem+json error
            return to_framework_response(result)
        return result                               # the view's own response, first run

What :meth:`Policy.run` decides, in order:

1. A method outside ``policy.methods`` (POST, PUT, PATCH, DELETE) runs ``call`` as is.
2. The key comes from the ``Idempotency-Key`` header (name configurable), bare
   (``Idempotency-Key: 8e03978e``) or as an RFC 8941 string (``Idempotency-Key: "8e03978e"``,
   with ``\\"`` and ``\\\\`` unescaped). A field sent twice, a malformed string or a key outside
   the core's rules (1-255 characters, no NUL) is a 400 problem. No header: 400 when
   ``required``, a key hashed from principal + request when ``key_from_body``, else ``call``
   runs without idempotency (the default: clients opt in per request).
3. The scope is method + route template + principal (:meth:`Policy.scope`), the fingerprint
   method + path + query + body (:meth:`Policy.fingerprint`).
4. The decision core runs ``call`` once under that key: in transaction mode on ``session`` (the
   stored response commits with the view's writes), in lease mode on the configured engine.
   ``render`` turns the result into the :class:`StoredResponse` to keep; a 5xx response (unless
   ``store_server_errors``), a refusal (401, 403, 429: :data:`REFUSALS`, so that the retry with
   credentials, or after the wait, runs) or ``render`` returning ``None`` (a streamed body) is
   not kept: the claim is dropped (in transaction mode with the view's writes) and ``call``'s
   response is sent.
5. A retry gets the stored response plus ``Idempotent-Replayed: true``; the same key with
   another request a 422 problem; a request while the first is still running after ``wait`` a
   409 problem with ``Retry-After``. Problems are ``application/problem+json`` (RFC 9457) whose
   ``type`` is ``problem_base`` + a slug (``invalid-key``, ``missing-key``, ``key-reused``,
   ``in-progress``), so they can point at the API's own documentation.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

from idempotent._drivers import is_handle
from idempotent.decorator import Guard, Seconds
from idempotent.errors import (
    ConfigurationError,
    IdempotencyError,
    InProgress,
    InvalidKey,
    KeyReused,
    MissingKey,
    TransactionAborted,
)
from idempotent.events import Hook
from idempotent.fingerprint import VERSION as FP_VERSION
from idempotent.keys import normalise_key

__all__ = [
    "DEFAULT_PROBLEM_BASE",
    "ELIGIBLE_METHODS",
    "HEADER",
    "NEVER_STORED",
    "REFUSALS",
    "REPLAYED_HEADER",
    "HTTPRequest",
    "MiddlewareOptions",
    "Policy",
    "PolicyOptions",
    "ResponseCodec",
    "StoredResponse",
    "find_session",
    "form_body",
    "parse_key",
]

R = TypeVar("R")

#: Methods whose requests are made idempotent; every other method passes straight through.
ELIGIBLE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The request header that carries the key.
HEADER = "Idempotency-Key"
#: The response header a replay carries, with the value ``true``.
REPLAYED_HEADER = "Idempotent-Replayed"
#: Default start of a problem document's ``type``; the slug of the problem follows it.
DEFAULT_PROBLEM_BASE = "https://pypi.org/project/idempotent/#problem-"
#: Response headers never stored (lowercase): hop-by-hop headers (RFC 9110 7.6.1), cookies, and
#: the replay marker itself.
NEVER_STORED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        REPLAYED_HEADER.lower(),
    }
)
_PROBLEM_TYPE = "application/problem+json"


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """What the HTTP core needs to know about a request; adapters fill it from their framework's.

    ``headers`` are all request header fields as ``(name, value)`` text pairs, a field sent twice
    appearing twice (names in any case; Latin-1 decoded, as ASGI and WSGI give them). ``route``
    is the route template (``/orders/{order_id}``), or None where there is none (a middleware
    runs before routing): then the path stands in. ``query`` is the raw query string without
    ``?``. ``principal`` is who is calling (see :meth:`Policy.principal`), None when anonymous.
    """

    method: str
    path: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    route: str | None = None
    query: str = ""
    principal: str | None = None

    def header_values(self, name: str) -> list[str]:
        """Every value of the header field ``name`` (case-insensitive), in the order sent."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A complete HTTP response as stored and replayed: status, headers, body bytes.

    Build it with :meth:`capture`, which drops what must never be stored (:data:`NEVER_STORED`).
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def capture(cls, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> StoredResponse:
        """The response to store: headers without hop-by-hop fields (also those the response's
        ``Connection`` header names), ``Set-Cookie`` and ``Idempotent-Replayed``."""
        pairs = [(str(name), str(value)) for name, value in headers]
        dropped = set(NEVER_STORED)
        for name, value in pairs:
            if name.lower() == "connection":
                dropped.update(token.strip().lower() for token in value.split(",") if token.strip())
        kept = tuple((name, value) for name, value in pairs if name.lower() not in dropped)
        return cls(int(status), kept, bytes(body))

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def replayed(self, header: str = REPLAYED_HEADER) -> StoredResponse:
        """This response as a replay sends it: the stored headers plus ``Idempotent-Replayed: true``."""
        return StoredResponse(self.status, (*self.headers, (header, "true")), self.body)


class ResponseCodec:
    """Stores a :class:`StoredResponse` as compact JSON; a UTF-8 body stays readable text."""

    name = "http-response"

    def dumps(self, value: Any, hint: Any) -> str:
        """Encode a StoredResponse (the only value the HTTP core stores)."""
        if not isinstance(value, StoredResponse):
            raise ConfigurationError(
                f"the HTTP response codec stores StoredResponse, not {type(value).__name__}"
            )
        data: dict[str, Any] = {"s": value.status, "h": [list(pair) for pair in value.headers]}
        try:
            data["t"] = value.body.decode("utf-8")
        except UnicodeDecodeError:
            import base64  # noqa: PLC0415  (binary bodies are rare)

            data["b"] = base64.b64encode(value.body).decode("ascii")
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def loads(self, text: str, hint: Any) -> StoredResponse:
        """Decode what :meth:`dumps` wrote."""
        data = json.loads(text)
        if "t" in data:
            body = data["t"].encode("utf-8")
        else:
            import base64  # noqa: PLC0415  (binary bodies are rare)

            body = base64.b64decode(data["b"])
        return StoredResponse(data["s"], tuple((k, v) for k, v in data["h"]), body)


# ---------------------------------------------------------------------------------------------
# The key header
# ---------------------------------------------------------------------------------------------
def _sf_string(value: str) -> str | None:
    """The text of an RFC 8941 sf-string (``"..."`` with ``\\"``/``\\\\`` escapes, printable ASCII),
    parameters after it ignored; None when ``value`` is not one."""
    out: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            index += 1
            if index >= len(value) or value[index] not in '"\\':
                return None
            out.append(value[index])
        elif char == '"':
            rest = value[index + 1 :].strip()
            if rest and not rest.startswith(";"):
                return None
            return "".join(out)
        elif not " " <= char <= "~":
            return None
        else:
            out.append(char)
        index += 1
    return None  # no closing quote


def parse_key(values: Sequence[str], header: str = HEADER) -> str | None:
    """The key carried by the values of the key header field: None when the field is absent.

    A bare value is the key as sent (surrounding spaces removed); a value starting with ``"`` is
    parsed as an RFC 8941 string. Raises :class:`InvalidKey` (an HTTP 400) when the field appears
    more than once, the string is malformed, or the key breaks the core's rules (1-255
    characters, no NUL).
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKey(f"the {header} header appears {len(values)} times; send it once per request")
    raw = values[0].strip(" \t")
    if raw.startswith('"'):
        text = _sf_string(raw)
        if text is None:
            raise InvalidKey(
                f"the {header} header starts with a quote but is not a valid structured-field string: "
                'printable ASCII between double quotes, with \\" and \\\\ as the only escapes'
            )
        raw = text
    try:
        return normalise_key(raw)
    except InvalidKey:
        raise InvalidKey(f"the {header} header must hold 1 to 255 characters, without NUL") from None


def find_session(values: Iterable[Any]) -> Any:
    """The first ``Session``, ``Connection``, ``AsyncSession`` or ``AsyncConnection`` among
    ``values`` (a view's arguments), or None: how adapters find the transaction of a view."""
    return next((value for value in values if is_handle(value)), None)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------
#: Statuses that refuse a request for who sent it or when, not for what it asks: answered before
#: the handler acts (authentication, permission and CSRF checks, rate limits), and the client is
#: expected to send the same request again, with the same key, once it has credentials or has
#: waited. Never stored, so that the retry runs.
REFUSALS = frozenset({401, 403, 429})


def form_body(fields: Iterable[tuple[str, str]], files: Iterable[tuple[str, str, str, str]]) -> bytes:
    """What stands for a ``multipart/form-data`` body in the fingerprint: its fields (name, value)
    and its files (name, file name, content type, SHA-256 of the content, hex), in an encoding
    that does not depend on the boundary or on the order of the names.

    Clients (browsers, requests, httpx, test clients) draw a new boundary for every request, so
    the raw bytes of a retry never match its first request's. Adapters whose framework has
    parsed the form already (Django) pass its fields here; raw bodies are parsed by the core.
    """
    form: dict[str, list[str]] = {}
    for name, value in fields:
        form.setdefault(name, []).append(value)
    uploads = sorted(([*upload] for upload in files), key=lambda upload: upload[0])  # stable per name
    return b"multipart:" + json.dumps([sorted(form.items()), uploads], sort_keys=True).encode("utf-8")


def _multipart_body(content_type: str, body: bytes) -> bytes | None:
    """:func:`form_body` of a raw ``multipart/form-data`` body (one that begins with its first
    boundary, after line breaks at most), None for any other body or one the parser cannot split
    into named parts."""
    if not body[:8].lstrip(b"\r\n").startswith(b"--"):
        return None
    if not content_type.lower().lstrip().startswith("multipart/form-data"):
        return None
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    fields: list[tuple[str, str]] = []
    files: list[tuple[str, str, str, str]] = []
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition")
        params = getattr(disposition, "params", {})
        name = params.get("name")
        if name is None:
            return None
        content = part.get_payload(decode=True)
        data = content if isinstance(content, bytes) else b""
        filename = params.get("filename")
        if filename is None:
            fields.append((str(name), data.decode(part.get_content_charset() or "utf-8", "surrogateescape")))
        else:
            digest = hashlib.sha256(data).hexdigest()
            files.append((str(name), str(filename), part.get_content_type(), digest))
    return form_body(fields, files) if fields or files else None


class _NotStored(Exception):
    """Raised inside the guarded call so the core drops the claim of a response it must not keep."""


#: What ends a guarded request without a stored response to send: a response not kept, or a
#: refusal of the decision core that becomes a problem document.
_SETTLED = (_NotStored, KeyReused, InProgress, TransactionAborted)


@dataclass(slots=True)
class _Attempt(Generic[R]):
    """One keyed request on its way through the decision core; ``value`` is what the view returned."""

    policy: Policy
    guard: Guard
    target: dict[str, Any]
    value: Any = None

    def keep(self, value: R, render: Callable[[R], StoredResponse | None]) -> StoredResponse:
        """Hold the view's response and return the one to store (raise _NotStored when none)."""
        self.value = value
        response = render(value)
        if (
            response is None
            or response.status in REFUSALS
            or (response.status >= 500 and not self.policy.store_server_errors)
        ):
            raise _NotStored
        return response

    def done(self, outcome: tuple[StoredResponse, bool]) -> R | StoredResponse:
        """The view's own response after a first run, or the stored one, marked, for a replay."""
        stored, replayed = outcome
        return stored.replayed(self.policy.replayed_header) if replayed else cast("R", self.value)

    def settled(self, error: Exception) -> R | StoredResponse:
        """The view's response when it was not kept, else the problem for the core's refusal."""
        if isinstance(error, _NotStored):
            return cast("R", self.value)
        return self.policy.problem(cast("IdempotencyError", error))


def _problem_json(type_uri: str, title: str, status: int, detail: str) -> bytes:
    document = {"type": type_uri, "title": title, "status": status, "detail": detail}
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


class MiddlewareOptions(TypedDict, total=False):
    """The options of :class:`Policy` a middleware passes on as ``**options`` (it sets the store,
    the TTL, the principal and lease mode itself)."""

    header: str
    required: bool
    key_from_body: bool
    methods: Iterable[str]
    store_server_errors: bool
    problem_base: str
    scope_prefix: str
    lease: Seconds | None
    wait: Seconds | None
    max_result_bytes: int | None
    hooks: Sequence[Hook]


class PolicyOptions(MiddlewareOptions, total=False):
    """The keyword options of :class:`Policy`, for adapters that take them as
    ``**options: Unpack[PolicyOptions]`` (so type checkers and editors know them)."""

    principal_from: Callable[[Any], object] | None
    mode: Literal["transaction", "lease"] | None
    commit: bool
    ttl: Seconds | None
    store: Any
    name: str


@dataclass
class Policy:
    """The idempotency settings of one view, route or middleware, and the request logic.

    Options:

    - ``header``: the request header carrying the key (``Idempotency-Key``).
    - ``required``: answer 400 to eligible requests without a key (default: run them as usual).
    - ``principal_from``: ``callable(framework_request) -> str | None`` naming the caller (an
      account or tenant id). It is part of the scope, so two callers sending the same key never
      see each other's responses. Adapters call it through :meth:`principal`.
    - ``key_from_body``: requests without the header get a key hashed from principal, method,
      path, query and body. Two requests meant to be separate but identical within ``ttl``
      then become one.
    - ``methods``: the eligible methods (POST, PUT, PATCH, DELETE).
    - ``store_server_errors``: keep 5xx responses too (default: a retry runs again).
    - ``problem_base``: start of the ``type`` URI of problem documents.
    - ``scope_prefix``: first word of every scope (``http``); set one per application when
      several share a keys table.
    - ``mode``: ``"transaction"`` (the response commits with the view's writes on ``session``),
      ``"lease"`` (the claim commits at once on the configured engine; for views without a
      database transaction, and for middleware), or None: transaction mode when :meth:`run`
      gets a session, lease mode otherwise.
    - ``commit``: in transaction mode, commit a transaction the session auto-began before the
      view (an auth dependency that read first): the request is the unit of work. A transaction
      the caller began explicitly is left to it.
    - ``ttl``, ``lease``, ``wait``, ``store``, ``max_result_bytes``, ``hooks``: as for
      ``@idempotent``, defaulting to the ``configure`` values.
    - ``name``: the name errors and hooks use (``http``).
    """

    header: str = HEADER
    required: bool = False
    principal_from: Callable[[Any], object] | None = None
    key_from_body: bool = False
    methods: frozenset[str] = ELIGIBLE_METHODS
    store_server_errors: bool = False
    problem_base: str = DEFAULT_PROBLEM_BASE
    scope_prefix: str = "http"
    mode: Literal["transaction", "lease"] | None = None
    commit: bool = True
    ttl: Seconds | None = None
    lease: Seconds | None = None
    wait: Seconds | None = None
    store: Any = None
    max_result_bytes: int | None = None
    hooks: Sequence[Hook] = ()
    name: str = "http"
    _guards: dict[str, Guard] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in (None, "transaction", "lease"):
            raise ConfigurationError(f"mode must be 'transaction', 'lease' or None, not {self.mode!r}")
        if not isinstance(self.header, str) or not self.header.strip():
            raise ConfigurationError(f"header must name a request header, not {self.header!r}")
        if self.principal_from is not None and not callable(self.principal_from):
            raise ConfigurationError(
                "principal_from must be a callable: principal_from(request) -> str | None"
            )
        self.methods = frozenset(m.upper() for m in self.methods)
        self.replayed_header = REPLAYED_HEADER
        # Built now, so a wrong option fails at start-up rather than on the first request.
        for mode in ("transaction", "lease") if self.mode is None else (self.mode,):
            self._guard_for(mode)

    @classmethod
    def from_options(cls, owner: str, options: Mapping[str, Any], also: Sequence[str] = ()) -> Policy:
        """The Policy of keyword ``options`` an adapter received as ``**options``; a name that is
        no option is a ConfigurationError naming ``owner`` and every option it takes (``also``:
        the adapter's own)."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"{owner} has no option {', '.join(unknown)}; its options are "
                f"{', '.join([*also, *sorted(known)])}"
            )
        return cls(**options)

    @classmethod
    def for_middleware(
        cls,
        owner: str,
        options: Mapping[str, Any],
        *,
        store: Any,
        ttl_seconds: Seconds | None,
        principal_from: Callable[[Any], object] | None,
    ) -> Policy:
        """The lease-mode Policy of a middleware constructed with ``store``, ``ttl_seconds``,
        ``principal_from`` and keyword ``options`` (:class:`MiddlewareOptions`); another name is a
        ConfigurationError naming ``owner`` and every option it takes."""
        allowed = MiddlewareOptions.__optional_keys__
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigurationError(
                f"{owner} has no option {', '.join(unknown)} (it runs in lease mode; the TTL is "
                "ttl_seconds); its options are app, store, ttl_seconds, principal_from, "
                + ", ".join(sorted(allowed))
            )
        return cls(
            **options,
            store=store,
            ttl=ttl_seconds,
            principal_from=principal_from,
            mode="lease",
            name=owner,
        )

    # -- pieces adapters may use on their own ------------------------------------------------------
    def eligible(self, method: str) -> bool:
        """Whether requests with ``method`` are made idempotent."""
        return method.upper() in self.methods

    def applies(self, method: str, headers: Iterable[tuple[str, str]]) -> bool:
        """Whether a request needs the HTTP core at all, from its method and headers alone (so a
        middleware reads no body for requests that pass through)."""
        if not self.eligible(method):
            return False
        if self.required or self.key_from_body:
            return True
        wanted = self.header.lower()
        return any(name.lower() == wanted for name, _ in headers)

    def principal(self, framework_request: Any) -> str | None:
        """Who is calling: ``principal_from(framework_request)`` as text (None without the hook)."""
        if self.principal_from is None:
            return None
        value = self.principal_from(framework_request)
        return None if value is None else str(value)

    def key(self, request: HTTPRequest) -> str | None:
        """The request's key; None to run without idempotency. Raises InvalidKey/MissingKey (400)."""
        key = parse_key(request.header_values(self.header), self.header)
        if key is not None:
            return key
        if self.key_from_body:
            return "body:" + self._digest(request, with_principal=True)[:64]
        if self.required:
            raise MissingKey(
                f"this request needs an {self.header} header: send a new unique value per operation"
            )
        return None

    def scope(self, request: HTTPRequest) -> str:
        """``<scope_prefix> <METHOD> <route template>`` plus `` @<principal>`` when there is one."""
        route = request.route if request.route is not None else request.path
        scope = f"{self.scope_prefix} {request.method.upper()} {route}"
        return scope if request.principal is None else f"{scope} @{request.principal}"

    def fingerprint(self, request: HTTPRequest) -> str:
        """A digest of method, path, query and body."""
        return f"{FP_VERSION}:" + self._digest(request, with_principal=False)

    @staticmethod
    def _digest(request: HTTPRequest, *, with_principal: bool) -> str:
        digest = hashlib.sha256()
        parts = [request.method.upper(), request.path, request.query]
        if with_principal:
            parts.insert(0, request.principal or "")
        for part in parts:
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "big") + data)
        types = request.header_values("content-type")
        body = _multipart_body(types[0], request.body) if len(types) == 1 else None
        digest.update(request.body if body is None else body)
        return digest.hexdigest()

    def problem(self, error: IdempotencyError) -> StoredResponse:
        """The problem+json response for an error of the key check or the decision core:
        400 InvalidKey/MissingKey, 422 KeyReused, 409 InProgress (with ``Retry-After``) and
        TransactionAborted (``Retry-After: 1``)."""
        headers: list[tuple[str, str]] = [("content-type", _PROBLEM_TYPE)]
        if isinstance(error, InvalidKey):
            status, slug, title, detail = 400, "invalid-key", "Invalid idempotency key", str(error)
        elif isinstance(error, MissingKey):
            status, slug, title, detail = 400, "missing-key", "Idempotency key required", str(error)
        elif isinstance(error, KeyReused):
            status, slug, title = 422, "key-reused", "Idempotency key reused"
            detail = (
                f"this {self.header} was already used for a different request (method, path, query or "
                "body); send a new key for a new request"
            )
        elif isinstance(error, InProgress):
            seconds = max(1, math.ceil(error.retry_after))
            status, slug, title = 409, "in-progress", "Request in progress"
            detail = f"a request with this {self.header} is still being processed; retry in {seconds} s"
            headers.append(("retry-after", str(seconds)))
        elif isinstance(error, TransactionAborted):
            status, slug, title = 409, "in-progress", "Request conflicted"
            detail = f"the request conflicted with another one using this {self.header}; retry it"
            headers.append(("retry-after", "1"))
        else:
            raise error
        body = _problem_json(self.problem_base + slug, title, status, detail)
        return StoredResponse(status, tuple(headers), body)

    # -- the whole request -----------------------------------------------------------------------
    def run(
        self,
        request: HTTPRequest,
        call: Callable[[], R],
        render: Callable[[R], StoredResponse | None],
        *,
        session: Any = None,
    ) -> R | StoredResponse:
        """Serve ``request``: what ``call()`` returned (first run, or no idempotency for this
        request), or a :class:`StoredResponse` to send (a replay, marked, or a problem).

        ``render(result)`` is called inside the guarded unit (in transaction mode before the
        commit) and returns the response to store, or None when it cannot be stored (a streamed
        body). ``session`` is the view's ``Session``/``Connection`` for transaction mode.
        Exceptions from ``call`` propagate after the claim is dropped (nothing is stored).
        """
        attempt = self._prepare(request, session)
        if not isinstance(attempt, _Attempt):
            return call() if attempt is None else attempt
        try:
            outcome = attempt.guard.run(
                lambda: attempt.keep(call(), render), **attempt.target, session=session
            )
        except _SETTLED as exc:
            return attempt.settled(exc)
        return attempt.done(outcome)

    async def run_async(
        self,
        request: HTTPRequest,
        call: Callable[[], Awaitable[R]],
        render: Callable[[R], StoredResponse | None],
        *,
        session: Any = None,
    ) -> R | StoredResponse:
        """:meth:`run` for async views: ``call`` returns an awaitable; ``session`` is an
        ``AsyncSession``/``AsyncConnection``."""
        attempt = self._prepare(request, session)
        if not isinstance(attempt, _Attempt):
            return await call() if attempt is None else attempt

        async def guarded() -> StoredResponse:
            return attempt.keep(await call(), render)

        try:
            outcome = await attempt.guard.run_async(guarded, **attempt.target, session=session)
        except _SETTLED as exc:
            return attempt.settled(exc)
        return attempt.done(outcome)

    # -- internals ---------------------------------------------------------------------------------
    def _prepare(self, request: HTTPRequest, session: Any) -> _Attempt[Any] | StoredResponse | None:
        if not self.eligible(request.method):
            return None
        try:
            key = self.key(request)
        except (InvalidKey, MissingKey) as exc:
            return self.problem(exc)
        if key is None:
            return None
        mode = self.mode or ("transaction" if session is not None else "lease")
        target = {"key": key, "scope": self.scope(request), "fingerprint": self.fingerprint(request)}
        return _Attempt(self, self._guard_for(mode), target)

    def _guard_for(self, mode: str) -> Guard:
        guard = self._guards.get(mode)
        if guard is None:
            options: dict[str, Any] = {
                k: v
                for k, v in (("ttl", self.ttl), ("lease", self.lease), ("wait", self.wait))
                if v is not None
            }
            guard = self._guards[mode] = Guard(
                self.name,
                return_hint=StoredResponse,
                mode=mode,  # type: ignore[arg-type]
                serializer=ResponseCodec(),
                commit=self.commit,
                store=self.store,
                max_result_bytes=self.max_result_bytes,
                hooks=self.hooks,
                **options,
            )
        return guard
