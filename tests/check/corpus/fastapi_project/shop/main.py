from fastapi import FastAPI
from idempotent.contrib.asgi import IdempotencyMiddleware as KeyMiddleware

from shop import v1
from shop.routers import admin, orders
from shop.routers.payments import router as payments_router

from .db import SessionLocal

app = FastAPI()
app.add_middleware(KeyMiddleware, engine=SessionLocal.kw["bind"])
app.include_router(orders.router, prefix="/orders")
app.include_router(payments_router)
app.include_router(admin.admin)
app.mount("/v1", v1.app)


@app.post("/health")  # covered: the app itself has the middleware
def health(): ...
