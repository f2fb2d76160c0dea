from celery import shared_task
from company.asgi import KeyGuard
from company.http import keyed, with_request_key
from fastapi import FastAPI

app = FastAPI()
guarded = FastAPI()
guarded.add_middleware(KeyGuard)


@app.delete("/orders/{order_id}")  # finding: DELETE is configured
def delete_order(order_id: int): ...


@app.post("/orders")
@with_request_key
def create_order(): ...


@app.put("/orders/{order_id}")
@keyed()
def put_order(order_id: int): ...


@guarded.post("/guarded")  # covered by the configured middleware
def guarded_post(): ...


@shared_task  # finding: IDEM002 is selected in pyproject.toml
def nightly():
    return None
