"""Settings of ``idempotent check``: ``[tool.idempotent.check]`` in ``pyproject.toml``.

.. code-block:: toml

    [tool.idempotent.check]
    exclude = ["tests/", "scripts/*.py"]       # glob patterns, relative to this file
    methods = ["POST", "PUT", "PATCH", "DELETE"] # HTTP methods to check (DELETE is off by default)
    decorators = ["myapp.http.with_key"]         # more decorators that count as handling
    middleware = ["myapp.middleware.KeyGuard"]   # more middleware that counts as handling
    extend-select = ["IDEM002"]                  # also check Celery tasks
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from idempotent.check._frameworks import STATE_CHANGING

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same reader, released separately for Pythons without tomllib
    import tomli as tomllib
from idempotent.check.rules import DEFAULT_SELECT, RULES

__all__ = ["DEFAULT_METHODS", "CheckConfig", "ConfigError", "find_pyproject", "load_config"]

DEFAULT_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SECTION = ("tool", "idempotent", "check")
_LIST_KEYS = ("exclude", "methods", "decorators", "middleware", "select", "extend-select", "ignore")


class ConfigError(ValueError):
    """The settings cannot be used; the message names the setting and what is wrong."""


@dataclass(frozen=True)
class CheckConfig:
    """Everything that changes what the checker reports."""

    methods: frozenset[str] = DEFAULT_METHODS
    exclude: tuple[str, ...] = ()
    decorators: tuple[str, ...] = ()
    middleware: tuple[str, ...] = ()
    select: frozenset[str] = DEFAULT_SELECT
    root: Path | None = None  # ``exclude`` patterns are relative to this directory
    source: Path | None = field(default=None, compare=False)

    def with_options(
        self,
        *,
        methods: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        select: Iterable[str] | None = None,
        extend_select: Iterable[str] = (),
        ignore: Iterable[str] = (),
    ) -> CheckConfig:
        """A copy with command-line options applied over the file's settings."""
        chosen = set(self.select if select is None else _codes(select, "--select"))
        chosen |= _codes(extend_select, "--extend-select")
        chosen -= _codes(ignore, "--ignore")
        return replace(
            self,
            methods=self.methods if methods is None else _methods(methods, "--methods"),
            exclude=(*self.exclude, *exclude),
            select=frozenset(chosen),
        )


def _codes(values: Iterable[str], where: str) -> set[str]:
    codes = {v.strip().upper() for v in values if v.strip()}
    unknown = sorted(codes - set(RULES))
    if unknown:
        raise ConfigError(f"{where}: unknown rule code {', '.join(unknown)} (known: {', '.join(RULES)})")
    return codes


def _methods(values: Iterable[str], where: str) -> frozenset[str]:
    methods = {v.strip().upper() for v in values if v.strip()}
    unknown = sorted(methods - set(STATE_CHANGING))
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} cannot be checked; choose among {', '.join(STATE_CHANGING)}"
        )
    if not methods:
        raise ConfigError(f"{where}: at least one HTTP method is needed")
    return frozenset(methods)


def _read_section(path: Path) -> dict[str, object] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        document: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    table: object = document
    for part in _SECTION:
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.idempotent.check] must be a table")
    return {str(k): v for k, v in table.items()}


def load_config(path: Path) -> CheckConfig:
    """Read ``[tool.idempotent.check]`` from ``path``; defaults when the table is absent."""
    path = path.resolve()
    table = _read_section(path)
    base = CheckConfig(root=path.parent, source=path)
    if table is None:
        return base
    values: dict[str, list[str]] = {}
    for key, value in table.items():
        if key not in _LIST_KEYS:
            raise ConfigError(
                f"{path}: [tool.idempotent.check] has an unknown setting {key!r}; "
                f"known settings: {', '.join(_LIST_KEYS)}"
            )
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: [tool.idempotent.check] {key} must be a list of strings")
        values[key] = [str(v) for v in value]
    where = f"{path}: [tool.idempotent.check]"
    select = set(DEFAULT_SELECT if "select" not in values else _codes(values["select"], f"{where} select"))
    select |= _codes(values.get("extend-select", []), f"{where} extend-select")
    select -= _codes(values.get("ignore", []), f"{where} ignore")
    return replace(
        base,
        methods=_methods(values["methods"], f"{where} methods") if "methods" in values else DEFAULT_METHODS,
        exclude=tuple(values.get("exclude", [])),
        decorators=tuple(values.get("decorators", [])),
        middleware=tuple(values.get("middleware", [])),
        select=frozenset(select),
    )


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` that has ``[tool.idempotent.check]``."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for candidate in (directory, *directory.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if "idempotent.check" in text:
                return path
    return None
