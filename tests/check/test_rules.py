"""Details of the rules on small sources: writes, headers, suppressions, options, aliases."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from idempotent.check import check
from idempotent.check.config import CheckConfig
from idempotent.check.facts import _char_column, collect
from tests.check.conftest import CORPUS


def _facts(source: str) -> dict[str, tuple[str, ...]]:
    text = textwrap.dedent(source)
    facts = collect("m.py", text, ast.parse(text))
    return {f.qualname: facts.body(f).writes for f in facts.functions}


def _check(tmp_path: Path, source: str, config: CheckConfig | None = None) -> list[tuple[int, str]]:
    (tmp_path / "app.py").write_text(textwrap.dedent(source), encoding="utf-8")
    report = check(["."], config or CheckConfig(root=tmp_path), cwd=tmp_path, extra_handling=())
    return [(f.line, f.code) for f in report.findings]


@pytest.mark.parametrize(
    ("body", "writes"),
    [
        ("session.add(x)", ("session.add()",)),
        ("self.db.add_all(xs)", ("self.db.add_all()",)),
        ("seen.add(x)", ()),
        ("conn.execute(stmt)", ("conn.execute()",)),
        ("Order.objects.filter(pk=1).update(paid=True)", ("Order.objects.filter(pk=1).update()",)),
        ("settings.update(x)", ()),
        ("order.save()", ("order.save()",)),
        ("Order.objects.get_or_create(pk=1)", ("Order.objects.get_or_create()",)),
        ("requests.put(url, json=body)", ("requests.put()",)),
        ("super().post(request, *args)", ()),
        ("client.request('POST', url)", ("client.request()",)),
        ("client.request('GET', url)", ()),
        ("charge_card.delay(order_id)", ("charge_card.delay()",)),
        ("app.send_task('charge')", ("app.send_task()",)),
        ("send_mail('s', 'b', 'f', ['t'])", ("send_mail()",)),
        ("service.create_invoice(order)", ("service.create_invoice()",)),
        ("cache.get(key)", ()),
        ("response.delete_cookie('jwt')", ()),
        ("response.set_cookie('jwt', token)", ()),
        ("len(items)", ()),
    ],
)
def test_write_detection(body: str, writes: tuple[str, ...]) -> None:
    """Calls that change state are recognised by name and receiver; reads are not."""
    assert _facts(f"def handler():\n    {body}\n")["handler"] == writes


def test_writes_are_capped_and_deduplicated() -> None:
    """At most three distinct writes are named, in source order."""
    source = "def h():\n    s.commit()\n    s.commit()\n    a.save()\n    b.delete()\n    c.create()\n"
    assert _facts(source)["h"] == ("s.commit()", "a.save()", "b.delete()")


def test_sqlalchemy_statement_builders() -> None:
    """``insert``/``update``/``delete`` count only when imported from SQLAlchemy."""
    source = """
    import sqlalchemy as sa
    from sqlalchemy import update
    from mylib import delete

    def a():
        sa.insert(t)

    def b():
        update(t)

    def c():
        delete(t)
    """
    facts = _facts(source)
    assert facts["a"] == ("sa.insert()",)
    assert facts["b"] == ("update()",)
    assert facts["c"] == ()


def test_suppression_comments(tmp_path: Path) -> None:
    """Comments suppress on the def line, a decorator line or a continuation line; strings do not."""
    source = """
    from fastapi import FastAPI
    app = FastAPI()

    @app.post("/a")
    def a(): ...  # idempotent: ignore[IDEM002, idem001]

    @app.post(
        "/b",  # idempotent: ignore[IDEM001]
    )
    def b(): ...

    @app.post("/c")
    def c(
        x: int,
    ):  # idempotent: ignore[IDEM001]
        ...

    @app.post("/d")
    def d():
        return "# idempotent: ignore"

    # idempotent: ignore[IDEM001]
    @app.post("/e")
    def e(): ...
    """
    assert _check(tmp_path, source) == [(20, "IDEM001"), (25, "IDEM001")]


def test_methods_option(tmp_path: Path) -> None:
    """Only the configured methods are reported."""
    source = """
    from fastapi import FastAPI
    app = FastAPI()

    @app.post("/a")
    def a(): ...

    @app.delete("/b")
    def b(): ...
    """
    assert _check(tmp_path, source) == [(6, "IDEM001")]
    config = CheckConfig(root=tmp_path).with_options(methods=["DELETE"])
    assert _check(tmp_path, source, config) == [(9, "IDEM001")]


def test_delete_configured_on_the_corpus() -> None:
    """With DELETE checked, the FastAPI corpus gains exactly its DELETE handler."""
    config = CheckConfig(root=CORPUS).with_options(methods=["POST", "PUT", "PATCH", "DELETE"])
    report = check(["fastapi_single"], config, cwd=CORPUS, extra_handling=())
    lines = [(f.path, f.line) for f in report.findings if f.code == "IDEM001"]
    assert ("fastapi_single/app.py", 36) in lines
    assert len(lines) == 8


def test_celery_rule_is_opt_in() -> None:
    """IDEM002 reports task bodies only when selected; IDEM003 applies to tasks regardless."""
    root = CORPUS / "celery_app"
    default = check(["."], CheckConfig(root=root), cwd=root, extra_handling=())
    assert [(f.line, f.code) for f in default.findings] == [(27, "IDEM003")]
    selected = check(
        ["."], CheckConfig(root=root).with_options(extend_select=["IDEM002"]), cwd=root, extra_handling=()
    )
    assert [(f.line, f.code) for f in selected.findings] == [
        (12, "IDEM002"),
        (17, "IDEM002"),
        (27, "IDEM003"),
    ]
    assert selected.findings[0].writes == ("stripe.Charge.create()",)
    assert [(v.handler, v.reason) for v in selected.verdicts if v.handler == "cleanup"] == [
        ("cleanup", "suppressed")
    ]


def test_messages_say_whether_the_body_writes() -> None:
    """Findings in handlers that write are ranked high and say which writes; the others say none."""
    root = CORPUS / "fastapi_single"
    report = check(["."], CheckConfig(root=root), cwd=root, extra_handling=())
    by_handler = {f.handler: f for f in report.findings}
    assert by_handler["create_order"].high
    assert by_handler["create_order"].message.endswith(
        "writes: session.add(), session.commit(); a retried request repeats the write"
    )
    assert not by_handler["ping"].high
    assert by_handler["ping"].message.endswith("no write seen in its body")
    assert by_handler["refund"].high


def test_star_import_and_reexport(tmp_path: Path) -> None:
    """Names reached through a star import or a project module's re-export resolve to the original."""
    (tmp_path / "helpers.py").write_text("from idempotent import idempotent as once\n", encoding="utf-8")
    source = """
    from fastapi import *
    from helpers import once

    app = FastAPI()

    @app.post("/a")
    @once(key_from="k")
    def a(k: str): ...

    @app.post("/b")
    def b(): ...
    """
    assert _check(tmp_path, source) == [(12, "IDEM001")]


def test_configured_decorators_by_bare_name(tmp_path: Path) -> None:
    """A configured decorator without a dot matches by its last name, however it is imported."""
    source = """
    from fastapi import FastAPI
    from company import keyed as k

    app = FastAPI()

    @app.post("/a")
    @k()
    def a(): ...
    """
    assert _check(tmp_path, source) == [(9, "IDEM001")]
    config = CheckConfig(root=tmp_path, decorators=("keyed",))
    assert _check(tmp_path, source, config) == []


def test_route_with_unknown_router_is_recognised_by_path(tmp_path: Path) -> None:
    """A route decorator on an unknown object still counts when its path looks like a route."""
    source = """
    from somewhere import api

    @api.post("/orders")
    def create(): ...

    @api.post(42)
    def not_a_route(): ...
    """
    assert _check(tmp_path, source) == [(5, "IDEM001")]


def test_asgi_wrapping_and_http_middleware(tmp_path: Path) -> None:
    """Wrapping the app in the middleware, or an HTTP middleware that reads the header, covers it."""
    source = """
    from fastapi import FastAPI
    from idempotent.contrib.asgi import IdempotencyMiddleware

    app = FastAPI()
    other = FastAPI()
    application = IdempotencyMiddleware(app)

    @other.middleware("http")
    async def keys(request, call_next):
        request.state.key = request.headers.get("Idempotency-Key")
        return await call_next(request)

    @app.post("/a")
    def a(): ...

    @other.post("/b")
    def b(): ...
    """
    assert _check(tmp_path, source) == []


def test_non_ascii_columns() -> None:
    """Columns count characters, not UTF-8 bytes."""
    assert _char_column("    def f(): ...", 4) == 5
    assert _char_column("é = 1; x = 2", len("é = 1; ".encode())) == 8


def test_app_passed_to_setup_functions(tmp_path: Path) -> None:
    """``install(app)`` and ``add_routes(app=app)``: the callee's parameter stands for the app."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "main.py").write_text(
        "from fastapi import FastAPI\nfrom .setup import add_routes, install\n\n"
        "app = FastAPI()\ninstall(app)\nadd_routes(app=app)\n",
        encoding="utf-8",
    )
    (package / "setup.py").write_text(
        "from idempotent.contrib.asgi import IdempotencyMiddleware\nfrom .orders import router\n\n\n"
        "def install(app):\n    app.add_middleware(IdempotencyMiddleware)\n\n\n"
        "def add_routes(app):\n    app.include_router(router)\n\n"
        '    @app.post("/inline")\n    def inline(): ...\n\n\n'
        'def unused(app):\n    @app.post("/never")\n    def never(): ...\n',
        encoding="utf-8",
    )
    (package / "orders.py").write_text(
        'from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n@router.post("/x")\ndef x(): ...\n',
        encoding="utf-8",
    )
    report = check(["."], CheckConfig(root=tmp_path), cwd=tmp_path, extra_handling=())
    assert [(v.path, v.handler, v.reason) for v in report.verdicts] == [
        ("pkg/orders.py", "x", "middleware"),
        ("pkg/setup.py", "add_routes.inline", "middleware"),
        ("pkg/setup.py", "unused.never", "IDEM001"),
    ]


def test_ignoring_idem003_reports_the_unprotected_handler(tmp_path: Path) -> None:
    """With IDEM003 ignored, a handler whose only @idempotent is misplaced is an IDEM001 finding."""
    source = """
    from fastapi import FastAPI
    from idempotent import idempotent

    app = FastAPI()

    @idempotent(key_from="k")
    @app.post("/a")
    def a(k: str): ...
    """
    assert _check(tmp_path, source) == [(7, "IDEM003")]
    config = CheckConfig(root=tmp_path).with_options(ignore=["IDEM003"])
    assert _check(tmp_path, source, config) == [(9, "IDEM001")]
