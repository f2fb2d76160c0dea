"""Optional pieces stay optional: the Redis store names its extra, the test helpers need no pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)


def test_redis_store_without_redis_names_the_extra() -> None:
    """Without the redis package, importing idempotent.redis says which extra to install."""
    done = _run(
        "import sys; sys.modules['redis'] = None\n"
        "import idempotent\n"
        "try:\n    import idempotent.redis\nexcept ImportError as exc:\n    print(exc)\n"
    )
    assert "pip install 'idempotent[redis]'" in done.stdout, done.stderr


def test_memory_store_needs_no_pytest() -> None:
    """idempotent.testing.MemoryStore imports without pytest; StoreConformance loads it on demand."""
    done = _run(
        "import sys; sys.modules['pytest'] = None\n"
        "from idempotent.testing import MemoryStore\n"
        "MemoryStore()\n"
        "print('pytest' in sys.modules and sys.modules['pytest'] is not None)\n"
    )
    assert done.stdout.strip() == "False", done.stderr
    done = _run("from idempotent.testing import StoreConformance; print(StoreConformance.claimers)")
    assert done.stdout.strip() == "50", done.stderr
