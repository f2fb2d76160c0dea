"""The fixer: templates registered by integrations, ``--diff``, ``--fix`` and what they leave alone."""

from __future__ import annotations

import difflib
import importlib.util
import shutil
from pathlib import Path

import pytest

from idempotent.check import check, fixes
from idempotent.check.config import CheckConfig
from idempotent.check.fixes import (
    FixTemplate,
    builtin_fix_templates,
    fix_template,
    handling_names,
    integration_available,
    plan_fixes,
    register_fix_template,
    unregister_fix_template,
)
from idempotent.cli import main
from tests.check.conftest import CORPUS, FAKE_FASTAPI, run_cli

FIXABLE = CORPUS / "fixable"
PRELUDE = (
    "from tests.check.conftest import FAKE_DJANGO, FAKE_FASTAPI\n"
    "from idempotent.check import fixes\n"
    "from idempotent.check.fixes import register_fix_template\n"
    "register_fix_template('fastapi', FAKE_FASTAPI)\n"
    "register_fix_template('django', FAKE_DJANGO)\n"
    "_real = fixes.integration_available\n"
    "fixes.integration_available = lambda t: not t.module.startswith('idempotent.contrib.') and _real(t)\n"
)


@pytest.fixture(autouse=True)
def library_integrations_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests describe the library's own integrations as not installed, so what they expect
    does not change as integration modules land (the test integration stands in for them)."""
    real = fixes.integration_available
    monkeypatch.setattr(
        fixes, "integration_available", lambda t: not t.module.startswith("idempotent.contrib.") and real(t)
    )


EXPECTED_DIFF = [
    "--- a/api.py",
    "+++ b/api.py",
    "@@ -13,6 +13,7 @@",
    " )",
    " ",
    " from idempotent import idempotent",
    "+from tests.check.fake_integration import idempotent_endpoint",
    " ",
    " log = logging.getLogger(__name__)",
    " app = FastAPI()",
    "@@ -24,18 +25,20 @@",
    '     "/orders",',
    "     status_code=201,",
    " )",
    "+@idempotent_endpoint()",
    " async def create_order(payload: dict,   session = None):  # trailing comment stays",
    "     session.add(payload)",
    "     await session.commit()",
    " ",
    " ",
    ' @router.put("/orders/{order_id}")',
    "+@idempotent_endpoint()",
    " def  replace_order(order_id: int):",
    '     return {"id": order_id}',
    " ",
    " ",
    '+@app.patch("/orders/{order_id}")',
    ' @idempotent(key_from="order_id")  # misplaced: above the route decorator',
    '-@app.patch("/orders/{order_id}")',
    " def patch_order(order_id: int):",
    '     return {"id": order_id}',
    " ",
    "# review: legacy_flask.py:7: IDEM001 `legacy`: the Flask integration (idempotent.contrib.flask)"
    " is not installed; --fix leaves it",
    "--- a/legacy_flask.py",
    "+++ b/legacy_flask.py",
    "@@ -1,8 +1,10 @@",
    " from flask import Flask",
    "+from idempotent.contrib.flask import idempotent_route",
    " ",
    " app = Flask(__name__)",
    " ",
    " ",
    ' @app.post("/legacy")',
    "+@idempotent_route()",
    " def legacy():",
    "     return {}",
    "--- a/views.py",
    "+++ b/views.py",
    "@@ -2,18 +2,23 @@",
    " from django.views.generic import CreateView, View",
    " ",
    " from .models import Order",
    "+from django.utils.decorators import method_decorator",
    "+from tests.check.fake_integration import idempotent_view",
    " ",
    " ",
    "+@idempotent_view()",
    " def create(request):",
    ' \tif request.method == "POST":',
    " \t\tOrder.objects.create()",
    " \treturn JsonResponse({})",
    " ",
    " ",
    '+@method_decorator(idempotent_view(), name="dispatch")',
    " class OrderCreate(CreateView):",
    " \tmodel = Order",
    " ",
    " ",
    " class OrderView(View):",
    "+\t@method_decorator(idempotent_view())",
    " \tdef post(self, request):",
    " \t\treturn JsonResponse({})",
]

#: What ``--fix`` changes in each file, as zero-context diffs (every other line stays as it was).
EXPECTED_CHANGES = {
    "api.py": [
        "@@ -15,0 +16 @@",
        "+from tests.check.fake_integration import idempotent_endpoint",
        "@@ -26,0 +28 @@",
        "+@idempotent_endpoint()",
        "@@ -32,0 +35 @@",
        "+@idempotent_endpoint()",
        "@@ -36,0 +40 @@",
        '+@app.patch("/orders/{order_id}")',
        "@@ -38 +41,0 @@",
        '-@app.patch("/orders/{order_id}")',
    ],
    "views.py": [
        "@@ -4,0 +5,2 @@",
        "+from django.utils.decorators import method_decorator",
        "+from tests.check.fake_integration import idempotent_view",
        "@@ -6,0 +9 @@",
        "+@idempotent_view()",
        "@@ -12,0 +16 @@",
        '+@method_decorator(idempotent_view(), name="dispatch")',
        "@@ -17,0 +22 @@",
        "+\t@method_decorator(idempotent_view())",
    ],
    "legacy_flask.py": [],
}


def _changes(before: str, after: str) -> list[str]:
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm="")
    return [line for line in lines if not line.startswith(("---", "+++"))]


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "fixable"
    shutil.copytree(FIXABLE, root)
    return root


def test_diff_marks_fixes_without_integration_for_review(
    fake_integration: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--diff`` shows every fix; those whose integration is missing come after a review mark."""
    before = {p.name: p.read_bytes() for p in FIXABLE.glob("*.py")}
    monkeypatch.chdir(FIXABLE)
    assert main(["check", "--diff", "-q"]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == EXPECTED_DIFF
    assert {p.name: p.read_bytes() for p in FIXABLE.glob("*.py")} == before


def test_fix_applies_only_installed_integrations(
    fake_integration: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--fix`` rewrites handlers of installed integrations only, and the result checks clean."""
    root = _copy(tmp_path)
    monkeypatch.chdir(root)
    assert main(["check", "--fix"]) == 1
    err = capsys.readouterr().err
    assert "legacy_flask.py:7: IDEM001 left for review: the Flask integration" in err
    assert "Fixed 6 findings in 2 files." in err
    for name, expected in EXPECTED_CHANGES.items():
        before = (FIXABLE / name).read_text(encoding="utf-8")
        after = (root / name).read_text(encoding="utf-8")
        assert _changes(before, after) == expected, name
        compile(after, name, "exec")
    report = check(["."], CheckConfig(root=root), cwd=root)
    assert [(f.path, f.line, f.code) for f in report.findings] == [("legacy_flask.py", 7, "IDEM001")]
    assert report.warnings == []


def test_fix_twice_changes_nothing_the_second_time(
    fake_integration: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second ``--fix`` finds nothing it can fix and leaves every byte alone."""
    root = _copy(tmp_path)
    monkeypatch.chdir(root)
    main(["check", "--fix", "-q"])
    first = {p.name: p.read_bytes() for p in root.glob("*.py")}
    capsys.readouterr()
    assert main(["check", "--fix"]) == 1
    assert "Fixed 0 findings in 0 files." in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in root.glob("*.py")} == first


def test_fix_without_any_integration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no integration installed every decorator to add is left for review; moving a misplaced
    @idempotent needs only the core library, so that fix is applied."""
    root = _copy(tmp_path)
    monkeypatch.chdir(root)
    assert main(["check", "--fix"]) == 1
    err = capsys.readouterr().err
    assert "Fixed 1 finding in 1 file." in err
    assert err.count("left for review") == 6
    assert "IDEM003" not in err
    for name in ("views.py", "legacy_flask.py"):
        assert (root / name).read_bytes() == (FIXABLE / name).read_bytes()
    moved = (root / "api.py").read_text(encoding="utf-8")
    assert moved != (FIXABLE / "api.py").read_text(encoding="utf-8")
    assert main(["check", "--select", "IDEM003"]) == 0


def test_fix_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    """The command line applies the fixes in a fresh process where the test integration registered."""
    root = _copy(tmp_path)
    result = run_cli("--fix", cwd=root, prelude=PRELUDE)
    assert result.returncode == 1, result.stderr
    assert "Fixed 6 findings in 2 files." in result.stderr
    assert result.stdout.startswith("legacy_flask.py:7:1: IDEM001 ")
    again = run_cli("--fix", cwd=root, prelude=PRELUDE)
    assert "Fixed 0 findings in 0 files." in again.stderr
    for path in root.glob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_fix_keeps_line_endings_bom_and_indentation(
    fake_integration: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRLF line endings, a UTF-8 BOM and the handler's indentation survive a fix."""
    source = (
        '"""Ünïcode docstring."""\r\n'
        "from fastapi import FastAPI\r\n"
        "\r\n"
        "app = FastAPI()\r\n"
        "\r\n"
        "if True:\r\n"
        '    @app.post("/x")\r\n'
        "    def x():\r\n"
        "        return 1\r\n"
    )
    path = tmp_path / "crlf.py"
    path.write_bytes(b"\xef\xbb\xbf" + source.encode("utf-8"))
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix", "-q"]) == 0
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    text = data[3:].decode("utf-8")
    assert text.count("\r\n") == text.count("\n") == 11
    assert "from tests.check.fake_integration import idempotent_endpoint\r\n" in text
    assert '    @app.post("/x")\r\n    @idempotent_endpoint()\r\n    def x():\r\n' in text


def test_name_clash_is_left_for_review(
    fake_integration: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file that already uses the decorator's name for something else is not rewritten."""
    path = tmp_path / "clash.py"
    source = (
        "from fastapi import FastAPI\n\nidempotent_endpoint = None\napp = FastAPI()\n\n\n"
        '@app.post("/x")\ndef x(): ...\n'
    )
    path.write_text(source, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix"]) == 1
    assert "already bound to something else" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == source


def test_multiline_misplaced_decorator_moves_whole(
    fake_integration: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misplaced ``@idempotent(...)`` spread over several lines moves as a block, comments included."""
    path = tmp_path / "multi.py"
    path.write_text(
        "from fastapi import FastAPI\nfrom idempotent import idempotent\n\napp = FastAPI()\n\n\n"
        "@idempotent(\n    key_from='k',  # the key\n)\n"
        '@app.post("/x")\ndef x(k: str): ...\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--fix", "-q"]) == 0
    assert path.read_text(encoding="utf-8").endswith(
        "@app.post(\"/x\")\n@idempotent(\n    key_from='k',  # the key\n)\ndef x(k: str): ...\n"
    )


def test_template_validation() -> None:
    """Templates are checked when created: a decorator line, absolute imports, a module name."""
    with pytest.raises(ValueError, match="starts with '@'"):
        FixTemplate(module="m", imports=(), decorator="idempotent_endpoint()")
    with pytest.raises(ValueError, match="not a valid decorator"):
        FixTemplate(module="m", imports=(), decorator="@idempotent_endpoint(")
    with pytest.raises(ValueError, match="not a Python import"):
        FixTemplate(module="m", imports=("import (",), decorator="@d")
    with pytest.raises(ValueError, match="must be absolute"):
        FixTemplate(module="m", imports=("from . import d",), decorator="@d")
    with pytest.raises(ValueError, match="not a module name"):
        FixTemplate(module="not a module", imports=(), decorator="@d")
    with pytest.raises(TypeError, match="expected a FixTemplate"):
        register_fix_template("fastapi", "@d")  # type: ignore[arg-type]


def test_registry_precedence_and_handling_names() -> None:
    """A registered template replaces the built-in one until unregistered; its names count as handling."""
    builtin = builtin_fix_templates()
    assert set(builtin) == {"fastapi", "starlette", "flask", "django", "drf", "celery"}
    assert fix_template("fastapi") == builtin["fastapi"]
    assert "tests.check.fake_integration.idempotent_endpoint" not in handling_names()
    register_fix_template("fastapi", FAKE_FASTAPI)
    try:
        assert fix_template("fastapi") is FAKE_FASTAPI
        assert "tests.check.fake_integration.idempotent_endpoint" in handling_names()
    finally:
        unregister_fix_template("fastapi")
    assert fix_template("fastapi") == builtin["fastapi"]
    assert fix_template("bottle") is None
    assert builtin["django"].handling_names() == ("idempotent.contrib.django.idempotent_view",)


def test_integration_available_uses_find_spec() -> None:
    """An integration exists when its module can be found; nothing is imported to find out."""
    assert integration_available(FAKE_FASTAPI)
    missing = FixTemplate(module="idempotent_no_such_package.fastapi", imports=(), decorator="@d")
    assert not integration_available(missing)
    assert not integration_available(FixTemplate(module="json.no_such_module", imports=(), decorator="@d"))


def test_django_fixes_apply_when_the_django_integration_can_be_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Django and DRF fixes are applicable when ``idempotent.contrib.django`` can be imported:
    the module is installed and so is Django, which it imports (found without importing either)."""
    templates = builtin_fix_templates()
    assert integration_available(templates["django"])
    assert integration_available(templates["drf"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "django" else real(name, *rest)
    )
    assert not integration_available(templates["django"])
    assert not integration_available(templates["drf"])
    assert integration_available(templates["celery"])


def test_plans_for_frameworks_without_a_template() -> None:
    """Without its integration a fix is not applicable, and the plan says why; moving a misplaced
    decorator is always applicable."""
    report = check(["fixable"], CheckConfig(root=CORPUS), cwd=CORPUS, extra_handling=())
    plans = {p.finding.handler: p for p in plan_fixes(report.findings)}
    assert plans["patch_order"].applicable
    assert plans["patch_order"].decorator is None
    assert not plans["legacy"].applicable
    assert plans["legacy"].note == "the Flask integration (idempotent.contrib.flask) is not installed"
