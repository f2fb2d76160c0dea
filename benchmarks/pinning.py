"""Put this process and the local database servers on one CPU while latency is measured.

On a virtual machine, waking a process that sleeps on another CPU can cost far more than the
work it is woken for. Every variant of a benchmark has its own connection, so its own server
process (PostgreSQL) or thread (MariaDB): where the scheduler happens to place that process
decides how much each of the variant's round trips costs. Measured on a 2-CPU VM, the same two
statements and COMMIT on four connections opened one after the other took 143, 169, 169 and
453 µs per call; with the client and the four server processes on one CPU, 89 µs on each. Such
placement luck would be charged to whichever variant drew it, run after run differently.

``pinned(cpu)`` moves every thread of this process and of the local server processes named in
:data:`SERVERS` onto ``cpu`` (server processes started meanwhile, such as a new connection's
PostgreSQL backend, inherit it) and gives each its previous CPUs back at the end (those started
meanwhile get the CPUs this process had). The round trips then cost what the client and the
server do for them, the same on every connection. It needs the right to change the servers'
affinity (root, or ``CAP_SYS_NICE``) and servers on this machine; otherwise it says why and
measures unpinned. Do not use it while processes run in parallel (the 8-process scenario of
``run.py``): they would share the one CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

#: Process names (``/proc/PID/comm``) of the servers the benchmarks talk to.
SERVERS = ("postgres", "mariadbd", "mysqld", "redis-server")


def _tasks(pid: int) -> list[int]:
    """Every thread of process ``pid`` (empty when it has gone)."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def server_pids() -> dict[str, list[int]]:
    """The local processes named in :data:`SERVERS`, by name."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name in SERVERS:
            found.setdefault(name, []).append(int(entry.name))
    return found


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[str]:
    """Pin this process and the local servers to ``cpu`` (None: do nothing); yields what was done."""
    if cpu is None:
        yield "not pinned"
        return
    if not hasattr(os, "sched_setaffinity"):
        yield "not pinned: this platform cannot set CPU affinity"
        return
    if cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"--pin {cpu}: this process may run on CPUs {sorted(os.sched_getaffinity(0))} only")
    servers = server_pids()
    saved: dict[int, set[int]] = {}
    problem = ""
    tasks = _tasks(os.getpid()) + [task for pids in servers.values() for pid in pids for task in _tasks(pid)]
    for task in tasks:
        try:
            previous = os.sched_getaffinity(task)
            os.sched_setaffinity(task, {cpu})
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except PermissionError as exc:
            why = exc.strerror
            problem = f"not pinned: cannot move the servers ({why}); run as root or with CAP_SYS_NICE"
            break
        saved[task] = previous
    if problem:
        _restore(saved)
        yield problem
        return
    names = ", ".join(f"{name} ({len(pids)})" for name, pids in sorted(servers.items())) or "none found"
    try:
        yield f"pinned to CPU {cpu}: this process and local servers {names}"
    finally:
        _restore(saved)


def _restore(saved: dict[int, set[int]]) -> None:
    """Give every pinned thread its CPUs back, and server threads started meanwhile (which
    inherited the one CPU) the CPUs this process had."""
    for task, cpus in saved.items():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(task, cpus)
    everywhere = saved.get(os.getpid())
    if everywhere is None:
        return
    for pids in server_pids().values():
        for task in (task for pid in pids for task in _tasks(pid) if task not in saved):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, everywhere)
