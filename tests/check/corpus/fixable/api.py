#!/usr/bin/env python
"""Orders API.

The fixer must leave this docstring, the comments and the odd spacing below exactly as they are.
"""
from __future__ import annotations

import logging  # keep this comment

from fastapi import (
    APIRouter,
    FastAPI,
)

from idempotent import idempotent

log = logging.getLogger(__name__)
app = FastAPI()
router = APIRouter()


# A comment above the decorators stays above them.
@app.post(
    "/orders",
    status_code=201,
)
async def create_order(payload: dict,   session = None):  # trailing comment stays
    session.add(payload)
    await session.commit()


@router.put("/orders/{order_id}")
def  replace_order(order_id: int):
    return {"id": order_id}


@idempotent(key_from="order_id")  # misplaced: above the route decorator
@app.patch("/orders/{order_id}")
def patch_order(order_id: int):
    return {"id": order_id}


class Handlers:
    @staticmethod
    def helper():
        return None


@app.get("/orders")
def list_orders():
    return []
