"""The benchmark runner still runs: a quick SQLite-only pass of ``benchmarks/run.py``.

Speed is never asserted here (that is what the benchmark report is for); this only proves the
script runs end to end, measures both scenarios it can run on SQLite and writes its report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_on_sqlite_writes_a_report(tmp_path: Path) -> None:
    """``run.py --quick --databases sqlite`` exits 0 and reports the SQLite business and trivial rows."""
    report = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--databases",
            "sqlite",
            "--scenarios",
            "business,trivial,http",
            "--iterations",
            "5",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(report.read_text())["rows"]
    measured = {(r["scenario"], r["system"]) for r in rows if r["database"] == "sqlite" and "p50_us" in r}
    assert ("business", "idempotent first") in measured
    assert ("business", "idempotent replay") in measured
    assert ("trivial", "idempotent (transaction) first") in measured
    sqlite_target = [t for t in json.loads(report.read_text())["targets"] if t["target"].startswith("SQLite")]
    assert sqlite_target[0]["ratio"] is not None
    assert "SQLite first call" in done.stdout
