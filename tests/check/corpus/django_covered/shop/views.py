"""Every view here is covered: settings.MIDDLEWARE installs the idempotency middleware."""

from django.http import JsonResponse
from django.views.generic import CreateView
from rest_framework.decorators import api_view
from rest_framework.viewsets import ModelViewSet

from .models import Order


def create_order(request):
    if request.method == "POST":
        Order.objects.create()
    return JsonResponse({})


class OrderCreate(CreateView):
    model = Order


class OrderViewSet(ModelViewSet):
    queryset = Order.objects.all()


@api_view(["POST"])
def capture(request):
    return JsonResponse({})
