"""The `${{ }}` expressions of a GitHub workflow: do the names they use exist?

A stand-in for the part of actionlint's expression check that catches a typo, until actionlint
installs here (tools/lint_workflows.py says why it does not). Checked, for every expression
(and every `if:`, which is one without the braces):
- the first name is one of GitHub's contexts, functions or literals;
- `steps.ID` names a step with that `id` before it in its job (all of the job's steps in the
  job's `outputs`);
- `needs.JOB` names a job in its job's `needs`;
- `inputs.NAME` names an input of `workflow_dispatch` or `workflow_call`;
- `matrix.KEY` names a key of its job's matrix (unless the matrix comes from an expression).

Types, function arguments and the properties past these names are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
STRING = re.compile(r"'(?:[^']|'')*'")  # expression strings; '' is a quote inside one
NAME = re.compile(r"(?<![\w.-])([A-Za-z_][\w-]*)((?:\.[A-Za-z_*][\w-]*)?)")
CONTEXTS = {"github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy"}
CONTEXTS |= {"matrix", "needs", "inputs"}
FUNCTIONS = {"contains", "startsWith", "endsWith", "format", "join", "toJSON", "fromJSON"}
FUNCTIONS |= {"hashFiles", "success", "always", "cancelled", "failure", "case"}
LITERALS = {"true", "false", "null", "NaN", "Infinity"}


@dataclass(frozen=True)
class Scope:
    """The names that an expression at some place of the workflow may use."""

    inputs: frozenset[str]
    needs: frozenset[str] = frozenset()
    steps: frozenset[str] = frozenset()
    matrix: frozenset[str] | None = None  # None: not known (a matrix from an expression)

    def problems(self, expression: str) -> list[str]:
        """What is wrong with the names of one expression (without its braces)."""
        found = []
        known = {"steps": self.steps, "needs": self.needs, "inputs": self.inputs}
        for name, member in NAME.findall(STRING.sub("''", expression)):
            key = member[1:]
            if name in FUNCTIONS or name in LITERALS:
                continue
            if name not in CONTEXTS:
                found.append(f"unknown name {name!r}: not a context, function or literal")
            elif name in known and key and key not in known[name]:
                found.append(f"{name}.{key} is not defined here ({describe(known[name])})")
            elif name == "matrix" and key and self.matrix is not None and key not in self.matrix:
                found.append(f"matrix.{key} is not a key of the job's matrix")
        return found


def describe(names: frozenset[str]) -> str:
    return "defined: " + ", ".join(sorted(names)) if names else "none is"


@dataclass
class Checker:
    """Walks a composed workflow and collects (line, problem) pairs (1-based lines)."""

    lines: list[str]  # the workflow's
    found: list[tuple[int, str]] = field(default_factory=list)

    def scalars(self, node: yaml.Node, scope: Scope, condition: bool = False) -> None:
        """Check every string under `node`; `condition`: it is an `if:` (braces optional)."""
        if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
            expressions = EXPRESSION.findall(node.value)
            if condition and not expressions and node.value.strip():
                expressions = [node.value]
            for expression in expressions:
                for problem in scope.problems(expression):
                    self.found.append((self.line_of(node, expression), problem))
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.scalars(value, scope, condition=key.value == "if")
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self.scalars(item, scope)

    def line_of(self, node: yaml.ScalarNode, expression: str) -> int:
        """The line of `expression` within the scalar `node`, in the file."""
        start = node.start_mark.line + 1
        lines = self.lines[start - 1 : node.end_mark.line + 1]
        return next((start + i for i, line in enumerate(lines) if expression in line), start)


def values(node: yaml.Node | None) -> dict[str, yaml.Node]:
    """A YAML mapping node's values by key (empty for anything else)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: value for key, value in node.value if isinstance(key, yaml.ScalarNode)}


def names(node: yaml.Node | None) -> frozenset[str]:
    """The keys of a mapping node, or the strings of a sequence or a scalar (`needs: a`)."""
    if isinstance(node, yaml.MappingNode):
        return frozenset(values(node))
    if isinstance(node, yaml.SequenceNode):
        return frozenset(item.value for item in node.value if isinstance(item, yaml.ScalarNode))
    return frozenset([node.value]) if isinstance(node, yaml.ScalarNode) else frozenset()


def matrix_keys(job: dict[str, yaml.Node]) -> frozenset[str] | None:
    matrix = values(job.get("strategy")).get("matrix")
    if matrix is None:
        return frozenset()
    if not isinstance(matrix, yaml.MappingNode):
        return None  # ${{ fromJSON(...) }}: known only when the workflow runs
    keys = set(values(matrix)) - {"include", "exclude"}
    for item in getattr(values(matrix).get("include"), "value", []):
        keys |= names(item)
    return frozenset(keys)


def check(text: str, root: yaml.Node) -> list[tuple[int, str]]:
    """(line, problem) of every expression in a workflow that uses an unknown name: `text`,
    and `root`, its YAML composed (`yaml.compose`)."""
    workflow = values(root)
    triggers = values(workflow.get("on"))  # composed, `on` is still the string "on"
    inputs = names(values(triggers.get("workflow_dispatch")).get("inputs"))
    inputs |= names(values(triggers.get("workflow_call")).get("inputs"))
    checker = Checker(text.splitlines())
    for key, node in workflow.items():
        if key != "jobs":
            checker.scalars(node, Scope(inputs))
    for job_node in values(workflow.get("jobs")).values():
        job = values(job_node)
        needs, matrix = names(job.get("needs")), matrix_keys(job)
        steps = getattr(job.get("steps"), "value", [])
        ids = [getattr(values(step).get("id"), "value", None) for step in steps]
        for key, node in job.items():
            if key == "steps":
                for index, step in enumerate(steps):
                    before = frozenset(filter(None, ids[:index]))
                    checker.scalars(step, Scope(inputs, needs, before, matrix))
            else:  # a job's outputs read its steps' outputs; nothing else of the job can
                known = frozenset(filter(None, ids)) if key == "outputs" else frozenset()
                checker.scalars(node, Scope(inputs, needs, known, matrix), key == "if")
    return sorted(set(checker.found))
