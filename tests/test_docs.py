"""README and docs/: every relative link resolves, to a file and, when it names one, a heading."""

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images included
README_LINES = 150  # the front door stays short; the rest lives in docs/


def prose(path: Path) -> str:
    """The Markdown outside fenced code blocks, where links are links."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.*)$", prose(path), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_anchor_rule_is_githubs():
    page = REPO / "docs" / "reproducibility.md"
    assert "numerics-portable-or-fast" in anchors(page)  # "Numerics: portable or fast"
    assert "what-is-reproducible-where" in anchors(page)  # "What is reproducible, where"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(prose(document)):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{document.name}: {broken}"


def test_the_readme_is_a_short_front_door_that_links_every_document():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_LINES
    for page in DOCUMENTS[1:]:
        assert f"(docs/{page.name}" in readme, page.name
