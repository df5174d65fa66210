"""The GitHub Actions workflow for users, validated against the workflow schema (offline)."""

import yaml

from tests.conftest import REPO
from tests.helpers import schema_check

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def test_workflow_is_valid():
    result = schema_check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("    runs-on: ubuntu-latest", "    runs: x", 1))
    assert schema_check(broken).returncode != 0


def test_workflow_runs_the_tests_the_check_and_the_pr_diffs():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    test_steps = " ".join(step.get("run", "") for step in jobs["test"]["steps"])
    assert "make test" in test_steps and "tools.pipeline_check" in test_steps
    assert jobs["pipeline"]["if"] == "github.event_name == 'pull_request'"
    pipeline_steps = " ".join(step.get("run", "") for step in jobs["pipeline"]["steps"])
    assert "make repro" in pipeline_steps
    for command in ("dvc metrics diff origin/main --md", "dvc params diff origin/main --md"):
        assert command in pipeline_steps
    assert "$GITHUB_STEP_SUMMARY" in pipeline_steps


# The first major version of each action that runs on Node 24: GitHub's runners dropped Node 20
# in September 2026, and the versions before these fail there.
NODE_24_MAJORS = {"actions/checkout": 5, "actions/setup-python": 6, "actions/cache": 5}


def test_the_workflows_use_actions_that_run_on_current_runners():
    for workflow in WORKFLOW.parent.glob("*.yml"):
        steps = [
            step
            for job in yaml.safe_load(workflow.read_text())["jobs"].values()
            for step in job.get("steps", [])
        ]
        for uses in (step["uses"] for step in steps if "uses" in step):
            action, version = uses.split("@")
            assert action in NODE_24_MAJORS, f"{workflow.name}: {uses} is not checked here"
            assert int(version.lstrip("v").split(".")[0]) >= NODE_24_MAJORS[action], (
                f"{workflow.name}: {uses} runs on Node 20"
            )


def test_ci_restores_the_venv_keyed_on_the_lock():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["test"]["steps"]
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == ".venv"
    assert "hashFiles('requirements.lock')" in cache["with"]["key"]
