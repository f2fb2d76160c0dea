"""The administration API (``idempotent.admin``) on real databases, sync and async URLs."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from idempotent import InProgress, SQLStore, idempotent
from idempotent.admin import evict, format_key, purge, show
from idempotent.errors import ConfigurationError, TableMissing
from tests.admin.conftest import AdminDb


def test_purge_removes_exactly_the_expired_keys(adb: AdminDb) -> None:
    """Expired keys go; live keys stay, and so does a call still running within its lease past its TTL."""
    adb.insert("live")
    adb.insert("expired", expires_in=-1)
    adb.insert("failed-expired", status="failed", error_type="x.Declined", expires_in=-1)
    adb.insert("abandoned", status="in_progress", result=None, expires_in=-1, locked_for=-1)
    adb.insert("running-past-ttl", status="in_progress", result=None, expires_in=-1, locked_for=30)
    adb.insert("abandoned-within-ttl", status="in_progress", result=None, locked_for=-1)
    assert purge(adb.url, table=adb.table) == 3
    assert adb.keys_left() == ["abandoned-within-ttl", "live", "running-past-ttl"]
    assert purge(adb.url, table=adb.table) == 0


def test_purge_works_in_batches_and_reports_progress(adb: AdminDb) -> None:
    """``batch`` bounds each transaction; ``progress`` gets the running total after every batch."""
    now = adb.now_ms()
    rows = [
        {"scope": "s", "key": f"k{i:02d}", "fingerprint": None, "status": "completed", "owner": "o",
         "locked_until": now - 5000, "created_at": now - 9000, "expires_at": now - 1000,
         "result_codec": "json", "result": "1", "error_type": None}
        for i in range(23)
    ]  # fmt: skip
    adb.insert_rows(rows)
    adb.insert("live")
    seen: list[int] = []
    assert purge(adb.url, table=adb.table, batch=5, progress=seen.append) == 23
    assert seen == [5, 10, 15, 20, 23]
    assert adb.keys_left() == ["live"]


def test_purge_cutoff_follows_the_clock_offset(adb: AdminDb) -> None:
    """The cut-off is the database clock plus ``clock_offset``: moving it past a TTL purges that key."""
    adb.insert("one-hour", expires_in=3600)
    adb.insert("two-days", expires_in=2 * 86400)
    assert purge(adb.url, table=adb.table, clock_offset=7200) == 1
    assert adb.keys_left() == ["two-days"]


def test_show_reads_a_key_the_decorator_stored(sync_adb: AdminDb) -> None:
    """``show`` returns what the decorator wrote: status, times on the database clock, fingerprint, result."""
    store = SQLStore(sync_adb.engine, sync_adb.table)

    @idempotent(key_from="payment_id", scope="payments.charge", mode="lease", store=store, ttl=3600)
    def charge(payment_id: str, amount: int) -> dict[str, object]:
        return {"payment": payment_id, "amount": amount, "note": "grüße, 世界"}

    charge("p-1", 250)
    info = show(sync_adb.url, "payments.charge", "p-1", table=sync_adb.table)
    assert info is not None
    assert info.status == "completed"
    assert info.fingerprint is not None
    assert info.fingerprint.startswith("v1:")
    assert json.loads(info.result or "") == {"payment": "p-1", "amount": 250, "note": "grüße, 世界"}
    assert info.expires_at - info.created_at == 3600 * 1000
    assert info.created_at <= info.now < info.expires_at
    assert not info.expired
    assert not info.running
    assert info.state.startswith("completed")
    assert show(sync_adb.url, "payments.charge", "p-2", table=sync_adb.table) is None


def test_show_accepts_the_full_long_scope(sync_adb: AdminDb) -> None:
    """A scope over 255 characters is stored shortened; ``show`` and ``evict`` take it in full."""
    long_scope = "POST /v1/accounts/{account_id}/transfers " + "x" * 300
    store = SQLStore(sync_adb.engine, sync_adb.table)

    @idempotent(key_from="key", scope=long_scope, mode="lease", store=store)
    def transfer(key: str) -> str:
        return "sent"

    transfer("t-1")
    info = show(sync_adb.url, long_scope, "t-1", table=sync_adb.table)
    assert info is not None
    assert len(info.scope) == 255
    assert evict(sync_adb.url, long_scope, "t-1", table=sync_adb.table) is not None
    assert sync_adb.keys_left() == []


def test_evict_deletes_a_key_so_the_next_call_runs(adb: AdminDb) -> None:
    """``evict`` removes one key and returns what it removed; None when there is no such key."""
    adb.insert("done")
    adb.insert("other")
    removed = evict(adb.url, "orders.place", "done", table=adb.table)
    assert removed is not None
    assert removed.status == "completed"
    assert adb.keys_left() == ["other"]
    assert evict(adb.url, "orders.place", "done", table=adb.table) is None


def test_evict_refuses_a_running_key_unless_forced(adb: AdminDb) -> None:
    """A key whose call is within its lease is refused with InProgress; ``force=True`` evicts it."""
    adb.insert("running", status="in_progress", result=None, locked_for=30)
    with pytest.raises(InProgress, match="force") as caught:
        evict(adb.url, "orders.place", "running", table=adb.table)
    assert 0 < caught.value.retry_after <= 30
    assert adb.keys_left() == ["running"]
    assert evict(adb.url, "orders.place", "running", table=adb.table, force=True) is not None
    assert adb.keys_left() == []


def test_missing_table_names_the_command_that_creates_it(adb: AdminDb) -> None:
    """Every call on a table that does not exist raises TableMissing naming ``idempotent migrate``."""
    for call in (
        lambda: purge(adb.url, table="no_such_keys"),
        lambda: show(adb.url, "s", "k", table="no_such_keys"),
        lambda: evict(adb.url, "s", "k", table="no_such_keys"),
    ):
        with pytest.raises(
            TableMissing, match="idempotent migrate --url <database URL> --table no_such_keys"
        ):
            call()


def test_engine_and_connection_binds(sync_adb: AdminDb) -> None:
    """The API takes an Engine or a Connection too; on a Connection in a transaction, purge refuses."""
    sync_adb.insert("expired", expires_in=-1)
    sync_adb.insert("live")
    assert show(sync_adb.engine, "orders.place", "live", table=sync_adb.table) is not None
    with sync_adb.engine.connect() as conn:
        conn.execute(sa.select(1))
        with pytest.raises(ConfigurationError, match="no transaction"):
            purge(conn, table=sync_adb.table)
        conn.rollback()
        assert purge(conn, table=sync_adb.table) == 1
    with pytest.raises(ConfigurationError, match="batch"):
        purge(sync_adb.engine, table=sync_adb.table, batch=0)


def test_show_says_what_the_next_call_does(adb: AdminDb) -> None:
    """``idempotent show`` says whether the next call waits, takes over, raises or runs.

    The lease line appears only while a call holds (or held) the key in progress.
    """
    adb.insert("running", status="in_progress", result=None, locked_for=30)
    adb.insert("abandoned", status="in_progress", result=None, locked_for=-5)
    adb.insert("declined", status="failed", error_type="shop.PaymentDeclined", result='["card_declined"]')
    adb.insert("old", expires_in=-5)
    expected = {
        "running": "in_progress (a call holds the lease)",
        "abandoned": "in_progress, lease expired (the next call takes over)",
        "declined": "failed (the stored error is raised again)",
        "old": "completed, expired (the next call runs again)",
    }
    for key, state in expected.items():
        info = show(adb.url, "orders.place", key, table=adb.table)
        assert info is not None
        text = format_key(info)
        assert f"status       {state}\n" in text
        assert ("error        shop.PaymentDeclined\n" in text) == (key == "declined")
        assert ("lease until" in text) == (info.status == "in_progress")
