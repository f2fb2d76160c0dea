from django.urls import path

from idempotent import idempotent

from . import plain, views

urlpatterns = [
    path("orders/new/", views.create_order),
    path("orders/", views.order_list),
    path("orders/<int:pk>/cancel/", views.cancel_order),
    path("orders/<int:pk>/", views.put_order),
    path("orders/<int:pk>/detail/", views.order_detail),
    path("webhook/", views.webhook),
    path("api/<int:pk>/", views.api_update),
    path("keyed/", views.keyed_webhook),
    path("header/", views.header_view),
    path("orders/wrapped/", idempotent(key_from="request")(views.wrapped_in_urls)),
    path("orders/view/", views.OrderView.as_view()),
    path("contact/", views.ContactView.as_view()),
    path("submit/", plain.submit),
]
