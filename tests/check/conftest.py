"""Fixtures shared by the checker's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from idempotent.check.fixes import FixTemplate, register_fix_template, unregister_fix_template

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"

FAKE_FASTAPI = FixTemplate(
    module="tests.check.fake_integration",
    imports=("from tests.check.fake_integration import idempotent_endpoint",),
    decorator="@idempotent_endpoint()",
)
FAKE_DJANGO = FixTemplate(
    module="tests.check.fake_integration",
    imports=(
        "from django.utils.decorators import method_decorator",
        "from tests.check.fake_integration import idempotent_view",
    ),
    decorator="@idempotent_view()",
    method_decorator="@method_decorator(idempotent_view())",
    class_decorator='@method_decorator(idempotent_view(), name="dispatch")',
)


@pytest.fixture
def fake_integration() -> Iterator[None]:
    """Register the test integration's templates for FastAPI and Django, then forget them."""
    register_fix_template("fastapi", FAKE_FASTAPI)
    register_fix_template("django", FAKE_DJANGO)
    try:
        yield
    finally:
        unregister_fix_template("fastapi")
        unregister_fix_template("django")


def run_cli(*args: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m idempotent check ARGS`` (or, with ``prelude``, code before ``main``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("GITHUB_ACTIONS", None)
    if prelude:
        script = f"{prelude}\nimport sys\nfrom idempotent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        command = [sys.executable, "-c", script, "check", *args]
    else:
        command = [sys.executable, "-m", "idempotent", "check", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False)
