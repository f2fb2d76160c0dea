"""The quickstart: an order placed twice with one key runs once. No server needed.

Run it on a SQLite file with `python examples/quickstart.py`, or give a database URL:
`python examples/quickstart.py postgresql+psycopg://app@localhost/app`.
"""

import sys
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from idempotent import idempotent
from idempotent.schema import make_table


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(sa.String(64))
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


make_table(Base.metadata)  # the keys table, created with your own tables


@dataclass
class Receipt:
    order_id: int
    amount: Decimal


@idempotent(key_from="order_ref", scope="shop.place_order")
def place_order(session: Session, order_ref: str, amount: Decimal) -> Receipt:
    order = Order(ref=order_ref, amount=amount)
    session.add(order)
    session.flush()
    return Receipt(order.id, amount)


def main(url: str) -> None:
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)

    with Session(engine) as session:
        # The session is in no transaction: the decorator begins one, runs the function and
        # commits the order and the key together.
        print("first call:", place_order(session, "order-1001", Decimal("19.90")))
        # Same key: the stored Receipt comes back and nothing runs.
        print("retry:     ", place_order(session, "order-1001", Decimal("19.90")))

    with Session(engine) as session:
        session.get(Order, 1)  # a read: SQLAlchemy begins a transaction here...
        place_order(session, "order-1002", Decimal("5.00"))  # ...which the call joins,
        session.commit()  # so commit it, as any write (or decorate with commit=True)

    with Session(engine) as session:
        print("orders:    ", session.scalar(sa.select(sa.func.count()).select_from(Order)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///quickstart.db")
