"""Fixes for findings: templates that framework integrations register, and the text edits.

A :class:`FixTemplate` says which decorator to insert on a handler and which import lines that
decorator needs. Each framework integration registers one with :func:`register_fix_template`;
the built-in declarations below name the integration module each fix will need. A fix is
*applicable* only when its template's module is importable in the installed library (checked
with :func:`importlib.util.find_spec`, which imports no framework); every other fix is still
shown by ``--diff``, marked for review, and left alone by ``--fix``.

Edits are made on the text, line by line: the decorator goes on its own line directly above the
``def`` (below every route decorator, where it takes effect) or the ``class``, the import after
the module's leading imports. Nothing else in the file changes, and a file is only written when
the result still parses.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from idempotent.check._frameworks import FRAMEWORK_LABELS
from idempotent.check.facts import dotted
from idempotent.check.rules import Finding
from idempotent.check.runner import read_source

__all__ = [
    "FixPlan",
    "FixTemplate",
    "apply_fixes",
    "builtin_fix_templates",
    "fix_template",
    "handling_names",
    "integration_available",
    "plan_fixes",
    "register_fix_template",
    "render_diff",
    "unregister_fix_template",
]


def _import_bindings(line: str) -> dict[str, str]:
    """Names an import line binds, with the qualified name each one refers to."""
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:
        raise ValueError(f"{line!r} is not a Python import statement") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Import | ast.ImportFrom):
        raise ValueError(f"{line!r} is not a single import statement")
    node = tree.body[0]
    bound: dict[str, str] = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                bound[alias.asname] = alias.name
            else:
                head = alias.name.split(".")[0]
                bound[head] = head
    else:
        if node.level or not node.module:
            raise ValueError(f"{line!r}: a fix template's import must be absolute")
        for alias in node.names:
            if alias.name == "*":
                raise ValueError(f"{line!r}: a fix template cannot use a star import")
            bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _decorator_names(text: str) -> tuple[str, set[str]]:
    """The dotted callee of a decorator line (inside ``method_decorator`` if used) and every name."""
    source = text.strip()
    if not source.startswith("@"):
        raise ValueError(f"{text!r}: a decorator starts with '@'")
    try:
        tree = ast.parse(f"{source}\ndef _f(): pass\n")
    except SyntaxError:
        raise ValueError(f"{text!r} is not a valid decorator") from None
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)  # noqa: S101 -- parsed from the line built above
    expr = function.decorator_list[0]
    used = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    node = expr
    while isinstance(node, ast.Call):
        if dotted(node.func) == "method_decorator" and node.args:
            node = node.args[0]
            continue
        node = node.func
    return dotted(node) or "", used


@dataclass(frozen=True)
class FixTemplate:
    """How to make a framework's handlers idempotent.

    ``module`` is the integration module the inserted code imports; the fix is applied only when
    it is importable. ``imports`` are the import lines the decorators may need (each is added
    only if a decorator uses a name it binds and the file does not already bind it).
    ``decorator`` is inserted above function handlers, ``method_decorator`` (default: the same)
    above methods of class-based views, ``class_decorator`` above a class whose handlers are
    inherited from a generic view (None: such classes are only shown for review). ``setup`` is
    what a project must do once for the inserted decorators to work (``--fix`` prints it after
    fixing such a handler), None when nothing.
    """

    module: str
    imports: tuple[str, ...]
    decorator: str
    method_decorator: str | None = None
    class_decorator: str | None = None
    setup: str | None = None

    def __post_init__(self) -> None:
        bound: dict[str, str] = {}
        for line in self.imports:
            bound.update(_import_bindings(line))
        for text in (self.decorator, self.method_decorator, self.class_decorator):
            if text is not None:
                _decorator_names(text)
        if not self.module or any(not part.isidentifier() for part in self.module.split(".")):
            raise ValueError(f"{self.module!r} is not a module name")

    def bindings(self) -> dict[str, str]:
        """Every name the template's import lines bind, with what it refers to."""
        bound: dict[str, str] = {}
        for line in self.imports:
            bound.update(_import_bindings(line))
        return bound

    def decorator_for(self, kind: str) -> str | None:
        """The decorator text for a ``function``, ``method`` or ``class`` handler."""
        if kind == "class":
            return self.class_decorator
        if kind == "method":
            return self.method_decorator or self.decorator
        return self.decorator

    def handling_names(self) -> tuple[str, ...]:
        """Qualified names of the inserted decorators, which the checker counts as handling."""
        bound = self.bindings()
        names: list[str] = []
        for text in (self.decorator, self.method_decorator, self.class_decorator):
            if text is None:
                continue
            callee, _ = _decorator_names(text)
            head, _, rest = callee.partition(".")
            if head in bound:
                qualified = bound[head] + (f".{rest}" if rest else "")
                if qualified not in names:
                    names.append(qualified)
        return tuple(names)

    def imports_for(self, text: str) -> list[str]:
        """The import lines a decorator text needs."""
        _, used = _decorator_names(text)
        return [line for line in self.imports if set(_import_bindings(line)) & used]


_DJANGO_SETUP = (
    "add 'idempotent.contrib.django' to INSTALLED_APPS and run `python manage.py migrate`, which "
    "creates the keys table; give the decorators principal_from on multi-user APIs"
)
_BUILTIN: dict[str, FixTemplate] = {
    "fastapi": FixTemplate(
        module="idempotent.contrib.fastapi",
        imports=("from idempotent.contrib.fastapi import idempotent_route",),
        decorator="@idempotent_route()",
    ),
    "starlette": FixTemplate(
        module="idempotent.contrib.starlette",
        imports=("from idempotent.contrib.starlette import idempotent_route",),
        decorator="@idempotent_route()",
        method_decorator="@idempotent_route()",
    ),
    "flask": FixTemplate(
        module="idempotent.contrib.flask",
        imports=("from idempotent.contrib.flask import idempotent_route",),
        decorator="@idempotent_route()",
        method_decorator="@idempotent_route()",
    ),
    "django": FixTemplate(
        module="idempotent.contrib.django",
        imports=(
            "from django.utils.decorators import method_decorator",
            "from idempotent.contrib.django import idempotent_view",
        ),
        decorator="@idempotent_view()",
        method_decorator="@method_decorator(idempotent_view())",
        class_decorator='@method_decorator(idempotent_view(), name="dispatch")',
        setup=_DJANGO_SETUP,
    ),
    "drf": FixTemplate(
        module="idempotent.contrib.django",
        imports=(
            "from django.utils.decorators import method_decorator",
            "from idempotent.contrib.django import idempotent_view",
        ),
        decorator="@idempotent_view()",
        method_decorator="@method_decorator(idempotent_view())",
        class_decorator='@method_decorator(idempotent_view(), name="dispatch")',
        setup=_DJANGO_SETUP,
    ),
    "celery": FixTemplate(
        module="idempotent.contrib.celery",
        imports=("from idempotent.contrib.celery import idempotent_task",),
        decorator="@idempotent_task()",
    ),
}
_registered: dict[str, FixTemplate] = {}


def register_fix_template(framework: str, template: FixTemplate) -> None:
    """Make ``template`` the fix for ``framework`` (``fastapi``, ``flask``, ``django``...).

    Integrations call this; a later registration for the same framework replaces the earlier
    one and the built-in declaration.
    """
    if not isinstance(template, FixTemplate):
        raise TypeError(f"expected a FixTemplate, got {type(template).__name__}")
    _registered[framework] = template


def unregister_fix_template(framework: str) -> None:
    """Forget the template registered for ``framework`` (the built-in declaration stays)."""
    _registered.pop(framework, None)


def builtin_fix_templates() -> dict[str, FixTemplate]:
    """The templates declared here for the library's own integrations, by framework."""
    return dict(_BUILTIN)


def fix_template(framework: str) -> FixTemplate | None:
    """The template in force for ``framework``: the registered one, else the built-in one."""
    return _registered.get(framework) or _BUILTIN.get(framework)


def handling_names() -> tuple[str, ...]:
    """Qualified decorator names of every template in force (the checker counts them as handling)."""
    names: list[str] = []
    for framework in sorted({*_BUILTIN, *_registered}):
        template = fix_template(framework)
        if template is not None:
            names.extend(n for n in template.handling_names() if n not in names)
    return tuple(names)


def integration_available(template: FixTemplate) -> bool:
    """Whether the template's integration module can be imported (without importing it): the
    module is installed, and so is every framework package its import lines name (Django for
    ``django.utils.decorators``), which the integration module itself imports."""
    needed = [template.module]
    needed.extend(
        root
        for line in template.imports
        for root in {name.split(".")[0] for name in _import_bindings(line).values()}
        if root != template.module.split(".")[0]
    )
    try:
        return all(importlib.util.find_spec(name) is not None for name in needed)
    except (ImportError, ValueError):
        return False


@dataclass
class FixPlan:
    """What the fixer would do for one finding, and whether ``--fix`` may do it."""

    finding: Finding
    decorator: str | None
    imports: list[str]
    applicable: bool
    note: str = ""


def plan_fixes(findings: Iterable[Finding]) -> list[FixPlan]:
    """A plan for every finding that can be fixed by text edits."""
    plans: list[FixPlan] = []
    available: dict[str, bool] = {}
    for finding in findings:
        target = finding.target
        if target is None:
            continue
        if target.kind == "move":
            # Moving @idempotent below the route or task decorator needs only the core library.
            plans.append(FixPlan(finding, None, [], True))
            continue
        if target.covered_by:
            # Decorating this override too would run the idempotency check twice for one request.
            note = f"the dispatch decorator suggested for its base `{target.covered_by}` covers it"
            plans.append(FixPlan(finding, None, [], False, note))
            continue
        label = FRAMEWORK_LABELS.get(finding.framework, finding.framework)
        template = fix_template(finding.framework)
        if template is None:
            plans.append(
                FixPlan(finding, None, [], False, f"no fix template is registered for {label} handlers")
            )
            continue
        if template.module not in available:
            available[template.module] = integration_available(template)
        missing = f"the {label} integration ({template.module}) is not installed"
        decorator = template.decorator_for(target.kind)
        if decorator is None:
            plans.append(
                FixPlan(
                    finding,
                    None,
                    [],
                    False,
                    f"the {label} fix template has no decorator for class-based views",
                )
            )
            continue
        imports = template.imports_for(decorator)
        if available[template.module]:
            plans.append(FixPlan(finding, decorator, imports, True))
        else:
            plans.append(FixPlan(finding, decorator, imports, False, missing))
    return plans


@dataclass
class _FileEdit:
    text: str
    lines: list[str]
    newline: str
    inserts: dict[int, list[str]] = field(default_factory=dict)  # before 0-based line index
    deletes: set[int] = field(default_factory=set)
    imports: list[str] = field(default_factory=list)
    import_at: int = 0
    done: list[FixPlan] = field(default_factory=list)

    def added_before(self, index: int) -> int:
        """How many lines the edits add before 0-based line ``index`` (and remove, negatively)."""
        added = sum(len(lines) for at, lines in self.inserts.items() if at <= index)
        if self.imports and self.import_at <= index:
            added += len(self.imports)
        return added - sum(1 for deleted in self.deletes if deleted < index)

    def render(self) -> str:
        out: list[str] = []
        for index in range(len(self.lines) + 1):
            if index == self.import_at:
                out.extend(f"{line}{self.newline}" for line in sorted(self.imports))
            out.extend(self.inserts.get(index, ()))
            if index < len(self.lines) and index not in self.deletes:
                out.append(self.lines[index])
        return "".join(out)


def _newline(text: str) -> str:
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if len(stripped) != len(line):
            return line[len(stripped) :]
    return "\n"


def _module_bindings(tree: ast.Module) -> dict[str, str | None]:
    """Module-level names: the qualified name an import binds them to, None for other bindings."""
    bound: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                bound[name] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.setdefault(node.name, None)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    bound.setdefault(target.id, None)
    return bound


def _import_position(tree: ast.Module) -> int:
    """0-based line index where new imports go: after the leading docstring and imports."""
    body = tree.body
    position: int | None = None
    index = 0
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        position = body[0].end_lineno or body[0].lineno
        index = 1
    while index < len(body) and isinstance(body[index], ast.Import | ast.ImportFrom):
        position = body[index].end_lineno or body[index].lineno
        index += 1
    if position is not None:
        return position
    return body[0].lineno - 1 if body else 0


def _prepare(edit: _FileEdit, tree: ast.Module, plan: FixPlan, bindings: dict[str, str | None]) -> str | None:
    """Queue the edits of one plan; returns why it cannot be done, or None."""
    target = plan.finding.target
    assert target is not None  # noqa: S101 -- plans are only made for findings with a target
    anchor = target.anchor_line - 1
    if anchor >= len(edit.lines):
        return "the file changed since it was checked"
    line = edit.lines[anchor]
    indent = line[: len(line) - len(line.lstrip())]
    if not line.lstrip().startswith(("def ", "async ", "class ")):
        return "the definition does not start its own line"
    if target.kind == "move":
        start, end = target.move_start - 1, target.move_end - 1
        first = edit.lines[start]
        if not first.lstrip().startswith("@") or any(i in edit.deletes for i in range(start, end + 1)):
            return "the decorator shares its lines with other code"
        try:
            ast.parse("".join(edit.lines[start : end + 1]).strip() + "\ndef _f(): pass\n")
        except SyntaxError:
            return "the decorator shares its lines with other code"
        moved = [edit.lines[i] for i in range(start, end + 1)]
        moved = [m if m.endswith(("\n", "\r")) else m + edit.newline for m in moved]
        edit.deletes.update(range(start, end + 1))
        edit.inserts.setdefault(anchor, []).extend(moved)
        return None
    assert plan.decorator is not None  # noqa: S101 -- only "move" plans have no decorator
    needed: list[str] = []
    for import_line in plan.imports:
        for name, qualified in _import_bindings(import_line).items():
            current = bindings.get(name, "")
            if current == "":
                if import_line not in needed and import_line.strip() not in edit.imports:
                    needed.append(import_line)
            elif current != qualified:
                return f"the name {name!r} is already bound to something else in this file"
    for import_line in needed:
        edit.imports.append(import_line.strip())
        edit.import_at = _import_position(tree)
    edit.inserts.setdefault(anchor, []).append(indent + plan.decorator.strip() + edit.newline)
    return None


def _edit_file(path: str, plans: Sequence[FixPlan]) -> tuple[_FileEdit | None, list[tuple[FixPlan, str]]]:
    try:
        text = read_source(Path(path))
        tree = ast.parse(text)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, LookupError) as exc:
        return None, [(plan, f"the file cannot be read again: {exc}") for plan in plans]
    lines = text.splitlines(keepends=True)
    edit = _FileEdit(text=text, lines=lines, newline=_newline(text))
    bindings = _module_bindings(tree)
    skipped: list[tuple[FixPlan, str]] = []
    for plan in plans:
        reason = _prepare(edit, tree, plan, bindings)
        if reason is None:
            edit.done.append(plan)
        else:
            skipped.append((plan, reason))
    return edit, skipped


def _by_file(plans: Iterable[FixPlan]) -> dict[str, list[FixPlan]]:
    grouped: dict[str, list[FixPlan]] = {}
    for plan in plans:
        if plan.finding.target is not None:
            grouped.setdefault(plan.finding.target.file, []).append(plan)
    return grouped


def _diff(display: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{display}",
        tofile=f"b/{display}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def render_diff(plans: Sequence[FixPlan]) -> str:
    """A unified diff of every planned fix; the ones ``--fix`` would not apply come marked for review.

    For each file, the applicable fixes come first; the review-only ones follow as a second diff
    of the same file (relative to the first), preceded by ``# review:`` lines saying why.
    """
    out: list[str] = []
    for path, file_plans in sorted(_by_file(plans).items(), key=lambda item: item[1][0].finding.path):
        display = file_plans[0].finding.path
        ready = [p for p in file_plans if p.applicable]
        review = [p for p in file_plans if not p.applicable and _editable(p)]
        unfixable = [p for p in file_plans if not p.applicable and not _editable(p)]
        edit, skipped = _edit_file(path, ready)
        if edit is None:
            out.extend(_review_line(plan, reason) for plan, reason in skipped)
            continue
        after = edit.render()
        if edit.done:
            out.append(_diff(display, edit.text, after))
        out.extend(_review_line(plan, reason) for plan, reason in skipped)
        if review:
            second = _FileEdit(text=after, lines=after.splitlines(keepends=True), newline=edit.newline)
            tree = ast.parse(after)
            bindings = _module_bindings(tree)
            for plan in review:
                reason = _prepare(second, tree, _shifted(plan, edit), bindings)
                out.append(_review_line(plan, plan.note if reason is None else reason))
            if second.inserts or second.deletes or second.imports:
                out.append(_diff(display, after, second.render()))
        out.extend(_review_line(plan, plan.note) for plan in unfixable)
    return "".join(out)


def _editable(plan: FixPlan) -> bool:
    """Whether the plan says what to change (even if ``--fix`` may not do it)."""
    target = plan.finding.target
    return plan.decorator is not None or (target is not None and target.kind == "move")


def _shifted(plan: FixPlan, edit: _FileEdit) -> FixPlan:
    """The same plan with its lines moved to where they are after ``edit``."""
    target = plan.finding.target
    assert target is not None  # noqa: S101 -- plans are only made for findings with a target

    def moved(line: int) -> int:
        return line + edit.added_before(line - 1) if line else 0

    new_target = replace(
        target,
        anchor_line=moved(target.anchor_line),
        move_start=moved(target.move_start),
        move_end=moved(target.move_end),
    )
    return replace(plan, finding=replace(plan.finding, target=new_target))


def _review_line(plan: FixPlan, reason: str) -> str:
    finding = plan.finding
    return (
        f"# review: {finding.path}:{finding.line}: {finding.code} `{finding.handler}`: {reason}; "
        f"--fix leaves it\n"
    )


@dataclass
class FixResult:
    """What ``--fix`` changed."""

    fixed: list[FixPlan] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[FixPlan, str]] = field(default_factory=list)


def apply_fixes(plans: Sequence[FixPlan]) -> FixResult:
    """Apply the applicable plans to the files, leaving every other line as it was."""
    result = FixResult()
    for path, file_plans in sorted(_by_file(p for p in plans if p.applicable).items()):
        edit, skipped = _edit_file(path, file_plans)
        result.skipped.extend(skipped)
        if edit is None or not edit.done:
            continue
        after = edit.render()
        try:
            ast.parse(after)
        except SyntaxError as exc:  # never write a file that no longer parses
            result.skipped.extend((plan, f"the fixed file would not parse: {exc.msg}") for plan in edit.done)
            continue
        data = Path(path).read_bytes()
        encoding = "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else _encoding_of(data)
        Path(path).write_bytes(after.encode(encoding))
        result.fixed.extend(edit.done)
        result.files.append(file_plans[0].finding.path)
    return result


def _encoding_of(data: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return encoding
