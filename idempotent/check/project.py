"""Second pass: resolve names across the files of one run, find handlers, decide each one.

A name is resolved the way Python would bind it (local scope, then module, then import), and an
import is followed into the checked files, through re-exports, until it reaches a definition or
leaves the tree. Objects are identified by file and scoped name, so a router defined in one file
and included into an app in another is the same object in both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from idempotent.check._frameworks import (
    BASE_CLASSES,
    CELERY_TASK_DECORATORS,
    CONSTRUCTORS,
    DJANGO_METHOD_DECORATORS,
    DJANGO_URL_FUNCTIONS,
    DRF_ACTION,
    DRF_API_VIEW,
    DRF_MIXINS,
    EXTERNAL_ROOTS,
    FRAMEWORK_LABELS,
    HINT_ORDER,
    METHOD_DECORATOR,
    ROUTE_ATTRIBUTES,
    STATE_CHANGING,
    VIEW_CHAIN,
    VIEWSET_CHAIN,
    WRITE_HOOKS,
    BaseClass,
)
from idempotent.check.config import CheckConfig
from idempotent.check.facts import ClassFacts, Decorator, FunctionFacts, ModuleFacts, Ref, Registration
from idempotent.check.rules import Finding, FixTarget

__all__ = ["Project", "Verdict"]

_MAX_DEPTH = 24
_REGISTRAR_ATTRIBUTES = frozenset({"router", "wsgi_app", "asgi_app", "app"})
_DJANGO_ROOTS = frozenset({"django", "rest_framework"})
_REQUEST_NAMES = frozenset({"request", "req"})
_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", *STATE_CHANGING})
_ADMIN_VIEWS = ("login", "logout")
_HTTP_HANDLERS = frozenset({"get", "post", "put", "patch", "delete"})
#: Bases that are never views, whatever defines what on them.
_NOT_VIEWS = re.compile(
    r"(^|\.)(object|Exception|BaseException|Protocol|Generic|ABC|Enum|NamedTuple|TypedDict)$|^django\.|^typing\.|^abc\.|^enum\."
)
_VIEW_METHOD_NAMES = frozenset({"get", "post", "put", "patch", "delete", "create", "update", "dispatch"})
#: How many calls deep a view's request is followed into helper functions.
_MAX_CALL_DEPTH = 3
#: Methods of class-based views that run for every request, whatever its method.
_PER_REQUEST = ("dispatch", "setup", "initial", "initialize_request")
#: The framework a call registration belongs to when its router object is not known.
_CALL_FRAMEWORKS = {
    "api_route": "fastapi",
    "add_route": "starlette",
    "url_rule": "flask",
    "route": "starlette",
}


@dataclass(frozen=True, slots=True)
class Obj:
    """Something defined in a checked file (``name`` is its scoped name there)."""

    path: str
    name: str


@dataclass(frozen=True, slots=True)
class Mod:
    """A checked module."""

    path: str


@dataclass(frozen=True, slots=True)
class Ext:
    """A name outside the checked files, fully qualified."""

    name: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A name that could not be followed; ``candidates`` are its spellings via star imports."""

    name: str
    candidates: tuple[str, ...] = ()


Resolved = Obj | Mod | Ext | Unknown


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checker decided about one handler (``reason``: a rule code or why it is safe)."""

    path: str
    line: int
    handler: str
    framework: str
    methods: tuple[str, ...]
    reason: str


@dataclass(slots=True)
class _Reg:
    """One way a function or class is served: a route, a task, a Django URL, a view class."""

    framework: str
    methods: tuple[str, ...]
    registrar: Resolved | None
    decorator_index: int | None
    wrapped: bool
    kind: str  # "route", "call", "django", "task"


@dataclass(slots=True)
class _Location:
    """Where a class-based handler is reported, and what it serves there."""

    path: str
    cls: ClassFacts
    method: FunctionFacts | None
    methods: list[str] = field(default_factory=list)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inherited_from: list[str] = field(default_factory=list)


class Project:
    """The files of one run, with every cross-file question answered from them."""

    def __init__(
        self,
        modules: Sequence[ModuleFacts],
        config: CheckConfig,
        *,
        display: Callable[[str], str] = str,
        extra_handling: Iterable[str] = (),
    ) -> None:
        self.modules = {m.path: m for m in modules}
        self.config = config
        self.display = display
        self._names: dict[str, str] = {}
        self._by_name: dict[str, str | None] = {}
        self._by_suffix: dict[str, str | None] = {}
        self._has_init: dict[str, bool] = {}
        for path in self.modules:
            self._index(path)
        handling = [*config.decorators, *extra_handling]
        self._handling_full = frozenset(n for n in handling if "." in n)
        self._handling_bare = frozenset(n for n in handling if "." not in n)
        self._middleware_full = frozenset(n for n in config.middleware if "." in n)
        self._middleware_bare = frozenset(n.rsplit(".", 1)[-1] for n in config.middleware)
        self._cache: dict[tuple[str, str, str], Resolved] = {}
        self._classes = {(m.path, c.qualname): c for m in modules for c in m.classes}
        self._functions = {(m.path, f.qualname): f for m in modules for f in m.functions}
        self._mro_cache: dict[tuple[str, str], list[tuple[str, ClassFacts]]] = {}
        self._bases_cache: dict[tuple[str, str], list[tuple[str, BaseClass | None, str]]] = {}
        self._class_level: dict[tuple[str, str], bool] = {}
        self._registrations: dict[Obj, list[tuple[ModuleFacts, Registration]]] = {}
        self._parents: dict[Resolved, set[Resolved]] = {}
        self._covered: set[Resolved] = set()
        self.django_covered = False
        self._aliases: dict[Resolved, Resolved] = {}
        self._routing: bool | None = None
        self._callers: set[Obj] | None = None
        self._alias_parameters()
        self._link()

    # -- module names ----------------------------------------------------------------------
    def _dir_has_init(self, directory: str) -> bool:
        known = self._has_init.get(directory)
        if known is None:
            known = os.path.isfile(os.path.join(directory, "__init__.py"))
            self._has_init[directory] = known
        return known

    def _index(self, path: str) -> None:
        pure = PurePosixPath(path)
        parts = [] if pure.name == "__init__.py" else [pure.stem]
        directory = pure.parent
        while self._dir_has_init(str(directory)) and directory != directory.parent:
            parts.insert(0, directory.name)
            directory = directory.parent
        name = ".".join(parts) or pure.stem
        self._names[path] = name
        self._by_name[name] = None if name in self._by_name else path
        components = list(pure.parent.parts[1:]) + ([] if pure.name == "__init__.py" else [pure.stem])
        for start in range(max(0, len(components) - 8), len(components) - 1):  # two parts or more
            suffix = ".".join(components[start:])
            if suffix != name:
                self._by_suffix[suffix] = None if suffix in self._by_suffix else path

    def module_name(self, path: str) -> str:
        """The dotted module name of a checked file."""
        return self._names.get(path, PurePosixPath(path).stem)

    def _module_file(self, dotted: str) -> str | None:
        if dotted in self._by_name:
            return self._by_name[dotted]
        return self._by_suffix.get(dotted)

    # -- resolution ------------------------------------------------------------------------
    def resolve(self, module: ModuleFacts, ref: Ref) -> Resolved:
        """What ``ref`` names, seen from ``module``."""
        key = (module.path, ref.scope, ref.dotted)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._resolve(module, ref.scope, ref.dotted, 0)
            self._cache[key] = cached
        return cached

    def _resolve(self, module: ModuleFacts, scope: str, dotted: str, depth: int) -> Resolved:
        head, _, rest = dotted.partition(".")
        current = scope
        while True:
            binding = module.bindings.get(current, {}).get(head)
            if binding is not None:
                break
            if not current:
                break
            current = current.rpartition(".")[0]
        if binding is None:
            candidates = tuple(
                f"{target.lstrip('.')}.{dotted}" if not target.startswith(".") else dotted
                for star_scope, target in module.star_imports
                if scope == star_scope or scope.startswith(star_scope)
            )
            for _, target in module.star_imports:
                found = self._target(module, f"{target}.{dotted}", depth + 1)
                if isinstance(found, Obj) and self._defines(found.path, found.name.split(".")[0]):
                    return found
            return Unknown(dotted, candidates)
        if binding.local or binding.target is None:
            return Obj(module.path, f"{current}.{dotted}" if current else dotted)
        return self._target(module, binding.target + (f".{rest}" if rest else ""), depth)

    def _defines(self, path: str, name: str) -> bool:
        binding = self.modules[path].bindings.get("", {}).get(name)
        return binding is not None and binding.local

    def _target(self, module: ModuleFacts, target: str, depth: int) -> Resolved:
        if depth > _MAX_DEPTH:
            return Unknown(target)
        if target.startswith("."):
            level = len(target) - len(target.lstrip("."))
            parts = [p for p in target[level:].split(".") if p]
            directory = PurePosixPath(module.path).parent
            for _ in range(level - 1):
                directory = directory.parent
            for end in range(len(parts), -1, -1):
                found = self._file_at(directory, parts[:end])
                if found is not None:
                    return self._attribute(found, parts[end:], depth)
            return Unknown(target.lstrip("."))
        parts = target.split(".")
        if parts[0] in EXTERNAL_ROOTS:
            return Ext(target)
        for end in range(len(parts), 0, -1):
            path = self._module_file(".".join(parts[:end]))
            if path is not None:
                return self._attribute(path, parts[end:], depth)
        return Ext(target)

    def _file_at(self, directory: PurePosixPath, parts: list[str]) -> str | None:
        base = directory.joinpath(*parts)
        for candidate in (f"{base}.py", f"{base}/__init__.py") if parts else (f"{base}/__init__.py",):
            if candidate in self.modules:
                return candidate
        return None

    def _attribute(self, path: str, rest: list[str], depth: int) -> Resolved:
        if not rest:
            return Mod(path)
        module = self.modules[path]
        binding = module.bindings.get("", {}).get(rest[0])
        if binding is not None and not binding.local and binding.target is not None:
            tail = ".".join(rest[1:])
            return self._target(module, binding.target + (f".{tail}" if tail else ""), depth + 1)
        if binding is None and module.star_imports:
            return self._resolve(module, "", ".".join(rest), depth + 1)
        return Obj(path, ".".join(rest))

    def names(self, resolved: Resolved) -> tuple[str, ...]:
        """The qualified spellings of a resolved name, for matching against known names."""
        if isinstance(resolved, Obj):
            return (f"{self.module_name(resolved.path)}.{resolved.name}",)
        if isinstance(resolved, Mod):
            return (self.module_name(resolved.path),)
        if isinstance(resolved, Ext):
            return (resolved.name,)
        return (*resolved.candidates, resolved.name)

    def _names_of(self, module: ModuleFacts, scope: str, dotted: str | None) -> tuple[str, ...]:
        if dotted is None:
            return ()
        return self.names(self.resolve(module, Ref(scope, dotted)))

    # -- what names mean -------------------------------------------------------------------
    def is_handling(self, names: Iterable[str]) -> bool:
        """Whether a decorator with one of these qualified names handles idempotency."""
        for name in names:
            last = name.rsplit(".", 1)[-1]
            if name.startswith("idempotent.") and last.startswith("idempotent"):
                return True
            if name in self._handling_full or last in self._handling_bare:
                return True
        return False

    def is_middleware(self, names: Iterable[str]) -> bool:
        """Whether a middleware class with one of these qualified names handles idempotency."""
        for name in names:
            last = name.rsplit(".", 1)[-1]
            if name.startswith("idempotent.") and last.endswith("Middleware"):
                return True
            if last == "IdempotencyMiddleware":
                return True
            if name in self._middleware_full or last in self._middleware_bare:
                return True
        return False

    def decorator_handles(self, module: ModuleFacts, scope: str, decorator: Decorator) -> bool:
        """Whether a decorator is ``@idempotent`` or an equivalent (also via ``method_decorator``)."""
        names = self._names_of(module, scope, decorator.func)
        if self.is_handling(names):
            return True
        if any(n == METHOD_DECORATOR or n.endswith(".method_decorator") for n in names) or (
            decorator.func == "method_decorator"
        ):
            return any(self.is_handling(self._names_of(module, scope, inner)) for inner in decorator.inner)
        return False

    def kind(self, resolved: Resolved) -> tuple[str, str] | None:
        """(framework, role) of an app, router, blueprint or Celery object."""
        if not isinstance(resolved, Obj):
            return None
        module = self.modules[resolved.path]
        for called in module.constructors.get(resolved.name, ()):
            for name in self.names(self.resolve(module, called)):
                if name in CONSTRUCTORS:
                    return CONSTRUCTORS[name]
        return None

    def _alias_parameters(self) -> None:
        """``def setup(app): ...`` called as ``setup(app)``: the parameter stands for the argument.

        Only a parameter that every call passes the same object to is aliased.
        """
        seen: dict[Obj, set[Resolved]] = {}
        for module in self.modules.values():
            for called, arguments in module.passes:
                function_ref = self.resolve(module, called)
                if not isinstance(function_ref, Obj):
                    continue
                function = self._functions.get((function_ref.path, function_ref.name))
                if function is None:
                    continue
                for key, argument in arguments:
                    if isinstance(key, int):
                        if key >= len(function.params):
                            continue
                        parameter = function.params[key]
                    elif key in function.params:
                        parameter = key
                    else:
                        continue
                    target = self.registrar(module, argument)
                    if isinstance(target, Obj):
                        seen.setdefault(
                            Obj(function_ref.path, f"{function.qualname}.{parameter}"), set()
                        ).add(target)
        self._aliases = {param: next(iter(targets)) for param, targets in seen.items() if len(targets) == 1}

    def registrar(self, module: ModuleFacts, ref: Ref) -> Resolved:
        """The object a route is attached to (``app.router`` and ``app.wsgi_app`` mean ``app``)."""
        resolved = self._registrar(module, ref)
        for _ in range(_MAX_DEPTH):
            alias = self._aliases.get(resolved)
            if alias is None:
                break
            resolved = alias
        return resolved

    def _registrar(self, module: ModuleFacts, ref: Ref) -> Resolved:
        resolved = self.resolve(module, ref)
        while isinstance(resolved, Obj) and self.kind(resolved) is None and "." in resolved.name:
            parent, _, last = resolved.name.rpartition(".")
            candidate = Obj(resolved.path, parent)
            constructors = self.modules[resolved.path].constructors
            if last not in _REGISTRAR_ATTRIBUTES or (
                self.kind(candidate) is None and candidate.name not in constructors
            ):
                break
            resolved = candidate
        return resolved

    def _reads_header(self, module: ModuleFacts, scope: str, dotted: str) -> bool:
        resolved = self.resolve(module, Ref(scope, dotted))
        if isinstance(resolved, Obj):
            function = self._functions.get((resolved.path, resolved.name))
            return function is not None and self.modules[resolved.path].body(function).reads_header
        return False

    # -- the app graph ---------------------------------------------------------------------
    def _link(self) -> None:
        for module in self.modules.values():
            for parent, child in module.includes:
                child_obj = self.registrar(module, child)
                self._parents.setdefault(child_obj, set()).add(self.registrar(module, parent))
            for obj, middleware in module.object_middleware:
                if self.is_middleware(self.names(self.resolve(module, middleware))):
                    self._covered.add(self.registrar(module, obj))
            for called, wrapped in module.middleware_calls:
                if self.is_middleware(self.names(self.resolve(module, called))):
                    self._covered.add(self.registrar(module, wrapped))
            for receiver, target in module.init_apps:
                extension = self.resolve(module, receiver)
                if isinstance(extension, Obj):
                    owner = self.modules[extension.path]
                    constructors = owner.constructors.get(extension.name, ())
                    if any(self.is_middleware(self.names(self.resolve(owner, c))) for c in constructors):
                        self._covered.add(self.registrar(module, target))
            for obj, function_name in module.http_middleware:
                function = self._functions.get((module.path, function_name))
                if function is not None and module.body(function).reads_header:
                    self._covered.add(self.registrar(module, obj))
            for obj, dependency in module.object_deps:
                if self._reads_header(module, obj.scope, dependency.dotted):
                    self._covered.add(self.registrar(module, obj))
            if any(self.is_middleware([name]) for name in module.django_middleware):
                self.django_covered = True
            for registration in module.registrations:
                endpoint = self.resolve(module, registration.target)
                if isinstance(endpoint, Obj):
                    self._registrations.setdefault(endpoint, []).append((module, registration))

    def covered(self, obj: Resolved | None) -> bool:
        """Whether requests to ``obj`` pass through idempotency middleware (its own or a parent's)."""
        if obj is None:
            return False
        seen: set[Resolved] = set()
        stack = [obj]
        while stack:
            current = stack.pop()
            if current in self._covered:
                return True
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self._parents.get(current, ()))
        return False

    # -- findings --------------------------------------------------------------------------
    def analyse(self) -> tuple[list[Finding], list[Verdict]]:
        """Every finding, and a verdict for every handler seen (findings and safe ones alike)."""
        findings: list[Finding] = []
        verdicts: list[Verdict] = []
        for module in self.modules.values():
            for function in module.functions:
                self._function(module, function, findings, verdicts)
            for cls in module.classes:
                self._class(module, cls, findings, verdicts)
        findings.sort(key=Finding.sort_key)
        verdicts.sort(key=lambda v: (v.path, v.line, v.handler))
        return findings, verdicts

    def _suppressed(self, module: ModuleFacts, first: int, last: int, code: str) -> bool:
        for line in range(first, last + 1):
            if line in module.suppressions:
                codes = module.suppressions[line]
                if codes is None or code in codes:
                    return True
        return False

    def _hint(self, module: ModuleFacts) -> str | None:
        for root in HINT_ORDER:
            if root in module.roots:
                return root
        return None

    def _function_regs(self, module: ModuleFacts, function: FunctionFacts) -> list[_Reg]:
        regs: list[_Reg] = []
        scope = function.scope
        for decorator in function.decorators:
            names = self._names_of(module, scope, decorator.func)
            receiver = self.registrar(module, Ref(scope, decorator.receiver)) if decorator.receiver else None
            kind = self.kind(receiver) if receiver is not None else None
            if decorator.called and decorator.attr in ROUTE_ATTRIBUTES and receiver is not None:
                framework: str | None = None
                if kind is not None and kind[1] in {"app", "router", "blueprint"}:
                    framework = kind[0]
                elif kind is None and (
                    self._hint(module) is not None or (decorator.first_str or "").startswith("/")
                ):
                    framework = self._hint(module) or "http"
                if framework is not None:
                    methods = ROUTE_ATTRIBUTES[decorator.attr]
                    if decorator.attr in {"api_route", "route"} and decorator.methods_kw is not None:
                        methods = tuple(m.upper() for m in decorator.methods_kw)
                    regs.append(_Reg(framework, methods, receiver, decorator.index, False, "route"))
                    continue
            if any(n in CELERY_TASK_DECORATORS for n in names) or (
                decorator.attr == "task"
                and (kind == ("celery", "celery") or (kind is None and "celery" in module.roots))
            ):
                regs.append(_Reg("celery", (), None, decorator.index, False, "task"))
            elif any(n in DRF_API_VIEW for n in names):
                methods = decorator.first_list or decorator.methods_kw or ("GET",)
                regs.append(_Reg("drf", tuple(m.upper() for m in methods), None, None, False, "django"))
        for registration_module, registration in self._registrations.get(
            Obj(module.path, function.qualname), ()
        ):
            reg = self._call_reg(registration_module, registration, is_class=False)
            if reg is not None:
                regs.append(reg)
        if not any(r.kind in {"route", "task", "call"} for r in regs):
            django = self._django_view(module, function, regs)
            if django is not None:
                regs = [r for r in regs if r.kind != "django"] + [django]
        return regs

    def _call_reg(self, module: ModuleFacts, registration: Registration, *, is_class: bool) -> _Reg | None:
        scope = registration.target.scope
        wrapped = any(self.is_handling(self._names_of(module, scope, w)) for w in registration.wrappers)
        if registration.kind == "path":
            names = self._names_of(module, scope, registration.func.dotted if registration.func else None)
            if not (
                any(n in DJANGO_URL_FUNCTIONS for n in names)
                or (not any("." in n for n in names) and module.roots & _DJANGO_ROOTS)
            ):
                return None
            return _Reg("django", (), None, None, wrapped, "path")
        if registration.registrar is None:
            return None
        registrar = self.registrar(module, registration.registrar)
        kind = self.kind(registrar)
        framework = kind[0] if kind is not None else _CALL_FRAMEWORKS[registration.kind]
        methods = registration.methods
        if methods is None:
            methods = () if is_class else ("GET",)
        return _Reg(framework, methods, registrar, None, wrapped, "call")

    def _django_view(self, module: ModuleFacts, function: FunctionFacts, regs: list[_Reg]) -> _Reg | None:
        api_view = next((r for r in regs if r.kind == "django"), None)
        paths = [r for r in regs if r.kind == "path"]
        if function.scope or not function.params:
            return api_view
        if (
            api_view is None
            and not paths
            and (not (module.roots & _DJANGO_ROOTS) or function.params[0] not in _REQUEST_NAMES)
        ):
            return None
        wrapped = bool(paths) and all(r.wrapped for r in paths)
        if api_view is not None:
            api_view.wrapped = wrapped
            return api_view
        restriction, declared = self._method_restriction(module, function)
        # A function that only reads the request is a view when a URLconf routes it. When the
        # project's URLconfs are visible, an unrouted one is a helper of the views that call it;
        # when they are not, the functions that call it with their request are preferred.
        if not paths and not declared and (self._django_routing() or self._has_view_caller(module, function)):
            return None
        methods = self._request_methods(module, function, 0, set())
        if restriction is not None:
            methods = tuple(m for m in STATE_CHANGING if m in restriction)
        if not methods:
            return None
        return _Reg("django", methods, None, None, wrapped, "django")

    def _method_restriction(
        self, module: ModuleFacts, function: FunctionFacts
    ) -> tuple[tuple[str, ...] | None, bool]:
        """The methods a function view's decorators allow, and whether a Django decorator said so.

        ``@require_POST``/``@require_http_methods([...])`` declare a view; a decorator called with
        only HTTP method names (``@cors("GET", "POST")``) restricts the methods of a routed one.
        """
        restriction: tuple[str, ...] | None = None
        declared = False
        for decorator in function.decorators:
            names = self._names_of(module, function.scope, decorator.func)
            for name in names:
                last = name.rsplit(".", 1)[-1]
                if last in DJANGO_METHOD_DECORATORS and (
                    name.startswith("django.") or (module.roots & _DJANGO_ROOTS and "." not in name)
                ):
                    fixed = DJANGO_METHOD_DECORATORS[last]
                    restriction = fixed if fixed is not None else decorator.first_list or ()
                    declared = True
            if (
                not declared
                and decorator.str_args
                and all(a.upper() in _HTTP_METHODS for a in decorator.str_args)
            ):
                restriction = tuple(a.upper() for a in decorator.str_args)
        if restriction is not None:
            restriction = tuple(m.upper() for m in restriction)
        return restriction, declared

    def _request_methods(
        self, module: ModuleFacts, function: FunctionFacts, depth: int, seen: set[tuple[str, str]]
    ) -> tuple[str, ...]:
        """The state-changing methods a function handles, itself or through functions it passes
        its request to (``return order_form(request, order)``)."""
        seen.add((module.path, function.qualname))
        body = module.body(function)
        signals = set(body.method_compares) & set(STATE_CHANGING)
        if body.reads_body and not body.method_compares:
            signals.add("POST")
        if depth < _MAX_CALL_DEPTH:
            for called in body.request_calls:
                target = self.resolve(module, Ref(function.qualname, called))
                if not isinstance(target, Obj) or (target.path, target.name) in seen:
                    continue
                callee = self._functions.get((target.path, target.name))
                if callee is None or callee.scope or not callee.params:
                    continue
                callee_module = self.modules[target.path]
                restriction, _ = self._method_restriction(callee_module, callee)
                found = self._request_methods(callee_module, callee, depth + 1, seen)
                if restriction is not None:
                    found = tuple(m for m in found if m in restriction) or tuple(
                        m for m in STATE_CHANGING if m in restriction
                    )
                signals.update(found)
        return tuple(m for m in STATE_CHANGING if m in signals)

    def _django_routing(self) -> bool:
        """Whether a URLconf of the checked files routes at least one function or class."""
        if self._routing is None:
            self._routing = any(
                registration.kind == "path"
                and self._call_reg(module, registration, is_class=False) is not None
                for registrations in self._registrations.values()
                for module, registration in registrations
            )
        return self._routing

    def _has_view_caller(self, module: ModuleFacts, function: FunctionFacts) -> bool:
        """Whether another function or view method passes its request to ``function``."""
        if self._callers is None:
            self._callers = set()
            for other in self.modules.values():
                if not (other.roots & _DJANGO_ROOTS):
                    continue
                candidates = [
                    f
                    for f in other.functions
                    if not f.scope and f.params[:1] and f.params[0] in _REQUEST_NAMES
                ]
                candidates += [
                    m
                    for c in other.classes
                    for m in c.methods.values()
                    if m.name in _VIEW_METHOD_NAMES and len(m.params) > 1
                ]
                for caller in candidates:
                    for called in other.body(caller).request_calls:
                        target = self.resolve(other, Ref(caller.qualname, called))
                        if isinstance(target, Obj) and target != Obj(other.path, caller.qualname):
                            self._callers.add(target)
        return Obj(module.path, function.qualname) in self._callers

    def _function(
        self, module: ModuleFacts, function: FunctionFacts, findings: list[Finding], verdicts: list[Verdict]
    ) -> None:
        regs = self._function_regs(module, function)
        regs = [r for r in regs if r.kind != "path"]
        if not regs:
            return
        scope = function.scope
        handling = [d for d in function.decorators if self.decorator_handles(module, scope, d)]
        body = module.body(function)
        header = body.reads_header or any(
            self._reads_header(module, scope, dep)
            for dep in (*body.depends, *(d for dec in function.decorators for d in dec.deps))
        )
        registering = [r.decorator_index for r in regs if r.decorator_index is not None]
        misplaced = [d for d in handling if any(index > d.index for index in registering)]
        framework = regs[0].framework
        first_line = function.first_decorator_line()
        last_line = max(function.line, function.body_line - 1)
        display = self.display(module.path)
        reported = len(findings)
        if misplaced and "IDEM003" in self.config.select:
            for decorator in misplaced:
                below = next(
                    r for r in regs if r.decorator_index is not None and r.decorator_index > decorator.index
                )
                what = "task" if below.kind == "task" else "route"
                self._emit(
                    findings,
                    verdicts,
                    module,
                    code="IDEM003",
                    lines=(first_line, last_line),
                    finding=Finding(
                        path=display,
                        line=decorator.line,
                        column=decorator.column,
                        code="IDEM003",
                        message=(
                            f"@{decorator.func} is stacked above the {what} decorator of "
                            f"`{function.name}`, which registered the undecorated function: it does "
                            f"nothing there; move it directly above the def"
                        ),
                        framework=below.framework,
                        handler=function.qualname,
                        methods=below.methods,
                        target=FixTarget(
                            file=module.path,
                            kind="move",
                            anchor_line=function.line,
                            move_start=decorator.line,
                            move_end=decorator.end_line,
                        ),
                    ),
                )
        if len(findings) > reported:
            return  # moving the decorator is the fix; IDEM001 would say the same thing again
        all_methods = tuple(m for m in STATE_CHANGING if any(m in r.methods for r in regs))
        if not all_methods and not any(r.kind == "task" for r in regs):
            return  # only safe methods: not a handler this checker looks at
        open_methods: list[str] = []
        task = False
        reasons: set[str] = set()
        for reg in regs:
            if reg.kind == "route":
                decorated = any(d.index > (reg.decorator_index or 0) for d in handling)
            else:
                decorated = bool(handling)
            covered = self.covered(reg.registrar) or (
                reg.framework in {"django", "drf"} and self.django_covered
            )
            if decorated:
                reasons.add("decorator")
            elif reg.wrapped:
                reasons.add("wrapped")
            elif header:
                reasons.add("header")
            elif covered:
                reasons.add("middleware")
            elif reg.kind == "task":
                task = True
            else:
                open_methods.extend(m for m in reg.methods if m not in open_methods)
        checked = [m for m in STATE_CHANGING if m in open_methods and m in self.config.methods]
        target = FixTarget(file=module.path, kind="function", anchor_line=function.line)
        if checked:
            self._emit_missing(
                findings,
                verdicts,
                module,
                code="IDEM001",
                function=function,
                framework=framework,
                methods=tuple(checked),
                target=target,
            )
        elif task:
            self._emit_missing(
                findings,
                verdicts,
                module,
                code="IDEM002",
                function=function,
                framework="celery",
                methods=(),
                target=target,
            )
        else:
            reason = min(reasons) if reasons else "not-checked"
            verdicts.append(
                Verdict(display, function.line, function.qualname, framework, all_methods, reason)
            )

    def _emit_missing(
        self,
        findings: list[Finding],
        verdicts: list[Verdict],
        module: ModuleFacts,
        *,
        code: str,
        function: FunctionFacts,
        framework: str,
        methods: tuple[str, ...],
        target: FixTarget,
    ) -> None:
        first_line = function.first_decorator_line()
        last_line = max(function.line, function.body_line - 1)
        writes = module.body(function).writes
        self._emit(
            findings,
            verdicts,
            module,
            code=code,
            lines=(first_line, last_line),
            finding=Finding(
                path=self.display(module.path),
                line=function.line,
                column=function.column,
                code=code,
                message=_message(code, function.name, framework=framework, methods=methods, writes=writes),
                framework=framework,
                handler=function.qualname,
                methods=methods,
                writes=writes,
                target=target,
            ),
        )

    def _emit(
        self,
        findings: list[Finding],
        verdicts: list[Verdict],
        module: ModuleFacts,
        *,
        code: str,
        lines: tuple[int, int],
        finding: Finding,
    ) -> None:
        if code not in self.config.select:
            reason = "not-checked"
        elif self._suppressed(module, lines[0], lines[1], code):
            reason = "suppressed"
        else:
            reason = code
            findings.append(finding)
        line = finding.target.anchor_line if finding.target is not None else finding.line
        verdicts.append(
            Verdict(finding.path, line, finding.handler, finding.framework, finding.methods, reason)
        )

    # -- class-based views -----------------------------------------------------------------
    def _mro(self, path: str, cls: ClassFacts) -> list[tuple[str, ClassFacts]]:
        key = (path, cls.qualname)
        cached = self._mro_cache.get(key)
        if cached is not None:
            return cached
        self._mro_cache[key] = [(path, cls)]  # guards against cycles while computing
        order: list[tuple[str, ClassFacts]] = [(path, cls)]
        module = self.modules[path]
        for base in cls.bases:
            resolved = self.resolve(module, Ref(cls.scope, base))
            if isinstance(resolved, Obj):
                parent = self._classes.get((resolved.path, resolved.name))
                if parent is not None:
                    for item in self._mro(resolved.path, parent):
                        if all(item[1] is not seen for _, seen in order):
                            order.append(item)
        self._mro_cache[key] = order
        return order

    def _framework_bases(self, path: str, cls: ClassFacts) -> list[tuple[str, BaseClass | None, str]]:
        """Framework classes among the ancestors: (name, base class or None for a mixin, mixin name).

        A class is a view when its ancestors reach a view class of a framework (Django's
        ``View``, DRF's ``APIView``, Flask's and Starlette's): every class of ``django.views`` or of a
        ``views`` module of ``django.contrib``, and every view, generic view and viewset of DRF,
        whether it is known by name or not. A base imported from any other package, which the
        checker cannot see, makes a view of a class that defines an HTTP method taking the
        request or that a URLconf routes with ``as_view()``.
        """
        key = (path, cls.qualname)
        cached = self._bases_cache.get(key)
        if cached is not None:
            return cached
        found: list[tuple[str, BaseClass | None, str]] = []
        foreign: list[tuple[str, ModuleFacts]] = []
        mro = self._mro(path, cls)
        for owner_path, owner in mro:
            module = self.modules[owner_path]
            for base in owner.bases:
                resolved = self.resolve(module, Ref(owner.scope, base))
                if isinstance(resolved, Obj) and (resolved.path, resolved.name) in self._classes:
                    continue
                known = False
                for name in self.names(resolved):
                    root, last = name.split(".")[0], name.rsplit(".", 1)[-1]
                    roots = [root] if "." in name else sorted(module.roots & {*EXTERNAL_ROOTS})
                    for candidate_root in roots:
                        if (candidate_root, last) in BASE_CLASSES:
                            found.append((last, BASE_CLASSES[(candidate_root, last)], ""))
                            known = True
                        elif candidate_root == "rest_framework" and last in DRF_MIXINS:
                            found.append((last, None, last))
                            known = True
                    if not known and "." in name:
                        by_path = _view_by_path(name)
                        if by_path is not None:
                            found.append((last, by_path, ""))
                            known = True
                    if known:
                        break
                if (
                    not known
                    and not isinstance(resolved, Mod)
                    and not _NOT_VIEWS.match(self.names(resolved)[-1])
                ):
                    foreign.append((self.names(resolved)[-1], module))
        if (
            not any(base is not None for _, base, _ in found)
            and foreign
            and self._acts_as_view(path, cls, mro)
        ):
            name, module = foreign[0]
            found.append((name.rsplit(".", 1)[-1], _foreign_base(name, module), ""))
        self._bases_cache[key] = found
        return found

    def _acts_as_view(self, path: str, cls: ClassFacts, mro: list[tuple[str, ClassFacts]]) -> bool:
        """Whether a class with a base the checker cannot see behaves as a view: it (or a class of
        its own between it and that base) defines an HTTP method taking the request, or a URLconf
        routes it with ``as_view()``."""
        for _, owner in mro:
            for name, method in owner.methods.items():
                if name in _HTTP_HANDLERS and len(method.params) > 1 and method.params[1] in _REQUEST_NAMES:
                    return True
        return any(
            registration.as_view for _, registration in self._registrations.get(Obj(path, cls.qualname), ())
        )

    def _is_view(self, path: str, cls: ClassFacts) -> bool:
        return any(base is not None for _, base, _ in self._framework_bases(path, cls))

    def _definer(
        self, mro: list[tuple[str, ClassFacts]], name: str
    ) -> tuple[str, ClassFacts, FunctionFacts | None] | None:
        """The first class in the MRO that defines ``name`` (by ``def`` or ``method_decorator``)."""
        for path, owner in mro:
            if name in owner.methods:
                return path, owner, owner.methods[name]
            if any(d.name_kw == name for d in owner.decorators):
                return path, owner, None
        return None

    def _defined_by(self, path: str, cls: ClassFacts, name: str, owner: ClassFacts) -> bool:
        """Whether ``cls`` gets ``name`` from ``owner`` too (so a subclass need not be reported)."""
        definer = self._definer(self._mro(path, cls), name)
        return definer is not None and definer[1] is owner

    def _chain_handled(self, mro: list[tuple[str, ClassFacts]], name: str) -> bool:
        definer = self._definer(mro, name)
        if definer is None:
            return False
        path, owner, method = definer
        module = self.modules[path]
        if any(
            d.name_kw == name and self.decorator_handles(module, owner.scope, d) for d in owner.decorators
        ):
            return True
        return method is not None and any(
            self.decorator_handles(module, owner.scope, d) for d in method.decorators
        )

    def _class(
        self, module: ModuleFacts, cls: ClassFacts, findings: list[Finding], verdicts: list[Verdict]
    ) -> None:
        bases = self._framework_bases(module.path, cls)
        views = [(name, base) for name, base, _ in bases if base is not None]
        if not views:
            return
        framework = views[0][1].framework
        style = "viewset" if any(b.style == "viewset" for _, b in views) else views[0][1].style
        implicit: dict[str, str] = {}
        implicit_writes = ""
        for name, base, mixin in bases:
            served: tuple[str, ...] = ()
            base_writes = ""
            if base is not None:
                served, base_writes = base.implicit, base.writes.format(name=name)
            elif style == "viewset":
                served, base_writes = DRF_MIXINS[mixin][0], DRF_MIXINS[mixin][1].format(name=name)
            for method in served:
                implicit.setdefault(method, name)
            if served and base_writes and not implicit_writes:
                implicit_writes = base_writes
        mro = self._mro(module.path, cls)
        locations: dict[int, _Location] = {}

        def place(method: str, chain: tuple[str, ...], defined: FunctionFacts | None, source: str) -> None:
            key = defined.line if defined is not None else cls.line
            location = locations.setdefault(key, _Location(module.path, cls, defined))
            if method not in location.methods:
                location.methods.append(method)
            location.chains[method] = chain
            if source and source not in location.inherited_from:
                location.inherited_from.append(source)

        if style == "admin":
            for name in _ADMIN_VIEWS:
                if name in cls.methods:
                    place("POST", (name,), cls.methods[name], "")
        for method in STATE_CHANGING:
            if style == "admin":
                break
            if style == "dispatch":
                declared = next((c.methods_attr for _, c in mro if c.methods_attr is not None), None)
                if declared is None or method not in declared:
                    continue
                chain: tuple[str, ...] = ("dispatch_request",)
            else:
                chain = VIEWSET_CHAIN[method] if style == "viewset" else VIEW_CHAIN[method][:1]
                if framework == "drf" and style == "view" and method in implicit:
                    chain = VIEW_CHAIN[method]  # a generic view's post() calls create()
                if framework == "drf" and method == "PATCH" and method in implicit:
                    chain = (*chain, "update")  # the inherited partial_update() calls update()
            # An override is reported where it is written, an inherited handler on the class line.
            own = next((name for name in chain if name in cls.methods), None)
            if own is not None:
                place(method, chain, cls.methods[own], "")
                continue
            definer = self._definer(mro, chain[0])
            if definer is not None and definer[2] is not None:
                owner_path, owner, defined = definer
                if owner is cls:
                    place(method, chain, defined, "")
                elif not self._is_view(owner_path, owner) and not any(
                    self._is_view(p, c) and self._defined_by(p, c, chain[0], owner) for p, c in mro[1:]
                ):
                    place(method, chain, None, owner.name)
            elif method in implicit or (style == "dispatch"):
                from_parent_view = any(
                    self._is_view(p, c) and self._serves_implicitly(p, c, method) for p, c in mro[1:]
                )
                if not from_parent_view:
                    place(method, chain, None, implicit.get(method, ""))
        if style == "viewset":
            for method_facts in cls.methods.values():
                for decorator in method_facts.decorators:
                    names = self._names_of(module, cls.scope, decorator.func)
                    if any(n in DRF_ACTION for n in names) or (
                        decorator.func == "action" and "rest_framework" in module.roots
                    ):
                        for method in decorator.methods_kw or ("GET",):
                            if method.upper() in STATE_CHANGING:
                                place(method.upper(), (method_facts.name,), method_facts, "")
        registrations = self._registrations.get(Obj(module.path, cls.qualname), [])
        regs = [r for r in (self._call_reg(m, reg, is_class=True) for m, reg in registrations) if r]
        class_header = any(c.reads_header for _, c in mro)
        direct = any(
            self.decorator_handles(self.modules[p], c.scope, d)
            for p, c in mro
            for d in c.decorators
            if d.name_kw is None
        )
        dispatch = self._chain_handled(mro, "dispatch")
        wrapped = bool(regs) and all(r.wrapped for r in regs)
        if framework in {"django", "drf"}:
            covered = self.django_covered
        else:
            routed = [r for r in regs if r.kind == "call"]
            covered = bool(routed) and all(self.covered(r.registrar) for r in routed)
        display = self.display(module.path)
        for location in sorted(locations.values(), key=lambda loc: loc.method.line if loc.method else 0):
            methods = tuple(m for m in STATE_CHANGING if m in location.methods)
            handled_by = ""
            chained = any(self._chain_handled(mro, n) for m in methods for n in location.chains[m])
            if direct or dispatch or chained:
                handled_by = "decorator"
            elif wrapped:
                handled_by = "wrapped"
            elif class_header or self._reads_header_for(mro, location, methods):
                handled_by = "header"
            elif covered:
                handled_by = "middleware"
            name = cls.name if location.method is None else f"{cls.name}.{location.method.name}"
            qualname = cls.qualname if location.method is None else location.method.qualname
            anchor = location.method.line if location.method is not None else cls.line
            checked = tuple(m for m in methods if m in self.config.methods)
            if handled_by or not checked:
                verdicts.append(
                    Verdict(display, anchor, qualname, framework, methods, handled_by or "not-checked")
                )
                continue
            writes = self._class_writes(mro, location, implicit_writes)
            if location.method is not None:
                lines = (location.method.first_decorator_line(), max(anchor, location.method.body_line - 1))
                column = location.method.column
                kind = "method"
            else:
                first = cls.first_decorator_line()
                lines = (first, max(anchor, cls.body_line - 1))
                column = cls.column
                kind = "class"
            inherited = (
                f", inherited from {' and '.join(location.inherited_from)}" if location.inherited_from else ""
            )
            message = _message(
                "IDEM001", name, framework=framework, methods=checked, writes=writes, inherited=inherited
            )
            covering = self._covering_base(mro) if location.method is not None else None
            if covering is not None:
                message += (
                    f"; the class-level dispatch decorator that fixes `{covering}` is inherited here "
                    "and covers it too"
                )
            self._emit(
                findings,
                verdicts,
                module,
                code="IDEM001",
                lines=lines,
                finding=Finding(
                    path=display,
                    line=anchor,
                    column=column,
                    code="IDEM001",
                    message=message,
                    framework=framework,
                    handler=qualname,
                    methods=checked,
                    writes=writes,
                    target=FixTarget(
                        file=module.path, kind=kind, anchor_line=anchor, covered_by=covering or ""
                    ),
                ),
            )

    def _covering_base(self, mro: list[tuple[str, ClassFacts]]) -> str | None:
        """The nearest base view reported on its class line: its fix, a ``dispatch`` decorator on
        the class, is inherited by every subclass and covers their overrides too."""
        for path, parent in mro[1:]:
            key = (path, parent.qualname)
            reported = self._class_level.get(key)
            if reported is None:
                findings: list[Finding] = []
                self._class(self.modules[path], parent, findings, [])
                reported = any(f.target is not None and f.target.kind == "class" for f in findings)
                self._class_level[key] = reported
            if reported:
                return parent.name
        return None

    def _reads_header_for(
        self, mro: list[tuple[str, ClassFacts]], location: _Location, methods: tuple[str, ...]
    ) -> bool:
        """Whether a method that runs for these requests reads the Idempotency-Key header."""
        names = {*_PER_REQUEST, *WRITE_HOOKS, *(n for m in methods for n in location.chains[m])}
        if location.method is not None:
            names.add(location.method.name)
        for name in names:
            definer = self._definer(mro, name)
            if (
                definer is not None
                and definer[2] is not None
                and self.modules[definer[0]].body(definer[2]).reads_header
            ):
                return True
        return False

    def _serves_implicitly(self, path: str, cls: ClassFacts, method: str) -> bool:
        for _, base, mixin in self._framework_bases(path, cls):
            if base is not None and method in base.implicit:
                return True
            if base is None and method in DRF_MIXINS[mixin][0]:
                return True
        return False

    def _class_writes(
        self, mro: list[tuple[str, ClassFacts]], location: _Location, implicit: str
    ) -> tuple[str, ...]:
        writes: list[str] = []
        if location.method is not None:
            writes.extend(self.modules[location.path].body(location.method).writes)
        for hook in WRITE_HOOKS:
            definer = self._definer(mro, hook)
            if definer is not None and definer[2] is not None:
                hook_writes = self.modules[definer[0]].body(definer[2]).writes
                writes.extend(w for w in hook_writes if w not in writes)
        if not writes and location.method is None and implicit:
            writes.append(implicit)
        return tuple(writes[:3])


def _message(
    code: str,
    name: str,
    *,
    framework: str,
    methods: tuple[str, ...],
    writes: tuple[str, ...],
    inherited: str = "",
) -> str:
    label = FRAMEWORK_LABELS.get(framework, framework)
    if code == "IDEM002":
        subject = f"Celery task `{name}` has no idempotency handling"
        consequence = "a redelivered message repeats"
    else:
        subject = f"{label} handler `{name}` ({', '.join(methods)}{inherited}) has no idempotency handling"
        consequence = "a retried request repeats"
    if writes:
        return f"{subject} and writes: {', '.join(writes)}; {consequence} the write"
    return f"{subject}; no write seen in its body"


_DJANGO_VIEW_PATH = re.compile(r"^django\.(views(\.|$)|contrib\.\w+\.views\.)")
_DRF_VIEW_PATH = re.compile(r"^rest_framework\.(views|generics|viewsets)\.")
#: Django's authentication views that handle a form's POST themselves.
_DJANGO_FORM_VIEWS = re.compile(r"^(Login|Logout|PasswordChange|PasswordReset|PasswordResetConfirm)View$")


def _view_by_path(name: str) -> BaseClass | None:
    """A Django or DRF view class not listed by name, recognised by the module that defines it."""
    last = name.rsplit(".", 1)[-1]
    if last.endswith("Mixin"):
        return None
    if _DJANGO_VIEW_PATH.match(name):
        implicit: tuple[str, ...] = ()
        writes = ""
        if "Create" in last or "Update" in last:
            implicit, writes = ("POST", "PUT"), f"saves the form's object ({last})"
        elif "Delet" in last:
            implicit, writes = ("POST", "DELETE"), f"deletes the object ({last})"
        elif "FormView" in last:
            implicit = ("POST", "PUT")
        elif _DJANGO_FORM_VIEWS.match(last):
            implicit = ("POST",)
        return BaseClass("django", "view", implicit, writes)
    if _DRF_VIEW_PATH.match(name):
        style = "viewset" if ".viewsets." in name or last.endswith("ViewSet") else "view"
        drf_methods: list[str] = []
        if "Create" in last:
            drf_methods.append("POST")
        if "Update" in last:
            drf_methods += ["PUT", "PATCH"]
        if "Destroy" in last:
            drf_methods.append("DELETE")
        writes = f"saves the serializer ({last})" if drf_methods else ""
        return BaseClass("drf", style, tuple(drf_methods), writes)
    return None


def _foreign_base(name: str, module: ModuleFacts) -> BaseClass:
    """A view base from a package the checker cannot see: the framework its module suggests, and
    the methods its name implies (a ``...FormView`` handles the form's POST as Django's does)."""
    root = name.split(".", maxsplit=1)[0]
    last = name.rsplit(".", 1)[-1]
    if root.startswith("rest_framework") or "rest" in root or "rest_framework" in module.roots:
        drf = _view_by_path(f"rest_framework.generics.{last}")
        return BaseClass("drf", "view", drf.implicit if drf else (), drf.writes if drf else "")
    if "flask" in module.roots and "django" not in module.roots:
        return BaseClass("flask", "view")
    django = _view_by_path(f"django.views.generic.{last}")
    return BaseClass("django", "view", django.implicit if django else (), django.writes if django else "")
