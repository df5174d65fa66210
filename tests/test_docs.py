"""README and docs/: every relative link resolves, to a file and, when it names one, a heading."""

import re
from pathlib import Path

import pytest

from mnistpipe.config import read_params
from mnistpipe.modeling.recipe import TrainParams
from tests.conftest import REPO
from tools import params_doc

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]  # guides/ too
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
        link = page.relative_to(REPO).as_posix()
        assert f"({link}" in readme, link


def test_the_params_reference_is_generated_from_the_fields_and_current():
    """docs/params.md is what `make docs` writes from the pydantic descriptions and the
    committed params.yaml, with one row per key of params.yaml."""
    params = read_params(REPO / "params.yaml")
    written = (REPO / "docs" / "params.md").read_text(encoding="utf-8")
    assert written == params_doc.render(params), "docs/params.md is stale: run `make docs`"
    keys = re.findall(r"^\| `([^`]+)` \|", written, flags=re.M)
    assert "train.ood_rejection" in keys and "model.cnn.channels" in keys
    assert len(keys) == len(set(keys)) == leaf_count(params) + 1  # + the recipe row


def leaf_count(mapping: dict) -> int:
    """Keys of a params mapping whose value is not itself a non-empty mapping."""
    return sum(
        leaf_count(value) if isinstance(value, dict) and value else 1 for value in mapping.values()
    )


def test_the_params_reference_goes_stale_when_a_description_changes(monkeypatch):
    params = read_params(REPO / "params.yaml")
    field = TrainParams.model_fields["epochs"]
    monkeypatch.setattr(field, "description", "a new meaning")
    text = params_doc.render(params)
    assert "| `train.epochs` | `6` | a new meaning |" in text
    assert text != (REPO / "docs" / "params.md").read_text(encoding="utf-8")
