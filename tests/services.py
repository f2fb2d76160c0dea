"""Where the test databases are, and what to do when one is unreachable.

Each server's URL comes from an environment variable with the loopback default. A test that
needs an unreachable server is skipped with the reason, unless ``IDEMPOTENT_REQUIRE_SERVICES=1``
(set by ``.ci/run``): then it fails, so CI never silently skips a database.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest


@dataclass(frozen=True)
class Backend:
    """One database under test: its sync URL and the matching async URL."""

    name: str
    sync_url: str
    async_url: str

    @property
    def is_server(self) -> bool:
        return self.name != "sqlite"


POSTGRES_URL = os.environ.get("IDEMPOTENT_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("IDEMPOTENT_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("IDEMPOTENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _async_variant(url: str) -> str:
    if url.startswith("postgresql+psycopg://"):
        return "postgresql+psycopg_async://" + url.split("://", 1)[1]
    if url.startswith(("mysql+pymysql://", "mariadb+pymysql://")):
        return url.split("+", 1)[0] + "+aiomysql://" + url.split("://", 1)[1]
    return url


def require_services() -> bool:
    return os.environ.get("IDEMPOTENT_REQUIRE_SERVICES") == "1"


@functools.cache
def reachable(url: str) -> str | None:
    """None when the server behind ``url`` accepts TCP connections, else the reason."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (5432 if url.startswith("postgresql") else 3306)
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc})"


def require(url: str, what: str) -> None:
    """Skip (or, under IDEMPOTENT_REQUIRE_SERVICES=1, fail) when the server is unreachable."""
    reason = reachable(url)
    if reason is None:
        return
    message = f"{what} server not available: {reason}; set its URL in the environment to run these tests"
    if require_services():
        pytest.fail(message + " (IDEMPOTENT_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(message)


def server_backends() -> list[Backend]:
    return [
        Backend("postgresql", POSTGRES_URL, _async_variant(POSTGRES_URL)),
        Backend("mariadb", MARIADB_URL, _async_variant(MARIADB_URL)),
    ]


DATABASES = ("sqlite", "postgresql", "mariadb")
COMBINATIONS = [(name, driver) for name in DATABASES for driver in ("sync", "async")]


def database_urls(name: str, tmp_path: Path) -> tuple[str, str]:
    """The sync and async URL of ``name`` (SQLite: a file in ``tmp_path``); skips an absent server."""
    if name == "sqlite":
        path = tmp_path / "test.db"
        return f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"
    url = POSTGRES_URL if name == "postgresql" else MARIADB_URL
    require(url, "PostgreSQL" if name == "postgresql" else "MariaDB")
    return url, _async_variant(url)
