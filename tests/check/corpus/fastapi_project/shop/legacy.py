"""A second app in the same package, without the middleware."""

from fastapi import APIRouter, FastAPI

from .routers.internal import internal_router

legacy = FastAPI()
legacy_router = APIRouter()


@legacy_router.post("/legacy/orders")  # finding: legacy has no middleware
def legacy_order(db=None):
    db.add(object())
    db.commit()


legacy.include_router(legacy_router)
legacy.include_router(internal_router)
