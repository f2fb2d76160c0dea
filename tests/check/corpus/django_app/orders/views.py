"""Django function views and class-based views, including generic views that handle POST implicitly."""

import json

from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.decorators import method_decorator
from django.views import View, generic
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django.views.generic.edit import CreateView, DeleteView, FormView, UpdateView

from idempotent import idempotent

from .forms import ContactForm
from .models import Order


def create_order(request):  # finding: branches on request.method
    if request.method == "POST":
        Order.objects.create(total=request.POST["total"])
        return redirect("orders")
    return render(request, "orders/new.html")


def order_list(request):  # GET only: never looks at the method or the body
    return render(request, "orders/list.html", {"orders": Order.objects.all()})


@require_POST
def cancel_order(request, pk):  # finding: require_POST
    Order.objects.filter(pk=pk).update(status="cancelled")
    return HttpResponse(status=204)


@require_http_methods(["GET", "PUT"])
def put_order(request, pk):  # finding: PUT among the allowed methods
    return JsonResponse({})


@require_safe
def order_detail(request, pk):  # GET/HEAD only
    return JsonResponse({})


@csrf_exempt
def webhook(request):  # finding: reads request.body
    payload = json.loads(request.body)
    return JsonResponse(payload)


def api_update(request, pk):  # finding: a match statement on the method
    match request.method:
        case "PATCH":
            Order.objects.filter(pk=pk).update(**json.loads(request.body))
        case _:
            pass
    return JsonResponse({})


@csrf_exempt
@idempotent(key_from=lambda request: request.headers.get("Idempotency-Key"))
def keyed_webhook(request):  # decorated (any position works for function views)
    return JsonResponse(json.loads(request.body))


def header_view(request):  # reads the header itself
    if request.method == "POST":
        key = request.META.get("HTTP_IDEMPOTENCY_KEY")
        return JsonResponse({"key": key})
    return JsonResponse({})


def wrapped_in_urls(request):  # wrapped with idempotent(...) in urls.py
    if request.method == "POST":
        return JsonResponse({})
    return JsonResponse({})


class OrderView(View):
    def get(self, request):
        return JsonResponse({})

    def post(self, request):  # finding: explicit post
        Order(total=1).save()
        return JsonResponse({}, status=201)


@method_decorator(idempotent(key_from="request"), name="dispatch")
class ProtectedView(View):
    def post(self, request):  # handled through dispatch
        return JsonResponse({})


class MethodProtected(View):
    @method_decorator(idempotent(key_from="request"))
    def put(self, request):  # handled: method_decorator on the method
        return JsonResponse({})

    def patch(self, request):  # finding: its sibling is decorated, it is not
        return JsonResponse({})


class ContactView(FormView):  # finding: FormView handles POST and PUT implicitly
    form_class = ContactForm
    template_name = "contact.html"

    def form_valid(self, form):
        form.send_email()
        return super().form_valid(form)


class OrderCreate(CreateView):  # finding: CreateView saves the form's object
    model = Order
    fields = ["total"]


class OrderUpdate(generic.UpdateView):  # finding: generic.UpdateView, form_valid writes
    model = Order
    fields = ["total"]

    def form_valid(self, form):
        self.object = form.save()
        return redirect("orders")


class OrderDelete(DeleteView):  # finding: POST (DELETE is not checked by default)
    model = Order


@method_decorator(idempotent(key_from="request"), name="post")
class SafeCreate(CreateView):  # handled: method_decorator(name="post") on the class
    model = Order


class HeaderUpdate(UpdateView):  # handled: reads the header in dispatch
    model = Order

    def dispatch(self, request, *args, **kwargs):
        self.key = request.headers.get("Idempotency-Key")
        return super().dispatch(request, *args, **kwargs)


class AuditMixin:
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)


class BaseOrderCreate(AuditMixin, CreateView):  # finding: post inherited from a plain mixin
    model = Order


class ChildOrderCreate(BaseOrderCreate):  # reported on BaseOrderCreate only
    fields = ["total"]


class AboutPage(generic.TemplateView):  # GET only
    template_name = "about.html"
