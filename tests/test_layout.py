"""The layout's promises: dvc.yaml's code deps are current (make deps), the imports point one
way, the core never imports the apps or the tools, and nothing imports a stage."""

import yaml

from tests.conftest import REPO
from tools.stage_deps import (
    command_modules,
    import_closure,
    imported_modules,
    module_file,
    rewrite,
    stage_code_deps,
)

CORE, APPS, TOOLS = "mnistpipe", "apps", "tools"


def test_dvc_yaml_code_deps_are_current():
    """make deps wrote them from the code as it is (tests/test_stage_deps.py checks them
    against what the stages really load)."""
    text = (REPO / "dvc.yaml").read_text()
    assert rewrite(text, stage_code_deps(yaml.safe_load(text))) == text, "run make deps"
    # A stale list is seen: drop a file from the train stage's code.
    stale = text.replace("      - mnistpipe/modeling/training.py\n", "", 1)
    assert rewrite(stale, stage_code_deps(yaml.safe_load(stale))) == text


def test_the_closure_follows_imports_inside_functions_and_packages():
    closure = {path.relative_to(REPO).as_posix() for path in import_closure("stages.download")}
    assert {"stages/__init__.py", "stages/download.py", "mnistpipe/__init__.py"} <= closure
    assert {"mnistpipe/data/sources.py", "mnistpipe/data/idx.py"} <= closure
    # the reporting templates, loaded by path
    assert "mnistpipe/reporting/templates" in {
        path.relative_to(REPO).as_posix() for path in import_closure("stages.report")
    }
    assert not any(name.startswith(("apps/", "tools/", "tests/")) for name in closure)


def test_stages_are_exactly_the_modules_dvc_runs():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    commands = {
        command_modules(spec["cmd"])[-1].removeprefix("stages.")
        for spec in dvc_yaml["stages"].values()
    }
    modules = {path.stem for path in (REPO / "stages").glob("*.py") if path.stem != "__init__"}
    assert modules == commands


def test_the_core_imports_neither_apps_nor_tools_and_nothing_imports_a_stage():
    for package in (CORE, APPS, TOOLS, "stages", "benchmarks"):
        for path in (REPO / package).rglob("*.py"):
            imports = imported_modules(path)
            assert not any(name.startswith("stages.") for name in imports), path
            if package == CORE:
                assert not any(name.startswith((f"{APPS}.", f"{TOOLS}.")) for name in imports), (
                    path
                )


def test_imports_point_one_way():
    """Formats and configs at the bottom, the training loop above them: nothing that only
    reads a checkpoint or the params loads the training loop (and tqdm with it)."""
    loop = REPO / CORE / "modeling" / "training.py"
    readers = ("stages.export", "stages.evaluate", "stages.report", "apps.predict", "apps.serve")
    for module in (*readers, f"{CORE}.modeling.checkpoints", f"{CORE}.params"):
        assert loop not in import_closure(module), module
    assert loop in import_closure("stages.train")  # the check can see it
    # the configs' base imports nothing of the pipeline but its error type
    files = {module_file(name) for name in imported_modules(REPO / CORE / "config.py")}
    assert files - {None} == {REPO / CORE / "errors.py"}


def test_the_apps_never_load_torch():
    """They run the ONNX model on ONNX Runtime: no file they execute imports torch, even
    inside a function (the serve section is read through serving.py, not params.py)."""
    for app in ("apps.predict", "apps.serve"):
        for path in (path for path in import_closure(app) if path.suffix == ".py"):
            imports = imported_modules(path)
            assert not any(name.split(".")[0] == "torch" for name in imports), (app, path)
