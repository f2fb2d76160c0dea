"""First pass: what one source file says, read from its syntax tree alone.

Nothing here resolves a name across files; names are kept as dotted text together with the
scope they appear in, and :mod:`idempotent.check.project` resolves them once every file of the
run has been read. The file is parsed, never imported or run.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Binding",
    "ClassFacts",
    "Decorator",
    "FunctionFacts",
    "ModuleFacts",
    "Ref",
    "Registration",
    "collect",
    "dotted",
]

#: Header spellings that show a handler reads the idempotency key itself (compared lowercased).
HEADER_SPELLINGS = frozenset({"idempotency-key", "http_idempotency_key"})

_SUPPRESSION = re.compile(r"#\s*idempotent:\s*ignore\b(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)

#: Calls that write whatever receives them.
_WRITE_ANY = frozenset(
    {
        "commit",
        "execute",
        "executemany",
        "execute_many",
        "bulk_save_objects",
        "bulk_insert_mappings",
        "bulk_update_mappings",
        "save",
        "create",
        "bulk_create",
        "bulk_update",
        "get_or_create",
        "update_or_create",
        "delete",
        "delay",
        "apply_async",
        "send_task",
        "enqueue",
        "publish",
        "send",
        "send_mail",
        "send_email",
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
    }
)
_WRITE_PREFIXES = ("create_", "insert_", "delete_", "save_", "bulk_", "update_")
#: Names with a write prefix that only change the response being built (Django's
#: ``HttpResponse.delete_cookie``), not any state a retry would repeat.
_RESPONSE_ONLY = frozenset({"delete_cookie"})
#: Calls that write only when the receiver looks like a session, a connection or an ORM query.
_WRITE_SESSION = frozenset({"add", "add_all", "merge", "flush", "update"})
_SESSIONISH = re.compile(r"session|(^|\.)(db|conn|connection|cursor|uow|tx|objects)($|\.)")
_QUERYISH = re.compile(r"\.(filter|exclude|all|query|select_for_update|where)\(")
_OUTBOUND = frozenset({"post", "put", "patch"})
_WRITE_FUNCTIONS = frozenset({"send_mail", "send_email", "send_mass_mail", "send_task"})
_SQL_STATEMENTS = frozenset({"insert", "update", "delete"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BODY_ATTRIBUTES = frozenset({"POST", "FILES", "body", "data"})
_MAX_WRITES = 3
#: Statements that hold no other statement.
_LEAF_STATEMENTS = (
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.Expr,
    ast.Return,
    ast.Raise,
    ast.Assert,
    ast.Delete,
    ast.Pass,
    ast.Break,
    ast.Continue,
    ast.Global,
    ast.Nonlocal,
)
#: Text that must appear in a file for its calls to matter (see ``_Collector.call``).
_TRIGGER_TEXTS = (
    "include_router",
    "register_blueprint",
    ".mount(",
    "add_middleware",
    "add_middleware",
    "add_api_route",
    "add_route",
    "add_url_rule",
    "init_app",
    "Middleware",
    "path(",
    "url(",
    "MIDDLEWARE",
    "Route(",
    "Mount(",
    "Host(",
)  # plain substrings: a regular expression over the whole text costs as much as parsing it


@dataclass(frozen=True, slots=True)
class Ref:
    """A dotted name as written, and the scope (``""`` or a function's qualname) it appears in."""

    scope: str
    dotted: str


@dataclass(frozen=True, slots=True)
class Binding:
    """What a name is bound to in one scope: an import (``target`` set) or a local definition."""

    target: str | None = None  # the imported dotted name, relative ones start with dots
    local: bool = False


_LOCAL = Binding(local=True)


@dataclass(slots=True)
class Decorator:
    """One decorator of a function or class, summarised."""

    index: int
    line: int
    end_line: int
    column: int  # 1-based, in characters, of the ``@``
    func: str | None  # dotted name of what is called (or used bare)
    called: bool
    receiver: str | None  # ``app`` in ``@app.post(...)``
    attr: str | None  # ``post`` in ``@app.post(...)``
    first_str: str | None
    first_list: tuple[str, ...] | None
    methods_kw: tuple[str, ...] | None
    name_kw: str | None
    inner: tuple[str, ...]  # dotted names passed as arguments (``method_decorator(idempotent(...))``)
    deps: tuple[str, ...]  # ``dependencies=[Depends(x)]``
    str_args: tuple[str, ...] = ()  # every positional argument, when all are strings (``cors("POST")``)


@dataclass(slots=True)
class FunctionFacts:
    """A ``def`` or ``async def``: its decorators and what its body shows."""

    name: str
    qualname: str
    scope: str  # where its decorators and defaults are evaluated
    line: int
    column: int  # 1-based, in characters
    body_line: int
    is_async: bool
    decorators: list[Decorator]
    params: tuple[str, ...]
    end_line: int
    body: Body | None = None  # read on first use: most functions are never handlers

    def first_decorator_line(self) -> int:
        """The first line of the whole definition, decorators included."""
        return min([self.line, *(d.line for d in self.decorators)])


@dataclass(frozen=True, slots=True)
class Body:
    """What a function's parameters and body show."""

    reads_header: bool = False
    writes: tuple[str, ...] = ()
    method_compares: frozenset[str] = frozenset()
    reads_body: bool = False
    depends: tuple[str, ...] = ()
    request_calls: tuple[str, ...] = ()  # functions called with the request: ``form(request, ...)``


@dataclass(slots=True)
class ClassFacts:
    """A ``class`` statement: bases, decorators, methods and class attributes that matter."""

    name: str
    qualname: str
    scope: str
    line: int
    column: int
    body_line: int
    bases: tuple[str, ...]
    decorators: list[Decorator]
    methods: dict[str, FunctionFacts]
    reads_header: bool
    methods_attr: tuple[str, ...] | None

    def first_decorator_line(self) -> int:
        """The first line of the whole definition, decorators included."""
        return min([self.line, *(d.line for d in self.decorators)])


@dataclass(frozen=True, slots=True)
class Registration:
    """A handler registered by a call: ``add_api_route``, ``add_url_rule``, ``Route``, ``path``."""

    kind: str  # "api_route", "add_route", "url_rule", "route", "path"
    registrar: Ref | None
    func: Ref | None  # the called function, for ``path()`` (checked to be Django's)
    target: Ref
    as_view: bool
    wrappers: tuple[str, ...]
    methods: tuple[str, ...] | None
    line: int


@dataclass(slots=True)
class ModuleFacts:
    """Everything the second pass needs from one file."""

    path: str
    text: str
    bindings: dict[str, dict[str, Binding]] = field(default_factory=dict)
    star_imports: list[tuple[str, str]] = field(default_factory=list)  # (scope, dotted target)
    roots: set[str] = field(default_factory=set)  # top-level packages imported
    functions: list[FunctionFacts] = field(default_factory=list)
    classes: list[ClassFacts] = field(default_factory=list)
    constructors: dict[str, list[Ref]] = field(default_factory=dict)  # scoped name -> called
    object_middleware: list[tuple[Ref, Ref]] = field(default_factory=list)
    object_deps: list[tuple[Ref, Ref]] = field(default_factory=list)
    includes: list[tuple[Ref, Ref]] = field(default_factory=list)
    middleware_calls: list[tuple[Ref, Ref]] = field(default_factory=list)  # (called, wrapped)
    init_apps: list[tuple[Ref, Ref]] = field(default_factory=list)
    http_middleware: list[tuple[Ref, str]] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    django_middleware: list[str] = field(default_factory=list)
    passes: list[tuple[Ref, tuple[tuple[int | str, Ref], ...]]] = field(default_factory=list)
    suppressions: dict[int, frozenset[str] | None] = field(default_factory=dict)

    def imports_from(self, name: str, package: str) -> bool:
        """Whether a module-level ``name`` is imported from ``package`` (or a module of it)."""
        binding = self.bindings.get("", {}).get(name)
        return binding is not None and binding.target is not None and binding.target.startswith(package)

    def body(self, function: FunctionFacts) -> Body:
        """What ``function``'s parameters and body show (parsed again, on first use, from the text)."""
        if function.body is None:
            node = self._function_node(function)
            if node is None:
                function.body = Body()
            else:
                scan = _BodyScan(self.imports_from, node)
                function.body = Body(
                    reads_header=scan.reads_header,
                    writes=tuple(scan.writes),
                    method_compares=frozenset(scan.compares),
                    reads_body=scan.reads_body,
                    depends=tuple(scan.depends),
                    request_calls=tuple(scan.request_calls),
                )
        return function.body

    def _function_node(self, function: FunctionFacts) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        lines = self.text.splitlines(keepends=True)[function.line - 1 : function.end_line]
        if not lines:
            return None
        indented = lines[0][:1] in {" ", "\t"}
        segment = ("if 1:\n" if indented else "") + "".join(lines)
        try:
            tree = ast.parse(segment)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            first = tree.body[0] if tree.body else None
            if indented and isinstance(first, ast.If):
                first = first.body[0]
            if isinstance(first, ast.FunctionDef | ast.AsyncFunctionDef) and first.name == function.name:
                return first
        try:  # an unusual layout: read the whole module again
            whole = ast.parse(self.text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        for node in ast.walk(whole):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.lineno == function.line:
                return node
        return None


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _callee(node: ast.expr) -> str | None:
    """The dotted name a call expression ultimately calls: ``f`` in ``f(x)`` and ``f(x)(y)``."""
    while isinstance(node, ast.Call):
        node = node.func
    return dotted(node)


def _strings(node: ast.expr | None) -> tuple[str, ...] | None:
    """The strings of a list, tuple or set literal of constants (or of one string)."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if len(values) == len(node.elts):
            return tuple(values)
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    """The argument at ``position`` or passed as ``name=`` (None after a ``*args``)."""
    value = _keyword(call, name)
    if value is not None:
        return value
    for index, arg in enumerate(call.args):
        if isinstance(arg, ast.Starred):
            return None
        if index == position:
            return arg
    return None


def _char_column(line_text: str, byte_offset: int) -> int:
    """1-based character column of a UTF-8 byte offset within a line."""
    if line_text.isascii():
        return byte_offset + 1
    return len(line_text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")) + 1


def _depends_target(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        name = dotted(node.func)
        if name is not None and name.rsplit(".", 1)[-1] in {"Depends", "Security"}:
            arg = _argument(node, 0, "dependency")
            if arg is not None:
                return dotted(arg)
    return None


def _is_method_attribute(node: ast.expr, param: str) -> bool:
    """``request.method`` (or ``request.method.upper()``) for the view's request parameter."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.args:
        node = node.func.value
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "method"
        and isinstance(node.value, ast.Name)
        and node.value.id == param
    )


class _BodyScan:
    """One walk over a function's parameters and body, noting everything the rules need."""

    def __init__(
        self, imports_from: Callable[[str, str], bool], node: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> None:
        self.imports_from = imports_from
        args = node.args
        params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        self.params = tuple(params)
        first = params[0] if params else ""
        if first in {"self", "cls"} and len(params) > 1:
            first = params[1]
        self.request = first
        self.reads_header = False
        self.writes: list[str] = []
        self.compares: set[str] = set()
        self.reads_body = False
        self.depends: list[str] = []
        self.request_calls: list[str] = []
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
            if arg.annotation is not None:
                self._scan(arg.annotation, depends=True)
                self._header_parameter(arg.arg, arg.annotation)
        positional = [*args.posonlyargs, *args.args]
        defaults = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
        defaults += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
        for arg, default in defaults:
            self._scan(default, depends=True)
            self._header_parameter(arg.arg, default)
        for statement in node.body:
            self._scan(statement, depends=False)

    def _header_parameter(self, name: str, expr: ast.expr) -> None:
        """``idempotency_key: str = Header(...)`` reads the header under FastAPI's name mapping."""
        if name.lower() != "idempotency_key":
            return
        for sub in ast.walk(expr):
            if isinstance(sub, ast.Call):
                called = dotted(sub.func)
                if called is not None and called.rsplit(".", 1)[-1] == "Header":
                    self.reads_header = True

    def _scan(self, root: ast.AST, *, depends: bool) -> None:
        for node in ast.walk(root):
            if isinstance(node, ast.Constant):
                if isinstance(node.value, str) and node.value.lower() in HEADER_SPELLINGS:
                    self.reads_header = True
            elif isinstance(node, ast.Call):
                if depends:
                    target = _depends_target(node)
                    if target is not None:
                        self.depends.append(target)
                else:
                    self._call(node)
                    if self.request and any(
                        isinstance(a, ast.Name) and a.id == self.request for a in node.args
                    ):
                        name = dotted(node.func)
                        if name is not None and name not in self.request_calls:
                            self.request_calls.append(name)
            elif isinstance(node, ast.Compare) and self.request:
                operands = [node.left, *node.comparators]
                if any(_is_method_attribute(op, self.request) for op in operands):
                    for op in operands:
                        self.compares.update(m.upper() for m in _strings(op) or ())
            elif isinstance(node, ast.Match) and self.request:
                if _is_method_attribute(node.subject, self.request):
                    for case in node.cases:
                        for sub in ast.walk(case.pattern):
                            if isinstance(sub, ast.MatchValue):
                                self.compares.update(m.upper() for m in _strings(sub.value) or ())
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in _BODY_ATTRIBUTES
                and isinstance(node.value, ast.Name)
                and node.value.id == self.request
            ):
                self.reads_body = True

    def _call(self, call: ast.Call) -> None:
        if len(self.writes) >= _MAX_WRITES:
            return
        func = call.func
        write = False
        if isinstance(func, ast.Attribute):
            name = func.attr
            if name in _WRITE_ANY or (name.startswith(_WRITE_PREFIXES) and name not in _RESPONSE_ONLY):
                write = True
            elif name in _OUTBOUND:
                # ``super().post(request)`` runs the inherited handler: not an outbound request.
                write = bool(call.args or call.keywords) and not _is_super(func.value)
            elif name == "request":
                values = _strings(_argument(call, 0, "method"))
                write = bool(values) and values is not None and values[0].upper() in _STATE_CHANGING
            elif name in _WRITE_SESSION:
                receiver = ast.unparse(func.value).lower()
                write = _SESSIONISH.search(receiver) is not None or (
                    name == "update" and _QUERYISH.search(receiver) is not None
                )
            if not write and name in _SQL_STATEMENTS:
                root = dotted(func.value)
                write = root is not None and self.imports_from(root.split(".")[0], "sqlalchemy")
        elif isinstance(func, ast.Name):
            if func.id in _WRITE_FUNCTIONS:
                write = True
            elif func.id in _SQL_STATEMENTS:
                write = self.imports_from(func.id, "sqlalchemy")
        if write:
            text = ast.unparse(func)
            if len(text) > 48:
                text = "..." + text[-45:]
            text += "()"
            if text not in self.writes:
                self.writes.append(text)


def _is_super(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _header_in(nodes: Iterable[ast.AST]) -> bool:
    for root in nodes:
        for node in ast.walk(root):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.lower() in HEADER_SPELLINGS
            ):
                return True
    return False


class _Collector:
    """Walks a module's statements with the scope they run in, filling :class:`ModuleFacts`."""

    def __init__(self, facts: ModuleFacts, lines: list[str], middleware_names: frozenset[str]) -> None:
        self.facts = facts
        self.lines = lines
        self.middleware_names = middleware_names
        self.done: set[int] = set()  # ids of Route/Mount calls already read as part of a list
        # Walking every expression for calls is the slow part; a file that names none of the calls
        # that matter is not walked.
        text = facts.text
        self.scan_calls = any(trigger in text for trigger in _TRIGGER_TEXTS) or any(
            name in text for name in middleware_names
        )
        # Class bodies are searched for the header's name only in files that spell it somewhere.
        self.header_text = "idempotency" in text.lower()

    # -- names -----------------------------------------------------------------------------
    def bind(self, scope: str, name: str, binding: Binding) -> None:
        table = self.facts.bindings.setdefault(scope, {})
        current = table.get(name)
        if current is not None and current.local and not binding.local:
            return  # a local assignment anywhere in the scope wins over an import
        table[name] = binding

    def _column(self, node: ast.stmt) -> int:
        line = self.lines[node.lineno - 1] if node.lineno - 1 < len(self.lines) else ""
        return _char_column(line, node.col_offset)

    # -- statements ------------------------------------------------------------------------
    def statements(self, body: list[ast.stmt], scope: str) -> None:
        for node in body:
            self.statement(node, scope)

    def statement(self, node: ast.stmt, scope: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = self.function(node, scope)
            self.facts.functions.append(function)
            self.bind(scope, node.name, _LOCAL)
            for param in function.params:
                self.bind(function.qualname, param, _LOCAL)
            self.statements(node.body, function.qualname)
        elif isinstance(node, ast.ClassDef):
            self.facts.classes.append(self.klass(node, scope))
            self.bind(scope, node.name, _LOCAL)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                self.facts.roots.add(alias.name.split(".")[0])
                if alias.asname:
                    self.bind(scope, alias.asname, Binding(target=alias.name))
                else:
                    head = alias.name.split(".")[0]
                    self.bind(scope, head, Binding(target=head))
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            if node.level == 0 and node.module:
                self.facts.roots.add(node.module.split(".")[0])
            for alias in node.names:
                if alias.name == "*":
                    self.facts.star_imports.append((scope, base))
                    continue
                joiner = "" if base.endswith(".") or not base else "."
                self.bind(scope, alias.asname or alias.name, Binding(target=f"{base}{joiner}{alias.name}"))
        else:
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                self.assignment(node, scope)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                self.passing(node.value, scope)
            if isinstance(node, _LEAF_STATEMENTS):  # nothing inside but expressions
                if self.scan_calls:
                    for child in ast.iter_child_nodes(node):
                        if isinstance(child, ast.expr):
                            self.expression(child, scope)
                return
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.statement(child, scope)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    if isinstance(child, ast.ExceptHandler) and child.name:
                        self.bind(scope, child.name, _LOCAL)
                    self.statements(child.body, scope)
                elif isinstance(child, ast.expr):
                    if self.scan_calls:
                        self.expression(child, scope)
                elif isinstance(child, ast.withitem):
                    if self.scan_calls:
                        self.expression(child.context_expr, scope)
                    if isinstance(child.optional_vars, ast.Name):
                        self.bind(scope, child.optional_vars.id, _LOCAL)

    def assignment(self, node: ast.Assign | ast.AnnAssign | ast.AugAssign, scope: str) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        for target in targets:
            if isinstance(target, ast.Name):
                self.bind(scope, target.id, _LOCAL)
                continue
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    self.bind(scope, sub.id, _LOCAL)
        if value is None:
            return
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            name = target.id
            scoped = f"{scope}.{name}" if scope else name
            if name in {"MIDDLEWARE", "MIDDLEWARE_CLASSES"} and not scope:
                self.facts.django_middleware.extend(
                    sub.value
                    for sub in ast.walk(value)
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
                )
            if isinstance(value, ast.Call):
                called = _callee(value.func) if isinstance(value.func, ast.Call) else dotted(value.func)
                if called is not None:
                    self.facts.constructors.setdefault(scoped, []).append(Ref(scope, called))
                self.constructor(value, Ref(scope, name))
            elif isinstance(value, ast.List | ast.Tuple | ast.BinOp):
                self.route_list(value, Ref(scope, name))

    def passing(self, call: ast.Call, scope: str) -> None:
        """``setup(app)``: a call passing names, so the callee's parameters can stand for them."""
        called = dotted(call.func)
        if called is None:
            return
        arguments: list[tuple[int | str, str]] = []
        for index, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred):
                break
            name = dotted(arg)
            if name is not None:
                arguments.append((index, name))
        for kw in call.keywords:
            name = dotted(kw.value) if kw.arg is not None else None
            if kw.arg is not None and name is not None:
                arguments.append((kw.arg, name))
        if arguments:
            self.facts.passes.append(
                (Ref(scope, called), tuple((key, Ref(scope, name)) for key, name in arguments))
            )

    def constructor(self, call: ast.Call, obj: Ref) -> None:
        """Keyword arguments of app and router constructors: middleware, routes, dependencies."""
        scope = obj.scope
        middleware = _keyword(call, "middleware")
        if isinstance(middleware, ast.List | ast.Tuple):
            for element in middleware.elts:
                item = element
                if isinstance(element, ast.Call):
                    first = _argument(element, 0, "cls")
                    if first is None:
                        continue
                    item = first
                name = dotted(item)
                if name is not None:
                    self.facts.object_middleware.append((obj, Ref(scope, name)))
        dependencies = _keyword(call, "dependencies")
        if isinstance(dependencies, ast.List | ast.Tuple):
            for element in dependencies.elts:
                target = _depends_target(element)
                if target is not None:
                    self.facts.object_deps.append((obj, Ref(scope, target)))
        routes = _keyword(call, "routes")
        if routes is not None:
            self.route_list(routes, obj)

    def route_list(self, value: ast.expr, registrar: Ref) -> None:
        """Starlette-style route lists: ``[Route(...), Mount(..., routes=[...]), *more]``."""
        scope = registrar.scope
        if isinstance(value, ast.BinOp):
            self.route_list(value.left, registrar)
            self.route_list(value.right, registrar)
            return
        name = dotted(value)
        if name is not None:
            self.facts.includes.append((registrar, Ref(scope, name)))
            return
        if not isinstance(value, ast.List | ast.Tuple):
            return
        for element in value.elts:
            if isinstance(element, ast.Starred):
                inner = dotted(element.value)
                if inner is not None:
                    self.facts.includes.append((registrar, Ref(scope, inner)))
                continue
            if not isinstance(element, ast.Call):
                continue
            kind = (dotted(element.func) or "").rsplit(".", 1)[-1]
            if kind in {"Route", "APIRoute"}:
                self.done.add(id(element))
                endpoint = _argument(element, 1, "endpoint")
                if endpoint is not None:
                    self.register(
                        "route",
                        registrar=registrar,
                        func=None,
                        endpoint=endpoint,
                        methods=_strings(_keyword(element, "methods")),
                        call=element,
                    )
            elif kind in {"Mount", "Host"}:
                self.done.add(id(element))
                inner_routes = _keyword(element, "routes")
                if inner_routes is not None:
                    self.route_list(inner_routes, registrar)
                app = _argument(element, 1, "app")
                app_name = dotted(app) if app is not None else None
                if app_name is not None:
                    self.facts.includes.append((registrar, Ref(scope, app_name)))

    def register(
        self,
        kind: str,
        *,
        registrar: Ref | None,
        func: Ref | None,
        endpoint: ast.expr,
        methods: tuple[str, ...] | None,
        call: ast.Call,
    ) -> None:
        scope = registrar.scope if registrar is not None else (func.scope if func else "")
        wrappers: list[str] = []
        as_view = False
        node: ast.expr | None = endpoint
        while isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "as_view":
                as_view = True
                node = node.func.value
                break
            called = _callee(node.func) if isinstance(node.func, ast.Call) else dotted(node.func)
            if called is not None:
                wrappers.append(called)
            node = node.args[0] if node.args else None
        target = dotted(node) if node is not None else None
        if target is None:
            return
        self.facts.registrations.append(
            Registration(
                kind=kind,
                registrar=registrar,
                func=func,
                target=Ref(scope, target),
                as_view=as_view,
                wrappers=tuple(wrappers),
                methods=tuple(m.upper() for m in methods) if methods is not None else None,
                line=call.lineno,
            )
        )

    def expression(self, root: ast.expr, scope: str) -> None:
        for node in ast.walk(root):
            if isinstance(node, ast.Call) and id(node) not in self.done:
                self.call(node, scope)

    def call(self, call: ast.Call, scope: str) -> None:
        func = call.func
        name = dotted(func)
        if isinstance(func, ast.Attribute):
            attr = func.attr
            receiver = dotted(func.value)
            if receiver is not None:
                self.method_call(call, attr, Ref(scope, receiver))
        if name is None:
            return
        last = name.rsplit(".", 1)[-1]
        if last in {"path", "re_path", "url"}:
            view = _argument(call, 1, "view")
            if view is not None and not isinstance(view, ast.List | ast.Tuple):
                self.register(
                    "path", registrar=None, func=Ref(scope, name), endpoint=view, methods=None, call=call
                )
        elif last.endswith("Middleware") or last in self.middleware_names:
            wrapped = _argument(call, 0, "app")
            wrapped_name = dotted(wrapped) if wrapped is not None else None
            if wrapped_name is not None:
                self.facts.middleware_calls.append((Ref(scope, name), Ref(scope, wrapped_name)))

    def method_call(self, call: ast.Call, attr: str, receiver: Ref) -> None:
        scope = receiver.scope
        first = call.args[0] if call.args else None
        if attr in {"include_router", "register_blueprint"}:
            child = _argument(call, 0, "router" if attr == "include_router" else "blueprint")
            child_name = dotted(child) if child is not None else None
            if child_name is not None:
                self.facts.includes.append((receiver, Ref(scope, child_name)))
        elif attr == "mount":
            child = _argument(call, 1, "app")
            child_name = dotted(child) if child is not None else None
            if child_name is not None:
                self.facts.includes.append((receiver, Ref(scope, child_name)))
        elif attr == "add_middleware" and first is not None:
            middleware = dotted(first)
            if middleware is not None:
                self.facts.object_middleware.append((receiver, Ref(scope, middleware)))
        elif attr in {"add_api_route", "add_route"}:
            endpoint = _argument(call, 1, "endpoint" if attr == "add_api_route" else "route")
            if endpoint is not None:
                methods = _strings(_keyword(call, "methods"))
                kind = "api_route" if attr == "add_api_route" else "add_route"
                self.register(
                    kind, registrar=receiver, func=None, endpoint=endpoint, methods=methods, call=call
                )
        elif attr == "add_url_rule":
            view = _argument(call, 2, "view_func")
            if view is not None:
                methods = _strings(_keyword(call, "methods"))
                self.register(
                    "url_rule", registrar=receiver, func=None, endpoint=view, methods=methods, call=call
                )
        elif attr == "init_app" and first is not None:
            target = dotted(first)
            if target is not None:
                self.facts.init_apps.append((receiver, Ref(scope, target)))
        elif attr in {"append", "extend", "insert"}:
            values = call.args[1:] if attr == "insert" else call.args
            if receiver.dotted.rsplit(".", 1)[-1] in {"MIDDLEWARE", "MIDDLEWARE_CLASSES"}:
                self.facts.django_middleware.extend(v for value in values for v in _strings(value) or ())
            for value in values:
                if attr == "extend":
                    self.route_list(value, receiver)
                else:
                    self.route_list(ast.List(elts=[value], ctx=ast.Load()), receiver)

    # -- definitions -----------------------------------------------------------------------
    def decorator(self, index: int, node: ast.expr) -> Decorator:
        call = node if isinstance(node, ast.Call) else None
        func = call.func if call is not None else node
        name = _callee(func) if isinstance(func, ast.Call) else dotted(func)
        receiver = attr = None
        if isinstance(func, ast.Attribute):
            attr = func.attr
            receiver = dotted(func.value)
        first_str = first_list = methods_kw = name_kw = None
        str_args: tuple[str, ...] = ()
        inner: list[str] = []
        deps: list[str] = []
        if call is not None:
            if call.args:
                first = call.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    first_str = first.value
                else:
                    first_list = _strings(first)
                texts = [
                    a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
                if len(texts) == len(call.args):
                    str_args = tuple(texts)
            methods_kw = _strings(_keyword(call, "methods"))
            name_value = _keyword(call, "name")
            if isinstance(name_value, ast.Constant) and isinstance(name_value.value, str):
                name_kw = name_value.value
            for arg in call.args:
                elements = arg.elts if isinstance(arg, ast.List | ast.Tuple) else [arg]
                for element in elements:
                    inner_name = _callee(element)
                    if inner_name is not None:
                        inner.append(inner_name)
            dependencies = _keyword(call, "dependencies")
            if isinstance(dependencies, ast.List | ast.Tuple):
                deps.extend(t for e in dependencies.elts if (t := _depends_target(e)) is not None)
        text = self.lines[node.lineno - 1] if node.lineno - 1 < len(self.lines) else ""
        column = _char_column(text, node.col_offset)
        before = text[: column - 1].rstrip()
        if before.endswith("@"):
            column = len(before)
        return Decorator(
            index=index,
            line=node.lineno,
            end_line=node.end_lineno or node.lineno,
            column=column,
            func=name,
            called=call is not None,
            receiver=receiver,
            attr=attr,
            first_str=first_str,
            first_list=first_list,
            methods_kw=methods_kw,
            name_kw=name_kw,
            inner=tuple(inner),
            deps=tuple(deps),
            str_args=str_args,
        )

    def function(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, scope: str, owner: str | None = None
    ) -> FunctionFacts:
        prefix = owner or scope
        qualname = f"{prefix}.{node.name}" if prefix else node.name
        args = node.args
        params = tuple(a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs))
        decorators = [self.decorator(i, d) for i, d in enumerate(node.decorator_list)]
        for decorator in decorators:
            if decorator.attr == "middleware" and decorator.first_str == "http" and decorator.receiver:
                self.facts.http_middleware.append((Ref(scope, decorator.receiver), qualname))
        return FunctionFacts(
            name=node.name,
            qualname=qualname,
            scope=scope,
            line=node.lineno,
            column=self._column(node),
            body_line=node.body[0].lineno,
            is_async=isinstance(node, ast.AsyncFunctionDef),
            decorators=decorators,
            params=params,
            end_line=node.end_lineno or node.lineno,
        )

    def klass(self, node: ast.ClassDef, scope: str) -> ClassFacts:
        qualname = f"{scope}.{node.name}" if scope else node.name
        bases: list[str] = []
        for base in node.bases:
            expr = base.value if isinstance(base, ast.Subscript) else base
            name = dotted(expr)
            if name is not None:
                bases.append(name)
        methods: dict[str, FunctionFacts] = {}
        methods_attr: tuple[str, ...] | None = None
        for statement in node.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                methods[statement.name] = self.function(statement, scope, owner=qualname)
            elif isinstance(statement, ast.Assign | ast.AnnAssign):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                if any(isinstance(t, ast.Name) and t.id == "methods" for t in targets):
                    found = _strings(statement.value)
                    methods_attr = tuple(m.upper() for m in found) if found is not None else None
            elif isinstance(statement, ast.ClassDef):
                self.facts.classes.append(self.klass(statement, qualname))
        return ClassFacts(
            name=node.name,
            qualname=qualname,
            scope=scope,
            line=node.lineno,
            column=self._column(node),
            body_line=node.body[0].lineno,
            bases=tuple(bases),
            decorators=[self.decorator(i, d) for i, d in enumerate(node.decorator_list)],
            methods=methods,
            reads_header=self.header_text
            and _header_in(s for s in node.body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)),
            methods_attr=methods_attr,
        )


def _suppressions(text: str) -> dict[int, frozenset[str] | None]:
    """``# idempotent: ignore[IDEM001]`` comments by line; None means every code."""
    found: dict[int, frozenset[str] | None] = {}
    if "idempotent" not in text:
        return found
    try:
        tokens: Iterator[tokenize.TokenInfo] = tokenize.generate_tokens(io.StringIO(text).readline)
        for token in tokens:
            if token.type != tokenize.COMMENT:
                continue
            match = _SUPPRESSION.search(token.string)
            if match is None:
                continue
            codes = match.group("codes")
            line = token.start[0]
            if codes is None:
                found[line] = None
            elif line not in found or found[line] is not None:
                parsed = frozenset(c.strip().upper() for c in codes.split(",") if c.strip())
                found[line] = (found.get(line) or frozenset()) | parsed
    except (tokenize.TokenError, SyntaxError):  # the parser accepted the file; keep what was read
        pass
    return found


def collect(
    path: str, text: str, tree: ast.Module, middleware_names: frozenset[str] = frozenset()
) -> ModuleFacts:
    """Read the facts of one parsed module (``middleware_names``: extra bare names to watch)."""
    facts = ModuleFacts(path=path, text=text)
    facts.bindings[""] = {}
    collector = _Collector(facts, text.splitlines(), middleware_names)
    collector.statements(tree.body, "")
    facts.suppressions = _suppressions(text)
    return facts
