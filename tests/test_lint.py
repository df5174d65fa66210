"""The code style of README: ruff's lint rules and formatting, as configured in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import schema_check


def ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=REPO, capture_output=True, text=True
    )


def test_ruff_lint_is_clean():
    result = ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def lint_workflows(*paths):
    command = [sys.executable, "-m", "tools.lint_workflows", *map(str, paths)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_the_workflows_shell_steps_pass_shellcheck():
    result = lint_workflows()
    assert result.returncode == 0, result.stdout + result.stderr
    workflows = len(list((REPO / ".github" / "workflows").glob("*.yml")))
    assert f"0 findings in {workflows} workflows" in result.stderr
    steps = int(result.stderr.split("(")[1].split()[0])
    assert steps >= 10  # every run: step of ci.yml and sweep.yml was read, not none


# A workflow that GitHub's schema accepts, with one ShellCheck finding (an unquoted variable)
# on the second line of a block script, an expression that is fine as it is written, and a
# Python step that ShellCheck must not read.
FLAWED = """\
name: flawed
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v6
      - name: An expression, quoted and not
        run: echo "${{ github.sha }}" ${{ github.ref }}
      - name: An unquoted variable
        env:
          TARGET: build
        run: |
          echo starting
          cd $TARGET
      - name: Not a shell
        shell: python
        run: print($x)
"""


def failed_lint(workflow: Path, text: str) -> subprocess.CompletedProcess:
    """The lint of a workflow holding `text`, which the schema check passes and the lint fails."""
    workflow.write_text(text)
    assert schema_check(workflow).returncode == 0  # the schema check alone misses it
    result = lint_workflows(workflow)
    assert result.returncode == 1, result.stdout + result.stderr
    return result


def test_a_shellcheck_finding_that_the_schema_passes_fails_the_lint(tmp_path):
    workflow = tmp_path / "flawed.yml"
    result = failed_lint(workflow, FLAWED)
    line = FLAWED.splitlines().index("          cd $TARGET") + 1
    assert result.stdout.splitlines() == [
        f"{workflow}:{line}:14: info SC2086 Double quote to prevent globbing and word splitting."
    ]
    assert "1 findings in 1 workflows (2 shell steps)" in result.stderr
    fixed = tmp_path / "fixed.yml"
    fixed.write_text(FLAWED.replace("cd $TARGET", 'cd "$TARGET"'))
    assert lint_workflows(fixed).returncode == 0


def test_an_unreadable_workflow_is_one_line_naming_it(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("jobs: [unclosed\n")
    result = lint_workflows(broken)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and str(broken) in result.stderr


# Names that GitHub's schema accepts but no workflow defines: each line's comment says which.
MISNAMED = """\
name: misnamed
on:
  workflow_dispatch:
    inputs:
      params: {type: string}
jobs:
  expand:
    runs-on: ubuntu-latest
    outputs:
      grid: ${{ steps.grid.outputs.grid }}
    steps:
      - run: echo "${{ steps.grid.outputs.grid }}"  # steps.grid: defined only below
      - id: grid
        run: echo "grid=${{ inputs.params }}" >> "$GITHUB_OUTPUT"
      - run: echo "${{ steps.gird.outputs.grid }}"  # steps.gird
        if: steps.grid.outputs.grid != 'steps.gird'
  run:
    needs: expand
    if: ${{ !cancelled() && needs.expnd.result == 'success' }}  # needs.expnd
    runs-on: ubuntu-latest
    strategy:
      matrix:
        python: ["3.11"]
    steps:
      - run: echo "${{ matrix.pyton }} ${{ inputs.parms }}"  # matrix.pyton, inputs.parms
      - run: echo "${{ secret.TOKEN }} ${{ toJSON(matrix.python) }}"  # secret
"""


def test_an_expression_naming_what_is_not_there_fails_the_lint(tmp_path):
    workflow = tmp_path / "misnamed.yml"
    result = failed_lint(workflow, MISNAMED)
    lines = MISNAMED.splitlines()

    def at(text: str) -> int:
        return next(number for number, line in enumerate(lines, 1) if text in line)

    assert result.stdout.splitlines() == [
        f"{workflow}:{at('defined only below')}: error steps.grid is not defined here (none is)",
        f"{workflow}:{at('# steps.gird')}: error steps.gird is not defined here (defined: grid)",
        f"{workflow}:{at('needs.expnd')}: error needs.expnd is not defined here (defined: expand)",
        f"{workflow}:{at('matrix.pyton')}: error inputs.parms is not defined here"
        " (defined: params)",
        f"{workflow}:{at('matrix.pyton')}: error matrix.pyton is not a key of the job's matrix",
        f"{workflow}:{at('secret.TOKEN')}: error unknown name 'secret': not a context, function"
        " or literal",
    ]
