"""Failed runs lose nothing: bad params stop at composition, before DVC removes any output,
with one line naming the key, the value and where it came from; a stage that fails under DVC
leaves its git-kept outputs in place and says how to bring back the cached ones."""

import hashlib
import sys
from pathlib import Path

import pytest

from tests.conftest import edit_config, run

pytestmark = pytest.mark.slow  # the real dvc CLI in copies of the baseline

OUTPUTS = ("data/processed", "models", "metrics", "reports", "params.yaml")


def fingerprint(repo: Path) -> dict[str, str]:
    """MD5 of every output file (and params.yaml), by path."""
    files = []
    for name in OUTPUTS:
        path = repo / name
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    return {
        str(path.relative_to(repo)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in files
        if path.is_file()
    }


def error_lines(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "error" in line]


BAD_OVERRIDES = [
    ("train.epochs=abc", "train.epochs: input should be a valid integer, got 'abc'"),
    ("train.lr=-1", "train.lr: input should be greater than 0, got -1"),
    ("model.name=resnet", "model.name: input should be 'cnn', 'mlp' or 'examples-cnn'"),
    ("data.dataset=emnist", "data.dataset: input should be 'mnist' or 'fashion-mnist'"),
    ("serve.port=70000", "serve.port: must be between 0 and 65535, got 70000"),
]


def make_repro(repo: Path):
    """README's `make repro`, with this environment's venv (it has its stamp)."""
    return run(["make", "repro", f"VENV={Path(sys.executable).parents[1]}"], repo, check=False)


def test_bad_params_stop_before_anything_runs_and_every_output_stays(pipeline_repo):
    before = fingerprint(pipeline_repo)
    for override, problem in BAD_OVERRIDES:
        result = run(["dvc", "exp", "run", "-S", override], pipeline_repo, check=False)
        assert result.returncode != 0, override
        assert len(error_lines(result)) == 1, result.stdout + result.stderr
        line = error_lines(result)[0]
        assert line.startswith(f"params: error: {problem}"), line
        assert line.endswith(f"(from -S {override}; nothing was run or removed)"), line
        assert "Traceback" not in result.stdout + result.stderr
        assert fingerprint(pipeline_repo) == before, override
        assert run(["git", "status", "--porcelain"], pipeline_repo).stdout == ""


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("  epochs: 1\n", "  epoch: 1\n", "unknown key train.epoch; known keys: epochs,"),
        ("  port: 8000\n", "  prot: 8000\n", "unknown key serve.prot; known keys: host, port,"),
    ],
)
def test_a_typo_in_conf_stops_make_repro_and_names_conf(pipeline_repo, old, new, problem):
    before = fingerprint(pipeline_repo)
    config = pipeline_repo / "conf" / "config.yaml"
    config.write_text(config.read_text().replace(old, new, 1))
    result = make_repro(pipeline_repo)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("params: error:")]
    assert len(lines) == 1 and problem in lines[0], result.stderr
    assert lines[0].endswith("(in conf/config.yaml; nothing was run or removed)")
    assert "Traceback" not in result.stdout + result.stderr
    assert fingerprint(pipeline_repo) == before
    status = run(["git", "status", "--porcelain"], pipeline_repo).stdout.splitlines()
    assert status == [" M conf/config.yaml"]


def test_a_failing_stage_keeps_its_git_kept_outputs_and_says_how_to_restore(pipeline_repo):
    lock = (pipeline_repo / "dvc.lock").read_bytes()
    counts = (pipeline_repo / "metrics" / "class_counts.csv").read_bytes()
    edit_config(pipeline_repo, {"  val_size: 500\n": "  val_size: 4999\n"})
    result = run(["dvc", "repro"], pipeline_repo, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        "preprocess: error: preprocess.val_size=4999 does not fit 5000 images of 10 classes:"
        " it must be between 10 and 4990"
        " (`dvc checkout` brings back the outputs DVC removed before this run)\n" in output
    )
    assert "Traceback" not in output
    assert (pipeline_repo / "dvc.lock").read_bytes() == lock
    # the git-kept output persists; the cached one DVC removed comes back as the line says
    assert (pipeline_repo / "metrics" / "class_counts.csv").read_bytes() == counts
    assert not (pipeline_repo / "data" / "processed").exists()
    run(["git", "checkout", "--", "params.yaml", "conf"], pipeline_repo)
    run(["dvc", "checkout"], pipeline_repo)
    assert run(["dvc", "status", "--json"], pipeline_repo).stdout.strip() == "{}"
