"""Markdown documents from Jinja2 templates: the report and the model card.

The templates (mnistpipe/templates/*.md.j2) hold the prose; the code fills them from a dict of
the run's numbers, read from the pipeline's own outputs and constants, never restated in the
prose. Undefined names are errors, so a renamed metric cannot leave a blank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).with_name("templates")

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # Markdown, not HTML
    keep_trailing_newline=True,
    trim_blocks=True,  # a line holding only a {% tag %} leaves no empty line
    lstrip_blocks=True,
)
# `{{ value | fmt(".4f") }}`: Python's format mini-language, as the f-strings had it.
_environment.filters["fmt"] = format


def render(template: str, values: dict[str, Any]) -> str:
    """The template file `template` of TEMPLATES, filled with `values`."""
    return _environment.get_template(template).render(values)
