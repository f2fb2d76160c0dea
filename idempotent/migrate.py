"""Create and upgrade the keys table with the library's own Alembic revisions.

There are two ways to run the revisions, and both take the table's name and schema the same
way (:func:`target`):

* Without Alembic in the project: ``idempotent migrate --url URL`` on the command line, or
  :func:`upgrade` in code. The applied revision is recorded in a version table of the keys
  table's own (:func:`version_table_name`), never in the project's ``alembic_version``, so
  two keys tables never share one and a later adoption of Alembic starts clean.
* From the project's own Alembic environment: ``version_locations`` lists
  ``idempotent:migrations/versions`` and the revisions form the ``idempotent`` branch
  (``alembic upgrade idempotent@head``). See ``docs/alembic.md``.

Alembic is imported only when a command runs, so ``idempotent --help`` stays quick.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from idempotent._connect import Bind, add_database_arguments, explain, with_connection
from idempotent.errors import ConfigurationError
from idempotent.schema import DEFAULT_TABLE

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "BRANCH",
    "current",
    "downgrade",
    "head",
    "migrations_location",
    "register",
    "target",
    "upgrade",
    "upgrade_sql",
    "version_table_name",
    "versions_location",
]

#: The branch label of the library's revisions in a project's Alembic history.
BRANCH = "idempotent"

#: ``-x`` arguments (or ``[alembic]`` options) that name the keys table and its schema.
TABLE_OPTION = "idempotent_table"
SCHEMA_OPTION = "idempotent_schema"

_T = TypeVar("_T")


def migrations_location() -> Path:
    """Return the directory holding the library's Alembic environment and revisions.

    An installed wheel carries it inside the package (``idempotent/migrations``); a source
    checkout or editable install has it beside the package, as the top-level ``migrations``.
    """
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parent / "migrations"):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise ConfigurationError(
        f"the idempotent migrations are missing: neither {package_dir / 'migrations'} nor "
        f"{package_dir.parent / 'migrations'} exists; reinstall the idempotent package"
    )


def versions_location() -> Path:
    """Return the directory of the revision files (what ``version_locations`` must reach)."""
    return migrations_location() / "versions"


def version_table_name(table: str) -> str:
    """Return the name of the version table ``idempotent migrate`` keeps for ``table``."""
    return f"{table}_version"


def target(config: Config) -> tuple[str, str | None]:
    """Return the keys table's name and schema for an Alembic run.

    ``-x idempotent_table=NAME`` and ``-x idempotent_schema=NAME`` win; then the
    ``idempotent_table`` / ``idempotent_schema`` options of the ini section; then
    ``idempotency_keys`` in the default schema. Every revision and the library's ``env.py``
    read them here, so a table is always upgraded and downgraded under the same name.
    """
    x_args: dict[str, str] = {}
    for arg in getattr(config.cmd_opts, "x", None) or []:
        name, _, value = arg.partition("=")
        x_args[name.strip()] = value.strip()
    table = x_args.get(TABLE_OPTION) or config.get_main_option(TABLE_OPTION) or DEFAULT_TABLE
    schema = x_args.get(SCHEMA_OPTION) or config.get_main_option(SCHEMA_OPTION) or None
    return table, schema


def head() -> str:
    """Return the id of the library's newest revision."""
    revision = _scripts().get_current_head()
    if revision is None:  # pragma: no cover - the package always ships its revisions
        raise ConfigurationError("the idempotent migrations contain no revision")
    return revision


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 (keep the command line's start-up light)

    check_foreign_revisions()
    return ScriptDirectory(str(migrations_location()))


def _check_known(revision: str | None, table: str) -> None:
    """Refuse a version table that records a revision this release does not ship (a newer release's)."""
    if revision is None:
        return
    known = {script.revision for script in _scripts().walk_revisions()}
    if revision not in known:
        raise ConfigurationError(
            f"{version_table_name(table)} records revision {revision}, which this release of idempotent "
            "does not know: a newer release migrated the table; install that release or a later one"
        )


def current(bind: Bind, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> str | None:
    """Return the revision ``idempotent migrate`` recorded for the keys table, or None."""
    return _with_connection(bind, lambda conn: _current(conn, table, schema))


def upgrade(bind: Bind, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> bool:
    """Create the keys table, or bring it to the library's newest revision.

    ``bind`` is a database URL, an ``Engine`` or a ``Connection`` (given a connection, the
    caller commits; an async application can pass the connection of
    ``await conn.run_sync(...)``). An async URL (``postgresql+psycopg_async://``) is run
    through an async engine. The applied revision is recorded in
    :func:`version_table_name` ``(table)`` in the same schema. Returns whether anything
    changed: running it twice is a no-op.
    """
    _check_names(table, schema)

    def run(conn: sa.Connection) -> bool:
        from alembic import command  # noqa: PLC0415 (keep the command line's start-up light)

        before = _current(conn, table, schema)
        _check_known(before, table)
        command.upgrade(_config(table, schema, connection=conn), f"{BRANCH}@head")
        return _current(conn, table, schema) != before

    return _with_connection(bind, run)


def downgrade(bind: Bind, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> bool:
    """Drop the keys table and the version table :func:`upgrade` created. Returns whether anything changed.

    Every stored key is lost. Projects with their own Alembic environment run
    ``alembic downgrade idempotent@base`` instead.
    """
    _check_names(table, schema)

    def run(conn: sa.Connection) -> bool:
        from alembic import command  # noqa: PLC0415 (keep the command line's start-up light)

        before = _current(conn, table, schema)
        _check_known(before, table)
        command.downgrade(_config(table, schema, connection=conn), f"{BRANCH}@base")
        version_table = sa.Table(version_table_name(table), sa.MetaData(), schema=schema)
        if sa.inspect(conn).has_table(version_table.name, schema=schema):
            version_table.drop(conn)
        return before is not None

    return _with_connection(bind, run)


def upgrade_sql(url: str | sa.URL, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> str:
    """Return the SQL that :func:`upgrade` would run on an empty database, without connecting.

    The statements are written for the URL's dialect. The key columns' collation on
    MySQL/MariaDB depends on the server, which an offline run cannot ask: a ``mariadb://``
    (or ``mariadb+pymysql://``) URL gives MariaDB's ``utf8mb4_nopad_bin``, a ``mysql://``
    URL MySQL 8's ``utf8mb4_0900_bin``.
    """
    from alembic import command  # noqa: PLC0415 (keep the command line's start-up light)

    _check_names(table, schema)
    buffer = io.StringIO()
    config = _config(table, schema, url=sa.make_url(url), output=buffer)
    command.upgrade(config, f"{BRANCH}@head", sql=True)
    return buffer.getvalue()


def _check_names(table: str, schema: str | None) -> None:
    if not table or table != table.strip():
        raise ConfigurationError(f"invalid keys table name {table!r}")
    if schema is not None and (not schema or schema != schema.strip()):
        raise ConfigurationError(f"invalid schema name {schema!r}")


def _config(
    table: str,
    schema: str | None,
    *,
    connection: sa.Connection | None = None,
    url: sa.URL | None = None,
    output: io.StringIO | None = None,
) -> Config:
    """An in-memory Alembic configuration for the library's own environment."""
    from alembic.config import Config  # noqa: PLC0415 (keep the command line's start-up light)

    x_args = [f"{TABLE_OPTION}={table}"]
    if schema:
        x_args.append(f"{SCHEMA_OPTION}={schema}")
    config = Config(
        output_buffer=output,
        cmd_opts=argparse.Namespace(x=x_args),
        attributes={"connection": connection, "url": url},
    )
    # ConfigParser interpolates "%": a path holding one must have it doubled.
    config.set_main_option("script_location", str(migrations_location()).replace("%", "%%"))
    return config


def _current(conn: sa.Connection, table: str, schema: str | None) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415 (light start-up)

    context = MigrationContext.configure(
        conn, opts={"version_table": version_table_name(table), "version_table_schema": schema}
    )
    return context.get_current_revision()


def _with_connection(bind: Bind, fn: Callable[[sa.Connection], _T]) -> _T:
    """Run ``fn`` on a connection of ``bind``; commit when the connection is ours."""
    return with_connection(
        bind,
        fn,
        begin=True,
        async_hint="with an AsyncEngine run `await conn.run_sync(lambda c: upgrade(c))` and commit",
    )


# --- command line -------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``migrate`` sub-command."""
    parser = subparsers.add_parser(
        "migrate",
        help="create or upgrade the idempotency keys table",
        description=(
            "Create the idempotency keys table, or upgrade it to this version of the library. "
            "The applied revision is recorded in a table of its own, <table>_version, never in "
            "your alembic_version. Running it again is a no-op. Projects with their own Alembic "
            "environment use `alembic upgrade idempotent@head` instead."
        ),
    )
    add_database_arguments(parser)
    parser.add_argument(
        "--sql", action="store_true", help="print the SQL for an empty database instead of running it"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Carry out ``idempotent migrate``; return the exit code."""
    table: str = args.table
    schema: str | None = args.schema
    shown = f"{schema}.{table}" if schema else table
    try:
        url = sa.make_url(args.url)
        where = url.render_as_string(hide_password=True)
        if args.sql:
            sys.stdout.write(upgrade_sql(url, table=table, schema=schema))
            if url.get_backend_name() == "mysql":  # a mariadb:// URL names "mariadb"
                print(
                    "note: this SQL is for MySQL 8 (utf8mb4_0900_bin keys); "
                    "for a MariaDB server use a mariadb+pymysql:// URL",
                    file=sys.stderr,
                )
            return 0
        changed = upgrade(url, table=table, schema=schema)
    except Exception as exc:
        message = explain(exc, args.url)
        if message is None:
            raise
        print(f"idempotent migrate: error: {message}", file=sys.stderr)
        return 1
    state = "upgraded to" if changed else "already at"
    print(f"{shown} on {where}: {state} revision {head()} ({version_table_name(table)} records it)")
    return 0


# ---------------------------------------------------------------------------------------------
# A guard against revisions written into the installed package.
# ---------------------------------------------------------------------------------------------
#: The post-write hook type a project names in its ``[post_write_hooks]`` section.
WRITE_HOOK = "idempotent_guard"


def guard_revision(path: str, options: object = None) -> None:
    """Alembic post-write hook: refuse a new revision file written among the library's revisions.

    While the library's revision is the only head, a plain ``alembic revision`` extends it and
    writes the new file next to it, inside the installed package, where the next upgrade of
    the library deletes it. This hook deletes that file at once and fails the command, saying
    how to create the revision in the project's own directory. Any other file is left alone.
    """
    from alembic.util import CommandError  # noqa: PLC0415 (keep the command line's start-up light)

    written = Path(path).resolve()
    ours = versions_location().resolve()
    if written.parent != ours:
        return
    written.unlink(missing_ok=True)
    raise CommandError(
        f"alembic revision wrote {written.name} into the installed idempotent package ({ours}), because "
        "the library's revision is the only head; the file was deleted. Create your revision in your own "
        "versions directory and branch: alembic revision -m MESSAGE --head base --branch-label app "
        "--version-path alembic/versions --depends-on idempotent@head (later revisions: --head app@head)"
    )


def check_foreign_revisions() -> None:
    """Fail when the library's versions directory holds a revision that is not the library's.

    Every revision the library ships imports this module (for :func:`target`); a file that does
    not was written there by a plain ``alembic revision``. Left in place, it would be applied as
    part of the ``idempotent`` branch and deleted by the next upgrade of the library, so every
    Alembic command (and ``idempotent migrate``) refuses to run until it is moved out.
    """
    from alembic.util import CommandError  # noqa: PLC0415 (keep the command line's start-up light)

    ours = versions_location()
    foreign = sorted(
        path.name
        for path in ours.glob("*.py")
        if "idempotent.migrate" not in path.read_text(encoding="utf-8", errors="replace")
    )
    if foreign:
        raise CommandError(
            f"{', '.join(foreign)} in {ours} is not one of the idempotent library's revisions: a plain "
            "`alembic revision` wrote it into the installed package because the library's revision was "
            "the only head. Delete it and create it again in your own versions directory and branch: "
            "alembic revision -m MESSAGE --head base --branch-label app --version-path alembic/versions "
            "--depends-on idempotent@head"
        )


def _register_write_hook() -> None:
    from alembic.script import write_hooks  # noqa: PLC0415 (only when Alembic is running)

    write_hooks.register(WRITE_HOOK)(guard_revision)


if "alembic" in sys.modules:  # Alembic is loading the library's revisions, which import this module
    _register_write_hook()
    check_foreign_revisions()
