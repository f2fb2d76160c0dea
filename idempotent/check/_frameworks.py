"""What the checker knows about each web framework's names, by qualified name.

Names are matched after import aliases are resolved, so ``from fastapi import FastAPI as F``
and ``import fastapi`` both lead to ``fastapi.FastAPI``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Top-level packages never looked up in the checked tree (their names are matched as they are).
EXTERNAL_ROOTS = frozenset(
    {"idempotent", "fastapi", "starlette", "flask", "django", "rest_framework", "celery"}
)

#: HTTP methods that change state; only these are ever reported.
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")

#: Constructors of objects that route requests or run tasks: qualified name -> (framework, role).
CONSTRUCTORS: dict[str, tuple[str, str]] = {
    "fastapi.FastAPI": ("fastapi", "app"),
    "fastapi.applications.FastAPI": ("fastapi", "app"),
    "fastapi.APIRouter": ("fastapi", "router"),
    "fastapi.routing.APIRouter": ("fastapi", "router"),
    "starlette.applications.Starlette": ("starlette", "app"),
    "starlette.routing.Router": ("starlette", "router"),
    "flask.Flask": ("flask", "app"),
    "flask.app.Flask": ("flask", "app"),
    "flask.Blueprint": ("flask", "blueprint"),
    "flask.blueprints.Blueprint": ("flask", "blueprint"),
    "celery.Celery": ("celery", "celery"),
    "celery.app.base.Celery": ("celery", "celery"),
}

#: Decorator attributes that register a route: ``@app.post(...)``.
ROUTE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "get": ("GET",),
    "head": ("HEAD",),
    "options": ("OPTIONS",),
    "trace": ("TRACE",),
    "post": ("POST",),
    "put": ("PUT",),
    "patch": ("PATCH",),
    "delete": ("DELETE",),
    "api_route": ("GET",),  # the methods= keyword overrides these defaults
    "route": ("GET",),
}

#: Top-level packages whose import makes a file look like it belongs to a framework, in the
#: order used to guess the framework of a route whose router object is not known.
HINT_ORDER = ("fastapi", "starlette", "flask")

CELERY_TASK_DECORATORS = frozenset({"celery.shared_task", "celery.task", "celery.app.shared_task"})

DRF_API_VIEW = frozenset({"rest_framework.decorators.api_view"})
DRF_ACTION = frozenset({"rest_framework.decorators.action"})

#: Django decorators that restrict the methods of a function view.
DJANGO_METHOD_DECORATORS: dict[str, tuple[str, ...] | None] = {
    "require_POST": ("POST",),
    "require_GET": ("GET",),
    "require_safe": ("GET", "HEAD"),
    "require_http_methods": None,  # the methods are its first argument
}

DJANGO_URL_FUNCTIONS = frozenset(
    {"django.urls.path", "django.urls.re_path", "django.conf.urls.url", "django.conf.urls.re_path"}
)

METHOD_DECORATOR = "django.utils.decorators.method_decorator"


@dataclass(frozen=True, slots=True)
class BaseClass:
    """A framework base class: which framework, how methods are served, and what it implies.

    ``style`` is ``"view"`` (``post()``, ``put()``... methods serve HTTP methods),
    ``"viewset"`` (DRF actions ``create()``, ``update()``...), ``"dispatch"`` (Flask's ``View``)
    or ``"admin"`` (Django's ``AdminSite``, whose ``login()``/``logout()`` take POST).
    ``implicit`` lists the HTTP methods the base class serves without the subclass defining
    anything, and ``writes`` describes the write it performs for them.
    """

    framework: str
    style: str
    implicit: tuple[str, ...] = ()
    writes: str = ""


_FORM = ("POST", "PUT")
_SAVES_FORM = "saves the form's object ({name})"
_DELETES = "deletes the object ({name})"
_SAVES_SERIALIZER = "saves the serializer ({name})"
_DELETES_INSTANCE = "deletes the instance ({name})"

#: Base classes by (top-level package, class name); Django and DRF expose each class under several
#: module paths, so the module between is not compared.
BASE_CLASSES: dict[tuple[str, str], BaseClass] = {
    ("django", "View"): BaseClass("django", "view"),
    ("django", "TemplateView"): BaseClass("django", "view"),
    ("django", "ProcessFormView"): BaseClass("django", "view", _FORM),
    ("django", "BaseFormView"): BaseClass("django", "view", _FORM),
    ("django", "FormView"): BaseClass("django", "view", _FORM),
    ("django", "BaseCreateView"): BaseClass("django", "view", _FORM, _SAVES_FORM),
    ("django", "CreateView"): BaseClass("django", "view", _FORM, _SAVES_FORM),
    ("django", "BaseUpdateView"): BaseClass("django", "view", _FORM, _SAVES_FORM),
    ("django", "UpdateView"): BaseClass("django", "view", _FORM, _SAVES_FORM),
    ("django", "DeletionMixin"): BaseClass("django", "view", ("POST", "DELETE"), _DELETES),
    ("django", "BaseDeleteView"): BaseClass("django", "view", ("POST", "DELETE"), _DELETES),
    ("django", "DeleteView"): BaseClass("django", "view", ("POST", "DELETE"), _DELETES),
    # An admin site serves its login and logout views from methods of the same names.
    ("django", "AdminSite"): BaseClass("django", "admin"),
    ("rest_framework", "APIView"): BaseClass("drf", "view"),
    ("rest_framework", "GenericAPIView"): BaseClass("drf", "view"),
    ("rest_framework", "CreateAPIView"): BaseClass("drf", "view", ("POST",), _SAVES_SERIALIZER),
    ("rest_framework", "ListCreateAPIView"): BaseClass("drf", "view", ("POST",), _SAVES_SERIALIZER),
    ("rest_framework", "UpdateAPIView"): BaseClass("drf", "view", ("PUT", "PATCH"), _SAVES_SERIALIZER),
    ("rest_framework", "RetrieveUpdateAPIView"): BaseClass(
        "drf", "view", ("PUT", "PATCH"), _SAVES_SERIALIZER
    ),
    ("rest_framework", "DestroyAPIView"): BaseClass("drf", "view", ("DELETE",), _DELETES_INSTANCE),
    ("rest_framework", "RetrieveDestroyAPIView"): BaseClass("drf", "view", ("DELETE",), _DELETES_INSTANCE),
    ("rest_framework", "RetrieveUpdateDestroyAPIView"): BaseClass(
        "drf", "view", ("PUT", "PATCH", "DELETE"), _SAVES_SERIALIZER
    ),
    ("rest_framework", "ViewSetMixin"): BaseClass("drf", "viewset"),
    ("rest_framework", "ViewSet"): BaseClass("drf", "viewset"),
    ("rest_framework", "GenericViewSet"): BaseClass("drf", "viewset"),
    ("rest_framework", "ReadOnlyModelViewSet"): BaseClass("drf", "viewset"),
    ("rest_framework", "ModelViewSet"): BaseClass(
        "drf", "viewset", ("POST", "PUT", "PATCH", "DELETE"), _SAVES_SERIALIZER
    ),
    ("flask", "MethodView"): BaseClass("flask", "view"),
    ("flask", "View"): BaseClass("flask", "dispatch"),
    ("starlette", "HTTPEndpoint"): BaseClass("starlette", "view"),
    ("fastapi", "HTTPEndpoint"): BaseClass("starlette", "view"),
}

#: DRF model mixins: the HTTP methods they serve once a viewset routes them.
DRF_MIXINS: dict[str, tuple[tuple[str, ...], str]] = {
    "CreateModelMixin": (("POST",), _SAVES_SERIALIZER),
    "UpdateModelMixin": (("PUT", "PATCH"), _SAVES_SERIALIZER),
    "DestroyModelMixin": (("DELETE",), _DELETES_INSTANCE),
}

#: Which methods of a class-based view serve an HTTP method, in the order they are called.
VIEW_CHAIN: dict[str, tuple[str, ...]] = {
    "POST": ("post", "create"),
    "PUT": ("put", "update"),
    "PATCH": ("patch", "partial_update"),
    "DELETE": ("delete", "destroy"),
}
VIEWSET_CHAIN: dict[str, tuple[str, ...]] = {
    "POST": ("create",),
    "PUT": ("update",),
    "PATCH": ("partial_update",),
    "DELETE": ("destroy",),
}

#: Methods whose bodies show the writes of an implicit (generic) handler.
WRITE_HOOKS = ("form_valid", "perform_create", "perform_update", "perform_destroy", "save")

FRAMEWORK_LABELS = {
    "fastapi": "FastAPI",
    "starlette": "Starlette",
    "flask": "Flask",
    "django": "Django",
    "drf": "Django REST framework",
    "celery": "Celery",
    "http": "HTTP",
}
