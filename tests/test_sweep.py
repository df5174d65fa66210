"""A sweep beyond one machine: the grid, the workflow, and runners that push experiments.

Fast tests: the grid expansion against DVC's own `-S` sweep, the experiment names, the
workflow (schema, structure, and its shell steps run against a stand-in `dvc`).
Slow tests: real git and DVC on one machine. A bare repository plays the shared git remote
and a folder the shared DVC remote; clones play CI runners, each running one experiment of
the grid and pushing it, and a teammate who pulls them and takes the best.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, dvc_env, run
from tests.helpers import schema_check
from tools.sweep_grid import (
    SweepError,
    best_experiment,
    expand_grid,
    experiment_names,
    job_matrix,
)

WORKFLOW = REPO / ".github" / "workflows" / "sweep.yml"
MODEL = Path("models/model.pt")
METRICS = Path("metrics/metrics.json")
# The workflow's commands (test_the_workflow_runs_the_commands_proven_here checks it).
EXP_RUN = ["dvc", "exp", "run", "--pull", "--allow-missing"]


def make_tiny(repo: Path) -> None:
    """Give `repo` the tiny params of the tests (5,000 images, one epoch), where they stay.

    Every param edit of this module is here. Where the layout composes params.yaml from
    conf/config.yaml (DVC's Hydra composition, which `dvc exp run` redoes), the edit goes
    there and params.yaml is composed again; otherwise into params.yaml. Applying it twice
    changes nothing.
    """
    config = repo / "conf" / "config.yaml"
    source = config if config.exists() else repo / "params.yaml"
    text = source.read_text()
    for old, new in TINY_PARAMS.items():
        if new not in text:
            assert old in text, old
            text = text.replace(old, new)
    source.write_text(text)
    if config.exists():
        run([sys.executable, "-m", "tools.compose_params"], repo)


# ---------------------------------------------------------------- the grid and the names


def dvc_grid(overrides: list[str]) -> list[tuple[str, ...]]:
    """The combinations `dvc exp run --queue -S ...` would queue, as -S values."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    return [
        tuple(
            value if path == "params.yaml" else f"{path}:{value}"
            for path, values in sweep.items()
            for value in values
        )
        for sweep in get_hydra_sweeps(to_path_overrides(overrides))
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.lr=0.05,0.1,0.2"],
        ["train.lr=0.05,0.1", "train.epochs=1,2"],
        ["train.epochs=range(1,4)", "train.lr=choice(0.1,0.2)"],
        ["model.hidden=[128],[256,256]", "train.epochs=1"],
        ["train.lr=0.1,0.2", "train.epochs=1", "train.lr=0.3,0.4"],  # the last one wins
        ["train.optimizer='sgd',adam", "train.lr=1e-3,0.1"],
        ["other.yaml:alpha=1,2", "train.lr=0.1,0.2", "params.yaml:train.epochs=3"],
        ["train.lr=0.1"],
    ],
)
def test_the_grid_is_dvcs_own_sweep(overrides):
    assert expand_grid(overrides) == dvc_grid(overrides)


def test_the_grid_keeps_dvcs_order_and_the_file_prefix():
    assert expand_grid(["train.lr=0.05,0.1", "other.yaml:x=a,b"]) == [
        ("train.lr=0.05", "other.yaml:x=a"),
        ("train.lr=0.05", "other.yaml:x=b"),
        ("train.lr=0.1", "other.yaml:x=a"),
        ("train.lr=0.1", "other.yaml:x=b"),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "nothing to sweep"),
        (["lr0.1"], "'lr0.1' is not KEY=VALUE[,VALUE...]"),
        (["=0.1"], "is not KEY=VALUE"),
        (["train.lr=[0.1"], "params.yaml: cannot parse the -S values"),
        (["train.lr=glob(*)"], "glob sweeps are not supported by DVC"),
        (["train.lr=interval(0,1)"], "an interval cannot be enumerated"),
        (["train.lr=0.1,0.1"], "the grid repeats a combination: train.lr=0.1"),
        (["train.lr=0.1,0.2,0.3", "train.epochs=1,2,3"], "9 combinations, over the cap of 8"),
    ],
)
def test_bad_grids_are_one_clear_error(overrides, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        expand_grid(overrides, max_experiments=8)


def test_the_cap_stops_a_grid_too_large_for_github():
    assert len(expand_grid(["train.epochs=range(1,17)"])) == 16  # the default cap
    with pytest.raises(SweepError, match="over the cap of 16"):
        expand_grid(["train.epochs=range(1,18)"])
    with pytest.raises(SweepError, match="the cap must be 1 to 256"):
        expand_grid(["train.lr=0.1"], max_experiments=257)


def valid_experiment_name(name: str) -> bool:
    """Whether DVC accepts `name` for `dvc exp run --name`: a git ref name with no '/'."""
    ref = f"refs/exps/ab/{'c' * 38}/{name}"
    check = subprocess.run(["git", "check-ref-format", ref], capture_output=True)
    return check.returncode == 0 and "/" not in name


def test_names_say_the_params():
    grid = expand_grid(["train.lr=0.05,0.2", "train.epochs=1,2"])
    assert experiment_names(grid, "sweep-7") == [
        "sweep-7-lr-0.05_epochs-1",
        "sweep-7-lr-0.05_epochs-2",
        "sweep-7-lr-0.2_epochs-1",
        "sweep-7-lr-0.2_epochs-2",
    ]
    assert experiment_names([("train.lr=1e-3",)]) == ["lr-1e-3"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.hidden=[128],[256,256],[256, 128]"],  # characters a ref cannot hold
        ["model.dropout=0.1,0.2", "train.dropout=0.3"],  # the same last part: full keys
        ["train.preset='a b',a_b,a-b,'a..b'", "train.lr=0.1"],
        ["train.preset=x.lock,x", "other.yaml:train.lr=1,2"],
        [f"train.preset={'x' * 120},{'x' * 121}"],  # cut for length
    ],
)
def test_names_are_valid_and_distinct_whatever_the_values(overrides):
    names = experiment_names(expand_grid(overrides), "s1")
    assert len(set(names)) == len(names), names
    assert all(valid_experiment_name(name) and len(name) < 120 for name in names), names


def test_a_name_whose_values_were_changed_gets_a_digest():
    (plain,), (changed,) = (
        experiment_names([combination], "s")
        for combination in [("model.dropout=0.1",), ("model.hidden=[128]",)]
    )
    assert plain == "s-dropout-0.1"
    assert re.fullmatch(r"s-hidden-128-[0-9a-f]{7}", changed), changed
    both = experiment_names([("model.dropout=0.1", "train.dropout=0.2")])
    assert both == ["model.dropout-0.1_train.dropout-0.2"]


def test_a_bad_prefix_is_refused():
    for prefix in ("a/b", "-x", "a..b", "x.lock", "a b"):
        with pytest.raises(SweepError, match="cannot start an experiment name"):
            experiment_names([("train.lr=0.1",)], prefix)


def sweep_grid(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tools.sweep_grid", *args]
    return subprocess.run(command, cwd=REPO, input=stdin, capture_output=True, text=True)


def test_the_cli_prints_the_job_matrix():
    result = sweep_grid(
        "matrix", "--grid", "train.lr=0.05,0.2 'model.hidden=[1, 2]'", "--prefix", "s9"
    )
    assert result.returncode == 0, result.stderr
    matrix = json.loads(result.stdout)
    assert matrix == job_matrix(["train.lr=0.05,0.2", "model.hidden=[1, 2]"], "s9", 16)
    assert [job["params"] for job in matrix["include"]] == [
        "train.lr=0.05\nmodel.hidden=[1,2]",  # as Hydra writes it
        "train.lr=0.2\nmodel.hidden=[1,2]",
    ]
    assert matrix["include"][0]["name"].startswith("s9-lr-0.05_hidden-1-2-")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["matrix", "train.lr0.1"], "'train.lr0.1' is not KEY=VALUE[,VALUE...]"),
        (["matrix", "--grid", "train.lr='0.1"], "cannot split --grid: No closing quotation"),
        (["matrix", "--max", "3", "train.lr=1,2,3,4"], "4 combinations, over the cap of 3"),
        (["matrix", "--prefix", "a/b", "train.lr=1"], "'a/b' cannot start an experiment name"),
        (["best", "--matrix", "{"], "--matrix is not JSON"),
    ],
)
def test_the_cli_says_what_is_wrong_in_one_line(args, message):
    result = sweep_grid(*args, stdin="")
    assert result.returncode == 2
    assert result.stderr == f"sweep_grid: error: {result.stderr.split('error: ', 1)[1]}"
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


EXP_SHOW_CSV = """\
Experiment,rev,typ,Created,parent,accuracy,loss,train.lr
,workspace,baseline,,,0.9562,0.23,0.1
,main,baseline,2026-11-23T10:38:39,,0.9562,0.23,0.1
s1-lr-0.05,71550a9,branch_commit,2026-11-23T10:39:09,,0.9704,0.18,0.05
s1-lr-0.2,5700aee,branch_base,2026-11-23T10:39:36,,0.9369,0.29,0.2
other,5700aef,branch_base,2026-11-23T10:39:36,,0.9999,0.01,0.3
"""


def test_best_names_the_best_of_the_sweep_and_what_never_arrived():
    names = ["s1-lr-0.05", "s1-lr-0.2", "s1-lr-0.4"]
    rows = list(csv.DictReader(io.StringIO(EXP_SHOW_CSV)))
    scores, best = best_experiment(rows, names, "accuracy")
    assert best == "s1-lr-0.05" and scores == {"s1-lr-0.05": 0.9704, "s1-lr-0.2": 0.9369}
    assert best_experiment(rows, names, "loss", lower_is_better=True)[1] == "s1-lr-0.05"
    matrix = json.dumps({"include": [{"name": name, "params": ""} for name in names]})
    result = sweep_grid("best", "--matrix", matrix, stdin=EXP_SHOW_CSV)
    assert result.returncode == 0, result.stderr
    assert "**Best of 2 experiments by accuracy: `s1-lr-0.05`** (accuracy 0.9704)" in (
        result.stdout
    )
    assert "Never arrived (their jobs failed before pushing): `s1-lr-0.4`" in result.stdout
    assert "dvc exp apply s1-lr-0.05" in result.stdout
    nothing = sweep_grid("best", "--matrix", '{"include": [{"name": "x"}]}', stdin=EXP_SHOW_CSV)
    assert nothing.returncode == 2 and "none of the sweep's 1 experiments" in nothing.stderr
    wrong = sweep_grid("best", "--matrix", matrix, "--metric", "acc", stdin=EXP_SHOW_CSV)
    assert wrong.returncode == 2 and "dvc exp show has no column 'acc'" in wrong.stderr


# ---------------------------------------------------------------- the workflow, offline


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def script(job: dict, name: str) -> str:
    (step,) = [step for step in job["steps"] if name in step.get("name", "")]
    return step["run"]


def test_the_workflow_is_valid():
    result = schema_check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_fans_out_the_grid_and_gathers_the_experiments():
    flow = workflow()
    inputs = flow[True]["workflow_dispatch"]["inputs"]  # YAML reads the key `on` as True
    assert inputs["params"]["required"] and "-S" in inputs["params"]["description"]
    jobs = flow["jobs"]
    assert jobs["expand"]["outputs"]["matrix"] == "${{ steps.grid.outputs.matrix }}"
    assert "python -m tools.sweep_grid matrix" in script(jobs["expand"], "matrix")

    runner = jobs["run"]
    assert runner["needs"] == "expand"
    assert runner["strategy"]["matrix"] == "${{ fromJSON(needs.expand.outputs.matrix) }}"
    assert runner["strategy"]["fail-fast"] is False
    assert runner["permissions"] == {"contents": "write"}
    checkout = runner["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["fetch-depth"] == 0
    assert "make venv" in script(runner, "Install from the lock")
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert runner["env"][secret] == "${{ secrets.%s }}" % secret  # noqa: UP031

    summary = jobs["summary"]
    assert summary["needs"] == ["expand", "run"]
    assert summary["if"] == "${{ !cancelled() && needs.expand.result == 'success' }}"
    assert summary["steps"][0]["with"]["fetch-depth"] == 0
    assert "dvc exp pull --no-cache origin" in script(summary, "Pull every experiment")
    ranking = script(summary, "job summary")
    assert "dvc exp show --md" in ranking and '--sort-by "$METRIC" --sort-order desc' in ranking
    assert "python -m tools.sweep_grid best" in ranking and "$GITHUB_STEP_SUMMARY" in ranking


def test_the_workflow_runs_the_commands_proven_here():
    runner = workflow()["jobs"]["run"]
    assert f'{" ".join(EXP_RUN)} --name "$EXP_NAME"' in script(runner, "Run the experiment")
    assert script(runner, "Push").split() == [
        "source", ".venv/bin/activate", "dvc", "push", "dvc", "exp", "push", "origin",
        '"$EXP_NAME"',
    ]  # fmt: skip


FAKE_DVC = """\
#!{python}
# A stand-in for dvc: records its arguments; answers from $FAKE_DVC_ANSWERS.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DVC_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
for prefix, (output, status) in json.loads(os.environ.get("FAKE_DVC_ANSWERS", "{{}}")).items():
    if " ".join(args).startswith(prefix):
        sys.stdout.write(output)
        sys.exit(status)
"""


@dataclass
class Step:
    """A workflow step's shell script, run as GitHub runs it, with a stand-in dvc."""

    folder: Path

    def __call__(self, text: str, answers: dict | None = None, **env: str):
        bin_dir = self.folder / "bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "dvc"
        fake.write_text(FAKE_DVC.format(python=sys.executable))
        fake.chmod(0o755)
        (self.folder / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
        (self.folder / ".venv" / "bin" / "activate").write_text("")
        (self.folder / "tools").mkdir(exist_ok=True)
        shutil.copy(REPO / "tools" / "sweep_grid.py", self.folder / "tools")
        shutil.copy(REPO / "tools" / "__init__.py", self.folder / "tools")
        for name in ("log", "output", "summary"):
            (self.folder / name).write_text("")
        path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin"])
        environment = {
            **os.environ,
            "PATH": path + os.pathsep + os.environ.get("PATH", ""),
            "FAKE_DVC_LOG": str(self.folder / "log"),
            "FAKE_DVC_ANSWERS": json.dumps(answers or {}),
            "GITHUB_OUTPUT": str(self.folder / "output"),
            "GITHUB_STEP_SUMMARY": str(self.folder / "summary"),
            **env,
        }
        command = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", text]
        result = subprocess.run(
            command, cwd=self.folder, env=environment, capture_output=True, text=True
        )
        calls = [json.loads(line) for line in (self.folder / "log").read_text().splitlines()]
        return result, calls

    def read(self, name: str) -> str:
        return (self.folder / name).read_text()


@pytest.fixture
def step(tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (GitHub's runners have it)")
    return Step(tmp_path)


def test_the_expand_step_writes_the_matrix_and_the_plan(step):
    expand = script(workflow()["jobs"]["expand"], "matrix")
    result, _ = step(expand, GRID="train.lr=0.05,0.2", MAX_EXPERIMENTS="16", SWEEP="s3")
    assert result.returncode == 0, result.stderr
    key, _, value = step.read("output").strip().partition("=")
    assert key == "matrix" and json.loads(value) == job_matrix(["train.lr=0.05,0.2"], "s3", 16)
    assert "- `s3-lr-0.2`: `train.lr=0.2`" in step.read("summary")
    bad, _ = step(expand, GRID="train.lr", MAX_EXPERIMENTS="16", SWEEP="s3")
    assert bad.returncode != 0 and "is not KEY=VALUE" in bad.stderr
    assert step.read("output") == ""


def test_the_run_steps_pass_each_value_and_push_the_cache_before_the_ref(step):
    runner = workflow()["jobs"]["run"]
    env = {"EXP_NAME": "s3-lr-0.05", "EXP_PARAMS": "train.lr=0.05\nmodel.hidden=[1, 2]"}
    result, calls = step(script(runner, "Run the experiment"), **env)
    assert result.returncode == 0, result.stderr
    assert calls == [
        ["remote", "default"],
        [*EXP_RUN[1:], "--name", "s3-lr-0.05", "-S", "train.lr=0.05", "-S", "model.hidden=[1, 2]"],
    ]
    no_remote, calls = step(script(runner, "Run the experiment"), {"remote default": ["", 1]})
    assert no_remote.returncode == 1 and "no default DVC remote" in no_remote.stdout
    assert calls == [["remote", "default"]]

    push = script(runner, "Push")
    result, calls = step(push, **env)
    assert result.returncode == 0 and calls == [["push"], ["exp", "push", "origin", "s3-lr-0.05"]]
    failed, calls = step(push, {"push": ["", 1]}, **env)
    assert failed.returncode == 1 and calls == [["push"]]  # no ref without its outputs


def test_the_summary_steps_pull_what_arrived_and_name_the_best(step):
    summary = workflow()["jobs"]["summary"]
    names = ["s1-lr-0.05", "s1-lr-0.2", "s1-lr-0.4"]
    matrix = json.dumps({"include": [{"name": name, "params": ""} for name in names]})
    arrived = {"exp list origin --name-only": ["s1-lr-0.2\nold-one\ns1-lr-0.05\n", 0]}
    result, calls = step(script(summary, "Pull every"), arrived, MATRIX=matrix)
    assert result.returncode == 0, result.stderr
    assert calls[-1] == ["exp", "pull", "--no-cache", "origin", "s1-lr-0.2", "s1-lr-0.05"]
    none, _ = step(script(summary, "Pull every"), {"exp list": ["old-one\n", 0]}, MATRIX=matrix)
    assert none.returncode == 1 and "no experiment of this sweep arrived" in none.stdout

    answers = {"exp show --csv": [EXP_SHOW_CSV, 0], "exp show --md": ["| a table |\n", 0]}
    result, calls = step(script(summary, "job summary"), answers, MATRIX=matrix, METRIC="accuracy")
    assert result.returncode == 0, result.stderr
    text = step.read("summary")
    assert "## Sweep: experiments by accuracy\n\n| a table |" in text
    assert "`s1-lr-0.05`** (accuracy 0.9704)" in text and "`s1-lr-0.4`" in text


@pytest.fixture
def git_server():
    """An HTTP git server that refuses everyone and records the Authorization header sent."""
    seen: list[str | None] = []

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_dvcs_git_client_sends_the_token_as_the_workflow_sets_it(tmp_path, git_server):
    url, seen = git_server
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **dvc_env(),
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["git", "commit", "-qm", "dvc init"],
                    ["git", "remote", "add", "origin", f"{url}/owner/repo"]):  # fmt: skip
        subprocess.run(command, cwd=repo, env=env, check=True)

    def list_remote() -> None:
        seen.clear()
        listing = subprocess.run(
            ["dvc", "exp", "list", "origin"], cwd=repo, env=env, capture_output=True
        )
        assert listing.returncode != 0 and seen  # refused, after one request at least

    # Where actions/checkout leaves its token, dvc (through dulwich) does not look.
    local = ["git", "config", "--local", f"http.{url}/.extraheader", "AUTHORIZATION: basic x"]
    subprocess.run(local, cwd=repo, env=env, check=True)
    list_remote()
    assert set(seen) == {None}
    subprocess.run([*local[:3], "--unset", local[3]], cwd=repo, env=env, check=True)

    # The workflow's step puts it in the global config, where dvc finds it.
    setup = script(workflow()["jobs"]["run"], "push access")
    step_env = {**env, "TOKEN": "a-token", "GITHUB_SERVER_URL": url}
    bash = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", setup]
    subprocess.run(bash, cwd=repo, env=step_env, check=True, capture_output=True)
    list_remote()
    token = base64.b64encode(b"x-access-token:a-token").decode()
    assert set(seen) == {f"basic {token}"}


# ---------------------------------------------------------------- runners, for real


@dataclass
class Shared:
    """The shared git remote (a bare repository) and DVC remote (a folder) of a sweep."""

    origin: Path
    dvc_remote: Path
    tmp: Path

    def clone(self, name: str) -> Path:
        """A fresh clone of origin: a runner's or a teammate's checkout, with no DVC cache."""
        clone = self.tmp / name
        run(["git", "clone", "-q", str(self.origin), str(clone)], self.tmp)
        return clone


@pytest.fixture
def shared(pipeline_baseline, tmp_path: Path) -> Shared:
    """Origin's main holds the tiny pipeline, run, with a default DVC remote that has its data.

    Built from the session's baseline, so that MNIST is downloaded once for all the tests.
    """
    source = tmp_path / "source"
    shutil.copytree(pipeline_baseline[0], source, symlinks=True)
    make_tiny(source)
    run(["dvc", "repro"], source)  # nothing to do unless make_tiny changed something
    dvc_remote = tmp_path / "dvc-remote"
    run(["dvc", "remote", "add", "-d", "shared", str(dvc_remote)], source)
    run(["git", "add", "-A"], source)
    run(["git", "commit", "-qm", "tiny params, and a shared DVC remote"], source)
    run(["dvc", "push"], source)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "--initial-branch=main", str(origin)], tmp_path)
    run(["git", "push", "-q", str(origin), "HEAD:refs/heads/main"], source)
    return Shared(origin, dvc_remote, tmp_path)


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^Running stage '([\w-]+)':", result.stdout, re.MULTILINE))


def run_experiment(clone: Path, name: str, combination: tuple[str, ...]):
    """What a runner of the workflow runs: one experiment, pulling only the inputs it needs."""
    values = [arg for value in combination for arg in ("-S", value)]
    return run([*EXP_RUN, "--name", name, *values], clone)


def push_experiment(clone: Path, name: str, check: bool = True):
    """The workflow's push: the outputs to the DVC remote first, then the experiment's ref."""
    outputs = run(["dvc", "push"], clone, check=check)
    if outputs.returncode != 0:
        return outputs
    return run(["dvc", "exp", "push", "origin", name], clone, check=check)


def experiments_in(clone: Path, remote: str = "origin") -> set[str]:
    return set(run(["dvc", "exp", "list", remote, "--name-only"], clone).stdout.split())


def take(teammate: Path, name: str) -> None:
    """What a teammate runs to take experiment `name`: all of it, from the shared remotes."""
    pulled = run(["dvc", "exp", "pull", "origin", name], teammate)
    assert "missing cache" not in (pulled.stdout + pulled.stderr).lower(), pulled
    run(["dvc", "exp", "apply", name], teammate)
    run(["dvc", "pull"], teammate)
    assert "up to date" in run(["dvc", "status"], teammate).stdout


@pytest.mark.slow
def test_two_runners_push_a_grid_and_a_teammate_takes_the_best(shared):
    grid = expand_grid(["train.lr=0.05,0.2"])
    names = experiment_names(grid, "sweep-1")
    runners = [shared.clone(f"runner-{index}") for index in range(len(grid))]
    for clone, name, combination in zip(runners, names, grid, strict=True):
        ran = run_experiment(clone, name, combination)
        assert stages_run(ran) == {"train", "export", "evaluate", "report"}  # inputs pulled

    # Both runners push at the same moment.
    start = threading.Barrier(len(runners))
    results: dict[str, subprocess.CompletedProcess] = {}

    def push(clone: Path, name: str) -> None:
        start.wait()
        results[name] = push_experiment(clone, name, check=False)

    threads = [
        threading.Thread(target=push, args=pair) for pair in zip(runners, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in names:
        assert results[name].returncode == 0, results[name].stdout + results[name].stderr
    assert experiments_in(runners[0]) == set(names)

    # A teammate pulls every experiment of the baseline and sees them with params and metrics.
    teammate = shared.clone("teammate")
    run(["dvc", "exp", "pull", "origin"], teammate)
    table = run(["dvc", "exp", "show", "--csv"], teammate).stdout
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(table))}
    assert set(names) <= set(rows)
    for name, combination in zip(names, grid, strict=True):
        assert f"train.lr={rows[name]['train.lr']}" in combination
        assert rows[name]["train.epochs"] == "1"  # the tiny params lasted through exp run
        assert 0.5 < float(rows[name]["accuracy"]) <= 1
    matrix = json.dumps(job_matrix(["train.lr=0.05,0.2"], "sweep-1", 16))
    ranked = sweep_grid("best", "--matrix", matrix, stdin=table)
    best = max(names, key=lambda name: float(rows[name]["accuracy"]))
    assert f"`{best}`**" in ranked.stdout, ranked.stderr

    # ... and takes the best: its params, metrics and model, from the shared remotes alone.
    take(teammate, best)
    params = yaml.safe_load((teammate / "params.yaml").read_text())
    assert str(params["train"]["lr"]) == rows[best]["train.lr"]
    metrics = json.loads((teammate / METRICS).read_text())
    assert str(metrics["accuracy"]) == rows[best]["accuracy"]
    runner = runners[names.index(best)]
    assert (teammate / MODEL).read_bytes() == (runner / MODEL).read_bytes()


@pytest.mark.slow
def test_a_dead_runner_or_a_failed_upload_publishes_nothing_half_written(shared):
    grid = expand_grid(["train.lr=0.05,0.2"])
    doomed_name, name = experiment_names(grid, "sweep-2")
    doomed, alive = shared.clone("doomed"), shared.clone("alive")

    # Two runners start together; one dies (SIGKILL, as when a machine goes) while training.
    log = (shared.tmp / "alive.log").open("w")
    living = subprocess.Popen(
        [*EXP_RUN, "--name", name, "-S", grid[1][0]],
        cwd=alive, env=dvc_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    dying = subprocess.Popen(
        [*EXP_RUN, "--name", doomed_name, "-S", grid[0][0]],
        cwd=doomed, env={**dvc_env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert dying.stdout is not None
        for line in dying.stdout:
            if line.startswith("Running stage 'train'"):
                break
        else:
            pytest.fail("the experiment ended before its train stage")
        time.sleep(3)  # well into training
        os.killpg(dying.pid, signal.SIGKILL)
        assert dying.wait(timeout=60) == -signal.SIGKILL
        assert living.wait(timeout=600) == 0, (shared.tmp / "alive.log").read_text()
    finally:
        for process in (dying, living):
            if process.poll() is None:
                process.kill()
        log.close()

    # The dead runner holds no experiment, so even pushing all it has publishes nothing.
    assert run(["dvc", "exp", "list", "--all-commits", "--name-only"], doomed).stdout == ""
    run(["dvc", "exp", "push", "--all-commits", "origin"], doomed)
    assert run(["git", "ls-remote", str(shared.origin), "refs/exps/*"], doomed).stdout == ""

    # The other runner's upload fails (the DVC remote unreachable): the workflow's order,
    # outputs first, publishes nothing.
    run(["dvc", "remote", "modify", "--local", "shared", "url", "/dev/null/unreachable"], alive)
    failed = push_experiment(alive, name, check=False)
    assert failed.returncode != 0 and experiments_in(alive) == set()
    # dvc exp push alone sends the git ref before the outputs: the experiment is published
    # with no model behind it, and dvc exp pull would only warn. This is why the workflow
    # runs dvc push first.
    alone = run(["dvc", "exp", "push", "origin", name], alive, check=False)
    assert alone.returncode != 0 and "failed to push cache" in alone.stderr
    assert experiments_in(alive) == {name}

    # Once the remote answers, the push completes, and the experiment arrives whole.
    run(["dvc", "remote", "modify", "--local", "--unset", "shared", "url"], alive)
    push_experiment(alive, name)
    assert experiments_in(alive) == {name}
    teammate = shared.clone("teammate")
    take(teammate, name)
    assert (teammate / MODEL).read_bytes() == (alive / MODEL).read_bytes()
