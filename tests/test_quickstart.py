"""``examples/quickstart.py`` runs as shipped, on each database, and the README shows it whole."""

from __future__ import annotations

import re
import runpy
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.services import DATABASES, MARIADB_URL, POSTGRES_URL, require

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


@pytest.fixture(params=DATABASES)
def quickstart_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty place for the quickstart's fixed table names: a SQLite file, a fresh
    PostgreSQL schema (via ``search_path``) or a fresh MariaDB database."""
    name = f"quickstart_{secrets.token_hex(4)}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'quickstart.db'}"
        return
    server = POSTGRES_URL if request.param == "postgresql" else MARIADB_URL
    require(server, request.param)
    admin = sa.create_engine(server, poolclass=sa.NullPool)
    create = "SCHEMA" if request.param == "postgresql" else "DATABASE"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE {create} {name}")
    url = sa.make_url(server)
    if request.param == "postgresql":
        url = url.update_query_dict({"options": f"-csearch_path={name}"})
    else:
        url = url.set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP {create} {name}" + (" CASCADE" if create == "SCHEMA" else ""))
        admin.dispose()


def test_quickstart_runs_and_replays(quickstart_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The first call and its retry print the same Receipt; a second run replays: still two orders."""
    for _ in range(2):
        runpy.run_path(str(QUICKSTART), run_name="quickstart")["main"](quickstart_url)
    out = capsys.readouterr().out.splitlines()
    receipt = "Receipt(order_id=1, amount=Decimal('19.90'))"
    assert out == [f"first call: {receipt}", f"retry:      {receipt}", "orders:     2"] * 2


def test_readme_shows_the_quickstart_whole() -> None:
    """The README's first Python block is ``examples/quickstart.py``, character for character."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    assert block.group(1) == QUICKSTART.read_text(encoding="utf-8")
