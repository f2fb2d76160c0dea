from django.http import JsonResponse
from django.views.generic import CreateView, View

from .models import Order


def create(request):
	if request.method == "POST":
		Order.objects.create()
	return JsonResponse({})


class OrderCreate(CreateView):
	model = Order


class OrderView(View):
	def post(self, request):
		return JsonResponse({})
