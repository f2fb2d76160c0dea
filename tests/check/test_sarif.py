"""SARIF output validates against the SARIF 2.1.0 JSON schema shipped beside these tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.check.conftest import CORPUS, run_cli

SCHEMA_FILE = Path(__file__).parent / "schemas" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    """A validator for the SARIF 2.1.0 schema, itself checked against its meta-schema."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _sarif(cwd: Path, *args: str) -> dict[str, Any]:
    result = run_cli("--format", "sarif", *args, cwd=cwd)
    assert result.returncode in {0, 1}, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.parametrize("name", ["fastapi_single", "django_app", "drf_app", "django_covered"])
def test_sarif_validates(validator: jsonschema.protocols.Validator, name: str) -> None:
    """Reports of several corpus apps (with and without findings) are valid SARIF 2.1.0."""
    document = _sarif(CORPUS / name)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert errors == []


def test_sarif_content(validator: jsonschema.protocols.Validator) -> None:
    """Results carry the rule, level, rank, a relative URI, the region and a stable fingerprint."""
    document = _sarif(CORPUS / "fastapi_project")
    validator.validate(document)
    assert document["version"] == "2.1.0"
    run = document["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "idempotent"
    assert [rule["id"] for rule in driver["rules"]] == ["IDEM001", "IDEM002", "IDEM003"]
    assert driver["rules"][0]["name"] == "missing-idempotency-key"
    assert driver["rules"][0]["properties"]["tags"] == ["correctness"]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == (CORPUS / "fastapi_project").as_uri() + "/"
    results = run["results"]
    assert [
        (
            r["ruleId"],
            r["level"],
            r["rank"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
        )
        for r in results
    ] == [
        ("IDEM001", "error", 90.0, "shop/legacy.py", 12),
        ("IDEM001", "warning", 50.0, "shop/routers/internal.py", 8),
        ("IDEM001", "warning", 50.0, "shop/routers/internal.py", 12),
    ]
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
    fingerprints = [r["partialFingerprints"]["idempotentHandler/v1"] for r in results]
    assert len(set(fingerprints)) == 3
    assert fingerprints == [
        r["partialFingerprints"]["idempotentHandler/v1"]
        for r in _sarif(CORPUS / "fastapi_project")["runs"][0]["results"]
    ]


def test_sarif_with_skipped_files_and_odd_paths(
    validator: jsonschema.protocols.Validator, tmp_path: Path
) -> None:
    """Skipped files become tool notifications; paths with spaces and non-ASCII are encoded URIs."""
    folder = tmp_path / "my app" / "café"
    folder.mkdir(parents=True)
    (folder / "views.py").write_text(
        'from flask import Flask\napp = Flask(__name__)\n\n\n@app.post("/x")\ndef x():\n    return {}\n',
        encoding="utf-8",
    )
    (folder / "broken.py").write_text("def (:\n", encoding="utf-8")
    document = _sarif(tmp_path)
    validator.validate(document)
    run = document["runs"][0]
    location = run["results"][0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "my%20app/caf%C3%A9/views.py"
    notifications = run["invocations"][0]["toolExecutionNotifications"]
    assert len(notifications) == 1
    assert notifications[0]["level"] == "warning"
    assert notifications[0]["message"]["text"].startswith("my app/café/broken.py: cannot be parsed")


def test_the_schema_rejects_a_broken_report(validator: jsonschema.protocols.Validator) -> None:
    """The validator is not vacuous: a result with an unknown level is rejected."""
    document = _sarif(CORPUS / "fastapi_project")
    document["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)
