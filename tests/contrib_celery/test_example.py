"""``examples/celery_app.py`` runs as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_sends_one_order_twice(tmp_path: Path) -> None:
    """``python -m examples.celery_app`` places order-1001 twice: one row, the same result twice."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "examples.celery_app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].removeprefix("first:  ") == lines[1].removeprefix("second: ")
    assert lines[2] == "order rows for order-1001: 1"
