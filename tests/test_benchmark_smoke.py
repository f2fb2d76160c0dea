"""The benchmark runner still runs: a quick SQLite-only pass of ``benchmarks/run.py``; and its
``--pin`` option gives every CPU back, and its ``--delay-us`` proxy passes a closed connection on.

Speed is never asserted here (that is what the benchmark report is for); this only proves the
script runs end to end, measures both scenarios it can run on SQLite and writes its report.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux matter")
def test_pinning_moves_this_process_to_one_cpu_and_back() -> None:
    """``--pin CPU``: inside the block this process runs on that CPU only (when it may move the
    servers too); afterwards every thread has its CPUs back, and so do the local servers."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pinning import pinned, server_pids  # a script directory, not a package
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    before = os.sched_getaffinity(0)
    servers = {pid: os.sched_getaffinity(pid) for pids in server_pids().values() for pid in pids}
    cpu = min(before)
    with pinned(None) as placement:
        assert placement == "not pinned"
        assert os.sched_getaffinity(0) == before
    with pinned(cpu) as placement:
        if placement.startswith("pinned"):
            assert os.sched_getaffinity(0) == {cpu}
        else:  # no right to move the servers: nothing was moved
            assert placement.startswith("not pinned"), placement
            assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(0) == before
    for pid, cpus in servers.items():
        try:
            assert os.sched_getaffinity(pid) == cpus, pid
        except ProcessLookupError:  # a server process that ended meanwhile
            continue


def test_delay_proxy_passes_a_closed_connection_on() -> None:
    """``--delay-us`` routes connections through ``bench_pipeline.DelayProxy``: when the server
    ends a connection, the client must see the end (asyncpg's close waits for it), even while the
    proxy is still reading from the client."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_pipeline import DelayProxy  # a script directory, not a package
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    server = socket.create_server(("127.0.0.1", 0))
    proxy = DelayProxy("127.0.0.1", server.getsockname()[1], 0.0001)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        accepted, _ = server.accept()
        accepted.sendall(b"bye")
        accepted.close()  # the server ends the connection; the client has not sent anything
        received = b""
        while chunk := client.recv(1024):  # the timeout turns a lost end into a failure
            received += chunk
    server.close()
    assert received == b"bye"
