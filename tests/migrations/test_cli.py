"""``idempotent migrate`` through the real console script of the installed wheel."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from idempotent.migrate import head, version_table_name
from tests.migrations.conftest import Installed, backend_url, drop_tables, unique
from tests.migrations.test_revision import diff, table_names
from tests.services import POSTGRES_URL, require


def migrate(installed: Installed, cwd: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    proc = installed.run(installed.script, "migrate", *args, cwd=cwd, check=check)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit status 1, nothing on stdout, exactly one line on stderr naming the problem, no traceback."""
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("idempotent migrate: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb", "mariadb-dialect"])
def test_migrate_creates_the_table_once(installed: Installed, tmp_path: Path, backend: str) -> None:
    """``migrate --table`` creates make_table()'s table and its own version table; a second run is a no-op."""
    url = backend_url(backend, tmp_path)
    name = unique()
    try:
        code, out, err = migrate(installed, tmp_path, "--url", url, "--table", name)
        assert (code, err) == (0, "")
        assert f"{name} on " in out
        assert f"upgraded to revision {head()}" in out
        code, out, err = migrate(installed, tmp_path, "--url", url, "--table", name)
        assert (code, err) == (0, "")
        assert f"already at revision {head()}" in out
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.connect() as conn:
            assert diff(conn, name) == []
            assert {name, version_table_name(name)} <= table_names(conn)
            assert "alembic_version" not in table_names(conn)
        engine.dispose()
    finally:
        drop_tables(url, [name, version_table_name(name)])


def test_migrate_default_table_on_sqlite(installed: Installed, tmp_path: Path) -> None:
    """Without --table the table is idempotency_keys, recorded in idempotency_keys_version."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    code, out, _ = migrate(installed, tmp_path, "--url", url)
    assert code == 0
    assert out.startswith("idempotency_keys on sqlite:///")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert table_names(conn) == {"idempotency_keys", "idempotency_keys_version"}
    engine.dispose()


def test_migrate_sql_prints_ddl_and_touches_nothing(installed: Installed, tmp_path: Path) -> None:
    """``--sql`` prints the DDL (custom table, its own version table) and creates no database file."""
    db = tmp_path / "untouched.db"
    code, out, err = migrate(installed, tmp_path, "--url", f"sqlite:///{db}", "--table", "jobs_keys", "--sql")
    assert (code, err) == (0, "")
    assert "CREATE TABLE jobs_keys (" in out
    assert "CREATE INDEX ix_jobs_keys_expires_at ON jobs_keys (expires_at)" in out
    assert "CREATE TABLE jobs_keys_version (" in out
    assert f"VALUES ('{head()}')" in out
    assert not db.exists()


def test_migrate_sql_for_mysql_urls(installed: Installed, tmp_path: Path) -> None:
    """Offline, mariadb:// URLs get utf8mb4_nopad_bin; mysql:// URLs get MySQL 8's collation and a note."""
    code, out, err = migrate(installed, tmp_path, "--url", "mariadb+pymysql://u@h/db", "--sql")
    assert (code, err) == (0, "")
    assert out.count("COLLATE utf8mb4_nopad_bin") == 2
    assert "LONGTEXT" in out
    code, out, err = migrate(installed, tmp_path, "--url", "mysql+pymysql://u@h/db", "--sql")
    assert code == 0
    assert out.count("COLLATE utf8mb4_0900_bin") == 2
    assert "mariadb+pymysql://" in err


def test_migrate_schema_on_postgresql(installed: Installed, tmp_path: Path) -> None:
    """``--schema`` puts the table and its version table in that schema; a missing schema is one line."""
    require(POSTGRES_URL, "PostgreSQL")
    schema, name = unique("idem_mig_schema"), unique()
    engine = sa.create_engine(POSTGRES_URL, poolclass=sa.NullPool)
    try:
        assert_one_line_error(
            *migrate(
                installed, tmp_path, "--url", POSTGRES_URL, "--table", name, "--schema", schema, check=False
            ),
            "database error",
            schema,
        )
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        code, out, err = migrate(
            installed, tmp_path, "--url", POSTGRES_URL, "--table", name, "--schema", schema
        )
        assert (code, err) == (0, "")
        assert out.startswith(f"{schema}.{name} on ")
        with engine.connect() as conn:
            assert diff(conn, name, schema) == []
            assert table_names(conn, schema) == {name, version_table_name(name)}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("not a url", ("invalid database URL",)),
        ("nosuchdb://host/db", ("unknown database", "nosuchdb")),
        ("postgresql+psycopg://127.0.0.1:1/test", ("database error", "127.0.0.1")),
        ("mysql+pymysql://root@127.0.0.1:1/test", ("database error", "127.0.0.1")),
        (
            "sqlite:////nonexistent-dir/for/idempotent/keys.db",
            ("database error on sqlite:////nonexistent-dir/for/idempotent/keys.db", "unable to open"),
        ),
    ],
)
def test_migrate_errors_are_one_line(
    installed: Installed, tmp_path: Path, url: str, fragments: tuple[str, ...]
) -> None:
    """A wrong URL or an unreachable database gives one line on stderr and exit status 1, no traceback."""
    assert_one_line_error(*migrate(installed, tmp_path, "--url", url, check=False), *fragments)


def test_migrate_refuses_a_newer_releases_table(installed: Installed, tmp_path: Path) -> None:
    """A table migrated by a newer release (unknown revision) is one error line saying so."""
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    migrate(installed, tmp_path, "--url", url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE idempotency_keys_version SET version_num = 'ffffffffffff'"))
    engine.dispose()
    assert_one_line_error(
        *migrate(installed, tmp_path, "--url", url, check=False), "ffffffffffff", "newer release"
    )


def test_migrate_never_prints_the_password(installed: Installed, tmp_path: Path) -> None:
    """A refused connection's message does not carry the URL's password."""
    code, out, err = migrate(
        installed, tmp_path, "--url", "postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/test", check=False
    )
    assert_one_line_error(code, out, err)
    assert "s3cret-pw" not in err


def test_migrate_requires_a_url(installed: Installed, tmp_path: Path) -> None:
    """Without --url argparse explains the usage (exit status 2)."""
    code, _, err = migrate(installed, tmp_path, check=False)
    assert code == 2
    assert "--url" in err


def test_migrate_help_through_python_m(installed: Installed, tmp_path: Path) -> None:
    """``python -m idempotent migrate --help`` documents the options."""
    out = installed.run(installed.python, "-m", "idempotent", "migrate", "--help", cwd=tmp_path).stdout
    for option in ("--url", "--table", "--schema", "--sql"):
        assert option in out
