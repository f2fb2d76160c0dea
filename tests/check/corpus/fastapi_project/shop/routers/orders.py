from fastapi import APIRouter

router = APIRouter()


@router.post("/")  # covered through app.include_router(orders.router)
async def create_order(session=None):
    session.add(object())
    await session.commit()


@router.put("/{order_id}")  # covered
async def replace_order(order_id: int): ...
