"""The layout's promises: each DVC stage depends on every file of the repository it imports,
the core never imports the apps or the tools, and nothing imports a stage."""

import ast
import copy
import re
from pathlib import Path

import yaml

from tests.conftest import REPO

CORE, APPS, TOOLS = "mnistpipe", "apps", "tools"


def module_file(name: str) -> Path | None:
    """The repository file of a dotted module name (a package's __init__.py), or None."""
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` names anywhere in the file (functions
    included), with `from package import module` resolved to the module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_closure(module: str) -> set[Path]:
    """The repository files that running `python -m module` executes: the module, what it
    imports inside the repository, recursively, and the packages' __init__.py on the way."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, then a.b.c
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending += imported_modules(path)
    return seen


LAUNCHER = (
    "mnistpipe.modeling.numerics"  # `python -m mnistpipe.modeling.numerics MODE stages.NAME ...`
)


def command_modules(command: str) -> list[str]:
    """The modules a stage's command runs: `python -m MODULE`, and the stage module that
    the numerics launcher runs."""
    match = re.match(r"python -m ([\w.]+)(?: (\S+) ([\w.]+))?", command)
    assert match, f"command does not run a module: {command}"
    return [match.group(1), match.group(3)] if match.group(1) == LAUNCHER else [match.group(1)]


def uncovered(dvc_yaml: dict) -> list[str]:
    """'stage: file' for each file a stage's command imports that none of its deps covers."""
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        deps = [REPO / dep for dep in spec.get("deps", [])]
        closure = set().union(*map(import_closure, command_modules(spec["cmd"])))
        for path in sorted(closure):
            if not any(path == dep or dep in path.parents for dep in deps):
                problems.append(f"{stage}: {path.relative_to(REPO)}")
    return problems


def test_every_stage_depends_on_all_the_code_it_runs():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert uncovered(dvc_yaml) == []
    # The check catches a missing dep: without the core package, every stage misses its files.
    broken = copy.deepcopy(dvc_yaml)
    broken["stages"]["evaluate"]["deps"].remove(CORE)
    problems = uncovered(broken)
    assert "evaluate: mnistpipe/modeling/checkpoints.py" in problems
    assert all(problem.startswith("evaluate: mnistpipe/") for problem in problems)


def test_the_closure_follows_imports_inside_functions_and_packages():
    closure = {path.relative_to(REPO).as_posix() for path in import_closure("stages.download")}
    assert {"stages/__init__.py", "stages/download.py", "mnistpipe/__init__.py"} <= closure
    assert {"mnistpipe/data/sources.py", "mnistpipe/data/idx.py", "mnistpipe/params.py"} <= closure
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
    loop = REPO / CORE / "training.py"
    readers = ("stages.export", "stages.evaluate", "stages.report", "apps.predict", "apps.serve")
    for module in (*readers, f"{CORE}.checkpoints", f"{CORE}.params"):
        assert loop not in import_closure(module), module
    assert loop in import_closure("stages.train")  # the check can see it
    # the configs' base imports nothing of the pipeline but its error type
    files = {module_file(name) for name in imported_modules(REPO / CORE / "config.py")}
    assert files - {None} == {REPO / CORE / "errors.py"}


def test_the_apps_never_load_torch():
    """They run the ONNX model on ONNX Runtime: no file they execute imports torch, even
    inside a function (the serve section is read through serving.py, not params.py)."""
    for app in ("apps.predict", "apps.serve"):
        for path in import_closure(app):
            imports = imported_modules(path)
            assert not any(name.split(".")[0] == "torch" for name in imports), (app, path)
