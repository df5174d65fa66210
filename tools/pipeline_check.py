"""The CI pipeline check: is what is committed the result of running what is committed?

    python -m tools.pipeline_check [REPO]

Fails (exit 1, one line per problem) when `dvc.yaml` is not valid, when params.yaml is not the
composition of conf/, when a stage's code, command or params changed since `dvc.lock` was
written (someone changed them without rerunning the pipeline and committing the result), or
when an output such as `metrics/metrics.json` does not match its hash in `dvc.lock` (`dvc
status` reports these). Outputs that are merely absent, as in a fresh clone with an empty
DVC cache, are fine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.compose_params import compose

ABSENT = ("deleted", "not in cache")  # states of outputs a fresh clone simply does not have


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True
    )


def status_problems(status: dict) -> list[str]:
    """Problems in the output of `dvc status --json`."""
    problems = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):
                problems.append(f"{stage}: {change} since dvc.lock")
                continue
            for kind, entries in change.items():
                for path, state in entries.items():
                    if isinstance(state, dict):  # a params file: key -> state
                        keys = ", ".join(f"{key} ({value})" for key, value in state.items())
                        problems.append(f"{stage}: params changed since dvc.lock: {keys}")
                    elif state not in ABSENT:
                        problems.append(f"{stage}: {kind}: {path} {state} since dvc.lock")
    return problems


def params_problems(repo: Path) -> list[str]:
    """params.yaml must be the composition of conf/, as `dvc exp run` and `make repro` write it."""
    try:
        composed = compose(repo, [])
    except Exception as exc:  # Hydra's errors: a missing file, bad YAML
        return [f"conf/ does not compose: {' '.join(str(exc).split())}"]
    if (repo / "params.yaml").read_text(encoding="utf-8") != composed:
        return ["params.yaml is not composed from conf/: run make params (or make repro)"]
    return []


def check(repo: Path) -> list[str]:
    """Every problem found, one line each; an empty list means the pipeline is up to date."""
    dag = dvc(repo, "dag")
    if dag.returncode != 0:
        lines = dag.stderr.strip().splitlines() or ["no output"]
        return [f"dvc.yaml is not valid: {lines[-1]}"]
    if not (repo / "dvc.lock").is_file():
        return ["dvc.lock is missing: run the pipeline (dvc repro) and commit it"]
    status = dvc(repo, "status", "--json")
    if status.returncode != 0:
        return [f"dvc status failed: {status.stderr.strip()}"]
    return params_problems(repo) + status_problems(json.loads(status.stdout or "{}"))


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    problems = check(repo)
    for problem in problems:
        print(f"pipeline check: {problem}", file=sys.stderr)
    if problems:
        print(
            "pipeline check: rerun the pipeline (make repro) and commit dvc.lock, metrics/ and "
            "reports/",
            file=sys.stderr,
        )
        sys.exit(1)
    print("pipeline check: dvc.lock matches the code, params and committed outputs")


if __name__ == "__main__":
    main()
