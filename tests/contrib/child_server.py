"""A web server in a child process on a free loopback port, for tests that need a real server
they can kill: started with a command line, ready once its log shows a given line."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChildServer:
    """Run ``command`` (with ``{port}`` replaced by a free port) and return once a line of its
    standard error contains ``ready``; its log is kept in ``lines``."""

    def __init__(self, command: list[str], ready: str, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [part.replace("{port}", str(self.port)) for part in command]
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        started = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                if ready in line:
                    started.set()
            started.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        started.wait(60)
        if self.process.poll() is not None or not any(ready in line for line in self.lines):
            self.stop()
            pytest.fail(f"{' '.join(argv)} did not start:\n" + "".join(self.lines))

    def stop(self, signal_number: int = signal.SIGTERM) -> None:
        """Send ``signal_number`` (unless the process has ended) and wait for it to end."""
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        self.process.wait(30)
        self.reader.join(30)
