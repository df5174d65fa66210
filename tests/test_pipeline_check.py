"""The CI pipeline check, on this repository and on copies with something changed."""

import pytest

from tests.conftest import REPO, run
from tools.pipeline_check import check, status_problems


@pytest.mark.slow
def test_the_committed_pipeline_is_up_to_date():
    assert check(REPO) == []


def test_status_problems_ignore_absent_outputs_only():
    status = {
        "train": [
            {"changed deps": {"data/processed": "deleted", "stages/train.py": "modified"}},
            {"changed deps": {"params.yaml": {"train.epochs": "modified"}}},
            {"changed outs": {"models/model.pt": "not in cache"}},
            "changed command",
        ],
        "download": [{"changed outs": {"data/raw/mnist": "not in cache"}}],
    }
    assert status_problems(status) == [
        "train: changed deps: stages/train.py modified since dvc.lock",
        "train: params changed since dvc.lock: train.epochs (modified)",
        "train: changed command since dvc.lock",
    ]


@pytest.mark.slow
def test_a_param_changed_without_rerunning_fails_the_check(repo_copy):
    config = repo_copy / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  epochs: 6\n", "  epochs: 7\n"))
    assert check(repo_copy) == [
        "params.yaml is not composed from conf/: run make params (or make repro)"
    ]
    run(["python", "-m", "tools.compose_params"], repo_copy)
    assert check(repo_copy) == ["train: params changed since dvc.lock: train (modified)"]


@pytest.mark.slow
def test_code_changed_without_rerunning_fails_the_check(repo_copy):
    with open(repo_copy / "stages" / "evaluate.py", "a") as stream:
        stream.write("\n# a change that nobody reran\n")
    assert check(repo_copy) == [
        "evaluate: changed deps: stages/evaluate.py modified since dvc.lock"
    ]


@pytest.mark.slow
def test_edited_metrics_fail_the_check(repo_copy):
    metrics = repo_copy / "metrics" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"accuracy": 0.', '"accuracy": 1.'))
    problems = check(repo_copy)
    assert "evaluate: changed outs: metrics/metrics.json modified since dvc.lock" in problems


@pytest.mark.slow
def test_an_invalid_dvc_yaml_fails_the_check(repo_copy):
    dvc_yaml = repo_copy / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("    cmd: >-", "    cmnd: >-", 1))
    (problem,) = check(repo_copy)
    assert problem.startswith("dvc.yaml is not valid: ")
