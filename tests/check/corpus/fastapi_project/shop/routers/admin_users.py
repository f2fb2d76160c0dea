from fastapi import APIRouter

users = APIRouter()


@users.post("/users")  # covered: nested two levels below the app
def create_user(): ...


@users.get("/users")
def list_users(): ...
