"""The report formats of ``idempotent check``: text, JSON, SARIF 2.1.0 and GitHub annotations."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from idempotent.check.fixes import FixPlan, plan_fixes
from idempotent.check.rules import RULES, FileWarning, Finding
from idempotent.check.runner import Report

__all__ = ["FORMATS", "render", "summary", "warning_lines"]

FORMATS = ("text", "json", "sarif", "github")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/idempotent/"
_HIGH_RANK = 90.0
_NORMAL_RANK = 50.0


def _version() -> str:
    try:
        return metadata.version("idempotent")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _level(finding: Finding) -> str:
    return "error" if finding.high else "warning"


def render(report: Report, fmt: str) -> str:
    """The report in one of :data:`FORMATS`, ready to print."""
    if fmt == "json":
        return _json(report)
    if fmt == "sarif":
        return _sarif(report)
    if fmt == "github":
        return _github(report)
    return "".join(f"{f.path}:{f.line}:{f.column}: {f.code} {f.message}\n" for f in report.findings)


def warning_lines(warnings: list[FileWarning]) -> str:
    """Skipped files, one line each, for standard error."""
    return "".join(f"{w.path}: warning: {w.message}\n" for w in warnings)


def summary(report: Report) -> str:
    """One closing line for standard error."""
    files = f"{report.files} file{'s' if report.files != 1 else ''}"
    if not report.findings:
        return f"No findings in {files}.\n"
    count = len(report.findings)
    writes = sum(1 for f in report.findings if f.writes)
    return (
        f"Found {count} finding{'s' if count != 1 else ''} in {files} "
        f"({writes} in handlers whose body shows a write).\n"
    )


def _fix_fields(plan: FixPlan | None) -> dict[str, object]:
    if plan is None:
        return {"applicable": False, "note": "no automatic fix"}
    return {"applicable": plan.applicable, "note": plan.note, "decorator": plan.decorator}


def _plans(report: Report) -> dict[int, FixPlan]:
    return {id(plan.finding): plan for plan in plan_fixes(report.findings)}


def _json(report: Report) -> str:
    plans = _plans(report)
    document = {
        "version": 1,
        "tool": {"name": "idempotent", "version": _version()},
        "files_checked": report.files,
        "findings": [
            {
                "path": f.path,
                "line": f.line,
                "column": f.column,
                "code": f.code,
                "rule": f.rule.name,
                "category": f.rule.category,
                "severity": _level(f),
                "rank": "high" if f.high else "normal",
                "message": f.message,
                "framework": f.framework,
                "handler": f.handler,
                "methods": list(f.methods),
                "writes": list(f.writes),
                "fix": _fix_fields(plans.get(id(f))),
            }
            for f in report.findings
        ],
        "warnings": [{"path": w.path, "message": w.message} for w in report.warnings],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _uri(path: str) -> tuple[str, str | None]:
    """A SARIF artifact URI, relative to the source root when the path is."""
    pure = PurePosixPath(path)
    if pure.is_absolute():
        return Path(path).as_uri(), None
    return quote(pure.as_posix()), "%SRCROOT%"


def _location(path: str, line: int | None = None, column: int | None = None) -> dict[str, object]:
    uri, base = _uri(path)
    artifact: dict[str, object] = {"uri": uri}
    if base is not None:
        artifact["uriBaseId"] = base
    physical: dict[str, object] = {"artifactLocation": artifact}
    if line is not None:
        region: dict[str, object] = {"startLine": line}
        if column is not None:
            region["startColumn"] = column
        physical["region"] = region
    return {"physicalLocation": physical}


def _sarif(report: Report) -> str:
    codes = list(RULES)
    rules = [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": rule.description},
            "help": {"text": rule.description},
            "defaultConfiguration": {"level": "error", "enabled": rule.default},
            "properties": {"tags": [rule.category], "precision": "medium"},
        }
        for rule in RULES.values()
    ]
    results = []
    for finding in report.findings:
        identity = f"{finding.code}\0{finding.path}\0{finding.handler}".encode()
        location = _location(finding.path, finding.line, finding.column)
        location["logicalLocations"] = [{"fullyQualifiedName": finding.handler, "kind": "function"}]
        results.append(
            {
                "ruleId": finding.code,
                "ruleIndex": codes.index(finding.code),
                "level": _level(finding),
                "rank": _HIGH_RANK if finding.high else _NORMAL_RANK,
                "message": {"text": finding.message},
                "locations": [location],
                "partialFingerprints": {"idempotentHandler/v1": hashlib.sha256(identity).hexdigest()[:32]},
                "properties": {
                    "category": finding.rule.category,
                    "framework": finding.framework,
                    "methods": list(finding.methods),
                    "writes": list(finding.writes),
                },
            }
        )
    notifications = [
        {
            "level": "warning",
            "message": {"text": f"{w.path}: {w.message}"},
            "locations": [_location(w.path)],
        }
        for w in report.warnings
    ]
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "idempotent",
                        "informationUri": INFORMATION_URI,
                        "version": _version(),
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": report.root.as_uri() + "/"}},
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(report: Report) -> str:
    lines = []
    for f in report.findings:
        title = _escape_property(f"{f.code} {f.rule.name}")
        lines.append(
            f"::{_level(f)} file={_escape_property(f.path)},line={f.line},col={f.column},"
            f"title={title}::{_escape_data(f.message)}\n"
        )
    lines.extend(
        f"::warning file={_escape_property(w.path)}::{_escape_data(w.message)}\n" for w in report.warnings
    )
    return "".join(lines)
