"""Celery tasks: IDEM002 (opt-in) for bodies without idempotency, IDEM003 for a misplaced decorator."""

import stripe
from celery import Celery, shared_task

from idempotent import idempotent

app = Celery("shop")


@app.task  # IDEM002 when selected: writes
def send_receipt(order_id):
    stripe.Charge.create(amount=100, idempotency_key=None)


@app.task(bind=True, acks_late=True)  # IDEM002 when selected: no write seen
def recompute(self, order_id):
    return order_id


@shared_task
@idempotent(key_from="order_id")
def settle(order_id):  # decorated below the task decorator
    return order_id


@idempotent(key_from="order_id")  # IDEM003: above the task decorator
@shared_task(name="refund")
def refund(order_id):
    return order_id


@app.task  # idempotent: ignore[IDEM002]
def cleanup():
    return None


def helper(order_id):  # not a task
    return order_id
