"""``idempotent demo``: the library end to end on a SQLite file, no server needed."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import typing
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["register", "run_demo"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run an order-placing function on a SQLite file: run once, replay, race, roll back",
        description="Show @idempotent end to end on a SQLite file (no server needed).",
    )
    parser.add_argument("--db", type=Path, help="SQLite file to use (default: a new temporary file)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent duplicate callers (default 8)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.db is not None:
        return run_demo(args.db, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="idempotent-demo-") as folder:
        return run_demo(Path(folder) / "demo.db", threads=args.threads)


class PaymentDeclined(Exception):
    """The demo's failing call."""


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What placing an order returns (and what a retry gets back)."""

    order_id: int
    order_ref: str
    amount: Decimal


def run_demo(path: Path, *, threads: int = 8) -> int:
    """Run the demo on the SQLite file at ``path``; return 0 when every step behaved as promised."""
    import sqlalchemy as sa  # noqa: PLC0415  (keep `idempotent --help` fast)
    from sqlalchemy.orm import Session  # noqa: PLC0415

    from idempotent import SQLStore, idempotent  # noqa: PLC0415
    from idempotent.schema import make_table  # noqa: PLC0415

    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    metadata = sa.MetaData()
    keys = make_table(metadata)
    orders = sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("amount", sa.Numeric(10, 2), nullable=False),
    )
    metadata.create_all(engine)
    executions: list[str] = []
    lock = threading.Lock()
    both_in = threading.Barrier(threads)

    @idempotent(key_from="order_ref", scope="demo.place_order", store=SQLStore(engine))
    def place_order(session: Session, order_ref: str, amount: Decimal, decline: bool = False) -> Receipt:
        with lock:
            executions.append(order_ref)
        result = session.execute(orders.insert().values(ref=order_ref, amount=amount))
        order_id = typing.cast("Any", result).inserted_primary_key[0]
        if decline:
            raise PaymentDeclined(order_ref)
        return Receipt(int(order_id), order_ref, amount)

    def call(ref: str, amount: str, decline: bool = False) -> Receipt:
        with Session(engine) as session:
            return place_order(session, ref, Decimal(amount), decline)

    def count(table: sa.Table, **where: str) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        for name, value in where.items():
            query = query.where(table.c[name] == value)
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    ok = True

    def step(title: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"[{'ok' if passed else 'FAILED'}] {title}\n       {detail}")

    print(f"idempotent demo on {path}\n")
    first = call("order-1001", "19.90")
    step("first call runs the function", executions == ["order-1001"], f"returned {first}")

    again = call("order-1001", "19.90")
    step(
        "a retry with the same key replays the stored result",
        again == first and executions == ["order-1001"] and count(orders) == 1,
        f"returned {again} (equal: {again == first}); the function ran {len(executions)} time(s)",
    )

    def racer(_: int) -> Receipt:
        both_in.wait()
        return call("order-2002", "5.00")

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(racer, range(threads)))
    ran = executions.count("order-2002")
    step(
        f"{threads} concurrent duplicates run it once",
        ran == 1 and len(set(results)) == 1 and count(orders, ref="order-2002") == 1,
        f"{ran} execution, {count(orders, ref='order-2002')} order row, {len(set(results))} distinct result",
    )

    try:
        call("order-3003", "99.00", decline=True)
        declined = False
    except PaymentDeclined:
        declined = True
    rolled_back = count(orders, ref="order-3003") == 0 and count(keys, key="order-3003") == 0
    step(
        "a failure rolls back the order and the key together",
        declined and rolled_back,
        f"raised PaymentDeclined: {declined}; order and key rows left behind: {not rolled_back}",
    )
    retry = call("order-3003", "99.00")
    step(
        "so the retry runs again and succeeds",
        executions.count("order-3003") == 2 and count(orders, ref="order-3003") == 1,
        f"returned {retry}",
    )
    engine.dispose()
    print("\nall steps behaved as promised" if ok else "\nsome steps did NOT behave as promised")
    return 0 if ok else 1
