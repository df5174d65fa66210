"""Each stage depends on exactly the code it runs: dvc.yaml's code entries against a trace of
what the tiny pipeline's stages really loaded (conftest's baseline, run with bytecode written),
and the reruns that one edit causes, asked of DVC in copies of the baseline."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run
from tests.helpers import ran

pytestmark = pytest.mark.slow  # on the baseline's real dvc repro

CODE_ROOTS = ("stages", "mnistpipe")
ALL = {"download", "preprocess", "train", "export", "evaluate", "report"}


def code_files(paths, root: Path) -> set[str]:
    """The code files (relative, no bytecode) among `paths`, folders expanded."""
    found = set()
    for path in map(Path, paths):
        inside = path.rglob("*") if path.is_dir() else [path]
        for file in inside:
            relative = file.relative_to(root)
            if (
                file.is_file()
                and relative.parts[0] in CODE_ROOTS
                and "__pycache__" not in relative.parts
            ):
                found.add(relative.as_posix())
    return found


def traced_stages(repo: Path) -> dict[str, set[str]]:
    """Stage name -> the code files its process imported or opened, from the trace."""
    loaded: dict[str, set[str]] = {}
    for record in (repo.parent / "trace").glob("*.json"):
        trace = json.loads(record.read_text())
        # `python -m stages.NAME` leaves the file in argv[0]; the numerics launcher, which
        # runs the stage with runpy, leaves the module's name
        main = trace["argv"][0] if trace["argv"] else ""
        stage = Path(main).stem if Path(main).parent == repo / "stages" else None
        stage = main.removeprefix("stages.") if main.startswith("stages.") else stage
        if stage:
            inside = [name for name in trace["files"] if Path(name).is_relative_to(repo)]
            loaded.setdefault(stage, set()).update(code_files(inside, repo))
    return loaded


def test_each_stage_depends_on_exactly_the_code_its_run_loaded(pipeline_baseline):
    repo, _ = pipeline_baseline
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    traced = traced_stages(repo)
    assert set(traced) == set(stages)  # every stage ran under the trace
    for name, spec in stages.items():
        declared = code_files([repo / dep for dep in spec["deps"]], repo)
        assert declared - traced[name] == set(), f"{name} lists code it does not load"
        assert traced[name] - declared == set(), f"{name} loads code it does not list"
    # The trace sees what the static lists must: the templates the report opens by path, and
    # the kernels that only the portable mode's set-up imports (inside a function).
    assert "mnistpipe/reporting/templates/report.md.j2" in traced["report"]
    assert "mnistpipe/modeling/portable_conv.py" in traced["train"]
    for name in ("download", "preprocess"):
        assert not any(file.startswith("mnistpipe/modeling/") for file in traced[name])


def test_bytecode_leaves_the_pipeline_up_to_date(pipeline_repo):
    """In a copy of the baseline, whose run wrote bytecode (the baseline itself stays as
    built: other workers read it)."""
    repo = pipeline_repo
    assert list((repo / "mnistpipe").rglob("__pycache__/*.pyc"))  # Python did write bytecode
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert status == {}


def would_run(repo: Path, edited: str) -> set[str]:
    """The stages `dvc repro --dry` would run after a comment is appended to `edited`: those
    whose own code deps changed (what follows reruns only if their outputs then change)."""
    path = repo / edited
    path.write_text(path.read_text() + ("\n# an edit\n" if path.suffix == ".py" else "\n"))
    return ran(run(["dvc", "repro", "--dry"], repo))


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        ("mnistpipe/reporting/figures.py", {"report"}),
        ("mnistpipe/reporting/templates/model_card.md.j2", {"report"}),
        ("mnistpipe/modeling/models.py", {"train", "export", "evaluate", "report"}),
        ("mnistpipe/deploy/imaging.py", {"train", "evaluate", "report"}),
        ("mnistpipe/modeling/portable_conv.py", {"train", "evaluate"}),
        ("mnistpipe/data/idx.py", ALL),
        ("apps/serve.py", set()),
        ("apps/predict.py", set()),
    ],
)
def test_an_edit_reruns_exactly_the_stages_that_run_it(pipeline_repo, edited, expected):
    assert would_run(pipeline_repo, edited) == expected


def test_a_source_edit_reruns_download_and_nothing_after_it_when_the_bytes_agree(
    pipeline_repo,
):
    assert would_run(pipeline_repo, "mnistpipe/data/sources.py") >= {"download"}
    # Run for real: download fetches again and verifies the MD5s, so its output is unchanged
    # and DVC has nothing more to do.
    assert ran(run(["dvc", "repro"], pipeline_repo)) == {"download"}
    assert json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout) == {}
