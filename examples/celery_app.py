"""A Celery application whose order task runs once per order, however often it is delivered.

Run a worker (RabbitMQ on localhost by default; set CELERY_BROKER_URL for another broker)::

    DATABASE_URL=postgresql+psycopg://app@localhost/shop \\
        celery -A examples.celery_app worker --concurrency=4

and send orders from a Python shell::

    from examples.celery_app import place_order
    result = place_order.delay("order-1001", 1990)
    result.get()   # {'order_id': 1, 'ref': 'order-1001', 'amount_cents': 1990}

Sending ``"order-1001"`` again (a client retry, a second click, a re-run batch) creates no second
row: the task replays the first result. ``python -m examples.celery_app`` shows that without a
broker, running the task in this process on a SQLite file.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from idempotent import configure
from idempotent.contrib.celery import idempotent_task
from idempotent.schema import make_table

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///celery-example.db")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS_URL = os.environ.get("CELERY_RESULT_BACKEND", "db+" + DATABASE_URL)

engine = sa.create_engine(DATABASE_URL)
SessionLocal = sessionmaker(engine)
configure(engine=engine)  # the keys table lives in the same database as the orders


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(sa.String(64))
    amount_cents: Mapped[int]


make_table(Base.metadata)  # the keys table, beside the application's own tables

app = Celery("shop", broker=BROKER_URL, backend=RESULTS_URL)
app.conf.update(
    task_acks_late=True,  # acknowledge after the task returned: a crash means redelivery
    task_reject_on_worker_lost=True,  # a killed pool process requeues its message
    worker_prefetch_multiplier=1,  # hold no unacknowledged messages behind a long task
    broker_transport_options={"visibility_timeout": 3600},  # Redis/SQS: longer than any task
)


@app.task(bind=True)
@idempotent_task(key_from="order_ref", session_factory=SessionLocal, scope="shop.place_order")
def place_order(self: Any, session: Session, order_ref: str, amount_cents: int) -> dict[str, Any]:
    """Create the order. Its row and the idempotency key commit together, once per ``order_ref``."""
    order = Order(ref=order_ref, amount_cents=amount_cents)
    session.add(order)
    session.flush()
    return {"order_id": order.id, "ref": order_ref, "amount_cents": amount_cents}


def main() -> None:
    """Send the same order twice, running the task in this process: one row, the same result."""
    Base.metadata.create_all(engine)
    first = place_order.apply(args=("order-1001", 1990)).get()
    second = place_order.apply(args=("order-1001", 1990)).get()
    with Session(engine) as session:
        rows = session.scalar(sa.select(sa.func.count()).where(Order.ref == "order-1001"))
    print(f"first:  {first}\nsecond: {second}\norder rows for order-1001: {rows}")


if __name__ == "__main__":
    main()
