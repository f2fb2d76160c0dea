from fastapi import APIRouter

from . import admin_users

admin = APIRouter(prefix="/admin")
admin.include_router(admin_users.users)


@admin.patch("/settings")  # covered: admin is included by shop.main.app
def patch_settings(): ...
