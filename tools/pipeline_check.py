"""The CI pipeline check: is what is committed the result of running what is committed?

    python -m mnistpipe.pipeline_check [REPO]

Fails (exit 1, one line per problem) when `dvc.yaml` is not valid, when a stage's code,
command or params changed since `dvc.lock` was written (someone changed them without
rerunning the pipeline and committing the result), or when a git-tracked output such as
`metrics/metrics.json` does not match its hash in `dvc.lock`. Outputs that are merely absent,
as in a fresh clone with an empty DVC cache, are fine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

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


def tracked_output_problems(repo: Path) -> list[str]:
    """Git-tracked output files (not folders) whose bytes differ from their dvc.lock hash."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))
    problems = []
    for stage, entry in lock.get("stages", {}).items():
        for out in entry.get("outs", []):
            path = repo / out["path"]
            if not path.is_file() or out.get("md5", "").endswith(".dir"):
                continue
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", out["path"]],
                                     cwd=repo, capture_output=True).returncode == 0  # fmt: skip
            actual = hashlib.md5(path.read_bytes()).hexdigest()
            if tracked and actual != out["md5"]:
                problems.append(f"{stage}: {out['path']} does not match dvc.lock")
    return problems


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
    return status_problems(json.loads(status.stdout or "{}")) + tracked_output_problems(repo)


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    problems = check(repo)
    for problem in problems:
        print(f"pipeline check: {problem}", file=sys.stderr)
    if problems:
        print("pipeline check: rerun the pipeline (make repro) and commit dvc.lock, metrics/ and "
              "reports/", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    print("pipeline check: dvc.lock matches the code, params and committed outputs")


if __name__ == "__main__":
    main()
