"""Every corpus app is checked, and every handler's verdict is asserted: findings and non-findings.

Each entry names a file of ``tests/check/corpus`` and a line in it; the comments in the corpus
files say why each handler is or is not a finding. Findings are ``(path, line, column, code)``;
verdicts are ``(path, def line, handler, reason)`` where the reason is the rule code reported,
or why the handler is safe (``decorator``, ``header``, ``middleware``, ``wrapped``), or
``suppressed``, or ``not-checked`` (a method or rule that is not selected).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from idempotent.check import check, load_config
from idempotent.check.config import CheckConfig

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Expected:
    """What the checker must report for one corpus app."""

    findings: list[tuple[str, int, int, str]]
    verdicts: list[tuple[str, int, str, str]]


EXPECTED: dict[str, Expected] = {
    "fastapi_single": Expected(
        findings=[
            ("app.py", 19, 1, "IDEM001"),
            ("app.py", 26, 1, "IDEM001"),
            ("app.py", 55, 1, "IDEM003"),
            ("app.py", 61, 1, "IDEM003"),
            ("app.py", 94, 1, "IDEM001"),
            ("app.py", 103, 1, "IDEM001"),
            ("app.py", 108, 1, "IDEM001"),
            ("app.py", 123, 1, "IDEM001"),
            ("app.py", 132, 1, "IDEM001"),
        ],
        verdicts=[
            ("app.py", 19, "create_order", "IDEM001"),
            ("app.py", 26, "ping", "IDEM001"),
            ("app.py", 36, "delete_order", "not-checked"),
            ("app.py", 42, "replace_order", "decorator"),
            ("app.py", 47, "patch_order", "decorator"),
            ("app.py", 52, "charge", "decorator"),
            ("app.py", 57, "refund", "IDEM003"),
            ("app.py", 64, "tip", "IDEM003"),
            ("app.py", 68, "header_parameter", "header"),
            ("app.py", 72, "header_alias", "header"),
            ("app.py", 76, "header_read", "header"),
            ("app.py", 86, "with_dependency", "header"),
            ("app.py", 90, "with_route_dependency", "header"),
            ("app.py", 94, "mixed", "IDEM001"),
            ("app.py", 103, "sql_insert", "IDEM001"),
            ("app.py", 108, "outbound", "IDEM001"),
            ("app.py", 114, "suppressed_on_decorator", "suppressed"),
            ("app.py", 118, "suppressed_on_def", "suppressed"),
            ("app.py", 123, "suppressed_other_code", "IDEM001"),
            ("app.py", 128, "suppressed_everything", "suppressed"),
            ("app.py", 132, "registered_later", "IDEM001"),
            ("app.py", 136, "registered_wrapped", "wrapped"),
        ],
    ),
    "fastapi_project": Expected(
        findings=[
            ("shop/legacy.py", 12, 1, "IDEM001"),
            ("shop/routers/internal.py", 8, 1, "IDEM001"),
            ("shop/routers/internal.py", 12, 1, "IDEM001"),
        ],
        verdicts=[
            ("shop/legacy.py", 12, "legacy_order", "IDEM001"),
            ("shop/main.py", 19, "health", "middleware"),
            ("shop/routers/admin.py", 10, "patch_settings", "middleware"),
            ("shop/routers/admin_users.py", 7, "create_user", "middleware"),
            ("shop/routers/internal.py", 8, "start_job", "IDEM001"),
            ("shop/routers/internal.py", 12, "orphaned", "IDEM001"),
            ("shop/routers/orders.py", 7, "create_order", "middleware"),
            ("shop/routers/orders.py", 13, "replace_order", "middleware"),
            ("shop/routers/payments.py", 7, "pay", "middleware"),
            ("shop/v1.py", 7, "create_order_v1", "middleware"),
        ],
    ),
    "starlette_app": Expected(
        findings=[
            ("site.py", 17, 1, "IDEM001"),
            ("site.py", 27, 1, "IDEM001"),
            ("site.py", 35, 5, "IDEM001"),
        ],
        verdicts=[
            ("site.py", 17, "create_order", "IDEM001"),
            ("site.py", 23, "create_payment", "decorator"),
            ("site.py", 27, "upload", "IDEM001"),
            ("site.py", 35, "Orders.post", "IDEM001"),
            ("site.py", 38, "Orders.delete", "not-checked"),
            ("site.py", 43, "Receipts.put", "header"),
            ("site.py", 59, "secured_create", "middleware"),
            ("site.py", 64, "SecuredEndpoint.patch", "middleware"),
        ],
    ),
    "flask_app": Expected(
        findings=[
            ("factory/standalone.py", 7, 1, "IDEM001"),
            ("single.py", 16, 1, "IDEM001"),
            ("single.py", 28, 1, "IDEM001"),
            ("single.py", 40, 1, "IDEM001"),
            ("single.py", 54, 5, "IDEM001"),
            ("single.py", 66, 5, "IDEM001"),
            ("single.py", 70, 1, "IDEM001"),
        ],
        verdicts=[
            ("factory/__init__.py", 18, "create_app.inline", "middleware"),
            ("factory/api.py", 10, "Items.post", "middleware"),
            ("factory/api.py", 18, "things", "middleware"),
            ("factory/standalone.py", 7, "loose_post", "IDEM001"),
            ("factory/views.py", 7, "create_order", "middleware"),
            ("single.py", 16, "create_order", "IDEM001"),
            ("single.py", 28, "charge", "IDEM001"),
            ("single.py", 35, "refund", "decorator"),
            ("single.py", 40, "put_note", "IDEM001"),
            ("single.py", 45, "patch_note", "header"),
            ("single.py", 54, "OrderAPI.post", "IDEM001"),
            ("single.py", 59, "OrderAPI.put", "decorator"),
            ("single.py", 66, "Export.dispatch_request", "IDEM001"),
            ("single.py", 70, "bulk_import", "IDEM001"),
        ],
    ),
    "django_app": Expected(
        findings=[
            ("orders/plain.py", 6, 1, "IDEM001"),
            ("orders/views.py", 19, 1, "IDEM001"),
            ("orders/views.py", 31, 1, "IDEM001"),
            ("orders/views.py", 37, 1, "IDEM001"),
            ("orders/views.py", 47, 1, "IDEM001"),
            ("orders/views.py", 52, 1, "IDEM001"),
            ("orders/views.py", 84, 5, "IDEM001"),
            ("orders/views.py", 100, 5, "IDEM001"),
            ("orders/views.py", 104, 1, "IDEM001"),
            ("orders/views.py", 113, 1, "IDEM001"),
            ("orders/views.py", 118, 1, "IDEM001"),
            ("orders/views.py", 127, 1, "IDEM001"),
            ("orders/views.py", 149, 1, "IDEM001"),
        ],
        verdicts=[
            ("orders/plain.py", 6, "submit", "IDEM001"),
            ("orders/views.py", 19, "create_order", "IDEM001"),
            ("orders/views.py", 31, "cancel_order", "IDEM001"),
            ("orders/views.py", 37, "put_order", "IDEM001"),
            ("orders/views.py", 47, "webhook", "IDEM001"),
            ("orders/views.py", 52, "api_update", "IDEM001"),
            ("orders/views.py", 63, "keyed_webhook", "decorator"),
            ("orders/views.py", 67, "header_view", "header"),
            ("orders/views.py", 74, "wrapped_in_urls", "wrapped"),
            ("orders/views.py", 84, "OrderView.post", "IDEM001"),
            ("orders/views.py", 91, "ProtectedView.post", "decorator"),
            ("orders/views.py", 97, "MethodProtected.put", "decorator"),
            ("orders/views.py", 100, "MethodProtected.patch", "IDEM001"),
            ("orders/views.py", 104, "ContactView", "IDEM001"),
            ("orders/views.py", 113, "OrderCreate", "IDEM001"),
            ("orders/views.py", 118, "OrderUpdate", "IDEM001"),
            ("orders/views.py", 127, "OrderDelete", "IDEM001"),
            ("orders/views.py", 132, "SafeCreate", "decorator"),
            ("orders/views.py", 136, "HeaderUpdate", "header"),
            ("orders/views.py", 149, "BaseOrderCreate", "IDEM001"),
        ],
    ),
    "drf_app": Expected(
        findings=[
            ("api/views.py", 20, 5, "IDEM001"),
            ("api/views.py", 33, 5, "IDEM001"),
            ("api/views.py", 38, 1, "IDEM001"),
            ("api/views.py", 47, 5, "IDEM001"),
            ("api/views.py", 58, 5, "IDEM001"),
            ("api/views.py", 67, 1, "IDEM001"),
            ("api/views.py", 78, 1, "IDEM001"),
            ("api/views.py", 92, 1, "IDEM001"),
        ],
        verdicts=[
            ("api/views.py", 20, "PaymentList.post", "IDEM001"),
            ("api/views.py", 29, "PaymentDetail.put", "decorator"),
            ("api/views.py", 33, "PaymentDetail.patch", "IDEM001"),
            ("api/views.py", 38, "PaymentViewSet", "IDEM001"),
            ("api/views.py", 47, "RefundViewSet.create", "IDEM001"),
            ("api/views.py", 51, "RefundViewSet.update", "decorator"),
            ("api/views.py", 54, "RefundViewSet.partial_update", "header"),
            ("api/views.py", 58, "RefundViewSet.approve", "IDEM001"),
            ("api/views.py", 67, "CreateOnly", "IDEM001"),
            ("api/views.py", 78, "PaymentCreate", "IDEM001"),
            ("api/views.py", 83, "GuardedCreate", "decorator"),
            ("api/views.py", 87, "PaymentRemove", "not-checked"),
            ("api/views.py", 92, "capture", "IDEM001"),
            ("api/views.py", 104, "adjust", "decorator"),
        ],
    ),
    "django_covered": Expected(
        findings=[],
        verdicts=[
            ("shop/views.py", 11, "create_order", "middleware"),
            ("shop/views.py", 17, "OrderCreate", "middleware"),
            ("shop/views.py", 21, "OrderViewSet", "middleware"),
            ("shop/views.py", 26, "capture", "middleware"),
        ],
    ),
    "celery_app": Expected(
        findings=[
            ("tasks.py", 27, 1, "IDEM003"),
        ],
        verdicts=[
            ("tasks.py", 12, "send_receipt", "not-checked"),
            ("tasks.py", 17, "recompute", "not-checked"),
            ("tasks.py", 23, "settle", "decorator"),
            ("tasks.py", 29, "refund", "IDEM003"),
            ("tasks.py", 34, "cleanup", "not-checked"),
        ],
    ),
    "configured": Expected(
        findings=[
            ("service/api.py", 12, 1, "IDEM001"),
            ("service/api.py", 30, 1, "IDEM002"),
        ],
        verdicts=[
            ("service/api.py", 12, "delete_order", "IDEM001"),
            ("service/api.py", 17, "create_order", "decorator"),
            ("service/api.py", 22, "put_order", "decorator"),
            ("service/api.py", 26, "guarded_post", "middleware"),
            ("service/api.py", 30, "nightly", "IDEM002"),
        ],
    ),
}


def _run(
    name: str, *extra_select: str
) -> tuple[list[tuple[str, int, int, str]], list[tuple[str, int, str, str]]]:
    root = CORPUS / name
    pyproject = root / "pyproject.toml"
    config = load_config(pyproject) if pyproject.exists() else CheckConfig(root=root)
    config = config.with_options(extend_select=extra_select)
    report = check(["."], config, cwd=root, extra_handling=())
    assert report.warnings == []
    findings = [(f.path, f.line, f.column, f.code) for f in report.findings]
    verdicts = [(v.path, v.line, v.handler, v.reason) for v in report.verdicts]
    return findings, verdicts


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_findings_and_verdicts(name: str) -> None:
    """Each corpus app yields exactly the expected findings and a verdict for every handler."""
    findings, verdicts = _run(name)
    assert findings == EXPECTED[name].findings
    assert verdicts == EXPECTED[name].verdicts


def test_every_corpus_app_is_covered() -> None:
    """No corpus directory is left without expectations (except the fixer's own inputs)."""
    apps = {p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert apps - {"fixable"} == set(EXPECTED)
