from flask import Blueprint

loose = Blueprint("loose", __name__)


@loose.post("/loose")  # finding: this blueprint is never registered
def loose_post():
    return {}
