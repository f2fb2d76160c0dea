"""Views found from their class hierarchy, reported where written, and helpers told from views."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from idempotent.check import check
from idempotent.check.config import CheckConfig
from idempotent.check.report import render
from idempotent.check.runner import Report
from idempotent.cli import main


def _write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")


def _report(root: Path, files: dict[str, str]) -> Report:
    _write(root, files)
    return check(["."], CheckConfig(root=root), cwd=root, extra_handling=())


def _found(report: Report) -> set[str]:
    return {f"{f.path}:{f.line}:{f.handler}" for f in report.findings if f.code == "IDEM001"}


DJANGO_VIEWS = {
    "shop/__init__.py": "",
    "shop/bases.py": """
        from socialkit.views import OAuthCallbackView


        class ProviderCallback(OAuthCallbackView):
            provider = "acme"
    """,
    "shop/views.py": """
        from django.contrib.auth.views import LogoutView
        from django.db import models
        from django.views import generic
        from django.views.generic import DetailView, ListView, RedirectView
        from django.views.generic.edit import FormMixin

        from .bases import ProviderCallback


        class GoRedirect(RedirectView):
            def post(self, request, *args, **kwargs):
                return super().post(request, *args, **kwargs)


        class BasketDetail(DetailView):
            def post(self, request, pk):
                self.get_object().items.create(sku=request.POST["sku"])


        class ReviewList(ListView):
            def post(self, request):
                return None


        class CommentOnItem(FormMixin, generic.detail.BaseDetailView):
            def post(self, request, *args, **kwargs):
                return self.form_valid(self.get_form())


        class SignOut(LogoutView):
            def post(self, request, *args, **kwargs):
                request.session.flush()


        class AcmeLogin(ProviderCallback):
            def post(self, request, *args, **kwargs):
                return None


        class Basket(models.Model):
            def delete(self, *args, **kwargs):
                return super().delete(*args, **kwargs)


        class Browser(ListView):
            def get(self, request):
                return None
    """,
    "shop/client.py": """
        import httpx


        class Client(httpx.Client):
            def post(self, url, data):
                return super().post(url, data=data)
    """,
}


def test_views_are_found_from_the_hierarchy(tmp_path: Path) -> None:
    """Subclasses of any Django view (RedirectView, DetailView, ListView, a FormMixin detail view,
    LogoutView) and of a base from another package, reached across files, are views; a model's
    delete() and an HTTP client's post() are not."""
    report = _report(tmp_path, DJANGO_VIEWS)
    assert _found(report) == {
        "shop/views.py:11:GoRedirect.post",
        "shop/views.py:16:BasketDetail.post",
        "shop/views.py:21:ReviewList.post",
        "shop/views.py:26:CommentOnItem.post",
        "shop/views.py:31:SignOut.post",
        "shop/views.py:36:AcmeLogin.post",
    }


def test_a_foreign_base_counts_when_routed(tmp_path: Path) -> None:
    """A class on an unseen base that a URLconf routes with as_view() is a view even when its
    handler is not named after an HTTP method taking the request."""
    report = _report(
        tmp_path,
        {
            "site/__init__.py": "",
            "site/views.py": """
                from restkit.generics import CreateEndpoint


                class Signup(CreateEndpoint):
                    def post(self, *args, **kwargs):
                        return None


                class Unrouted(CreateEndpoint):
                    def post(self, *args, **kwargs):
                        return None
            """,
            "site/urls.py": """
                from django.urls import path

                from . import views

                urlpatterns = [path("signup/", views.Signup.as_view())]
            """,
        },
    )
    assert _found(report) == {"site/views.py:5:Signup.post"}


DRF_VIEWS = {
    "api/__init__.py": "",
    "api/views.py": """
        from rest_framework import generics, viewsets


        class OrderCreate(generics.CreateAPIView):
            def create(self, request, *args, **kwargs):
                return super().create(request, *args, **kwargs)


        class OrderList(generics.ListCreateAPIView):
            def perform_create(self, serializer):
                serializer.save()


        class OrderViewSet(viewsets.ModelViewSet):
            def create(self, request, *args, **kwargs):
                return super().create(request, *args, **kwargs)
    """,
}


def test_overrides_are_reported_where_written(tmp_path: Path) -> None:
    """create() written in a generic view and in a viewset is reported on its def line; a handler
    the class inherits (ListCreateAPIView's post) on the class line."""
    report = _report(tmp_path, DRF_VIEWS)
    assert _found(report) == {
        "api/views.py:5:OrderCreate.create",
        "api/views.py:9:OrderList",
        "api/views.py:15:OrderViewSet.create",
        "api/views.py:14:OrderViewSet",  # update and partial_update are inherited
    }


def test_every_format_reports_the_same_place(tmp_path: Path) -> None:
    """Text, JSON, SARIF and GitHub annotations name the same line for every finding."""
    report = _report(tmp_path, DRF_VIEWS)
    lines = sorted(f.line for f in report.findings)
    text = sorted(int(line.split(":")[1]) for line in render(report, "text").splitlines() if line)
    document = json.loads(render(report, "json"))
    from_json = sorted(f["line"] for f in document["findings"])
    sarif = json.loads(render(report, "sarif"))
    from_sarif = sorted(
        r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in sarif["runs"][0]["results"]
    )
    github = sorted(
        int(part.split("=")[1])
        for line in render(report, "github").splitlines()
        for part in line.split(",")
        if part.startswith("line=")
    )
    assert lines == text == from_json == from_sarif == github == [5, 9, 14, 15]


def test_subclass_override_is_its_own_finding(tmp_path: Path) -> None:
    """A subclass overriding the handler of a reported base gets its own finding, which says that
    the base's dispatch fix covers it; under a base that already decorates dispatch it is safe."""
    report = _report(
        tmp_path,
        {
            "orders/__init__.py": "",
            "orders/base.py": """
                from django.utils.decorators import method_decorator
                from django.views.generic import CreateView

                from idempotent import idempotent


                class OrderCreate(CreateView):
                    fields = ["total"]


                @method_decorator(idempotent(key_from="request"), name="dispatch")
                class KeyedCreate(CreateView):
                    fields = ["total"]
            """,
            "orders/views.py": """
                from .base import KeyedCreate, OrderCreate


                class RushOrderCreate(OrderCreate):
                    def post(self, request, *args, **kwargs):
                        self.model.objects.filter(rush=True).delete()
                        return super().post(request, *args, **kwargs)


                class KeyedRushCreate(KeyedCreate):
                    def post(self, request, *args, **kwargs):
                        return super().post(request, *args, **kwargs)
            """,
        },
    )
    assert _found(report) == {"orders/base.py:7:OrderCreate", "orders/views.py:5:RushOrderCreate.post"}
    sub = next(f for f in report.findings if f.handler == "RushOrderCreate.post")
    assert "dispatch decorator that fixes `OrderCreate`" in sub.message
    assert "covers it too" in sub.message
    verdict = next(v for v in report.verdicts if v.handler == "KeyedRushCreate.post")
    assert verdict.reason == "decorator"


HELPERS = {
    "hooks/__init__.py": "",
    "hooks/forms.py": """
        from django.shortcuts import redirect


        def channel_form(request, channel):
            if request.method == "POST":
                channel.value = request.POST["value"]
                channel.save()
                return redirect("channels")
            return None
    """,
    "hooks/views.py": """
        from django.views.decorators.csrf import csrf_exempt

        from .decorators import cors
        from .forms import channel_form


        def add_channel(request, code):
            return channel_form(request, code)


        def edit_channel(request, code):
            from .forms import channel_form as form

            return form(request, code)


        @csrf_exempt
        @cors("POST")
        def pause(request, code):
            return None


        @cors("GET")
        def status(request, code):
            return request.body
    """,
}
URLS = """
    from django.urls import path

    from . import views

    urlpatterns = [
        path("add/<code>/", views.add_channel),
        path("edit/<code>/", views.edit_channel),
        path("pause/<code>/", views.pause),
        path("status/<code>/", views.status),
    ]
"""


def test_routed_views_inherit_their_helpers_methods(tmp_path: Path) -> None:
    """An unrouted function reading request.POST is a helper: the routed views passing it their
    request are the handlers; a decorator listing only HTTP methods restricts a routed view."""
    report = _report(tmp_path, {**HELPERS, "hooks/urls.py": URLS})
    assert _found(report) == {
        "hooks/views.py:7:add_channel",
        "hooks/views.py:11:edit_channel",
        "hooks/views.py:19:pause",
    }


def test_without_urlconf_the_callers_are_preferred(tmp_path: Path) -> None:
    """When no URLconf is visible, the views calling a helper are reported rather than the helper."""
    report = _report(tmp_path, HELPERS)
    found = _found(report)
    assert "hooks/forms.py:4:channel_form" not in found
    assert {"hooks/views.py:7:add_channel", "hooks/views.py:11:edit_channel"} <= found


def test_update_override_serves_patch_through_the_inherited_partial_update(tmp_path: Path) -> None:
    """DRF's inherited partial_update() calls update(): an update() written in the class is the
    handler of PUT and PATCH, one finding; a viewset without partial_update() serves no PATCH."""
    report = _report(
        tmp_path,
        {
            "users/__init__.py": "",
            "users/views.py": """
                from rest_framework import mixins, viewsets
                from rest_framework.generics import RetrieveUpdateAPIView


                class ProfileUpdate(RetrieveUpdateAPIView):
                    def update(self, request, *args, **kwargs):
                        return super().update(request, *args, **kwargs)


                class NoteViewSet(mixins.CreateModelMixin, viewsets.GenericViewSet):
                    def update(self, request, pk=None):
                        return None
            """,
        },
    )
    assert {(f.line, f.handler, f.methods) for f in report.findings} == {
        (6, "ProfileUpdate.update", ("PUT", "PATCH")),
        (10, "NoteViewSet", ("POST",)),
        (11, "NoteViewSet.update", ("PUT",)),
    }


def test_fixing_the_base_covers_the_subclass(
    fake_integration: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--fix decorates the base's dispatch and leaves the overriding subclass alone, after which
    neither is reported: the subclass inherits the fix."""
    _write(
        tmp_path,
        {
            "orders/__init__.py": "",
            "orders/views.py": """
                from django.views.generic import CreateView


                class OrderCreate(CreateView):
                    fields = ["total"]


                class RushOrderCreate(OrderCreate):
                    def post(self, request, *args, **kwargs):
                        return super().post(request, *args, **kwargs)
            """,
        },
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix", "-q"]) == 0
    fixed = (tmp_path / "orders" / "views.py").read_text(encoding="utf-8")
    assert fixed.count("@method_decorator(") == 1
    assert '@method_decorator(idempotent_view(), name="dispatch")\nclass OrderCreate(CreateView):' in fixed
    assert check(["."], CheckConfig(root=tmp_path), cwd=tmp_path).findings == []


def test_a_routed_foreign_form_view_handles_post(tmp_path: Path) -> None:
    """A class on another package's form view, routed with as_view() and defining no handler,
    serves the form's POST (and PUT) like Django's FormView: reported on its class line."""
    report = _report(
        tmp_path,
        {
            "contact/__init__.py": "",
            "contact/views.py": """
                from formkit.views import MessageFormView


                class ContactUs(MessageFormView):
                    template_name = "contact.html"
            """,
            "contact/urls.py": """
                from django.urls import path

                from .views import ContactUs

                urlpatterns = [path("contact/", ContactUs.as_view())]
            """,
        },
    )
    assert {(f.path, f.line, f.handler, f.methods) for f in report.findings} == {
        ("contact/views.py", 4, "ContactUs", ("POST", "PUT"))
    }
