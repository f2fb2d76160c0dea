"""``store_errors``: recorded failures replay as the same exception type, in both modes.

Other exceptions release the key so a retry runs. A stored failure is rebuilt only from the
classes listed in ``store_errors``; one that cannot be rebuilt replays as ``StoredError``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.orm import Session

from idempotent import idempotent
from idempotent.errors import StoredError
from tests.lease.conftest import LeaseDb, Recorder


class PaymentDeclinedError(Exception):
    """The payment provider declined the charge: a final answer worth replaying."""


class RejectedError(Exception):
    """An error whose constructor does not accept its own ``args``."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(reason)


def test_lease_mode_replays_the_same_exception_type(ldb: LeaseDb, recorder: Recorder) -> None:
    """A ``store_errors`` exception is recorded, then raised again on replay (same type and args), no run."""
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        raise PaymentDeclinedError("card_declined", "insufficient funds")

    fn = ldb.idempotent(
        charge,
        key_from="payment_id",
        store=ldb.store(),
        store_errors=[PaymentDeclinedError],
        hooks=[recorder],
    )
    with pytest.raises(PaymentDeclinedError) as first:
        ldb.call(fn, "p-1")
    with pytest.raises(PaymentDeclinedError) as replayed:
        ldb.call(fn, "p-1")
    assert type(replayed.value) is PaymentDeclinedError
    assert replayed.value.args == first.value.args == ("card_declined", "insufficient funds")
    assert runs == ["p-1"]
    row = ldb.row("tests.lease.charge", "p-1")
    assert (row.status, row.error_type) == ("failed", f"{__name__}.PaymentDeclinedError")
    assert recorder.names() == ["executed:failed", "replayed"]


def test_other_exceptions_release_the_key(ldb: LeaseDb, recorder: Recorder) -> None:
    """An exception not listed in ``store_errors`` releases the claim: nothing is stored, a retry runs."""
    runs: list[str] = []

    def charge(payment_id: str) -> str:
        runs.append(payment_id)
        if len(runs) == 1:
            raise TimeoutError("provider timed out")
        return "charged"

    fn = ldb.idempotent(
        charge,
        key_from="payment_id",
        store=ldb.store(),
        store_errors=[PaymentDeclinedError],
        hooks=[recorder],
    )
    with pytest.raises(TimeoutError):
        ldb.call(fn, "p-2")
    assert ldb.rows() == []
    assert ldb.call(fn, "p-2") == "charged"
    assert runs == ["p-2", "p-2"]
    assert recorder.names() == ["released", "executed"]


def test_unrebuildable_error_replays_as_stored_error(ldb: LeaseDb) -> None:
    """A recorded failure that its class cannot rebuild, or whose class is no longer listed, is StoredError.

    The wrapper names the original type and carries its arguments; a class is never looked
    up by the name read from the row.
    """

    def review(claim_id: str) -> str:
        raise RejectedError(reason="fraud suspected")

    store = ldb.store()
    fn = ldb.idempotent(review, key_from="claim_id", store=store, store_errors=[RejectedError])
    with pytest.raises(RejectedError):
        ldb.call(fn, "c-1")
    with pytest.raises(StoredError) as replayed:
        ldb.call(fn, "c-1")
    assert replayed.value.type_name == f"{__name__}.RejectedError"
    assert replayed.value.stored_args == ("fraud suspected",)

    def charge(claim_id: str) -> str:
        raise PaymentDeclinedError("declined")

    listed = ldb.idempotent(charge, key_from="claim_id", scope="tests.lease.unlisted", store=store,
                            store_errors=[PaymentDeclinedError])  # fmt: skip
    unlisted = ldb.idempotent(charge, key_from="claim_id", scope="tests.lease.unlisted", store=store)
    with pytest.raises(PaymentDeclinedError):
        ldb.call(listed, "c-2")
    with pytest.raises(StoredError, match="PaymentDeclined"):
        ldb.call(unlisted, "c-2")


def _transactional(ldb: LeaseDb, runs: list[str], **options: Any) -> Any:
    """A transaction-mode function that writes a payment row, then is declined."""
    payments = ldb.payments
    options = {"key_from": "payment_id", "scope": "tests.lease.tx_charge", "store": ldb.store(), **options}
    if not ldb.is_async:

        @idempotent(**options)
        def charge(session: Session, payment_id: str) -> str:
            runs.append(payment_id)
            session.execute(payments.insert().values(ref=payment_id))
            raise PaymentDeclinedError("card_declined")

        def call(payment_id: str, *, begin: bool = False) -> Any:
            with Session(ldb.engine) as session:
                if begin:
                    session.begin()
                return charge(session, payment_id)

        return call

    from sqlalchemy.ext.asyncio import AsyncSession

    engine = ldb.driver_engine()

    @idempotent(**options)
    async def acharge(session: AsyncSession, payment_id: str) -> str:
        runs.append(payment_id)
        await session.execute(payments.insert().values(ref=payment_id))
        raise PaymentDeclinedError("card_declined")

    async def acall(payment_id: str, begin: bool) -> Any:
        async with AsyncSession(engine) as session:
            if begin:
                await session.begin()
            return await acharge(session, payment_id)

    return lambda payment_id, *, begin=False: asyncio.run(acall(payment_id, begin))


def test_transaction_mode_owned_records_the_error_and_rolls_back_the_writes(ldb: LeaseDb) -> None:
    """Transaction mode, decorator-owned transaction: the failure row commits, the business write does not.

    The retry raises the same exception type without running the function.
    """
    runs: list[str] = []
    charge = _transactional(ldb, runs, store_errors=[PaymentDeclinedError])
    with pytest.raises(PaymentDeclinedError):
        charge("p-3")
    with pytest.raises(PaymentDeclinedError) as replayed:
        charge("p-3")
    assert replayed.value.args == ("card_declined",)
    assert runs == ["p-3"]
    assert ldb.payment_count() == 0
    assert ldb.row("tests.lease.tx_charge", "p-3").status == "failed"


def test_transaction_mode_joined_does_not_record_the_error(ldb: LeaseDb) -> None:
    """In the caller's own transaction the failure is not durable: the key is gone and a retry runs."""
    runs: list[str] = []
    charge = _transactional(ldb, runs, store_errors=[PaymentDeclinedError])
    with pytest.raises(PaymentDeclinedError):
        charge("p-4", begin=True)
    with pytest.raises(PaymentDeclinedError):
        charge("p-4", begin=True)
    assert runs == ["p-4", "p-4"]
    assert ldb.rows() == []
    assert ldb.payment_count() == 0
