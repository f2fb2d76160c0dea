"""An order API whose ``POST /orders`` is safe to retry, with Flask and Flask-SQLAlchemy.

Run it (tables are created at start-up, on an empty database too)::

    pip install 'idempotent[flask]' flask-sqlalchemy
    flask --app examples/flask_app.py run

    curl -i -X POST localhost:5000/orders -H 'Authorization: Bearer alice' \\
         -H 'Idempotency-Key: 5b0c1c9e' -H 'Content-Type: application/json' \\
         -d '{"item": "tea", "quantity": 2}'

Send the same request again: the same ``201`` comes back, marked ``Idempotent-Replayed: true``,
and ``GET /orders`` still lists one order. ``DATABASE_URL`` names the database (default: the
SQLite file ``orders.db``); ``ORDERS_TABLE`` and ``IDEMPOTENCY_TABLE`` rename the two tables, so
several copies can share one database server.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy

from idempotent import configure
from idempotent.contrib.flask import idempotent_route
from idempotent.schema import make_table

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///orders.db")
KEYS_TABLE = os.environ.get("IDEMPOTENCY_TABLE", "idempotency_keys")

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = DATABASE_URL
if not DATABASE_URL.startswith("sqlite"):
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 20, "max_overflow": 40, "pool_timeout": 60}
db = SQLAlchemy(app)
orders = sa.Table(
    os.environ.get("ORDERS_TABLE", "orders"),
    db.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(200)),
)
make_table(db.metadata, KEYS_TABLE)  # the keys table lives beside the business tables

with app.app_context():
    db.create_all()  # the orders and keys tables, when they are missing
    configure(db.engine, table=KEYS_TABLE)


def caller(req: Any) -> str | None:
    """The principal: ``Authorization: Bearer <name>`` (a real API would verify a token here)."""
    scheme, _, name = req.headers.get("Authorization", "").partition(" ")
    return name.strip() or None if scheme.lower() == "bearer" else None


@app.post("/orders")
@idempotent_route(principal_from=caller)  # the session is Flask-SQLAlchemy's db.session
def create_order() -> Any:
    """Place an order: one row, whatever the number of retries with the same key."""
    data = request.get_json(silent=True)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("item"), str)
        or type(data.get("quantity")) is not int
    ):
        return {"error": 'send JSON {"item": str, "quantity": int}'}, 400
    owner = caller(request)
    result = db.session.execute(
        orders.insert().values(item=data["item"], quantity=data["quantity"], owner=owner)
    )
    order_id = int(result.inserted_primary_key[0])
    order = {"id": order_id, "item": data["item"], "quantity": data["quantity"], "owner": owner}
    return order, 201, {"Location": f"/orders/{order_id}"}  # committed by the decorator


@app.get("/orders")
def list_orders() -> Any:
    """Every order, oldest first."""
    rows = db.session.execute(sa.select(orders).order_by(orders.c.id)).mappings()
    return jsonify([dict(row) for row in rows])
