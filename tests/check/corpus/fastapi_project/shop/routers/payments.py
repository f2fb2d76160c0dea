import fastapi

router = fastapi.APIRouter()


@router.post("/payments")  # covered: included under an alias
def pay(): ...
