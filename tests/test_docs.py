"""The README's links into the documentation pages resolve (the site itself is built by
``mkdocs build --strict`` in CI, which checks the links between pages)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _anchors(page: Path) -> set[str]:
    """The heading anchors MkDocs and GitHub give the page's headings."""
    anchors = set()
    for heading in re.findall(r"(?m)^#+ (.+)$", page.read_text(encoding="utf-8")):
        text = re.sub(r"[^\w\- ]", "", heading.lower()).strip()
        anchors.add(re.sub(r"[\s]+", "-", text))
    return anchors


def test_readme_links_to_existing_pages_and_headings() -> None:
    """Every relative link in the README names an existing file, and an existing heading when it
    has an anchor."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", readme)
    assert links
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), target
        if anchor:
            assert anchor in _anchors(page), f"{target}#{anchor}"
