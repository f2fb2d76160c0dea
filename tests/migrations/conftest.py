"""Fixtures for the migration tests: databases, unique table names, and an installed wheel.

Every test works on tables named ``idem_mig_<random>`` (and their ``_version`` tables) so
that other suites using the same PostgreSQL and MariaDB databases never collide with them;
each fixture drops what its test created.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from idempotent.migrate import version_table_name
from tests.services import MARIADB_URL, POSTGRES_URL, require

ROOT = Path(__file__).resolve().parents[2]

#: The databases every migration test runs on. MariaDB twice: a ``mysql+pymysql`` URL
#: reports dialect name ``mysql`` (the server is told by ``is_mariadb``), a
#: ``mariadb+pymysql`` URL reports ``mariadb``.
BACKENDS = ["sqlite", "postgresql", "mariadb", "mariadb-dialect"]


def unique(prefix: str = "idem_mig") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def backend_url(name: str, tmp_path: Path) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    if name == "postgresql":
        require(POSTGRES_URL, "PostgreSQL")
        return POSTGRES_URL
    require(MARIADB_URL, "MariaDB")
    if name == "mariadb-dialect":
        return "mariadb+" + MARIADB_URL.split("+", 1)[1]
    return MARIADB_URL


def drop_tables(url: str, names: list[str], schema: str | None = None) -> None:
    """Drop ``names`` in ``schema`` if they exist (test clean-up)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            for name in names:
                sa.Table(name, sa.MetaData(), schema=schema).drop(conn, checkfirst=True)
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend (SQLite: a fresh file)."""
    return backend_url(request.param, tmp_path)


@pytest.fixture
def table(url: str) -> Iterator[str]:
    """A keys-table name unique to the test; the table and its version table are dropped after."""
    name = unique()
    yield name
    drop_tables(url, [name, version_table_name(name)])


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    """An engine on ``url``, disposed after the test."""
    eng = sa.create_engine(url, poolclass=sa.NullPool)
    yield eng
    eng.dispose()


@dataclass(frozen=True)
class Installed:
    """The library installed from its wheel into a fresh virtual environment."""

    wheel: Path
    sdist: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "idempotent"

    def env(self) -> dict[str, str]:
        """Environment for processes of the fresh venv: nothing from the checkout on their path."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def run(self, *args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(a) for a in args],
            check=False,
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the sdist and, from it, the wheel; install the wheel into a fresh virtual environment.

    The build copies the working tree (``pyproject.toml``, ``README.md``, ``idempotent/``,
    ``migrations/``, ``__pycache__`` included, so the wheel's exclusions are exercised) and
    runs ``python -m build --no-isolation`` with the test environment's hatchling: no
    network, about half a second.

    The fresh venv is created with ``--without-pip``; the test environment's pip installs
    the wheel into it (``pip --python``) with ``--no-deps``. Its dependencies (SQLAlchemy,
    Alembic, drivers) come from a ``.pth`` file naming the test environment's
    site-packages: a plain path line, so the test environment's own ``.pth`` files are not
    run and nothing there can shadow the installed package, while the fresh
    site-packages, which comes first on ``sys.path``, holds the wheel's ``idempotent``.
    Downloading the dependencies from an index instead would cost time and network and
    prove nothing more about the wheel.
    """
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source)
    for directory in ("idempotent", "migrations"):
        shutil.copytree(ROOT / directory, source / directory)
    readme = ROOT / "README.md"
    if readme.is_file():
        shutil.copy2(readme, source)
    else:  # the README is written separately; the build only needs the file to exist
        (source / "README.md").write_text("# idempotent\n", encoding="utf-8")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    fresh_purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    dependencies = Path(sa.__file__).resolve().parents[1]  # the test environment's site-packages
    (Path(fresh_purelib) / "_test_dependencies.pth").write_text(f"{dependencies}\n", encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return Installed(wheel=wheel, sdist=sdist, venv=venv)
