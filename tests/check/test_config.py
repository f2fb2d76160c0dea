"""Settings: ``[tool.idempotent.check]``, the 3.10 TOML fallback, exclusion patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from idempotent.check.config import CheckConfig, ConfigError, find_pyproject, load_config
from idempotent.check.runner import _excluded, discover

PYPROJECT = """\
[project]
name = "shop"
description = '''
[tool.idempotent.check]
exclude = ["this is inside a string"]
'''
authors = [{ name = "A", email = "a@example.com" }]

[[tool.mypy.overrides]]
module = ["x.*"]

[tool.idempotent.check]
# comment lines and trailing commas are fine
exclude = [
    "tests/",   # the test suite
    'scripts/*.py',
]
methods = ["post", "PUT", "PATCH", "DELETE"]
decorators = ["company.http.with_key", "keyed"]
middleware = ["KeyGuard"]
extend-select = ["IDEM002"]
ignore = ["IDEM003"]

[tool.other]
value = 1
"""


def test_load_config(tmp_path: Path) -> None:
    """Every setting is read, methods are case-insensitive, rules are selected and ignored."""
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT, encoding="utf-8")
    config = load_config(path)
    assert config.exclude == ("tests/", "scripts/*.py")
    assert config.methods == {"POST", "PUT", "PATCH", "DELETE"}
    assert config.decorators == ("company.http.with_key", "keyed")
    assert config.middleware == ("KeyGuard",)
    assert config.select == {"IDEM001", "IDEM002"}
    assert config.root == tmp_path.resolve()


def test_missing_table_gives_defaults(tmp_path: Path) -> None:
    """A pyproject.toml without the table means the defaults."""
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'x'\n", encoding="utf-8")
    config = load_config(path)
    assert config.methods == {"POST", "PUT", "PATCH"}
    assert config.select == {"IDEM001", "IDEM003"}
    assert config.exclude == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("exclude = 'tests/'", "exclude must be a list of strings"),
        ("methods = ['GET']", "GET cannot be checked"),
        ("methods = []", "at least one HTTP method"),
        ("select = ['IDEM404']", "unknown rule code IDEM404"),
        ("excludes = []", "unknown setting 'excludes'"),
    ],
)
def test_invalid_settings(tmp_path: Path, body: str, message: str) -> None:
    """Each invalid setting is a ConfigError naming the setting."""
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[tool.idempotent.check]\n{body}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_command_line_options_override() -> None:
    """Options from the command line are applied over the file's settings."""
    config = CheckConfig(exclude=("a",)).with_options(
        methods=["delete"], exclude=["b"], select=["IDEM001"], extend_select=["IDEM002"], ignore=["IDEM001"]
    )
    assert config.methods == {"DELETE"}
    assert config.exclude == ("a", "b")
    assert config.select == {"IDEM002"}


def test_any_valid_toml_is_read(tmp_path: Path) -> None:
    """Settings written with dotted keys, literal strings, multi-line arrays and inline tables are
    read the way other tools read pyproject.toml."""
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[tool]\n"
        "black = { line-length = 100 }\n"
        "[tool.idempotent]\n"
        "check.methods = ['POST', \"delete\"]  # literal and basic strings\n"
        "check.exclude = [\n"
        "    'tests/',  # a comment inside the array\n"
        '    """scripts/*.py""",\n'
        "]\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.methods == {"POST", "DELETE"}
    assert config.exclude == ("tests/", "scripts/*.py")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A pyproject.toml that is not valid TOML is reported with its path, not a traceback."""
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.idempotent.check]\nmethods = [POST]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_find_pyproject(tmp_path: Path) -> None:
    """The nearest pyproject.toml that mentions the table is found from a nested directory."""
    (tmp_path / "pyproject.toml").write_text("[tool.idempotent.check]\n", encoding="utf-8")
    nested = tmp_path / "pkg" / "sub"
    nested.mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = 'inner'\n", encoding="utf-8")
    assert find_pyproject(nested) == tmp_path / "pyproject.toml"


@pytest.mark.parametrize(
    ("relative", "patterns", "excluded"),
    [
        ("tests/test_x.py", ["tests/"], True),
        ("src/tests/test_x.py", ["tests/"], True),
        ("src/tests/test_x.py", ["./tests/"], True),
        ("src/app.py", ["tests"], False),
        ("scripts/run.py", ["scripts/*.py"], True),
        ("scripts/deep/run.py", ["scripts/*.py"], False),
        ("app/migrations/0001.py", ["migrations"], True),
        ("app/migrations/0001.py", ["app/migrations"], True),
        ("app/views.py", ["*_pb2.py"], False),
        ("app/orders_pb2.py", ["*_pb2.py"], True),
    ],
)
def test_exclude_patterns(tmp_path: Path, relative: str, patterns: list[str], excluded: bool) -> None:
    """Patterns without a slash match any path component; with one, a path prefix from the root."""
    assert _excluded(tmp_path / relative, patterns, tmp_path) is excluded


def test_discover_skips_tool_directories(tmp_path: Path) -> None:
    """Virtual environments, caches and hidden directories are never walked into."""
    for name in ("app/a.py", ".venv/lib/x.py", "node_modules/y.py", ".hidden/z.py", "app/__pycache__/c.py"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
    (tmp_path / "app" / "notes.txt").write_text("", encoding="utf-8")
    found = discover(["."], CheckConfig(root=tmp_path), tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["app/a.py"]
