from django.urls import path

from idempotent import idempotent

from . import plain, views

urlpatterns = [
    path("orders/new/", views.create_order),
    path("orders/", views.order_list),
    path("orders/wrapped/", idempotent(key_from="request")(views.wrapped_in_urls)),
    path("orders/view/", views.OrderView.as_view()),
    path("contact/", views.ContactView.as_view()),
    path("submit/", plain.submit),
]
