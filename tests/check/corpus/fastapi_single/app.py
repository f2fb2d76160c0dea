"""FastAPI handlers in one file: every way to be handled, and every way not to be."""

import httpx
import idempotent as idem_module
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi import FastAPI as Application
from idempotent import idempotent
from idempotent import idempotent as once
from sqlalchemy import insert

from .db import Order, get_session, orders_table

app = FastAPI()
api = Application(title="second app, imported under an alias")
router = APIRouter(prefix="/r")


@app.post("/orders")  # finding: writes through the session
async def create_order(payload: dict, session=Depends(get_session)):
    session.add(Order(**payload))
    await session.commit()
    return {"ok": True}


@app.post("/ping")  # finding: no write in its body
def ping():
    return {"pong": True}


@app.get("/orders")  # GET: never reported
def list_orders():
    return []


@app.delete("/orders/{order_id}")  # DELETE: reported only when configured
def delete_order(order_id: int, session=Depends(get_session)):
    session.delete(session.get(Order, order_id))


@app.put("/orders/{order_id}")
@idempotent(key_from="order_id")
def replace_order(order_id: int): ...


@app.patch("/orders/{order_id}")
@once(key_from="order_id")
async def patch_order(order_id: int): ...


@api.post("/charges")
@idem_module.idempotent(key_from="key")
def charge(key: str): ...


@idempotent(key_from="key")  # IDEM003: above the route decorator
@app.post("/refunds")
def refund(key: str):
    httpx.post("https://psp.example/refunds")


@once(key_from="key")
@app.post("/tips")  # the route below @once registered the bare function...
@app.put("/tips")
def tip(key: str): ...


@app.post("/headers/param")
def header_parameter(idempotency_key: str = Header(...)): ...


@app.post("/headers/alias")
def header_alias(key: str = Header(alias="Idempotency-Key")): ...


@app.post("/headers/read")
async def header_read(request: Request):
    key = request.headers.get("idempotency-key")
    return {"key": key}


def require_key(idempotency_key: str = Header(...)) -> str:
    return idempotency_key


@app.post("/depends")
def with_dependency(key: str = Depends(require_key)): ...


@app.post("/depends/route", dependencies=[Depends(require_key)])
def with_route_dependency(): ...


@router.api_route("/mixed", methods=["GET", "POST"])  # finding: POST among GET
def mixed():
    return orders_table.insert()


@router.api_route("/read", methods=["GET", "HEAD"])
def read_only(): ...


@router.post("/sql")  # finding: a Core INSERT statement executed
def sql_insert(session=Depends(get_session)):
    session.execute(insert(orders_table).values(n=1))


@router.post("/outbound")
async def outbound():
    async with httpx.AsyncClient() as client:
        await client.post("https://psp.example/charges", json={})


@router.post("/suppressed")  # idempotent: ignore[IDEM001]
def suppressed_on_decorator(): ...


@router.post("/suppressed-def")
def suppressed_on_def():  # idempotent: ignore[IDEM001]
    ...


@router.post("/wrong-code")
def suppressed_other_code():  # idempotent: ignore[IDEM003]
    ...


@router.post("/all-codes")
def suppressed_everything():  # idempotent: ignore
    ...


def registered_later(payload: dict):
    return payload


def registered_wrapped(payload: dict):
    return payload


app.add_api_route("/later", registered_later, methods=["POST"])
app.add_api_route("/wrapped", idempotent(key_from="payload")(registered_wrapped), methods=["POST"])
app.add_api_route("/later-get", list_orders)
app.include_router(router)


def not_a_handler(session):
    session.commit()
