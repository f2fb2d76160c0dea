"""A worker process for the multi-process tests: places one order under @idempotent and reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa


def place_in_process(
    url: str, keys_table: str, orders_table: str, ref: str, start: Any, results: Any
) -> None:
    """Wait for the start signal, place the order, put the Receipt (as a tuple) or the error on ``results``."""
    from idempotent import SQLStore, idempotent

    engine = sa.create_engine(url)
    orders = sa.Table(orders_table, sa.MetaData(), autoload_with=engine)

    @dataclasses.dataclass
    class Receipt:
        order_id: int
        ref: str

    @idempotent(key_from="ref", scope="tests.proc", store=SQLStore(engine, keys_table))
    def place(conn: Any, ref: str) -> Receipt:
        result = conn.execute(orders.insert().values(ref=ref, amount=1))
        return Receipt(int(result.inserted_primary_key[0]), ref)

    start.wait()
    try:
        with engine.connect() as conn:
            receipt = place(conn, ref)
        results.put(("ok", receipt.order_id, receipt.ref))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", type(exc).__name__, str(exc)))
    finally:
        engine.dispose()
