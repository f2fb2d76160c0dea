"""Flask routes, blueprints and class-based views in one file."""

import requests
from flask import Blueprint, Flask, request
from flask.views import MethodView, View

from idempotent import idempotent as idem

from .models import Order, db

app = Flask(__name__)
bp = Blueprint("orders", __name__)


@app.route("/orders", methods=["POST"])  # finding: writes through Flask-SQLAlchemy
def create_order():
    db.session.add(Order(**request.json))
    db.session.commit()
    return {}, 201


@app.route("/orders")  # GET only: route() without methods
def list_orders():
    return []


@app.post("/charges")  # finding: outbound POST
def charge():
    requests.post("https://psp.example/charges", json=request.json, timeout=5)
    return {}


@app.route("/refunds", methods=("GET", "post"))
@idem(key_from=lambda: request.headers.get("X-Request-Id"))
def refund():
    return {}


@bp.route("/notes", methods=["PUT"])  # finding: blueprint route, no app installs middleware
def put_note():
    return {}


@bp.patch("/notes/<int:note_id>")
def patch_note(note_id):  # reads the header itself
    key = request.headers["Idempotency-Key"]
    return {"key": key}


class OrderAPI(MethodView):
    def get(self, order_id):
        return {}

    def post(self):  # finding: MethodView method
        Order.query.session.add(Order())
        return {}, 201

    @idem(key_from="order_id")
    def put(self, order_id):
        return {}


class Export(View):
    methods = ["POST"]

    def dispatch_request(self):  # finding: View with methods = ["POST"]
        return {}


def bulk_import():
    return {}


app.add_url_rule("/orders/api", view_func=OrderAPI.as_view("order_api"))
app.add_url_rule("/export", view_func=Export.as_view("export"))
app.add_url_rule("/import", "import", bulk_import, methods=["POST"])  # finding at bulk_import
app.register_blueprint(bp)
