"""An application factory: blueprints registered and the WSGI middleware installed inside it."""

from flask import Flask

from idempotent.contrib.wsgi import IdempotencyMiddleware


def create_app(config=None):
    app = Flask(__name__)
    from .views import orders_bp  # imported late, as factories often do
    from .api import api

    app.register_blueprint(orders_bp)
    app.register_blueprint(api, url_prefix="/api")
    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app)

    @app.post("/inline")  # covered: defined inside the factory, on the wrapped app
    def inline():
        return {}

    return app
