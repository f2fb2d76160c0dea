"""Time ``idempotent check`` on a large generated tree and report files per second.

The tree mixes FastAPI routers included into one app (half of them behind the idempotency
middleware through a parent router), Flask blueprints, Django views and plain modules, so both
passes (parsing every file, resolving names across all of them) are exercised.

    python benchmarks/bench_check.py                 # 2,400 files, best of 3, in-process
    python benchmarks/bench_check.py --files 5000 --cli
    python benchmarks/bench_check.py --tree ~/src/some-django-project --cli

``--tree`` times an existing tree instead (a checkout of a real project). Every run also times
``ast.parse`` alone over the same files, so the share of parsing can be read side by side, and
reports the peak memory (RSS) of the process that checked.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idempotent.check import check  # noqa: E402 -- needs the repository on the path first
from idempotent.check.config import CheckConfig  # noqa: E402 -- same
from idempotent.check.runner import discover, read_source  # noqa: E402 -- same

FASTAPI_ROUTER = '''\
"""Router {i}."""

from fastapi import APIRouter, Depends, Header

from idempotent import idempotent

from svc.db import get_session

router = APIRouter(prefix="/r{i}")


@router.get("/items")
def list_items(session=Depends(get_session)):
    return session.query("Item").all()


@router.post("/items")
def create_item(payload: dict, session=Depends(get_session)):
    session.add(payload)
    session.commit()
    return payload


@router.put("/items/{{item_id}}")
@idempotent(key_from="item_id")
def replace_item(item_id: int, payload: dict):
    return payload


@router.patch("/items/{{item_id}}")
def patch_item(item_id: int, idempotency_key: str = Header(...)):
    return {{"id": item_id}}


@router.post("/items/{{item_id}}/notify")
async def notify(item_id: int):
    return {{"queued": item_id}}


def helper_{i}(value: int) -> int:
    total = 0
    for step in range(value):
        total += step * {i}
    return total
'''

FLASK_BLUEPRINT = """\
from flask import Blueprint, request
from flask.views import MethodView

bp{i} = Blueprint("bp{i}", __name__)


@bp{i}.route("/b{i}", methods=["POST"])
def create():
    return request.json


class Resource{i}(MethodView):
    def get(self):
        return {{}}

    def post(self):
        return {{}}


bp{i}.add_url_rule("/b{i}/res", view_func=Resource{i}.as_view("res{i}"))
"""

DJANGO_VIEWS = """\
from django.http import JsonResponse
from django.views.generic import CreateView

from .models import Order


def order_{i}(request):
    if request.method == "POST":
        Order.objects.create(n={i})
    return JsonResponse({{}})


class OrderCreate{i}(CreateView):
    model = Order
    fields = ["n"]
"""

PLAIN = '''\
"""Utility module {i}."""

import dataclasses


@dataclasses.dataclass
class Record{i}:
    name: str
    value: int = {i}

    def doubled(self) -> int:
        return self.value * 2


def parse_{i}(text: str) -> list[Record{i}]:
    return [Record{i}(part) for part in text.split(",") if part]
'''


def generate(root: Path, files: int) -> int:
    """Write a tree of about ``files`` Python files under ``root``; return how many were written."""
    quarter = max(1, files // 4)
    written = 0
    for package in ("svc", "svc/routers", "svc/blueprints", "svc/views", "svc/utils"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("", encoding="utf-8")
        written += 1
    (root / "svc/db.py").write_text("def get_session():\n    return None\n", encoding="utf-8")
    lines = [
        "from fastapi import APIRouter, FastAPI",
        "from idempotent.contrib.asgi import IdempotencyMiddleware",
        "from flask import Flask",
        "",
        "app = FastAPI()",
        "protected = FastAPI()",
        "protected.add_middleware(IdempotencyMiddleware)",
        "flask_app = Flask(__name__)",
    ]
    for i in range(quarter):
        (root / f"svc/routers/r{i}.py").write_text(FASTAPI_ROUTER.format(i=i), encoding="utf-8")
        (root / f"svc/blueprints/b{i}.py").write_text(FLASK_BLUEPRINT.format(i=i), encoding="utf-8")
        (root / f"svc/views/v{i}.py").write_text(DJANGO_VIEWS.format(i=i), encoding="utf-8")
        (root / f"svc/utils/u{i}.py").write_text(PLAIN.format(i=i), encoding="utf-8")
        written += 4
        target = "protected" if i % 2 else "app"
        lines.append(f"from svc.routers.r{i} import router as r{i}")
        lines.append(f"{target}.include_router(r{i})")
        lines.append(f"from svc.blueprints.b{i} import bp{i}")
        lines.append(f"flask_app.register_blueprint(bp{i})")
    (root / "svc/main.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + 2


def _in_process(root: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    report = check(["."], CheckConfig(root=root), cwd=root, extra_handling=())
    elapsed = time.perf_counter() - start
    return elapsed, report.files, len(report.findings)


def _parse_only(root: Path) -> float:
    """Seconds ``ast.parse`` alone takes over the files the checker reads (reading included)."""
    config = CheckConfig(root=root)
    files = discover(["."], config, root)
    start = time.perf_counter()
    for path in files:
        try:
            ast.parse(read_source(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
    return time.perf_counter() - start


def _cli(root: Path) -> tuple[float, int, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "idempotent", "check", "--format", "json", "--isolated", "."]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in {0, 1}:
        raise SystemExit(f"the command failed ({result.returncode}): {result.stderr}")
    document = json.loads(result.stdout)
    return elapsed, int(document["files_checked"]), len(document["findings"])


def main(argv: list[str] | None = None) -> int:
    """Generate the tree, time the checker, print the result."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2400, help="approximate number of files (default 2400)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default 3)")
    parser.add_argument("--cli", action="store_true", help="time the command line in a subprocess instead")
    parser.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    parser.add_argument("--tree", metavar="DIR", help="time an existing tree instead of a generated one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="idempotent-check-bench-") as scratch:
        if args.tree:
            root = Path(args.tree).resolve()
            written = 0
        else:
            root = Path(args.keep) if args.keep else Path(scratch)
            written = generate(root, args.files)
        runs = [(_cli if args.cli else _in_process)(root) for _ in range(max(1, args.repeat))]
        parse_only = min(_parse_only(root) for _ in range(max(1, args.repeat)))
    who = resource.RUSAGE_CHILDREN if args.cli else resource.RUSAGE_SELF
    peak_mib = resource.getrusage(who).ru_maxrss / 1024
    best, files, findings = min(runs)
    result = {
        "benchmark": "idempotent check",
        "mode": "cli" if args.cli else "in-process",
        "files_written": written,
        "files_checked": files,
        "findings": findings,
        "best_seconds": round(best, 3),
        "files_per_second": round(files / best, 1),
        "runs_seconds": [round(r[0], 3) for r in runs],
        "parse_only_seconds": round(parse_only, 3),
        "check_over_parse": round(best / parse_only, 2) if parse_only else None,
        "peak_rss_mib": round(peak_mib, 1),
        "tree": str(root) if args.tree else None,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    print(
        f"checked {files} files in {best:.2f} s: {files / best:,.0f} files/s "
        f"({findings} findings, best of {len(runs)}, {result['mode']}); ast.parse alone "
        f"{parse_only:.2f} s; peak RSS {peak_mib:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
