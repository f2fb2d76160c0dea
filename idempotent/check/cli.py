"""``idempotent check``: the command-line front of the static checker."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from idempotent.check.config import CheckConfig, ConfigError, find_pyproject, load_config
from idempotent.check.fixes import FixPlan, apply_fixes, fix_template, plan_fixes, render_diff
from idempotent.check.report import FORMATS, render, summary, warning_lines
from idempotent.check.rules import RULES
from idempotent.check.runner import Report, UsageError, check

__all__ = ["register", "run"]

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Report HTTP handlers of POST, PUT and PATCH (DELETE when configured) that have no idempotency
handling, in FastAPI, Starlette, Flask, Django and Django REST framework code, and (opt-in)
Celery tasks. The code is parsed, never imported or run.

rules:
{rules}

exit status: 0 no findings, 1 findings, 2 usage error (or a skipped file with --strict).
Suppress one handler with "# idempotent: ignore[IDEM001]" on its def line or a decorator line.
Settings are read from [tool.idempotent.check] in the nearest pyproject.toml.
"""


def _codes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part for part in value.replace(" ", ",").split(",") if part]


def register(subparsers: Any) -> None:  # argparse's sub-parsers action has no public type
    """Add the ``check`` sub-command."""
    rules = "\n".join(
        f"  {r.code} {r.name}{'' if r.default else ' (opt-in)'}: {r.summary}" for r in RULES.values()
    )
    parser = subparsers.add_parser(
        "check",
        help="find state-changing endpoints that lack idempotency handling",
        description=_DESCRIPTION.format(rules=rules),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: .)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="report format (default: text)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    parser.add_argument(
        "--diff", action="store_true", help="print a unified diff that fixes the findings; change nothing"
    )
    parser.add_argument(
        "--fix",
        action="store_true",
        help="apply the fixes whose framework integration is installed; leave the others",
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 when a file cannot be read or parsed")
    parser.add_argument("--select", metavar="CODES", help="check only these rules (comma-separated)")
    parser.add_argument("--extend-select", metavar="CODES", help="also check these rules (IDEM002)")
    parser.add_argument("--ignore", metavar="CODES", help="do not check these rules")
    parser.add_argument(
        "--methods", metavar="METHODS", help="HTTP methods to check, e.g. POST,PUT,PATCH,DELETE"
    )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="skip matching paths (repeatable)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="read settings from this pyproject.toml")
    source.add_argument("--isolated", action="store_true", help="ignore every pyproject.toml")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary line")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace, cwd: Path) -> CheckConfig:
    if args.isolated:
        base = CheckConfig(root=cwd)
    elif args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"--config {args.config}: no such file")
        base = load_config(path)
    else:
        found = find_pyproject(cwd)
        base = load_config(found) if found is not None else CheckConfig(root=cwd)
    return base.with_options(
        methods=_codes(args.methods),
        exclude=args.exclude,
        select=_codes(args.select),
        extend_select=_codes(args.extend_select) or (),
        ignore=_codes(args.ignore) or (),
    )


def _write(stream: TextIO, text: str) -> None:
    if text:
        stream.write(text)
        stream.flush()


def _setups(fixed: list[FixPlan]) -> list[str]:
    """What the projects' fixed handlers need once (each template's ``setup``), each said once."""
    setups: list[str] = []
    for plan in fixed:
        template = fix_template(plan.finding.framework)
        setup = template.setup if template is not None and plan.decorator is not None else None
        if setup and setup not in setups:
            setups.append(setup)
    return setups


def _fix(report: Report, args: argparse.Namespace, config: CheckConfig, cwd: Path) -> Report:
    plans = plan_fixes(report.findings)
    result = apply_fixes(plans)
    for plan in plans:
        if not plan.applicable:
            f = plan.finding
            _write(sys.stderr, f"{f.path}:{f.line}: {f.code} left for review: {plan.note}\n")
    for plan, reason in result.skipped:
        f = plan.finding
        _write(sys.stderr, f"{f.path}:{f.line}: {f.code} not fixed: {reason}\n")
    if not args.quiet:
        count = len(result.fixed)
        files = len(result.files)
        _write(
            sys.stderr,
            f"Fixed {count} finding{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''}.\n",
        )
        for setup in _setups(result.fixed):
            _write(sys.stderr, f"Then, once: {setup}.\n")
    if result.fixed:
        return check(args.paths, config, cwd=cwd)
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``idempotent check`` with parsed arguments; returns the exit status."""
    cwd = Path.cwd()
    if args.diff and args.format != "text":
        _write(
            sys.stderr,
            "idempotent check: error: --diff prints a unified diff; it cannot be combined with --format\n",
        )
        return EXIT_USAGE
    try:
        config = _config(args, cwd)
        report = check(args.paths, config, cwd=cwd)
        if args.diff:
            diff = render_diff(plan_fixes(report.findings))
        if args.fix:
            report = _fix(report, args, config, cwd)
        output = diff if args.diff else render(report, args.format)
        if args.format != "github" or args.diff:
            _write(sys.stderr, warning_lines(report.warnings))
        if args.output:
            Path(args.output).write_text(output, encoding="utf-8")
        else:
            _write(sys.stdout, output)
        if not args.quiet and args.format == "text":
            _write(sys.stderr, summary(report))
    except (UsageError, ConfigError) as exc:
        _write(sys.stderr, f"idempotent check: error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FINDINGS
        _write(sys.stderr, f"idempotent check: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the command never ends in a traceback
        _write(sys.stderr, f"idempotent check: internal error: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE
    if args.strict and report.warnings:
        return EXIT_USAGE
    return EXIT_FINDINGS if report.findings else EXIT_CLEAN
