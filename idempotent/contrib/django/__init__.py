"""Django views with the ``Idempotency-Key`` contract; also a Django app (``"idempotent.contrib.django"``).

::

    from django.utils.decorators import method_decorator
    from idempotent.contrib.django import idempotent_view

    @require_POST
    @idempotent_view()
    def create_order(request):
        order = Order.objects.create(**json.loads(request.body))
        return JsonResponse({"id": order.pk}, status=201)

    @method_decorator(idempotent_view(), name="dispatch")
    class OrderView(View): ...

or ``MIDDLEWARE += ["idempotent.contrib.django.IdempotencyMiddleware"]`` for every view. A
request with an ``Idempotency-Key`` header runs the view once; a retry gets the stored status,
headers and body plus ``Idempotent-Replayed: true``. The rules (eligible methods, key syntax,
scope = method + route template + principal, fingerprint, 400/409/422 problems) are those of
:mod:`idempotent.http`. In transaction mode (the default when Django's database is SQLite,
PostgreSQL or MySQL/MariaDB) the key and the stored response are written through Django's own
connection inside ``transaction.atomic()``, so they commit and roll back with the view's ORM
writes. An ``async def`` view (and an async request through the middleware) runs in lease mode
on the store, since Django's transactions cannot span async code. Settings: the ``IDEMPOTENT``
dict (see :mod:`idempotent.contrib.django._adapter`).
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Django installed
    raise ImportError("idempotent.contrib.django needs Django: pip install 'idempotent[django]'") from exc

from idempotent.contrib.django.middleware import IdempotencyMiddleware
from idempotent.contrib.django.views import idempotent_view

__all__ = ["IdempotencyMiddleware", "idempotent_view"]
