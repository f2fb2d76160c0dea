"""The checker's benchmark still runs (on a small tree) and counts what it generated."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.check.conftest import REPO


def test_benchmark_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A tiny run of benchmarks/bench_check.py checks every generated file and finds the open handlers."""
    spec = importlib.util.spec_from_file_location("bench_check", REPO / "benchmarks" / "bench_check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--files", "40", "--repeat", "1", "--keep", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["files_checked"] == result["files_written"] == 47
    assert result["findings"] == 50
