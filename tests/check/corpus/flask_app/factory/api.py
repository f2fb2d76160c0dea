from flask import Blueprint
from flask.views import MethodView

api = Blueprint("api", __name__)
v2 = Blueprint("v2", __name__)
api.register_blueprint(v2, url_prefix="/v2")


class Items(MethodView):
    def post(self):  # covered: registered on the v2 blueprint, nested in api
        return {}


v2.add_url_rule("/items", view_func=Items.as_view("items"))


@v2.route("/things", methods=["DELETE", "PATCH"])  # covered
def things():
    return {}
