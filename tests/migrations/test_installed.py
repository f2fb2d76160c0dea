"""The migrations as users get them: from the wheel, in a fresh virtual environment.

A small user Alembic project is created with ``alembic init`` and the ``alembic.ini`` lines
copied from the README, so the documented configuration is what is tested.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from idempotent.migrate import version_table_name
from tests.migrations.conftest import ROOT, Installed, backend_url, drop_tables, unique

DOC = ROOT / "README.md"


def documented_ini_lines() -> list[str]:
    """The lines of the first ``ini`` block of the README."""
    match = re.search(r"```ini\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert match, "README.md has no ini block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_documented_ini_lines_are_the_ones_the_issue_needs() -> None:
    """The documentation names the package location with the space separator (``os`` would ignore it)."""
    lines = documented_ini_lines()
    assert "path_separator = space" in lines
    (locations,) = (line for line in lines if line.startswith("version_locations = "))
    assert locations.split(" = ", 1)[1].split(" ") == [
        "%(here)s/alembic/versions",
        "idempotent:migrations/versions",
    ]


def test_wheel_carries_the_migrations_inside_the_package(installed: Installed) -> None:
    """The wheel installs the environment and revisions as idempotent/migrations, not a top-level package."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    assert not [n for n in names if n.startswith("migrations/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for expected in (
        "idempotent/migrate.py",
        "idempotent/migrations/env.py",
        "idempotent/migrations/script.py.mako",
        "idempotent/migrations/README",
        "idempotent/migrations/versions/90375989d197_create_keys_table.py",
    ):
        assert expected in names
    found = installed.run(
        installed.python,
        "-c",
        "import idempotent, idempotent.migrate as m; print(idempotent.__file__, m.versions_location())",
        cwd=installed.venv,
    ).stdout.split()
    assert len(found) == 2
    assert found[0].startswith(str(installed.venv))
    assert found[1] == str(Path(found[0]).parent / "migrations" / "versions")


def make_project(installed: Installed, base: Path, url: str, version_table: str) -> Path:
    """``alembic init`` a project, apply the documented ini lines, point it at ``url``.

    The generated env.py keeps everything but the version table's name, made unique so that
    the shared test databases never see this project's ``alembic_version``.
    """
    project = base / "project"
    project.mkdir()
    installed.run(installed.python, "-m", "alembic", "init", "alembic", cwd=project)
    ini = project / "alembic.ini"
    text = ini.read_text(encoding="utf-8")
    assert "\npath_separator = os\n" in text  # what new projects get, and what must change
    documented = "\n".join(documented_ini_lines())
    text = text.replace("\npath_separator = os\n", f"\n{documented}\n")
    text = re.sub(r"(?m)^sqlalchemy\.url = .*$", lambda _: f"sqlalchemy.url = {url.replace('%', '%%')}", text)
    ini.write_text(text, encoding="utf-8")
    env = project / "alembic" / "env.py"
    source = env.read_text(encoding="utf-8")
    assert source.count("target_metadata=target_metadata") == 2  # offline and online configure()
    env.write_text(
        source.replace(
            "target_metadata=target_metadata",
            f"target_metadata=target_metadata, version_table={version_table!r}",
        ),
        encoding="utf-8",
    )
    return project


def write_revision(project: Path, filename: str, body: str) -> None:
    (project / "alembic" / "versions" / filename).write_text(body, encoding="utf-8")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_user_alembic_project(installed: Installed, tmp_path: Path, backend: str) -> None:
    """A project with the documented alembic.ini lines runs ``upgrade heads``, ``downgrade idempotent@base``.

    The project has two revisions of its own: ``orders`` (independent) and ``refunds``
    (depends on the library's head, as ``--depends-on idempotent@head`` writes it). The
    keys table gets a custom name through ``-x idempotent_table``. Downgrading the
    library's branch removes the keys table and the dependent revision, and leaves
    ``orders`` alone.
    """
    url = backend_url(backend, tmp_path)
    keys, orders, refunds, versions = (
        unique(),
        unique("idem_mig_orders"),
        unique("idem_mig_refunds"),
        unique(),
    )
    project = make_project(installed, tmp_path, url, versions)
    alembic = (installed.python, "-m", "alembic")
    x_table = ("-x", f"idempotent_table={keys}")
    try:
        installed.run(
            *alembic,
            "revision",
            "-m",
            "create orders",
            "--rev-id",
            "0rders000001",
            "--head",
            "base",
            "--branch-label",
            "app",
            "--version-path",
            "alembic/versions",
            cwd=project,
        )
        installed.run(
            *alembic,
            "revision",
            "-m",
            "create refunds",
            "--rev-id",
            "refunds00002",
            "--head",
            "app@head",
            "--depends-on",
            "idempotent@head",
            cwd=project,
        )
        generated = sorted(p.name for p in (project / "alembic" / "versions").glob("*.py"))
        assert generated == ["0rders000001_create_orders.py", "refunds00002_create_refunds.py"]
        fill(project / "alembic" / "versions" / generated[0], orders)
        fill(project / "alembic" / "versions" / generated[1], refunds)
        assert "depends_on: Union[str, Sequence[str], None] = '90375989d197'" in (
            project / "alembic" / "versions" / generated[1]
        ).read_text(encoding="utf-8")

        installed.run(*alembic, *x_table, "upgrade", "heads", cwd=project)
        assert {keys, orders, refunds} <= tables(url)
        assert version_table_name(keys) not in tables(url)
        assert versions_rows(url, versions) == {"refunds00002"}  # the library's head is its dependency

        installed.run(*alembic, *x_table, "downgrade", "idempotent@base", cwd=project)
        left = tables(url)
        assert orders in left
        assert not {keys, refunds} & left
    finally:
        drop_tables(url, [refunds, orders, keys, versions])


def fill(path: Path, table: str) -> None:
    """Give a generated (empty) revision a table to create and drop."""
    text = path.read_text(encoding="utf-8")
    create = f'op.create_table("{table}", sa.Column("id", sa.Integer(), primary_key=True))'
    text = text.replace(
        'def upgrade() -> None:\n    """Upgrade schema."""\n    pass',
        f"def upgrade() -> None:\n    {create}",
    )
    text = text.replace(
        'def downgrade() -> None:\n    """Downgrade schema."""\n    pass',
        f'def downgrade() -> None:\n    op.drop_table("{table}")',
    )
    assert text.count(table) == 2, "the alembic revision template changed"
    path.write_text(text, encoding="utf-8")


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def versions_rows(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())
    finally:
        engine.dispose()


def test_stamp_after_idempotent_migrate(installed: Installed, tmp_path: Path) -> None:
    """A table made by ``idempotent migrate`` is adopted with ``alembic stamp idempotent@head``."""
    url = backend_url("sqlite", tmp_path)
    project = make_project(installed, tmp_path, url, "alembic_version")
    alembic = (installed.python, "-m", "alembic")
    installed.run(installed.script, "migrate", "--url", url, cwd=tmp_path)
    assert {"idempotency_keys", "idempotency_keys_version"} <= tables(url)

    installed.run(*alembic, "stamp", "idempotent@head", cwd=project)
    assert versions_rows(url, "alembic_version") == {"90375989d197"}
    upgraded = installed.run(*alembic, "upgrade", "heads", cwd=project)
    assert "Running upgrade" not in upgraded.stderr  # nothing left to create
    current = installed.run(*alembic, "current", cwd=project)
    assert "90375989d197 (head)" in current.stdout


def documented_hook_lines() -> list[str]:
    """The lines of the README's ``ini`` block that configures the post-write guard."""
    blocks = re.findall(r"```ini\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = (b for b in blocks if "[post_write_hooks]" in b)
    return [line for line in block.splitlines() if line.strip()]


def test_plain_revision_into_the_installed_package_fails_loudly(installed: Installed, tmp_path: Path) -> None:
    """With the documented guard, a plain ``alembic revision`` whose only head is the library's fails,
    names the fix, and leaves no file inside the installed package; with ``--version-path`` it works."""
    project = make_project(installed, tmp_path, backend_url("sqlite", tmp_path), "alembic_version")
    ini = project / "alembic.ini"
    text = ini.read_text(encoding="utf-8")
    assert text.count("\n[post_write_hooks]\n") == 1
    ini.write_text(text.replace("\n[post_write_hooks]\n", "\n" + "\n".join(documented_hook_lines()) + "\n"))
    package_versions = Path(
        installed.run(
            installed.python,
            "-c",
            "import idempotent.migrate as m; print(m.versions_location())",
            cwd=project,
        ).stdout.strip()
    )
    shipped = sorted(p.name for p in package_versions.glob("*.py"))
    alembic = (installed.python, "-m", "alembic")

    refused = installed.run(*alembic, "revision", "-m", "create orders", cwd=project, check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr  # Alembic prints "FAILED: <message>" on stdout
    assert "FAILED: alembic revision wrote" in said and "into the installed idempotent package" in said
    assert "--version-path alembic/versions --depends-on idempotent@head" in said
    assert sorted(p.name for p in package_versions.glob("*.py")) == shipped  # nothing left behind

    installed.run(
        *alembic, "revision", "-m", "create orders", "--head", "base", "--branch-label", "app",
        "--version-path", "alembic/versions", "--depends-on", "idempotent@head", cwd=project,
    )  # fmt: skip
    assert len(list((project / "alembic" / "versions").glob("*_create_orders.py"))) == 1


def test_without_the_guard_the_next_command_fails_loudly(installed: Installed, tmp_path: Path) -> None:
    """Without the hook, a plain ``alembic revision`` lands in the package (Alembic offers no way to
    stop it), but every later Alembic command refuses to run until that file is gone."""
    project = make_project(installed, tmp_path, backend_url("sqlite", tmp_path), "alembic_version")
    alembic = (installed.python, "-m", "alembic")
    written = installed.run(
        *alembic, "revision", "-m", "stray orders", "--rev-id", "str4y0000001", cwd=project
    )
    stray = next(
        Path(line.split("Generating ", 1)[1].split(" ...", 1)[0])
        for line in (written.stdout + written.stderr).splitlines()
        if "Generating " in line
    )
    try:
        assert stray.name.startswith("str4y0000001") and stray.parent.name == "versions"
        assert not stray.is_relative_to(project)  # inside the installed package, as Alembic does it
        refused = installed.run(*alembic, "upgrade", "heads", cwd=project, check=False)
        assert refused.returncode != 0
        said = refused.stdout + refused.stderr
        assert (
            f"FAILED: {stray.name} in {stray.parent} is not one of the idempotent library's revisions" in said
        )
    finally:
        stray.unlink(missing_ok=True)
    installed.run(*alembic, "upgrade", "heads", cwd=project)
