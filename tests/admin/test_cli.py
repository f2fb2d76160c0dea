"""``idempotent purge|show|evict`` through the real command line, in a new process, on each database.

Most tests run ``python -m idempotent``; one runs the installed ``idempotent`` console script.
The sync URLs get every test; the async URLs one round trip of each command.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa

from idempotent.cli import main
from idempotent.schema import make_table
from tests.admin.conftest import AdminDb, drop, run_cli


def test_purge_prints_the_count_and_progress(sync_adb: AdminDb) -> None:
    """``purge`` deletes the expired keys in batches, shows progress on stderr, prints the total."""
    for i in range(12):
        sync_adb.insert(f"old-{i:02d}", expires_in=-60)
    sync_adb.insert("live")
    proc = run_cli(
        "purge", "--url", sync_adb.url, "--table", sync_adb.table, "--batch", "5", "--progress-every", "0"
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"purged 12 expired keys from {sync_adb.table} in \d+\.\d s\n", proc.stdout)
    assert re.findall(r"purged (\d+) keys so far", proc.stderr) == ["5", "10", "12"]
    assert sync_adb.keys_left() == ["live"]

    quiet = run_cli("purge", "--url", sync_adb.url, "--table", sync_adb.table, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("purged 0 expired keys")
    assert quiet.stderr == ""


def test_show_prints_status_times_fingerprint_and_preview(sync_adb: AdminDb) -> None:
    """``show`` prints the key's state, its times, fingerprint and a bounded preview of the result."""
    long_result = json.dumps({"items": ["ä" * 10] * 40})
    row = sync_adb.insert("order-7", result=long_result)
    proc = run_cli("show", "--url", sync_adb.url, "--table", sync_adb.table, "orders.place", "order-7")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^status\s+completed \(the stored result is replayed\)$", out, re.M)
    assert re.search(rf"^fingerprint\s+{row['fingerprint']}$", out, re.M)
    assert re.search(
        r"^created\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(10 min \d{1,2} s ago\)$", out, re.M
    )  # the CLI starts a new process: allow its start-up time
    assert re.search(r"^expires\s+\S+Z \(in (59 min \d+ s|1 h 0 min)\)$", out, re.M)
    preview = re.search(rf"^result\s+json, {len(long_result)} chars: (.*)$", out, re.M)
    assert preview is not None
    assert preview.group(1) == long_result[:200] + "…"

    as_json = run_cli(
        "show", "--json", "--url", sync_adb.url, "--table", sync_adb.table, "orders.place", "order-7"
    )
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["result"] == long_result
    assert data["status"] == "completed"
    assert data["expired"] is False
    assert data["owner"] == row["owner"]


def test_evict_removes_a_key_and_refuses_a_running_one(sync_adb: AdminDb) -> None:
    """``evict`` removes a key; a key still within its lease needs ``--force``; a missing key is an error."""
    sync_adb.insert("done")
    sync_adb.insert("running", status="in_progress", result=None, locked_for=30)
    base = ["--url", sync_adb.url, "--table", sync_adb.table, "orders.place"]

    proc = run_cli("evict", *base, "done")
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout
        == f"evicted key 'done' of scope 'orders.place' from {sync_adb.table} (it was completed)\n"
    )

    again = run_cli("evict", *base, "done")
    assert again.returncode == 1
    assert (
        again.stderr
        == f"idempotent evict: error: no key 'done' in scope 'orders.place' in {sync_adb.table}\n"
    )
    gone = run_cli("show", *base, "done")
    assert gone.returncode == 1
    assert "no key 'done'" in gone.stderr

    refused = run_cli("evict", *base, "running")
    assert refused.returncode == 1
    assert "still running" in refused.stderr
    assert "--force" in refused.stderr
    assert sync_adb.keys_left() == ["running"]
    forced = run_cli("evict", "--force", *base, "running")
    assert forced.returncode == 0, forced.stderr
    assert sync_adb.keys_left() == []


def test_missing_table_is_a_clear_error(sync_adb: AdminDb) -> None:
    """Each command on a missing table prints one line naming ``idempotent migrate`` and exits 1."""
    for args in (["purge"], ["show", "--table", "absent_keys"], ["evict", "--table", "absent_keys"]):
        command, *options = args
        extra = [] if options else ["--table", "absent_keys"]
        keys = [] if command == "purge" else ["s", "k"]
        proc = run_cli(command, "--url", sync_adb.url, *options, *extra, *keys)
        assert proc.returncode == 1
        where = sa.make_url(sync_adb.url).render_as_string(hide_password=True)
        assert proc.stderr == (
            f"idempotent {command}: error: the idempotency keys table 'absent_keys' does not exist in "
            f"{where}; create it with `idempotent migrate --url <database URL> --table absent_keys`\n"
        )
        assert proc.stdout == ""


def test_missing_schema_is_named_before_migrate(sync_adb: AdminDb) -> None:
    """``show --schema nosuch`` says the schema does not exist (which migrate cannot fix) and never
    shows a password."""
    if sync_adb.name == "sqlite":
        pytest.skip("SQLite has no schemas to create; an unknown database name is its own error")
    url = sa.make_url(sync_adb.url)
    if sync_adb.name == "postgresql":  # trust authentication accepts any password: it must be masked
        url = url.set(password="s3cret-pw")  # noqa: S106  (a made-up password the message must mask)
    proc = run_cli(
        "show", "--url", url.render_as_string(hide_password=False), "--schema", "nosuch_schema_x", "s", "k"
    )
    assert proc.returncode == 1
    assert "the schema 'nosuch_schema_x' does not exist in " in proc.stderr
    assert "s3cret-pw" not in proc.stderr
    assert "create the schema first" in proc.stderr and "idempotent migrate" not in proc.stderr


def test_custom_schema(sync_adb: AdminDb) -> None:
    """``--schema`` addresses a keys table outside the default schema."""
    if sync_adb.name == "postgresql":
        schema = f"idem_schema_{secrets.token_hex(4)}"
        with sync_adb.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    else:
        schema = "main" if sync_adb.name == "sqlite" else sync_adb.engine.url.database or "test"
    keys = make_table(sa.MetaData(), f"idem_admin_s_{secrets.token_hex(4)}", schema=schema)
    keys.create(sync_adb.engine)
    try:
        sync_adb.insert("old", expires_in=-5, table=keys)
        sync_adb.insert("kept", table=keys)
        base = ["--url", sync_adb.url, "--table", keys.name, "--schema", schema]
        purged = run_cli("purge", *base)
        assert purged.returncode == 0, purged.stderr
        assert purged.stdout.startswith(f"purged 1 expired key from {schema}.{keys.name}")
        shown = run_cli("show", *base, "orders.place", "kept")
        assert shown.returncode == 0, shown.stderr
        evicted = run_cli("evict", *base, "orders.place", "kept")
        assert evicted.returncode == 0, evicted.stderr
        assert sync_adb.keys_left(keys) == []
    finally:
        drop(sync_adb.engine, keys)
        if sync_adb.name == "postgresql":
            with sync_adb.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema}")


def test_async_driver_urls(async_adb: AdminDb) -> None:
    """The commands accept async driver URLs (aiosqlite, psycopg async, aiomysql) as well."""
    async_adb.insert("old", expires_in=-5)
    async_adb.insert("kept")
    base = ["--url", async_adb.url, "--table", async_adb.table]
    purged = run_cli("purge", *base)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("purged 1 expired key ")
    shown = run_cli("show", *base, "orders.place", "kept")
    assert shown.returncode == 0, shown.stderr
    assert "status       completed" in shown.stdout
    evicted = run_cli("evict", *base, "orders.place", "kept")
    assert evicted.returncode == 0, evicted.stderr
    assert async_adb.keys_left() == []


def test_console_script(sync_adb: AdminDb) -> None:
    """The installed ``idempotent`` console script runs the same commands."""
    sync_adb.insert("k-1")
    proc = run_cli(
        "show", "--url", sync_adb.url, "--table", sync_adb.table, "orders.place", "k-1", script=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "key          k-1\n" in proc.stdout


BAD_URLS = [
    ("not a url", "invalid database URL: "),
    ("nosuchdb://host/db", "unknown database in the URL: "),
    ("postgresql+psycopg://127.0.0.1:1/test", "database error on postgresql+psycopg://127.0.0.1:1/test: "),
    ("mysql+pymysql://root@127.0.0.1:1/test", "database error on mysql+pymysql://root@127.0.0.1:1/test: "),
]
BAD_URL_IDS = ["malformed", "unknown-dialect", "postgresql-unreachable", "mariadb-unreachable"]


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=BAD_URL_IDS)
@pytest.mark.parametrize("command", ["purge", "show", "evict"])
def test_bad_url_is_one_line_and_exit_1(
    command: str, url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed URL, an unknown database or an unreachable server: one error line, exit status 1."""
    keys = [] if command == "purge" else ["orders.place", "k"]
    assert main([command, "--url", url, *keys]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"idempotent {command}: error: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=BAD_URL_IDS)
def test_bad_url_in_a_new_process(url: str, message: str) -> None:
    """The same through the real command line: no traceback, exit status 1."""
    proc = run_cli("evict", "--url", url, "orders.place", "k")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"idempotent evict: error: {message}")
    assert "Traceback" not in proc.stderr


def test_missing_sqlite_file_is_an_error_not_a_new_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite URL naming a file that does not exist is reported; no empty database is created."""
    missing = tmp_path / "nope.db"
    assert main(["show", "--url", f"sqlite:///{missing}", "orders.place", "k"]) == 1
    assert capsys.readouterr().err == (
        f"idempotent show: error: the SQLite database file {str(missing)!r} does not exist\n"
    )
    assert not missing.exists()


def test_usage_errors_exit_2() -> None:
    """Missing arguments and a batch size below 1 are usage errors (argparse, exit status 2)."""
    assert run_cli("show", "--url", "sqlite://").returncode == 2
    proc = run_cli("purge", "--url", "sqlite://", "--batch", "0")
    assert proc.returncode == 2
    assert "--batch: must be at least 1" in proc.stderr


@pytest.mark.parametrize(
    ("url", "hints"),
    [
        ("mysql://root@127.0.0.1/test", ["idempotent[mysql]", "mysql+pymysql://", "mariadb+pymysql://"]),
        ("mariadb://root@127.0.0.1/test", ["idempotent[mysql]", "mariadb+pymysql://"]),
        ("postgres://app@127.0.0.1/test", ["postgresql+psycopg://", "idempotent[postgres]"]),
    ],
    ids=["mysql-no-driver", "mariadb-no-driver", "postgres-scheme"],
)
def test_url_without_a_usable_driver_names_the_extra_and_url_form(
    url: str, hints: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A MySQL/MariaDB URL without a driver, or a ``postgres://`` URL, names the right extra and URL form."""
    assert main(["show", "--url", url, "orders.place", "k"]) == 1
    err = capsys.readouterr().err
    for hint in hints:
        assert hint in err
    assert ("idempotent[postgres]" in err) == url.startswith("postgres")
