"""Starlette apps built from route lists, mounts and endpoint classes."""

from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, Router

from idempotent import idempotent
from idempotent.contrib.asgi import IdempotencyMiddleware


async def homepage(request):  # GET only: Route without methods
    return JSONResponse({})


async def create_order(request):  # finding: POST route on the open app
    await request.app.state.db.execute("INSERT INTO orders DEFAULT VALUES")
    return JSONResponse({}, status_code=201)


@idempotent(key_from="request")
async def create_payment(request):  # decorated: fine wherever it is mounted
    return JSONResponse({})


async def upload(request):  # finding: nested in an inline Mount
    return JSONResponse({})


class Orders(HTTPEndpoint):
    async def get(self, request):
        return JSONResponse([])

    async def post(self, request):  # finding: endpoint class method on the open app
        return JSONResponse({})

    async def delete(self, request):  # DELETE: not checked by default
        return JSONResponse({})


class Receipts(HTTPEndpoint):
    async def put(self, request):  # reads the header itself
        return JSONResponse({"key": request.headers["Idempotency-Key"]})


routes = [
    Route("/", homepage),
    Route("/orders", create_order, methods=["POST"]),
    Route("/payments", create_payment, methods=["POST"]),
    Route("/orders/{id}", Orders),
    Route("/receipts/{id}", Receipts),
    Mount("/files", routes=[Route("/upload", upload, methods=["PUT"])]),
]

app = Starlette(routes=routes)


async def secured_create(request):  # covered: the secured app has the middleware
    return JSONResponse({})


class SecuredEndpoint(HTTPEndpoint):
    async def patch(self, request):  # covered: only routed by the secured app
        return JSONResponse({})


inner = Router(routes=[Route("/inner", secured_create, methods=["POST"])])

secured = Starlette(
    routes=[
        Mount("/api", app=inner),
        Route("/thing", SecuredEndpoint),
    ],
    middleware=[Middleware(IdempotencyMiddleware, ttl_seconds=86400)],
)
