"""The URLconf and async views of the Django async tests (tests/contrib/test_django_async.py).

Each view writes one order row through the Django ORM's async methods on the database of the
running test (:data:`ASTATE`) and records that it ran; the JSON body says what else to do:
``fail`` raises after the write (so does the run after :attr:`AsyncState.fail_next` is set),
``status`` answers with that status. The sync ``plain`` view of
tests/contrib/django_urls.py is here too, for the middleware in an async stack.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import tests.contrib.django_settings  # noqa: F401  (configures Django first)

# isort: split
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View

from idempotent.contrib.django import idempotent_view
from tests.contrib.django_urls import Boom, answer, plain


@dataclass
class AsyncState:
    """The running test's database alias and order model, and what the views did."""

    alias: str = ""
    order: Any = None
    runs: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None  # the first run waits for it (the concurrency tests)
    started: asyncio.Event | None = None
    fail_next: bool = False  # the next run raises after its write

    def reset(self, alias: str, order: Any) -> None:
        self.alias, self.order, self.runs, self.hold, self.started = alias, order, [], None, None
        self.fail_next = False


ASTATE = AsyncState()


async def place(request: HttpRequest, where: str) -> HttpResponse:
    """Write the order the body describes and answer it; raises Boom on ``fail``."""
    data = json.loads(request.body or b"{}")
    ASTATE.runs.append(where)
    order = await ASTATE.order.objects.using(ASTATE.alias).acreate(
        ref=data.get("ref", "r"), amount=data.get("amount", 1)
    )
    if ASTATE.hold is not None and ASTATE.started is not None:
        ASTATE.started.set()
        await ASTATE.hold.wait()
    if data.get("fail") or ASTATE.fail_next:
        ASTATE.fail_next = False
        raise Boom("the payment provider timed out")
    return answer(order, data, where, len(ASTATE.runs))


@idempotent_view()
async def orders(request: HttpRequest, shop: str) -> HttpResponse:
    return await place(request, "async-function")


class OrderView(View):
    """An async class-based view with a decorated ``post``."""

    @method_decorator(idempotent_view())
    async def post(self, request: HttpRequest) -> HttpResponse:
        return await place(request, "async-method")


@method_decorator(idempotent_view(), name="dispatch")
class OrderDispatchView(View):
    """An async class-based view decorated on ``dispatch``."""

    async def post(self, request: HttpRequest) -> HttpResponse:
        return await place(request, "async-dispatch")


async def aplain(request: HttpRequest, pk: int) -> HttpResponse:
    """An undecorated async view (the middleware tests)."""
    return await place(request, "async-plain")


urlpatterns = [
    path("shops/<str:shop>/orders/", orders),
    path("method/", OrderView.as_view()),
    path("dispatch/", OrderDispatchView.as_view()),
    path("aplain/<int:pk>/", aplain),
    path("plain/<int:pk>/", plain),
]
