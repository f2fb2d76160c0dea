"""Find the files to check, read and parse each one, and run both passes over them."""

from __future__ import annotations

import ast
import fnmatch
import gc
import io
import os
import sys
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from idempotent.check.config import CheckConfig
from idempotent.check.facts import ModuleFacts, collect
from idempotent.check.project import Project, Verdict
from idempotent.check.rules import FileWarning, Finding

__all__ = ["DEFAULT_EXCLUDED_DIRS", "Report", "UsageError", "check", "discover", "read_source"]

#: Directories never entered when walking a directory (files named explicitly are still read).
DEFAULT_EXCLUDED_DIRS = frozenset(
    {
        ".bzr",
        ".direnv",
        ".eggs",
        ".git",
        ".hg",
        ".mypy_cache",
        ".nox",
        ".pytest_cache",
        ".ruff_cache",
        ".svn",
        ".tox",
        ".venv",
        "__pycache__",
        "__pypackages__",
        "_build",
        "build",
        "dist",
        "node_modules",
        "site-packages",
        "venv",
    }
)


class UsageError(ValueError):
    """The command was asked something it cannot do (a missing path, say)."""


@dataclass
class Report:
    """The outcome of one run."""

    findings: list[Finding] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    files: int = 0
    root: Path = field(default_factory=Path.cwd)


def _display(path: Path, cwd: Path) -> str:
    try:
        return path.relative_to(cwd).as_posix()
    except ValueError:
        return path.as_posix()


def _excluded(path: Path, patterns: Sequence[str], root: Path) -> bool:
    if not patterns:
        return False
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.as_posix()
    parts = PurePosixPath(relative).parts
    for raw in patterns:
        pattern = raw.strip().rstrip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        if not pattern:
            continue
        if "/" not in pattern:
            if any(fnmatch.fnmatchcase(part, pattern) for part in parts):
                return True
            continue
        if _prefix_match(tuple(pattern.split("/")), parts):
            return True
    return False


def _prefix_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether the path components start with the pattern's (``*`` within one, ``**`` across)."""
    if not pattern:
        return True
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_prefix_match(rest, parts[index:]) for index in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _prefix_match(rest, parts[1:])


def discover(paths: Sequence[str], config: CheckConfig, cwd: Path) -> list[Path]:
    """The Python files under ``paths``, sorted, without excluded ones; UsageError if one is missing."""
    root = config.root or cwd
    found: dict[Path, None] = {}
    for raw in paths or ["."]:
        start = (cwd / raw).resolve() if not os.path.isabs(raw) else Path(raw).resolve()
        if not start.exists():
            raise UsageError(f"{raw}: no such file or directory")
        if start.is_file():
            if not _excluded(start, config.exclude, root):
                found[start] = None
            continue
        for directory, dirnames, filenames in os.walk(start):
            here = Path(directory)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in DEFAULT_EXCLUDED_DIRS
                and not d.startswith(".")
                and not _excluded(here / d, config.exclude, root)
            )
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = here / name
                    if not _excluded(path, config.exclude, root):
                        found[path] = None
    return sorted(found)


def read_source(path: Path) -> str:
    """The text of a source file, decoded as Python does (coding cookie, BOM); OSError/ValueError."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


def _load(path: Path, display: str, middleware_names: frozenset[str]) -> ModuleFacts | FileWarning:
    try:
        text = read_source(path)
    except (OSError, UnicodeDecodeError, SyntaxError, LookupError) as exc:
        return FileWarning(display, f"cannot be read: {exc}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        tree = ast.parse(text, filename=display)
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        return FileWarning(
            display, f"cannot be parsed by Python {version}{where}: {exc.msg}; the file was skipped"
        )
    except (ValueError, RecursionError, MemoryError) as exc:
        return FileWarning(display, f"cannot be parsed by Python {version}: {exc}; the file was skipped")
    try:
        return collect(str(PurePosixPath(path.as_posix())), text, tree, middleware_names)
    except RecursionError:
        return FileWarning(display, "is nested too deeply to analyse; the file was skipped")
    except Exception as exc:  # one odd file must not stop the run: it is reported and skipped
        return FileWarning(
            display, f"could not be analysed ({type(exc).__name__}: {exc}); the file was skipped"
        )


def check(
    paths: Sequence[str],
    config: CheckConfig | None = None,
    *,
    cwd: Path | None = None,
    extra_handling: Iterable[str] | None = None,
) -> Report:
    """Check the Python files under ``paths`` and return findings, warnings and verdicts.

    ``extra_handling`` lists more decorator names that count as handling; by default the names
    of every registered fix template are used.
    """
    config = config or CheckConfig()
    cwd = (cwd or Path.cwd()).resolve()
    if extra_handling is None:
        from idempotent.check.fixes import handling_names  # noqa: PLC0415 -- avoids an import cycle

        extra_handling = handling_names()
    files = discover(paths, config, cwd)
    # The trees parsed here hold no reference cycles, so reference counting frees them; the cyclic
    # collector would only rescan the growing set of facts after every file (twice as slow).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _check(files, config, cwd, tuple(extra_handling))
    finally:
        if collecting:
            gc.enable()


def _check(files: list[Path], config: CheckConfig, cwd: Path, extra_handling: tuple[str, ...]) -> Report:
    report = Report(root=cwd)
    modules: list[ModuleFacts] = []
    displays: dict[str, str] = {}
    middleware_names = frozenset(n.rsplit(".", 1)[-1] for n in config.middleware)
    for path in files:
        display = _display(path, cwd)
        loaded = _load(path, display, middleware_names)
        if isinstance(loaded, FileWarning):
            report.warnings.append(loaded)
        else:
            modules.append(loaded)
            displays[loaded.path] = display
    report.files = len(modules)
    project = Project(modules, config, display=lambda p: displays.get(p, p), extra_handling=extra_handling)
    report.findings, report.verdicts = project.analyse()
    return report
