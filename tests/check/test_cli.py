"""``python -m idempotent check`` end to end: output formats, exit codes, skipped files, settings."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.check.conftest import CORPUS, run_cli

FLASK_LINES = [
    "factory/standalone.py:7:1: IDEM001 Flask handler `loose_post` (POST) has no idempotency handling; "
    "no write seen in its body",
    "single.py:16:1: IDEM001 Flask handler `create_order` (POST) has no idempotency handling and writes: "
    "db.session.add(), db.session.commit(); a retried request repeats the write",
    "single.py:28:1: IDEM001 Flask handler `charge` (POST) has no idempotency handling and writes: "
    "requests.post(); a retried request repeats the write",
    "single.py:40:1: IDEM001 Flask handler `put_note` (PUT) has no idempotency handling; "
    "no write seen in its body",
    "single.py:54:5: IDEM001 Flask handler `OrderAPI.post` (POST) has no idempotency handling and writes: "
    "Order.query.session.add(); a retried request repeats the write",
    "single.py:66:5: IDEM001 Flask handler `Export.dispatch_request` (POST) has no idempotency handling; "
    "no write seen in its body",
    "single.py:70:1: IDEM001 Flask handler `bulk_import` (POST) has no idempotency handling; "
    "no write seen in its body",
]


def _no_traceback(result: object) -> None:
    stderr = getattr(result, "stderr", "")
    assert "Traceback" not in stderr


def test_text_output_and_exit_1() -> None:
    """The default format prints ``path:line:col: CODE message`` per finding and exits 1."""
    result = run_cli(cwd=CORPUS / "flask_app")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == FLASK_LINES
    assert result.stderr == "Found 7 findings in 5 files (3 in handlers whose body shows a write).\n"


def test_clean_tree_exits_0() -> None:
    """A tree whose handlers are all covered exits 0 and says so on standard error."""
    result = run_cli(".", cwd=CORPUS / "django_covered")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == "No findings in 2 files.\n"


def test_quiet_and_output_file(tmp_path: Path) -> None:
    """``-q`` drops the summary and ``-o`` writes the report to a file instead of standard output."""
    out = tmp_path / "report.txt"
    result = run_cli("-q", "-o", str(out), cwd=CORPUS / "flask_app")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ""
    assert out.read_text(encoding="utf-8").splitlines() == FLASK_LINES


def test_explicit_files_only() -> None:
    """Paths given on the command line are checked alone (the app that covers them is not read)."""
    result = run_cli("shop/routers/orders.py", cwd=CORPUS / "fastapi_project")
    assert result.returncode == 1
    assert [line.split(": ")[0] for line in result.stdout.splitlines()] == [
        "shop/routers/orders.py:7:1",
        "shop/routers/orders.py:13:1",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such/dir"], "no/such/dir: no such file or directory"),
        (["--select", "IDEM999"], "--select: unknown rule code IDEM999"),
        (["--methods", "GET"], "--methods: GET cannot be checked"),
        (["--diff", "--format", "json"], "--diff prints a unified diff"),
        (["--config", "missing.toml"], "--config missing.toml: no such file"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    """Usage errors exit 2 with one line naming the problem, never a traceback."""
    result = run_cli(*args, cwd=CORPUS / "flask_app")
    assert result.returncode == 2
    assert message in result.stderr
    _no_traceback(result)


def test_argparse_errors_exit_2() -> None:
    """An unknown format is rejected by the argument parser with exit status 2."""
    result = run_cli("--format", "xml", cwd=CORPUS / "flask_app")
    assert result.returncode == 2
    assert "invalid choice: 'xml'" in result.stderr
    _no_traceback(result)


def _tree_with_bad_files(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "good.py").write_text(
        'from fastapi import FastAPI\napp = FastAPI()\n\n\n@app.post("/x")\ndef x(): ...\n', encoding="utf-8"
    )
    (root / "broken.py").write_text("def broken(:\n    pass\n", encoding="utf-8")
    (root / "binary.py").write_bytes(b"x = '\xff\xfe'\n")
    (root / "nul.py").write_bytes(b"x = 1\x00\n")
    (root / "deep.py").write_text("x = " + "(" * 300 + "1" + ")" * 300 + "\n", encoding="utf-8")
    return root


def test_unparsable_files_are_warnings(tmp_path: Path) -> None:
    """Files that cannot be read or parsed are skipped with a warning; the rest is still checked."""
    root = _tree_with_bad_files(tmp_path)
    result = run_cli(cwd=root)
    assert result.returncode == 1
    assert result.stdout == (
        "good.py:6:1: IDEM001 FastAPI handler `x` (POST) has no idempotency handling; "
        "no write seen in its body\n"
    )
    warned = sorted(line.split(":")[0] for line in result.stderr.splitlines() if ": warning: " in line)
    assert warned == ["binary.py", "broken.py", "deep.py", "nul.py"]
    assert "broken.py: warning: cannot be parsed by Python" in result.stderr
    assert "binary.py: warning: cannot be read" in result.stderr
    _no_traceback(result)


def test_strict_turns_warnings_into_exit_2(tmp_path: Path) -> None:
    """With ``--strict`` a skipped file makes the run exit 2, findings or not."""
    root = _tree_with_bad_files(tmp_path)
    result = run_cli("--strict", cwd=root)
    assert result.returncode == 2
    assert "good.py:6:1: IDEM001" in result.stdout
    (root / "good.py").unlink()
    assert run_cli("--strict", cwd=root).returncode == 2
    assert run_cli(cwd=root).returncode == 0


def test_newer_syntax_than_the_running_python(tmp_path: Path) -> None:
    """Syntax from a newer Python is a warning naming the running version (or parses when supported)."""
    (tmp_path / "new.py").write_text(
        "type Pair[T] = tuple[T, T]\n\n\ndef first[T](pair: Pair[T]) -> T:\n    return pair[0]\n",
        encoding="utf-8",
    )
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0
    if sys.version_info < (3, 12):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert f"new.py: warning: cannot be parsed by Python {version}" in result.stderr
    else:
        assert "warning" not in result.stderr
    _no_traceback(result)


def test_json_format() -> None:
    """``--format json`` gives every field of every finding, with rank and fix availability."""
    result = run_cli("--format", "json", cwd=CORPUS / "fastapi_project")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["version"] == 1
    assert document["files_checked"] == 10
    assert document["warnings"] == []
    first = document["findings"][0]
    assert first == {
        "path": "shop/legacy.py",
        "line": 12,
        "column": 1,
        "code": "IDEM001",
        "rule": "missing-idempotency-key",
        "category": "correctness",
        "severity": "error",
        "rank": "high",
        "message": "FastAPI handler `legacy_order` (POST) has no idempotency handling and writes: "
        "db.add(), db.commit(); a retried request repeats the write",
        "framework": "fastapi",
        "handler": "legacy_order",
        "methods": ["POST"],
        "writes": ["db.add()", "db.commit()"],
        "fix": {"applicable": True, "note": "", "decorator": "@idempotent_route()"},
    }
    assert [(f["path"], f["line"], f["rank"]) for f in document["findings"]] == [
        ("shop/legacy.py", 12, "high"),
        ("shop/routers/internal.py", 8, "normal"),
        ("shop/routers/internal.py", 12, "normal"),
    ]


def test_github_format() -> None:
    """``--format github`` prints one workflow command per finding, errors for handlers that write."""
    result = run_cli("--format", "github", cwd=CORPUS / "fastapi_project")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "::error file=shop/legacy.py,line=12,col=1,title=IDEM001 missing-idempotency-key::FastAPI handler "
        "`legacy_order` (POST) has no idempotency handling and writes: db.add(), db.commit(); "
        "a retried request repeats the write",
        "::warning file=shop/routers/internal.py,line=8,col=1,title=IDEM001 missing-idempotency-key::"
        "FastAPI handler `start_job` (POST) has no idempotency handling; no write seen in its body",
        "::warning file=shop/routers/internal.py,line=12,col=1,title=IDEM001 missing-idempotency-key::"
        "FastAPI handler `orphaned` (POST) has no idempotency handling; no write seen in its body",
    ]


def test_github_format_reports_skipped_files(tmp_path: Path) -> None:
    """Skipped files become ``::warning`` annotations in the GitHub format."""
    root = _tree_with_bad_files(tmp_path)
    result = run_cli("--format", "github", cwd=root)
    assert "::warning file=broken.py::cannot be parsed by Python" in result.stdout


def test_pyproject_settings(tmp_path: Path) -> None:
    """``[tool.idempotent.check]`` in the nearest pyproject.toml applies: exclude, methods, rules."""
    root = tmp_path / "configured"
    shutil.copytree(CORPUS / "configured", root)
    result = run_cli(cwd=root / "service")
    assert result.returncode == 1, result.stderr
    assert [line.split(": ")[0] + " " + line.split(": ")[1][:7] for line in result.stdout.splitlines()] == [
        "api.py:12:1 IDEM001",
        "api.py:30:1 IDEM002",
    ]
    result = run_cli(cwd=root)
    assert "generated" not in result.stdout
    assert run_cli("generated/client.py", cwd=root).returncode == 0
    result = run_cli("--isolated", "generated/client.py", cwd=root)
    assert result.returncode == 1
    result = run_cli("--ignore", "IDEM002", "--methods", "POST", cwd=root)
    assert result.returncode == 0, result.stdout


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    """A pyproject.toml with an unknown setting or invalid TOML is a usage error."""
    (tmp_path / "pyproject.toml").write_text("[tool.idempotent.check]\nmethod = ['POST']\n", encoding="utf-8")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown setting 'method'" in result.stderr
    (tmp_path / "pyproject.toml").write_text("[tool.idempotent.check\n", encoding="utf-8")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    _no_traceback(result)


def test_check_is_listed_in_the_main_help() -> None:
    """The sub-command is registered on the ``idempotent`` command line."""
    result = run_cli("--help", cwd=CORPUS)
    assert result.returncode == 0
    assert "IDEM001 missing-idempotency-key" in result.stdout
    assert "IDEM002 task-without-idempotency (opt-in)" in result.stdout


def test_pre_commit_hook_definition() -> None:
    """The repository's pre-commit hook runs ``idempotent check`` over the whole project."""
    text = (CORPUS.parents[2] / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "- id: idempotent-check\n" in text
    assert "  entry: idempotent check\n" in text
    assert "  language: python\n" in text
    assert "  pass_filenames: false\n" in text
