"""The guides of docs/guides/, followed step by step in copies of the tiny pipeline.

Each fenced block of a guide follows a marker, an HTML comment that GitHub does not show,
that says what to do with the block:

    <!-- guide-test: run -->                       run it with bash in the repository
    <!-- guide-test: run in DIR -->                ... in DIR, relative to the folder that
                                                   holds the repository (a teammate's clone)
    <!-- guide-test: output -->                    what the `run` block before prints: each
                                                   line must be a line of its output, in order
                                                   (runs of spaces count as one)
    <!-- guide-test: insert FILE before: LINE -->  insert the block into FILE next to the one
    <!-- guide-test: insert FILE after: LINE -->   line that reads LINE (indentation aside),
                                                   with as many blank lines between as that
                                                   line has on that side
    <!-- guide-test: patch FILE -->                apply the diff: its ' ' and '-' lines must
                                                   occur in FILE once, together and in order
    <!-- guide-test: skip: REASON -->              not followed, for the reason given

A block without a marker fails, and so does a test that leaves a step of its guide
unfollowed, so a step cannot be dropped by accident. Each test names the placeholders of its
guide (paths, MD5s) and what stands for them in the copy; a placeholder that is no longer in
the guide fails too. `run` blocks run under `set -euo pipefail` with the venv first on PATH,
and `make` with `-o .venv/.requirements-installed`: the copies share the test's venv, so make
must not build one of their own. The tests that follow a guide are slow (the real dvc CLI
on copies of the tiny pipeline, conftest.py's baseline); the check of the markers is not.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnistpipe.data import idx, processed
from mnistpipe.data.datasets import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from mnistpipe.files import md5_hex
from mnistpipe.modeling.checkpoints import load_checkpoint
from tests.conftest import REPO, TINY_PARAMS, dvc_env, edit_config, run, toy_data
from tests.helpers import markdown_rows

GUIDES = REPO / "docs" / "guides"
FENCE = re.compile(r"^```(\S*)\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!-- guide-test: (.*?) -->")
HEADING = re.compile(r"^## (.+)$", re.M)
ACTIONS = re.compile(
    r"run(?: in \S+)?|output|insert \S+ (?:before|after): .+|patch \S+|skip: \S.*"
)
MAKE = 'make() { command make -o .venv/.requirements-installed "$@"; }\n'


@dataclass(frozen=True)
class Step:
    line: int  # of the block's fence in the guide
    section: str  # the `## ` heading above it
    action: str  # the marker's text
    body: str


def guide_steps(path: Path) -> list[Step]:
    text = path.read_text(encoding="utf-8")
    steps = []
    for fence in FENCE.finditer(text):
        line = text.count("\n", 0, fence.start()) + 1
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        assert marker, f"{path.name}:{line}: a block without a <!-- guide-test: ... --> marker"
        headings = HEADING.findall(text, 0, fence.start())
        steps.append(Step(line, headings[-1] if headings else "", marker[1], fence[2]))
    # A fence this parser does not see (indented, say) would be a block nobody follows.
    assert text.count("```") == 2 * len(steps), f"{path.name}: a fence not at a line's start"
    return steps


class Guide:
    """A guide to follow in the repository `repo`, with `placeholders` replaced in its blocks."""

    def __init__(self, name: str, repo: Path, placeholders: dict[str, str] | None = None):
        self.path, self.repo = GUIDES / name, repo
        self.placeholders = placeholders or {}
        self.steps = guide_steps(self.path)
        self.sections = list(dict.fromkeys(step.section for step in self.steps))
        self.done: set[int] = set()

    def follow(self, section: str | None = None) -> str:
        """Follow the steps of `section` (all when None); return what the `run` blocks printed."""
        chosen = [i for i, step in enumerate(self.steps) if section in (None, step.section)]
        assert chosen, f"{self.path.name}: no steps under ## {section}"
        transcript, last = [], ""
        for index in chosen:
            step = self.steps[index]
            where = f"{self.path.name}:{step.line} ({step.action})"
            body = step.body
            for placeholder, value in self.placeholders.items():
                body = body.replace(placeholder, value)
            if step.action == "output":
                check_output(body, last, where)
            elif output := self.do(step.action, body, where):
                transcript.append(last := output)
            self.done.add(index)
        return "\n".join(transcript)

    def do(self, action: str, body: str, where: str) -> str | None:
        """Do one step other than `output`; a `run` step returns what it printed."""
        if found := re.fullmatch(r"run(?: in (\S+))?", action):
            folder = self.repo.parent / found[1] if found[1] else self.repo
            folder.mkdir(parents=True, exist_ok=True)
            return shell(body, folder, where)
        if found := re.fullmatch(r"insert (\S+) (before|after): (.+)", action):
            insert(self.repo / found[1], body, found[2], found[3], where)
        elif found := re.fullmatch(r"patch (\S+)", action):
            patch(self.repo / found[1], body, where)
        else:
            assert re.fullmatch(r"skip: \S.*", action), f"{where}: unknown marker"
        return None

    def finish(self) -> None:
        """Every step was followed or skipped for a reason, every placeholder was used."""
        missed = [
            f"line {step.line} ({step.section})"
            for index, step in enumerate(self.steps)
            if index not in self.done and not step.action.startswith("skip: ")
        ]
        assert not missed, f"{self.path.name}: steps not followed: {missed}"
        bodies = "".join(step.body for step in self.steps)
        unused = [placeholder for placeholder in self.placeholders if placeholder not in bodies]
        assert not unused, f"{self.path.name} no longer holds {unused}"


TERMINAL = 120  # columns: the guides' tables must show their columns in full at this width


def shell(script: str, folder: Path, where: str) -> str:
    # One stream, unbuffered, so that DVC's lines and its stages' logs keep their order; a
    # terminal's width, which DVC's tables (rich) shrink to, eliding cells with "…".
    result = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{MAKE}{script}"],
        cwd=folder,
        env={**dvc_env(), "PYTHONUNBUFFERED": "1", "COLUMNS": str(TERMINAL)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    output = result.stdout
    assert result.returncode == 0, f"{where} exited {result.returncode}:\n{script}\n{output}"
    return output


def words(line: str) -> str:
    return " ".join(line.split())


def check_output(expected: str, output: str, where: str) -> None:
    lines = iter(words(line) for line in output.splitlines())
    for line in filter(None, map(words, expected.splitlines())):
        assert line in lines, f"{where}: {line!r} is not in the output, or not in order:\n{output}"


def insert(path: Path, block: str, side: str, anchor: str, where: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [i for i, line in enumerate(lines) if line.strip() == anchor.strip()]
    assert len(found) == 1, f"{where}: {len(found)} lines of {path.name} read {anchor!r}"
    at, step = found[0], (-1 if side == "before" else 1)
    gap = 0
    while 0 <= at + step * (gap + 1) < len(lines) and not lines[at + step * (gap + 1)].strip():
        gap += 1
    new = block.splitlines()
    new = new + [""] * gap if side == "before" else [""] * gap + new
    cut = at if side == "before" else at + 1
    path.write_text("\n".join([*lines[:cut], *new, *lines[cut:]]) + "\n", encoding="utf-8")


def patch(path: Path, diff: str, where: str) -> None:
    old, new = [], []
    for line in diff.splitlines():
        tag, text = line[:1] or " ", line[1:].rstrip()
        assert tag in " -+", f"{where}: a diff line starts with {tag!r}: {line!r}"
        if tag != "+":
            old.append(text)
        if tag != "-":
            new.append(text)
    lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    found = [i for i in range(len(lines)) if lines[i : i + len(old)] == old]
    assert len(found) == 1, f"{where}: the diff's old lines occur {len(found)} times in {path}"
    at = found[0]
    lines[at : at + len(old)] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def stages_run(output: str) -> list[str]:
    return re.findall(r"^Running stage '([\w-]+)':", output, re.M)


def experiments(repo: Path, *options: str) -> dict[str, dict]:
    """Each experiment that `dvc exp show` shows (of the current commit unless `options` say
    otherwise), by name: its params.yaml values and its metrics."""
    shown = json.loads(run(["dvc", "exp", "show", "--json", *options], repo).stdout)
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            metrics = data.get("metrics") or {}  # none for a queued one
            found[experiment["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": metrics.get("metrics/metrics.json", {}).get("data"),
            }
    return found


def test_every_guide_has_its_test_and_every_block_a_known_marker():
    guides = {path.name for path in GUIDES.glob("*.md")}
    assert guides == {"add-a-model.md", "add-a-dataset.md", "experiments.md", "remote.md"}
    for name in guides:
        steps = guide_steps(GUIDES / name)
        assert any(step.action.startswith("run") for step in steps), name
        unknown = [step.line for step in steps if not ACTIONS.fullmatch(step.action)]
        assert not unknown, f"{name}: unknown markers at lines {unknown}"


@pytest.mark.slow
def test_a_model_added_by_the_guide_trains_and_shows_up_in_dvc(pipeline_repo):
    guide = Guide("add-a-model.md", pipeline_repo)
    # The fast tests compare docs/params.md with the repository's own values (6 epochs, all
    # images), so the copy has those until they ran; the training runs on the tiny ones.
    edit_config(pipeline_repo, {tiny: own for own, tiny in TINY_PARAMS.items()})
    train = "6. Train it, and compare"
    checked = "".join(guide.follow(section) for section in guide.sections if section != train)
    assert re.search(r"\d+ passed", checked) and not re.search(r"\d+ failed", checked)
    edit_config(pipeline_repo, TINY_PARAMS)
    trained = guide.follow(train)
    guide.finish()
    # models.py changed: the stages that import it, never download or preprocess
    assert stages_run(trained) == ["train", "export", "evaluate", "report"]
    assert "training tiny-cnn (9098 parameters)" in trained
    shown = experiments(pipeline_repo)["tiny-cnn"]
    assert shown["params"]["model"]["name"] == "tiny-cnn"
    assert shown["params"]["model"]["tiny-cnn"] == {"width": 8, "dropout": 0.0}
    assert shown["metrics"]["accuracy"] > 0.5
    # The copy's code knows the model; this process's does not.
    load = (
        "from mnistpipe.modeling.checkpoints import load_checkpoint as l;"
        " print(l('models/model.pt'))"
    )
    assert "model_name='tiny-cnn'" in run([sys.executable, "-c", load], pipeline_repo).stdout
    reference = (pipeline_repo / "docs" / "params.md").read_text(encoding="utf-8")
    assert "| `model.tiny-cnn.width` | `8` |" in reference


def tiny_dataset(folder: Path) -> dict[str, str]:
    """Four idx files of 1,000 training and 200 test images (a bright block whose place is
    the class) in `folder`; returns each file's MD5."""
    train, test = toy_data(1000, seed=1), toy_data(200, seed=2)
    arrays = {
        TRAIN_IMAGES: train.images.numpy(),
        TRAIN_LABELS: train.labels.numpy().astype("uint8"),
        TEST_IMAGES: test.images.numpy(),
        TEST_LABELS: test.labels.numpy().astype("uint8"),
    }
    folder.mkdir()
    for name, array in arrays.items():
        (folder / name).write_bytes(idx.encode(array))
    return {name: md5_hex((folder / name).read_bytes()) for name in arrays}


@pytest.mark.slow
def test_a_dataset_registered_by_the_guide_runs_through_the_pipeline(pipeline_repo, tmp_path):
    mnist = tmp_path / "mnist"  # your own copy of MNIST: the baseline's verified files,
    shutil.copytree(pipeline_repo / "data" / "raw" / "mnist", mnist)
    for labels in (TRAIN_LABELS, TEST_LABELS):  # some of them gzipped
        plain = mnist / labels
        plain.with_name(f"{labels}.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    mine = tmp_path / "my-digits"
    md5 = tiny_dataset(mine)
    guide = Guide(
        "add-a-dataset.md",
        pipeline_repo,
        {
            "/path/to/mnist": str(mnist),
            "/path/to/my-digits": str(mine),
            **{f"<md5 of {name}>": digest for name, digest in md5.items()},
            # Through preprocess, the part that knows the dataset: what follows it is what
            # every other run tests, and would cost a whole run (24 s) more.
            "dvc exp run -n my-digits": "dvc exp run preprocess -n my-digits",
        },
    )
    own_copy = guide.follow("Your own copy of a dataset the pipeline knows")
    assert stages_run(own_copy) == ["download"]

    # The baseline keeps 5,000 training images (preprocess.subset), more than the guide's
    # dataset has here; 0, the repository's own value, keeps them all.
    edit_config(pipeline_repo, {"  subset: 5000\n": "  subset: 0\n"})
    new_dataset = guide.follow("A new dataset")
    guide.finish()
    for name, digest in md5.items():  # both ways of computing the MD5s print them
        assert new_dataset.count(f"{digest}  {mine / name}") == 1
        assert new_dataset.count(f"{digest} {name}") == 1
    meta = processed.load_meta(pipeline_repo / "data" / "processed")
    assert meta.dataset == "my-digits"
    assert meta.sizes == {"train": 500, "val": 500, "test": 200}  # val_size 500 of the baseline
    assert stages_run(new_dataset) == ["download", "preprocess"]
    assert experiments(pipeline_repo)["my-digits"]["params"]["data"]["dataset"] == "my-digits"
    counts = (pipeline_repo / "metrics" / "class_counts.csv").read_text(encoding="utf-8")
    assert counts.splitlines()[1] == "0,0,50,50,20"  # class, name, train, val, test


def check_table(output: str, headers: list[str], values: list[str]) -> None:
    """A `dvc exp show` table as printed at TERMINAL columns: every named column's header and
    the given values in full, nothing elided."""
    lines = output.splitlines()
    assert "…" not in output, output
    assert max(map(len, lines)) <= TERMINAL, output
    header = next(line for line in lines if "Experiment" in line)
    assert header.split() == headers, header
    for value in values:
        assert re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", output), (value, output)


def check_the_diffs(repo: Path, before: dict) -> None:
    """What DVC's diffs say of a run of 2 epochs against the committed 1, in JSON and
    Markdown: the metrics at HEAD and in the workspace, the changed param, both plots."""
    after = json.loads((repo / "metrics" / "metrics.json").read_text())
    metrics = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    accuracy = metrics["metrics/metrics.json"]["accuracy"]
    assert accuracy["old"] == before["accuracy"] and accuracy["new"] == after["accuracy"]
    assert accuracy["old"] != accuracy["new"]
    rows = markdown_rows(run(["dvc", "metrics", "diff", "--md"], repo).stdout)
    assert rows[0][:4] == ["Path", "Metric", "HEAD", "workspace"]
    expected = [
        "metrics/metrics.json",
        "accuracy",
        str(before["accuracy"]),
        str(after["accuracy"]),
    ]
    assert expected in [row[:4] for row in rows]
    params = json.loads(run(["dvc", "params", "diff", "--json"], repo).stdout)
    assert params["params.yaml"]["train.epochs"] == {"old": 1, "new": 2, "diff": 1}
    rows = markdown_rows(run(["dvc", "params", "diff", "--md"], repo).stdout)
    assert ["params.yaml", "train.epochs", "1", "2"] in rows
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert {"Loss", "Accuracy", "Confusion matrix"} <= set(plots)
    epochs = {row["epoch"] for row in plots["Loss"][0]["content"]["data"]["values"]}
    assert epochs == {"1", "2"}
    diff = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo).stdout)
    assert set(diff["data"]["Accuracy"][0]["revisions"]) == {"HEAD", "workspace"}


@pytest.mark.slow
def test_the_experiments_guide_runs_compares_and_keeps_the_best(pipeline_repo):
    # 2 epochs where the guide trains 8: one more than the baseline's, a change to compare
    guide = Guide(
        "experiments.md",
        pipeline_repo,
        {"train.epochs=8": "train.epochs=2", "epochs: 6": "epochs: 1", "epochs: 8": "epochs: 2"},
    )
    before = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    ran = guide.follow("1. Run one")
    assert stages_run(ran) == ["train", "export", "evaluate", "report"]
    compared = guide.follow("2. Compare it with the last commit")
    assert re.search(r"train\.epochs\s+1\s+2", compared)  # dvc params diff
    after = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    table = compared.split("Path ")[0]  # dvc exp show's, before the diffs' tables
    headers = ["Experiment", "accuracy", "loss", "ece_calibrated", "train.epochs"]
    shown = [f"{after[name]:.5g}" for name in ("accuracy", "loss", "ece_calibrated")]
    check_table(table, headers, ["epochs-8", *shown])  # DVC shows 5 significant digits
    assert (pipeline_repo / "dvc_plots" / "index.html").is_file()  # dvc plots diff
    check_the_diffs(pipeline_repo, before)
    guide.follow("3. A whole recipe")
    queued = guide.follow("4. Queue several")
    assert queued.count("Queued") >= 2
    ranked = guide.follow("5. Pick the best")
    headers = [
        "Experiment",
        "accuracy",
        "ece_calibrated",
        "model.name",
        "train.epochs",
        "train.lr",
    ]
    check_table(ranked, headers, ["epochs-8", f"{after['accuracy']:.5g}", "cnn", "mlp"])
    trained = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    assert trained["accuracy"] != before["accuracy"]
    guide.follow("6. Keep the best")
    guide.finish()
    log = run(["git", "log", "-1", "--format=%s"], pipeline_repo).stdout
    assert log.strip() == "Train for 8 epochs"
    assert run(["git", "status", "--porcelain"], pipeline_repo).stdout == ""
    committed = json.loads(run(["git", "show", "HEAD:metrics/metrics.json"], pipeline_repo).stdout)
    assert committed == trained
    assert load_checkpoint(pipeline_repo / "models" / "model.pt").recipe.epochs == 2
    kept = experiments(pipeline_repo, "-n", "2")["epochs-8"]  # under the previous commit
    assert kept["metrics"]["accuracy"] == trained["accuracy"]


@pytest.mark.slow
def test_the_remote_guide_shares_data_models_and_experiments(pipeline_repo, tmp_path):
    origin = tmp_path / "origin.git"  # the git host: a bare repository
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], pipeline_repo)
    run(["git", "push", "-q", "-u", "origin", "HEAD"], pipeline_repo)
    storage = tmp_path / "dvc-storage"
    guide = Guide(
        "remote.md",
        pipeline_repo,
        {"/mnt/shared/mnist-dvc": str(storage), "<your repository's URL>": str(origin)},
    )
    guide.follow("1. Add a remote")
    assert re.search(r"^\d+ files pushed", guide.follow("2. Push"), re.M)
    teammate = tmp_path / "teammate" / "mnist-pipeline"
    guide.follow("3. A teammate clones and pulls")
    model = pipeline_repo / "models" / "model.pt"
    assert (teammate / "models" / "model.pt").read_bytes() == model.read_bytes()
    assert stages_run(run(["dvc", "repro"], teammate).stdout) == []  # pulled, not rerun

    # The experiment the guide shares, made cheaply: a report-only change under its name.
    run(["dvc", "exp", "run", "-n", "epochs-8", "-S", "report.samples_shown=16"], pipeline_repo)
    guide.follow("4. Share experiments")
    guide.finish()
    shown = experiments(teammate)
    assert shown["epochs-8"]["params"]["report"]["samples_shown"] == 16
    params = (teammate / "params.yaml").read_text(encoding="utf-8")
    assert "samples_shown: 16" in params  # applied
