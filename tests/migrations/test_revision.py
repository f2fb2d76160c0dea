"""The keys-table revisions against real SQLite, PostgreSQL and MariaDB databases.

The migrated schema is compared with ``make_table()`` by Alembic's own autogenerate
comparison (types included), so the literal revision and the table the store uses can
never drift apart unnoticed.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from idempotent import SQLStore, idempotent, migrate
from idempotent.errors import ConfigurationError
from idempotent.schema import MARIADB_KEY_COLLATION, make_table
from tests.migrations.conftest import ROOT, backend_url, drop_tables, unique
from tests.services import MARIADB_URL, POSTGRES_URL, require


def diff(
    conn: sa.Connection, name: str, schema: str | None = None, metadata: sa.MetaData | None = None
) -> Any:
    """Differences between the live table ``name`` and ``make_table()`` (nothing else is compared)."""
    if metadata is None:
        metadata = sa.MetaData()
        make_table(metadata, name=name, schema=schema)

    def only_ours(obj_name: str | None, kind: str, parent: Any) -> bool:
        if kind == "schema":
            return obj_name == schema
        return kind != "table" or obj_name == name

    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "include_schemas": schema is not None,
            "include_name": only_ours,
        },
    )
    return compare_metadata(context, metadata)


def table_names(conn: sa.Connection, schema: str | None = None) -> set[str]:
    return set(sa.inspect(conn).get_table_names(schema=schema))


def test_upgrade_creates_exactly_make_table(engine: sa.Engine, table: str) -> None:
    """After the upgrade, Alembic finds no difference between the live table and make_table()."""
    assert migrate.upgrade(engine, table=table) is True
    with engine.connect() as conn:
        assert diff(conn, table) == []
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(conn).get_indexes(table)}
        assert indexes == {f"ix_{table}_expires_at": ["expires_at"]}
        assert sa.inspect(conn).get_pk_constraint(table)["constrained_columns"] == ["scope", "key"]
        assert migrate.current(conn, table=table) == migrate.head()


def test_comparison_sees_a_difference(engine: sa.Engine, table: str) -> None:
    """The comparison is not vacuous: a narrower column or a missing index is reported."""
    migrate.upgrade(engine, table=table)
    metadata = sa.MetaData()
    changed = make_table(metadata, name=table)
    changed.c.status.type = sa.String(15)
    changed.indexes.clear()
    with engine.connect() as conn:
        kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in diff(conn, table, metadata=metadata)}
    assert kinds == {"modify_type", "remove_index"}


def test_upgrade_twice_is_a_no_op(engine: sa.Engine, table: str) -> None:
    """A second upgrade changes nothing and reports so."""
    assert migrate.upgrade(engine, table=table) is True
    assert migrate.upgrade(engine, table=table) is False
    with engine.connect() as conn:
        assert diff(conn, table) == []
        version = sa.Table(migrate.version_table_name(table), sa.MetaData(), autoload_with=conn)
        assert conn.execute(sa.select(version.c.version_num)).scalars().all() == [migrate.head()]


def test_downgrade_leaves_no_table_behind(engine: sa.Engine, table: str) -> None:
    """Downgrading drops the keys table, its index and the version table."""
    # Only this test's tables: other suites may create and drop theirs in the same database meanwhile.
    ours = {table, migrate.version_table_name(table)}
    migrate.upgrade(engine, table=table)
    with engine.connect() as conn:
        assert ours <= table_names(conn)
    assert migrate.downgrade(engine, table=table) is True
    with engine.connect() as conn:
        assert not ours & table_names(conn)
        assert migrate.current(conn, table=table) is None
    assert migrate.downgrade(engine, table=table) is False


def test_custom_table_end_to_end(engine: sa.Engine, table: str) -> None:
    """A custom name flows through the migration, make_table() and real reads and writes."""
    migrate.upgrade(engine, table=table)
    keys = make_table(sa.MetaData(), name=table)
    row = {
        "scope": "billing:charge",
        "key": "order-1",
        "fingerprint": "v1:abc",
        "status": "completed",
        "owner": "o" * 64,
        "locked_until": 2**62,
        "created_at": 1_700_000_000_000,
        "expires_at": 1_700_086_400_000,
        "result_codec": "json",
        "result": "€ 値 " + "x" * 70_000,  # non-Latin text and more than TEXT's 64 KB
        "error_type": None,
    }
    with engine.begin() as conn:
        conn.execute(keys.insert(), row)
    with engine.connect() as conn:
        assert conn.execute(sa.select(keys)).mappings().one() == row
        assert migrate.version_table_name(table) in table_names(conn)


def run_twice_through_the_store(engine: sa.Engine, table: str, schema: str | None = None) -> None:
    """Call an @idempotent function twice with one key on a store over ``table``: it runs once."""
    calls: list[str] = []

    @idempotent(key_from="ref", scope="tests.migrations.charge", store=SQLStore(engine, table, schema))
    def charge(conn: sa.Connection, ref: str) -> dict[str, str]:
        calls.append(ref)
        return {"charged": ref}

    with engine.connect() as conn:
        assert charge(conn, "order-7") == {"charged": "order-7"}
    with engine.connect() as conn:
        assert charge(conn, "order-7") == {"charged": "order-7"}
    assert calls == ["order-7"]
    keys = make_table(sa.MetaData(), name=table, schema=schema)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(keys.c.scope, keys.c.key, keys.c.status)).all()
    assert [tuple(r) for r in stored] == [("tests.migrations.charge", "order-7", "completed")]


def test_decorator_uses_the_migrated_custom_table(engine: sa.Engine, table: str) -> None:
    """The store configured with the same custom name works on the table the migration created."""
    migrate.upgrade(engine, table=table)
    run_twice_through_the_store(engine, table)


def test_keys_differing_in_case_space_or_accent_stay_distinct(engine: sa.Engine, table: str) -> None:
    """On every database the migrated key columns compare bytes: no case, accent or pad folding."""
    migrate.upgrade(engine, table=table)
    keys = make_table(sa.MetaData(), name=table)
    variants = ["abc", "ABC", "abc ", "ábc", "日本"]
    base = {"status": "completed", "owner": "o", "locked_until": 0, "created_at": 0, "expires_at": 0}
    with engine.begin() as conn:
        conn.execute(keys.insert(), [{"scope": v, "key": v, **base} for v in variants])
    with engine.connect() as conn:
        for v in variants:
            found = conn.execute(sa.select(keys.c.key).where(keys.c.scope == v, keys.c.key == v)).scalars()
            assert found.all() == [v]


@pytest.mark.parametrize("dialect", ["mariadb", "mariadb-dialect"])
def test_mariadb_key_columns_use_nopad_bin(tmp_path: Path, dialect: str) -> None:
    """information_schema shows utf8mb4_nopad_bin keys, LONGTEXT results and a utf8mb4 table on MariaDB."""
    url = backend_url(dialect, tmp_path)
    name = unique()
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        migrate.upgrade(engine, table=name)
        with engine.connect() as conn:
            columns = {
                r.COLUMN_NAME: r
                for r in conn.execute(
                    sa.text(
                        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, COLLATION_NAME "
                        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                    ),
                    {"t": name},
                )
            }
            table_collation = conn.execute(
                sa.text(
                    "SELECT TABLE_COLLATION FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": name},
            ).scalar_one()
    finally:
        drop_tables(url, [name, migrate.version_table_name(name)])
        engine.dispose()
    for key_column in ("scope", "key"):
        assert columns[key_column].CHARACTER_SET_NAME == "utf8mb4"
        assert columns[key_column].COLLATION_NAME == MARIADB_KEY_COLLATION
    assert columns["result"].DATA_TYPE == "longtext"
    assert table_collation.startswith("utf8mb4_")


def test_custom_schema_on_postgresql() -> None:
    """--schema puts the keys table, its index and its version table in that PostgreSQL schema."""
    require(POSTGRES_URL, "PostgreSQL")
    schema, name = unique("idem_mig_schema"), unique()
    engine = sa.create_engine(POSTGRES_URL, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        assert migrate.upgrade(engine, table=name, schema=schema) is True
        assert migrate.upgrade(engine, table=name, schema=schema) is False
        with engine.connect() as conn:
            assert diff(conn, name, schema) == []
            assert table_names(conn, schema) == {name, migrate.version_table_name(name)}
            assert name not in table_names(conn)
            assert migrate.current(conn, table=name, schema=schema) == migrate.head()
            assert migrate.current(conn, table=name) is None
        run_twice_through_the_store(engine, name, schema)
        assert migrate.downgrade(engine, table=name, schema=schema) is True
        with engine.connect() as conn:
            assert table_names(conn, schema) == set()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def test_custom_schema_on_mariadb() -> None:
    """On MariaDB a schema is another database: the table, index and version table go there."""
    require(MARIADB_URL, "MariaDB")
    schema, name = unique("idem_mig_schema"), unique()
    engine = sa.create_engine(MARIADB_URL, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{schema}`"))
        assert migrate.upgrade(engine, table=name, schema=schema) is True
        with engine.connect() as conn:
            assert diff(conn, name, schema) == []
            assert table_names(conn, schema) == {name, migrate.version_table_name(name)}
        assert migrate.downgrade(engine, table=name, schema=schema) is True
        with engine.connect() as conn:
            assert table_names(conn, schema) == set()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{schema}`"))
        engine.dispose()


def test_revision_from_a_newer_release_is_refused(engine: sa.Engine, table: str) -> None:
    """A version table recording a revision this release does not ship is a clear error, and nothing runs."""
    migrate.upgrade(engine, table=table)
    version = sa.Table(migrate.version_table_name(table), sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(version.update().values(version_num="ffffffffffff"))
    for operation in (migrate.upgrade, migrate.downgrade):
        with pytest.raises(ConfigurationError, match=r"ffffffffffff.*newer release"):
            operation(engine, table=table)
    with engine.connect() as conn:
        assert table in table_names(conn)


def test_two_keys_tables_keep_separate_versions(engine: sa.Engine, table: str, url: str) -> None:
    """Each keys table has its own version table; downgrading one leaves the other at head."""
    other = unique()
    try:
        migrate.upgrade(engine, table=table)
        migrate.upgrade(engine, table=other)
        migrate.downgrade(engine, table=other)
        with engine.connect() as conn:
            assert migrate.current(conn, table=table) == migrate.head()
            assert migrate.current(conn, table=other) is None
            assert table in table_names(conn)
            assert other not in table_names(conn)
            assert migrate.version_table_name(table) != migrate.version_table_name(other)
    finally:
        drop_tables(url, [other, migrate.version_table_name(other)])


def test_given_connection_is_left_to_the_caller_to_commit(engine: sa.Engine, table: str) -> None:
    """With a Connection, upgrade() runs inside the caller's transaction and does not commit it."""
    with engine.connect() as conn:
        assert migrate.upgrade(conn, table=table) is True
        conn.commit()
    with engine.connect() as conn:
        assert diff(conn, table) == []


def test_async_url(tmp_path: Path) -> None:
    """An async URL (aiosqlite, psycopg async) is run through an async engine."""
    urls = [f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"]
    require(POSTGRES_URL, "PostgreSQL")
    urls.append(POSTGRES_URL.replace("postgresql+psycopg://", "postgresql+psycopg_async://"))
    for async_url in urls:
        name = unique()
        sync_url = async_url.replace("+aiosqlite", "").replace("+psycopg_async", "+psycopg")
        try:
            assert migrate.upgrade(async_url, table=name) is True
            assert migrate.upgrade(async_url, table=name) is False
            engine = sa.create_engine(sync_url, poolclass=sa.NullPool)
            with engine.connect() as conn:
                assert diff(conn, name) == []
            engine.dispose()
        finally:
            drop_tables(sync_url, [name, migrate.version_table_name(name)])


def test_async_engine_is_refused_with_the_way_out() -> None:
    """An AsyncEngine cannot be driven from sync code: the TypeError says how to use run_sync."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(TypeError, match="run_sync"):
        migrate.upgrade(engine)  # type: ignore[arg-type]
    asyncio.run(engine.dispose())


# --- offline SQL ---------------------------------------------------------------------------

OFFLINE_DIALECTS = {
    "sqlite:///": sqlite.dialect(),
    "postgresql+psycopg://h/db": postgresql.dialect(),
    "mariadb+pymysql://h/db": sa.make_url("mariadb+pymysql://").get_dialect()(),
    "mysql+pymysql://h/db": mysql.dialect(),
}


def normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")").strip()


@pytest.mark.parametrize("url", list(OFFLINE_DIALECTS))
def test_offline_sql_is_make_table_ddl(url: str) -> None:
    """--sql output holds make_table()'s CREATE TABLE and CREATE INDEX for each dialect, MySQL 8 included."""
    dialect = OFFLINE_DIALECTS[url]
    keys = make_table(sa.MetaData(), name="custom_keys")
    sql = normalise(migrate.upgrade_sql(url, table="custom_keys"))
    assert normalise(str(CreateTable(keys).compile(dialect=dialect))) in sql
    (index,) = keys.indexes
    assert normalise(str(CreateIndex(index).compile(dialect=dialect))) in sql
    assert "custom_keys_version" in sql
    assert "alembic_version" not in sql.replace("custom_keys_version", "")


def split_statements(sql: str) -> Iterator[str]:
    for statement in re.split(r";\s*\n", sql):
        lines = [line for line in statement.splitlines() if not line.startswith("--")]
        text = "\n".join(lines).strip()
        if text and text.upper() not in ("BEGIN", "COMMIT"):
            yield text


def test_offline_sql_runs_and_matches(url: str, table: str) -> None:
    """The --sql script, run by hand, gives make_table()'s table, and the library then sees it at head.

    Offline, a mysql:// URL means MySQL 8; for the MariaDB server the documented mariadb:// URL is used.
    """
    offline_url = "mariadb+" + url.split("+", 1)[1] if url.startswith("mysql+") else url
    sql = migrate.upgrade_sql(offline_url, table=table)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            for statement in split_statements(sql):
                conn.exec_driver_sql(statement)
        with engine.connect() as conn:
            assert diff(conn, table) == []
        assert migrate.upgrade(engine, table=table) is False
    finally:
        engine.dispose()


# --- the revision files and the configuration they read ------------------------------------


def test_revisions_are_literal() -> None:
    """No revision imports or calls make_table() or idempotent.schema; the root carries the branch label."""
    versions = ROOT / "migrations" / "versions"
    files = sorted(versions.glob("*.py"))
    assert files
    roots = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            (node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        library = {entry for entry in imported if (entry[0] or "").startswith("idempotent")}
        assert library <= {("idempotent.migrate", "target")}, path.name
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert "make_table" not in names, path.name
        source = path.read_text(encoding="utf-8")
        if re.search(r"^down_revision = None$", source, re.MULTILINE):
            roots.append(path.name)
            assert re.search(r'^branch_labels = \("idempotent",\)$', source, re.MULTILINE)
    assert len(roots) == 1


def x_config(*x_args: str, **ini: str) -> Config:
    config = Config(cmd_opts=argparse.Namespace(x=list(x_args)))
    for option, value in ini.items():
        config.set_main_option(option, value)
    return config


def test_target_reads_x_arguments_then_ini_then_defaults() -> None:
    """-x idempotent_table/idempotent_schema win over the [alembic] options, which win over the defaults."""
    assert migrate.target(Config()) == ("idempotency_keys", None)
    assert migrate.target(x_config()) == ("idempotency_keys", None)
    assert migrate.target(x_config("idempotent_table=jobs_keys", "other=1")) == ("jobs_keys", None)
    assert migrate.target(x_config("idempotent_schema=ops")) == ("idempotency_keys", "ops")
    ini = {"idempotent_table": "ini_keys", "idempotent_schema": "ini_schema"}
    assert migrate.target(x_config(**ini)) == ("ini_keys", "ini_schema")
    assert migrate.target(x_config("idempotent_table=x_keys", **ini)) == ("x_keys", "ini_schema")


def test_invalid_names_are_refused() -> None:
    """An empty or space-padded table or schema name is a ConfigurationError before any connection."""
    with pytest.raises(ConfigurationError, match="table name"):
        migrate.upgrade("sqlite://", table="")
    with pytest.raises(ConfigurationError, match="schema name"):
        migrate.upgrade_sql("sqlite://", schema=" s")


def test_checkout_location_is_the_top_level_migrations() -> None:
    """In a checkout (no idempotent/migrations) the top-level migrations/ directory is used."""
    assert migrate.migrations_location() == ROOT / "migrations"
    assert migrate.versions_location() == ROOT / "migrations" / "versions"
    assert (migrate.versions_location() / "90375989d197_create_keys_table.py").is_file()


def test_library_environment_run_by_alembic_itself(tmp_path: Path) -> None:
    """The library's env.py also works when Alembic runs it with only sqlalchemy.url (online and --sql)."""
    url = f"sqlite:///{tmp_path / 'direct.db'}"
    output = io.StringIO()
    config = Config(cmd_opts=argparse.Namespace(x=["idempotent_table=direct_keys"]), output_buffer=output)
    config.set_main_option("script_location", str(migrate.migrations_location()))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "idempotent@head", sql=True)
    assert "CREATE TABLE direct_keys (" in output.getvalue()
    command.upgrade(config, "idempotent@head")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert table_names(conn) == {"direct_keys", "direct_keys_version"}
        assert diff(conn, "direct_keys") == []
    engine.dispose()


def test_user_alembic_environment_with_x_arguments(tmp_path: Path, url: str) -> None:
    """A project's environment runs the branch with -x names; a dependent revision comes and goes with it."""
    name, app_table = unique(), unique("idem_mig_app")
    version_table = unique("idem_mig_alembic_version")
    project = tmp_path / "project"
    (project / "versions").mkdir(parents=True)
    (project / "env.py").write_text(
        "from alembic import context\n"
        "import sqlalchemy as sa\n"
        "config = context.config\n"
        "engine = sa.create_engine(config.get_main_option('sqlalchemy.url'), poolclass=sa.NullPool)\n"
        "with engine.connect() as connection:\n"
        f"    context.configure(connection=connection, version_table={version_table!r})\n"
        "    with context.begin_transaction():\n"
        "        context.run_migrations()\n"
        "engine.dispose()\n",
        encoding="utf-8",
    )
    (project / "versions" / "a1_app.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n"
        f"revision = 'a1a1a1a1a1a1'\ndown_revision = None\nbranch_labels = ('app',)\n"
        f"depends_on = {migrate.head()!r}\n"
        f"def upgrade():\n    op.create_table({app_table!r}, sa.Column('id', sa.Integer, primary_key=True))\n"
        f"def downgrade():\n    op.drop_table({app_table!r})\n",
        encoding="utf-8",
    )
    config = Config(cmd_opts=argparse.Namespace(x=[f"idempotent_table={name}"]))
    config.set_main_option("script_location", str(project))
    config.set_main_option("path_separator", "space")
    # The checkout has no idempotent/migrations: name the directory (the wheel test uses package:path).
    config.set_main_option("version_locations", f"{project / 'versions'} {migrate.versions_location()}")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        command.upgrade(config, "heads")
        with engine.connect() as conn:
            assert {name, app_table, version_table} <= table_names(conn)
            assert diff(conn, name) == []
        command.downgrade(config, "idempotent@base")
        with engine.connect() as conn:
            assert not {name, app_table} & table_names(conn)
    finally:
        drop_tables(url, [app_table, name, version_table])
        engine.dispose()
