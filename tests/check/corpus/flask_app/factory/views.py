from flask import Blueprint

orders_bp = Blueprint("orders", __name__)


@orders_bp.post("/orders")  # covered: registered by create_app()
def create_order():
    return {}
