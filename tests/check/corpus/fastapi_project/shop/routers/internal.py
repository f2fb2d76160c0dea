from fastapi import APIRouter

internal_router = APIRouter()
orphan = APIRouter()


@internal_router.post("/internal/jobs")  # finding: only the legacy app includes it
def start_job(): ...


@orphan.post("/orphan")  # finding: included nowhere
def orphaned(): ...
