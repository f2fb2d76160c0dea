"""Django's requests and responses seen by the HTTP core, and the ``IDEMPOTENT`` setting.

Shared by :func:`~idempotent.contrib.django.idempotent_view` and
:class:`~idempotent.contrib.django.IdempotencyMiddleware`; nothing here decides anything about
keys: :class:`idempotent.http.Policy` does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import django
from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.http import HttpRequest, HttpResponse, RawPostDataException
from django.utils.module_loading import import_string

from idempotent import decorator
from idempotent._django import DjangoTransaction
from idempotent.errors import ConfigurationError, TableMissing
from idempotent.http import REFUSALS, HTTPRequest, Policy, StoredResponse, form_body

#: The database vendors whose connection the key can share (Django's ``connection.vendor``).
SUPPORTED_VENDORS = frozenset({"sqlite", "postgresql", "mysql"})
#: Set on a request's ``HttpRequest`` while an idempotent view or the middleware guards it.
MARK = "_idempotent_guard"
#: Set beside :data:`MARK`: whether the guard is an ``idempotent_view`` on a handler (a function
#: view or a method such as ``post``/``update``), not on ``dispatch`` nor the middleware.
MARK_HANDLER = "_idempotent_guard_on_handler"

# ---------------------------------------------------------------------------------------------
# The IDEMPOTENT setting
# ---------------------------------------------------------------------------------------------
#: Entries of ``settings.IDEMPOTENT`` and the option each one sets.
SETTING_OPTIONS = {
    "DATABASE": "using",
    "MODE": "mode",
    "STORE": "store",
    "TTL_SECONDS": "ttl",
    "LEASE": "lease",
    "WAIT": "wait",
    "PRINCIPAL_FROM": "principal_from",
    "REQUIRED": "required",
    "HEADER": "header",
    "KEY_FROM_BODY": "key_from_body",
    "METHODS": "methods",
    "STORE_SERVER_ERRORS": "store_server_errors",
    "PROBLEM_BASE": "problem_base",
    "SCOPE_PREFIX": "scope_prefix",
    "MAX_RESULT_BYTES": "max_result_bytes",
    "HOOKS": "hooks",
}
_DOTTED = frozenset({"STORE", "PRINCIPAL_FROM"})

_generation = 0
_generation_lock = threading.Lock()


def _settings_changed(*, setting: str, **_: Any) -> None:
    """Forget the resolved configurations when a test (``override_settings``) changes them."""
    global _generation  # noqa: PLW0603 - one counter for the process, bumped under the lock
    if setting in ("IDEMPOTENT", "DATABASES"):
        with _generation_lock:
            _generation += 1


setting_changed.connect(_settings_changed, weak=False, dispatch_uid="idempotent.contrib.django")


def setting_options() -> dict[str, Any]:
    """``settings.IDEMPOTENT`` as option names (dotted paths imported); unknown entries are an error."""
    raw = getattr(settings, "IDEMPOTENT", None) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"settings.IDEMPOTENT must be a dict such as {{'DATABASE': 'default'}}, not {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(SETTING_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"settings.IDEMPOTENT has no entry {', '.join(map(str, unknown))}; its entries are "
            + ", ".join(SETTING_OPTIONS)
        )
    options: dict[str, Any] = {}
    for name, given in raw.items():
        value = given
        if name in _DOTTED and isinstance(given, str):
            value = _import(name, given)
        elif name == "HOOKS":
            value = [_import(name, item) if isinstance(item, str) else item for item in given]
        options[SETTING_OPTIONS[name]] = value
    return options


def _import(entry: str, path: str) -> Any:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ConfigurationError(
            f"settings.IDEMPOTENT[{entry!r}] names {path!r}, which cannot be imported: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Transaction or lease mode
# ---------------------------------------------------------------------------------------------
def vendor(using: str) -> str | None:
    """The vendor of Django's database ``using`` (``postgresql``...), None when there is no such alias."""
    if using not in connections.settings:
        return None
    return str(connections[using].vendor)


def _lease_capable(store: Any) -> bool:
    """Whether ``store`` (None: the ``configure`` store) can run lease mode: an engine, or a store
    that never joins a transaction (Redis)."""
    if store is None:
        store = decorator.default_store()
    return getattr(store, "engine", None) is not None or not getattr(store, "atomic", True)


@dataclass(frozen=True)
class Config:
    """A resolved configuration: the policy, and the Django database of transaction mode (None: lease)."""

    policy: Policy
    using: str | None
    explicit_using: bool

    def session(self) -> DjangoTransaction | None:
        return None if self.using is None else DjangoTransaction(self.using)


def resolve(owner: str, options: Mapping[str, Any], using: str | None, *, is_async: bool = False) -> Config:
    """The configuration of ``owner`` from its ``options`` over ``settings.IDEMPOTENT``.

    Mode: as asked, else transaction mode on the database ``using`` (default ``'default'``) when
    Django has it and it is SQLite, PostgreSQL or MySQL/MariaDB, and the store can join a
    transaction; else lease mode when the store can run it; else a ConfigurationError.
    ``is_async`` (an ``async def`` view): always lease mode, see :func:`resolve_async`.
    """
    merged = {**setting_options(), **options}
    if is_async:
        return resolve_async(owner, merged, using)
    explicit_using = using is not None
    alias = using if using is not None else merged.pop("using", None) or "default"
    merged.pop("using", None)
    if not isinstance(alias, str):
        raise ConfigurationError(
            f"the database must be a Django database alias such as 'default', not {alias!r}"
        )
    mode = merged.get("mode")
    store = merged.get("store")
    found = vendor(alias)
    usable = found in SUPPORTED_VENDORS
    if mode is None:
        if usable and getattr(store, "atomic", True):
            mode = "transaction"
        elif _lease_capable(store):
            mode = "lease"
        else:
            where = (
                f"Django's DATABASES has no {alias!r} database"
                if found is None
                else f"Django's {alias!r} database is {found!r}, not SQLite, PostgreSQL or MySQL/MariaDB"
            )
            raise ConfigurationError(
                f"{owner} has nowhere to keep idempotency keys: {where}, and no store for lease mode was "
                "given. Configure DATABASES (the keys then commit with the view's writes), name another "
                "database with using= or IDEMPOTENT['DATABASE'], or give store=SQLStore(engine) for "
                "lease mode"
            )
    elif mode == "transaction" and not usable:
        raise ConfigurationError(
            f"{owner} uses transaction mode on Django's {alias!r} database, which is "
            f"{'not configured' if found is None else repr(found)}: transaction mode needs SQLite, "
            "PostgreSQL or MySQL/MariaDB. Name another database with using= or IDEMPOTENT['DATABASE'], "
            "or use mode='lease' with a store"
        )
    merged["mode"] = mode
    policy = Policy.from_options(owner, merged, also=["using"])
    return Config(policy, alias if mode == "transaction" else None, explicit_using)


MIDDLEWARE_OWNER = "IdempotencyMiddleware"
DJANGO_VERSION: tuple[int, ...] = tuple(django.VERSION[:2])


def async_method_needs_django_51(owner: str) -> ConfigurationError:
    """The error for ``method_decorator(idempotent_view())`` on an async method before Django 5.1."""
    return ConfigurationError(
        f"{owner} is an async method under @method_decorator(idempotent_view()), which needs Django "
        f"5.1 or later: Django {'.'.join(map(str, DJANGO_VERSION))}'s method_decorator turns the "
        "method into a sync one, so the view would answer with an unawaited coroutine. Decorate the "
        'class instead, @method_decorator(idempotent_view(), name="dispatch"), or upgrade Django'
    )


def refuse_async(owner: str, options: Mapping[str, Any], using: str | None) -> None:
    """Refuse what an ``async def`` view cannot honour (its decorator's ``using=``, a
    ``mode='transaction'`` asked for): a ConfigurationError naming the fix, never a silent change."""
    middleware = owner == MIDDLEWARE_OWNER
    if using is not None:
        raise ConfigurationError(
            f"{owner} is an async view, so it runs in lease mode on the store (Django's "
            "transactions cannot span an async view), and using= (the Django database whose "
            f"transaction the key joins) would be ignored: remove using={using!r}, give "
            "store=SQLStore(engine) on that database for the view's keys, or make it a def view "
            "to keep transaction mode"
        )
    if options.get("mode") == "transaction":
        subject = (
            f"{owner} cannot run a request for an async view in transaction mode"
            if middleware
            else f"{owner} is an async view, which cannot run in transaction mode"
        )
        fix = "Set IDEMPOTENT['MODE'] = 'lease'" if middleware else "Give the view mode='lease'"
        raise ConfigurationError(
            f"{subject}: Django runs each async ORM query in a thread, so no transaction spans the "
            f"view and the key cannot commit with its writes. {fix} (the claim commits first and the "
            "response is stored after, on a store with an engine), or make the view a def view (Django "
            "runs it in a thread under ASGI) to keep transaction mode"
        )


def resolve_async(owner: str, merged: dict[str, Any], using: str | None = None) -> Config:
    """The lease-mode configuration of an ``async def`` view (``merged``: options over settings).

    Django's transactions are sync (each async ORM call runs in a thread, and
    ``transaction.atomic`` cannot span them), so the key cannot commit with an async view's
    writes: the claim commits at once on the store, is renewed while the view runs, and the
    response is stored after. A transaction mode the user asked for (``mode='transaction'``,
    ``IDEMPOTENT['MODE']``) or a database named with ``using=`` is refused rather than ignored
    (:func:`refuse_async`); the default switches to lease mode when the store can run it. Either
    way a store that cannot is a ConfigurationError.
    """
    refuse_async(owner, merged, using)
    merged.pop("using", None)
    store = merged.get("store")
    if not _lease_capable(store):
        subject = (
            f"{owner} runs a request for an async view in lease mode"
            if owner == MIDDLEWARE_OWNER
            else f"{owner} is an async view, so it runs in lease mode"
        )
        on_view = "" if owner == MIDDLEWARE_OWNER else " store=... on the view,"
        raise ConfigurationError(
            f"{subject} (Django's transactions cannot span an async view), which needs a store that "
            "commits on its own: give IDEMPOTENT['STORE'] = SQLStore(create_async_engine(...)) (or a "
            f"sync engine), idempotent.configure(engine=...),{on_view} or a RedisStore; or make the "
            "view a def view to keep transaction mode on Django's database"
        )
    merged["mode"] = "lease"
    return Config(Policy.from_options(owner, merged, also=["using"]), None, explicit_using=False)


class Resolved:
    """A configuration resolved on first use and again after the settings change."""

    def __init__(
        self, owner: str, options: Mapping[str, Any], using: str | None, *, is_async: bool = False
    ) -> None:
        self.owner, self.options, self.using, self.is_async = owner, dict(options), using, is_async
        self._cached: tuple[int, Config] | None = None
        self._lock = threading.Lock()

    def get(self) -> Config:
        cached = self._cached
        if cached is not None and cached[0] == _generation:
            return cached[1]
        with self._lock:
            generation = _generation
            config = resolve(self.owner, self.options, self.using, is_async=self.is_async)
            self._cached = (generation, config)
            return config


def check_atomic_requests(config: Config, owner: str, *, view_started: bool) -> None:
    """Refuse keys written outside the request's transaction under ATOMIC_REQUESTS.

    With ``ATOMIC_REQUESTS`` on another database the view's writes commit apart from the key
    committed on ``config.using``: a crash between the two commits leaves the key recorded and
    the writes undone, or the other way round. ``view_started``: called from inside the view,
    where Django has opened the ATOMIC_REQUESTS blocks (only those count; a view marked
    ``non_atomic_requests`` has none); else (the middleware) the settings decide. A database
    named with the decorator's ``using=`` is the user's explicit choice and is not checked.
    """
    if config.using is None or config.explicit_using:
        return
    if view_started and connections[config.using].in_atomic_block:
        return
    for alias in connections:
        if alias == config.using or not connections.settings[alias].get("ATOMIC_REQUESTS"):
            continue
        if not view_started or connections[alias].in_atomic_block:
            raise ConfigurationError(
                f"{owner} writes its keys to the {config.using!r} database, but ATOMIC_REQUESTS runs the "
                f"view in a transaction on {alias!r}: the key would commit apart from the view's writes. "
                f"Set IDEMPOTENT['DATABASE'] = {alias!r} (or using={alias!r} on the view), or turn "
                f"ATOMIC_REQUESTS off for {alias!r}"
            )


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------
def field_members(value: str) -> list[str]:
    """The field values a combined header value was made of.

    Django (like every WSGI server and Django's ASGI handler) joins a header field sent more than
    once into one value with commas, so a comma outside a quoted string means the field was
    repeated (or the key holds a comma, which must then be sent as a quoted sf-string).
    """
    members: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    kept = [member.strip(" \t") for member in members if member.strip(" \t")]
    return kept or [value]


def http_request_of(request: Any) -> HttpRequest | None:
    """The ``HttpRequest`` behind a view's first argument: itself, or the one a Django REST
    framework ``Request`` wraps; None when it is neither."""
    inner = getattr(request, "_request", request)
    return inner if isinstance(inner, HttpRequest) else None


def header_pairs(request: HttpRequest, key_header: str) -> list[tuple[str, str]]:
    """The request's header fields; the key header's value split into the fields it was made of."""
    wanted = key_header.lower()
    pairs: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        if name.lower() == wanted:
            pairs.extend((name, member) for member in field_members(value))
        else:
            pairs.append((name, value))
    return pairs


def body_of(request: HttpRequest) -> bytes:
    """The request body; for a ``multipart/form-data`` POST a canonical encoding of its fields and
    files (their contents hashed) instead of the raw bytes.

    A multipart body's raw bytes depend on the boundary, which clients (browsers, requests,
    httpx) draw anew for every request, so a retry would not match its first request; and
    reading them whole as ``request.body`` counts the files against Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (400 above 2.5 MB) where Django's own parsing streams them.
    The parsed form is also all that is left when something before the view already parsed the
    stream (``CsrfViewMiddleware`` reading ``request.POST``, a DRF permission class reading
    ``request.data``)."""
    multipart = request.method == "POST" and str(request.content_type) == "multipart/form-data"
    if not multipart:
        try:
            return bytes(request.body)
        except RawPostDataException:
            pass  # parsed already (Django parses form bodies of POST only): the fields stand for it
    files: list[tuple[str, str, str, str]] = []
    for name, uploads in request.FILES.lists():
        for upload in uploads:
            digest = hashlib.sha256()
            for chunk in upload.chunks():
                digest.update(chunk)
            upload.seek(0)
            files.append((name, str(upload.name), str(upload.content_type), digest.hexdigest()))
    fields = [(name, value) for name in request.POST for value in request.POST.getlist(name)]
    return form_body(fields, files)


def describe(
    request: HttpRequest, policy: Policy, pairs: list[tuple[str, str]], route: str | None, caller: Any
) -> HTTPRequest:
    """The HTTP core's view of ``request``; ``caller`` (what the view received) goes to principal_from."""
    return HTTPRequest(
        method=str(request.method),
        path=request.path,
        headers=pairs,
        body=body_of(request),
        route=route,
        query=str(request.META.get("QUERY_STRING", "")),
        principal=policy.principal(caller),
    )


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------
def rendered(response: Any, caller: Any) -> Any:
    """Render a response that renders late (``TemplateResponse``, Django REST framework's
    ``Response``), so its body can be stored. A DRF ``Response`` returned by a handler method,
    before ``APIView.finalize_response`` ran, gets the renderer DRF negotiated first."""
    render = getattr(response, "render", None)
    if render is None or not callable(render) or getattr(response, "is_rendered", True):
        return response
    if not hasattr(response, "accepted_renderer") and hasattr(caller, "accepted_renderer"):
        view = (getattr(caller, "parser_context", None) or {}).get("view")
        response.accepted_renderer = caller.accepted_renderer
        response.accepted_media_type = caller.accepted_media_type
        response.renderer_context = (
            view.get_renderer_context() if view is not None else {"request": caller, "view": None}
        )
    render()
    return response


def capture(response: Any) -> StoredResponse | None:
    """The response to store, None for a streamed one (``StreamingHttpResponse``, ``FileResponse``).
    Cookies live in ``response.cookies``, apart from the headers, and are never stored; nor are
    refusals (401, 403, 429: :data:`idempotent.http.REFUSALS`)."""
    if getattr(response, "streaming", False):
        return None
    return StoredResponse.capture(response.status_code, response.items(), response.content)


def capture_in_transaction(using: str, owner: str) -> Callable[[Any], StoredResponse | None]:
    """:func:`capture` for transaction mode: a streamed response is an error (not storing it would
    roll back the writes it reports done); a transaction the view marked for rollback (an ORM
    error it caught, ``transaction.set_rollback(True)``) stores nothing, as it commits nothing."""

    def render(response: Any) -> StoredResponse | None:
        if connections[using].needs_rollback or response.status_code in REFUSALS:
            return None  # (a refused streamed response is not an error: nothing is stored)
        stored = capture(response)
        if stored is None:
            raise ConfigurationError(
                f"{owner} returned a streamed response (StreamingHttpResponse, FileResponse), whose body "
                "cannot be stored for replay; its writes are rolled back. Return a complete body, or use "
                "mode='lease' (a streamed response is then sent without being stored)"
            )
        return stored

    return render


def run(config: Config, described: HTTPRequest, call: Callable[[], Any], owner: str) -> Any:
    """Serve a keyed request under ``config``: the view's response, or the ``HttpResponse`` of a
    replay or a problem. A keys table missing from Django's database (transaction mode) is a
    :class:`~idempotent.errors.TableMissing` naming the Django way to create it."""
    policy = config.policy
    if config.using is None:
        result = policy.run(described, call, capture)
    else:
        render = capture_in_transaction(config.using, owner)
        try:
            result = policy.run(described, call, render, session=config.session())
        except TableMissing as exc:
            table = getattr(policy.store or decorator.default_store(), "table", None)
            name = f" {table.fullname!r}" if table is not None else ""
            raise TableMissing(
                f"{owner}: the idempotency keys table{name} does not exist in Django's {config.using!r} "
                "database: add 'idempotent.contrib.django' to INSTALLED_APPS and run `python manage.py "
                "migrate` (Django's test runner then creates it in the test database too)"
            ) from exc
    return to_response(result) if isinstance(result, StoredResponse) else result


async def run_async(config: Config, described: HTTPRequest, call: Callable[[], Awaitable[Any]]) -> Any:
    """:func:`run` for an async view (lease mode only): the view's response, or the
    ``HttpResponse`` of a replay or a problem."""
    result = await config.policy.run_async(described, call, capture)
    return to_response(result) if isinstance(result, StoredResponse) else result


def to_response(stored: StoredResponse) -> HttpResponse:
    """An ``HttpResponse`` with exactly the stored status, headers and body."""
    response = HttpResponse(stored.body, status=stored.status)
    for name in list(response.headers):
        del response.headers[name]
    seen: dict[str, str] = {}
    for name, value in stored.headers:
        lower = name.lower()
        seen[lower] = f"{seen[lower]}, {value}" if lower in seen else value
        response.headers[name] = seen[lower]
    return response
