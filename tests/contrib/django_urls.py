"""The URLconf and views of the Django tests (``ROOT_URLCONF`` in tests/contrib/test_django.py).

Every view writes one order row through the Django ORM on the database of the running test
(:data:`STATE`) and records that it ran; the JSON body says what else to do: ``fail`` raises
after the write, ``status`` answers with that status, ``rollback`` marks the transaction for
rollback, ``invalid`` (DRF) raises a ValidationError after the write.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import tests.contrib.django_settings  # noqa: F401  (configures Django before DRF is imported)

# isort: split
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from rest_framework import serializers, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import api_view
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotent.contrib.django import idempotent_view


class Boom(Exception):
    """What a view raises after writing its row."""


@dataclass
class State:
    """The running test's database alias and order model, and what the views did."""

    alias: str = ""
    order: Any = None
    runs: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None  # the first run waits for it (the 409 test)
    started: threading.Event = field(default_factory=threading.Event)

    def reset(self, alias: str, order: Any) -> None:
        self.alias, self.order, self.runs, self.hold = alias, order, [], None
        self.started = threading.Event()


STATE = State()


def place(request: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """Write the order the body describes; return it and the body. Raises Boom on ``fail``."""
    raw = request.body if isinstance(request, HttpRequest) else json.dumps(request.data).encode()
    data = json.loads(raw or b"{}")
    with STATE.lock:
        STATE.runs.append(where)
    order = STATE.order.objects.using(STATE.alias).create(
        ref=data.get("ref", "r"), amount=data.get("amount", 1)
    )
    if STATE.hold is not None:
        STATE.started.set()
        assert STATE.hold.wait(30)
    if data.get("fail"):
        raise Boom("the payment provider timed out")
    if data.get("rollback"):
        transaction.set_rollback(True, using=STATE.alias)
    return order, data


def answer(order: Any, data: dict[str, Any], where: str, runs: int | None = None) -> JsonResponse:
    """The order views' response: the order, ``status`` from the body (201), a Location, the run
    count (``runs``, default the sync views' own) and a cookie that must never be stored."""
    response = JsonResponse(
        {"id": order.pk, "ref": order.ref, "where": where},
        status=int(data.get("status", 201)),
        headers={"Location": f"/orders/{order.pk}/", "X-Run": str(len(STATE.runs) if runs is None else runs)},
    )
    response.set_cookie("session_hint", "abc")
    return response


@idempotent_view()
def orders(request: HttpRequest, shop: str) -> HttpResponse:
    order, data = place(request, "function")
    return answer(order, data, "function")


@idempotent_view(required=True)
def orders_required(request: HttpRequest) -> HttpResponse:
    order, data = place(request, "required")
    return answer(order, data, "required")


@idempotent_view(mode="lease")
def orders_streamed(request: HttpRequest) -> HttpResponse:
    order, _ = place(request, "streamed")
    return StreamingHttpResponse(iter([b"order ", str(order.pk).encode()]), status=201)


@idempotent_view()
def orders_streamed_in_transaction(request: HttpRequest) -> HttpResponse:
    place(request, "streamed")
    return StreamingHttpResponse(iter([b"order"]), status=201)


@method_decorator(idempotent_view(), name="dispatch")
class OrderView(View):
    """A class-based view decorated on ``dispatch``: every method handler is guarded."""

    def post(self, request: HttpRequest) -> HttpResponse:
        order, data = place(request, "class")
        return answer(order, data, "class")

    def put(self, request: HttpRequest) -> HttpResponse:
        order, data = place(request, "class-put")
        return answer(order, data, "class-put")


class OrderMethodView(View):
    """A class-based view with one decorated method."""

    @method_decorator(idempotent_view())
    def post(self, request: HttpRequest) -> HttpResponse:
        order, data = place(request, "method")
        return answer(order, data, "method")


class MisdecoratedView(View):
    """``@idempotent_view()`` on a method without ``method_decorator``: refused at the request."""

    @idempotent_view()  # type: ignore[misc]
    def post(self, request: HttpRequest) -> HttpResponse:  # pragma: no cover - never runs
        raise AssertionError


class TwiceView(View):
    """Guarded on dispatch and on the method: refused at the request."""

    @method_decorator(idempotent_view())
    def post(self, request: HttpRequest) -> HttpResponse:  # pragma: no cover - never runs
        raise AssertionError


TwiceView = method_decorator(idempotent_view(), name="dispatch")(TwiceView)


class OrderSerializer(serializers.Serializer):  # type: ignore[type-arg]
    ref = serializers.CharField(max_length=100)
    amount = serializers.IntegerField(min_value=1)


class OrderAPI(APIView):
    """A DRF view whose ``post`` is decorated: it receives DRF's ``Request``."""

    @method_decorator(idempotent_view())
    def post(self, request: Any) -> Response:
        order, data = place(request, "drf-method")
        if data.get("invalid"):
            raise serializers.ValidationError({"amount": ["too large"]})
        return Response(
            {"id": order.pk, "ref": order.ref}, status=201, headers={"X-Run": str(len(STATE.runs))}
        )


class ReadsData(BasePermission):
    """A permission that reads the body before the handler (so Django keeps no raw copy)."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return "ref" in request.data


class OrderAPIPeeked(APIView):
    """A DRF view whose multipart body was parsed by a permission class before the decorated handler."""

    permission_classes = (ReadsData,)

    @method_decorator(idempotent_view())
    def post(self, request: Any) -> Response:
        with STATE.lock:
            STATE.runs.append("drf-peeked")
        upload = request.data["receipt"]
        order = STATE.order.objects.using(STATE.alias).create(ref=request.data["ref"], amount=upload.size)
        return Response({"id": order.pk, "ref": order.ref, "bytes": upload.size}, status=201)


class OrderAPIPeekedJSON(APIView):
    """A DRF view whose JSON body was parsed by a permission class before the decorated handler
    (DRF then read the request's stream: Django keeps no raw body)."""

    permission_classes = (ReadsData,)

    @method_decorator(idempotent_view())
    def post(self, request: Any) -> Response:
        order, _ = place(request, "drf-peeked-json")
        return Response({"id": order.pk, "ref": order.ref, "amount": order.amount}, status=201)


@method_decorator(idempotent_view(), name="dispatch")
class OrderAPIDispatch(APIView):
    """A DRF view decorated on ``dispatch``: DRF's own error responses are what is stored."""

    def post(self, request: Any) -> Response:
        order, data = place(request, "drf-dispatch")
        if data.get("invalid"):
            raise serializers.ValidationError({"amount": ["too large"]})
        return Response({"id": order.pk, "ref": order.ref}, status=201)


class OrderAPIPlain(APIView):
    """An undecorated DRF view (the middleware tests)."""

    def post(self, request: Any) -> Response:
        order, data = place(request, "drf-plain")
        if data.get("invalid"):
            raise serializers.ValidationError({"amount": ["too large"]})
        return Response({"id": order.pk, "ref": order.ref}, status=201)


@method_decorator(idempotent_view(), name="update")
@method_decorator(idempotent_view(), name="partial_update")
class OrderViewSet(viewsets.ViewSet):
    """A DRF ViewSet guarding PUT and PATCH, whose ``partial_update`` calls ``update`` as
    ``UpdateModelMixin`` does: two guarded handlers in one request."""

    def update(self, request: Any, pk: str) -> Response:
        order, _ = place(request, "viewset-update")
        return Response({"id": order.pk, "ref": order.ref, "pk": pk}, status=200)

    def partial_update(self, request: Any, pk: str) -> Response:
        return self.update(request, pk)


class TokenAuthentication(BaseAuthentication):
    """``Authorization: Token good`` authenticates; a request without it is answered 401."""

    def authenticate(self, request: Any) -> tuple[Any, None] | None:
        if request.headers.get("Authorization") != "Token good":
            return None
        return AnonymousUser(), None  # stands for the account; is_authenticated is checked below

    def authenticate_header(self, request: Any) -> str:
        return "Token"


class HasToken(BasePermission):
    """Only requests that carried the token."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return request.successful_authenticator is not None


@method_decorator(idempotent_view(), name="dispatch")
class OrderAPIAuthenticated(APIView):
    """A DRF view decorated on ``dispatch`` that needs a token: DRF refuses a request without it
    (401) before the handler runs, and the decorator sees that refusal as the view's answer."""

    authentication_classes = (TokenAuthentication,)
    permission_classes = (HasToken,)

    def post(self, request: Any) -> Response:
        order, _ = place(request, "drf-authenticated")
        return Response({"id": order.pk, "ref": order.ref}, status=201)


@api_view(["POST"])
@idempotent_view()
def drf_function(request: Any) -> Response:
    """A DRF function view (``@api_view`` above the decorator)."""
    serializer = OrderSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    order, _ = place(request, "drf-function")
    return Response({"id": order.pk, "ref": order.ref}, status=201)


def plain(request: HttpRequest, pk: int) -> HttpResponse:
    """An undecorated view (the middleware tests)."""
    order, data = place(request, "plain")
    return answer(order, data, "plain")


def receipts(request: HttpRequest) -> HttpResponse:
    """An undecorated view taking a form with files (the middleware tests): one order whose
    amount is the files' total size."""
    with STATE.lock:
        STATE.runs.append("receipts")
    size = sum(upload.size for upload in request.FILES.getlist("receipt"))
    order = STATE.order.objects.using(STATE.alias).create(ref=request.POST["ref"], amount=size)
    return JsonResponse({"id": order.pk, "bytes": size}, status=201)


urlpatterns = [
    path("shops/<str:shop>/orders/", orders),
    path("required/", orders_required),
    path("streamed/", orders_streamed),
    path("streamed-tx/", orders_streamed_in_transaction),
    path("class/", OrderView.as_view()),
    path("method/", OrderMethodView.as_view()),
    path("misdecorated/", MisdecoratedView.as_view()),
    path("twice/", TwiceView.as_view()),
    path("api/orders/", OrderAPI.as_view()),
    path("api/dispatch/", OrderAPIDispatch.as_view()),
    path("api/peeked/", OrderAPIPeeked.as_view()),
    path("api/peeked-json/", OrderAPIPeekedJSON.as_view()),
    path("api/function/", drf_function),
    path("api/authenticated/", OrderAPIAuthenticated.as_view()),
    path("api/plain/", OrderAPIPlain.as_view()),
    path("api/viewset/<str:pk>/", OrderViewSet.as_view({"put": "update", "patch": "partial_update"})),
    path("plain/<int:pk>/", plain),
    path("receipts/", receipts),
]
