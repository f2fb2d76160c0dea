"""The checker stays apart: ``import idempotent`` does not load it, and it needs only the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.check.conftest import REPO

PACKAGE = REPO / "idempotent" / "check"


def test_import_idempotent_does_not_import_the_checker() -> None:
    """Importing the library leaves ``idempotent.check`` unloaded."""
    code = "import sys, idempotent; print(any(m.startswith('idempotent.check') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_checker_imports_only_the_standard_library() -> None:
    """Every import in the checker's modules is from the standard library or the checker itself
    (or tomli, the standard library's TOML reader released for Python 3.10, a dependency there)."""
    stdlib = {*sys.stdlib_module_names, "tomli"}
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders.extend(
                f"{path.name}: {name}"
                for name in names
                if name.split(".")[0] not in stdlib and not name.startswith("idempotent.check")
            )
    assert offenders == []


def test_checker_never_imports_checked_code(tmp_path: Path) -> None:
    """Checking a file that would fail on import works: the source is parsed, never run."""
    (tmp_path / "boom.py").write_text(
        "raise SystemExit('imported!')\nfrom flask import Flask\napp = Flask(__name__)\n\n\n"
        "@app.post('/x')\ndef x(): ...\n",
        encoding="utf-8",
    )
    from idempotent.check import check
    from idempotent.check.config import CheckConfig

    report = check(["."], CheckConfig(root=tmp_path), cwd=tmp_path, extra_handling=())
    assert [(f.path, f.line) for f in report.findings] == [("boom.py", 7)]
