"""Write each stage's code dependencies in dvc.yaml: exactly the repository files it runs.

    python -m tools.stage_deps [--check]

A stage's command runs a module (`python -m stages.NAME`, or the numerics launcher that then
runs one). Its code is that module's import closure inside the repository, found from the
source: every `import` anywhere in a file (inside functions too, but not under
`if TYPE_CHECKING:`), with the packages' `__init__.py` on the way, plus the files a module
loads by path, named by a string constant that is a sibling of the module (the report's
templates). A package whose every file is in the closure is listed as its folder.

Only the code entries of each stage's `deps:` are rewritten (those under a code package:
stages/, mnistpipe/); the data entries and the rest of the file stay as written. `--check`
changes nothing and exits 1 when dvc.yaml is stale (`make deps` writes it).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

from mnistpipe.files import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DVC_YAML = Path("dvc.yaml")
CODE_ROOTS = ("stages", "mnistpipe")  # what a stage may run; apps, tools, tests never
LAUNCHER = "mnistpipe.modeling.numerics"  # `python -m LAUNCHER MODE stages.NAME ...`
BYPRODUCTS = ("__pycache__",)  # never a dependency (.dvcignore leaves them out too)


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The repository file of a dotted module name (a package's __init__.py), or None."""
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:`, which never run."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            is_type_checking = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(
                child.test
            )
            if is_type_checking:
                pending += child.orelse
            else:
                pending.append(child)


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` names in the file (functions included),
    with `from package import module` resolved to the module."""
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def loaded_by_path(path: Path) -> set[Path]:
    """Files and folders beside `path` that one of its string constants names (templates)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
            if re.fullmatch(r"[\w.-]+", name) and name not in (".", ".."):
                candidate = path.parent / name
                if candidate.exists() and candidate != path and candidate.suffix != ".py":
                    found.add(candidate)
    return found


def import_closure(module: str, root: Path = REPO) -> set[Path]:
    """The repository files that running `python -m module` executes or loads: the module,
    what it imports inside the repository, recursively, the packages' __init__.py on the
    way, and the files they load by path."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, then a.b.c
            path = module_file(".".join(parts[:depth]), root)
            if path is not None and path not in seen:
                seen.add(path)
                seen |= loaded_by_path(path)
                pending += imported_modules(path)
    return seen


def command_modules(command: str) -> list[str]:
    """The modules a stage's command runs: `python -m MODULE`, and the stage module that the
    numerics launcher runs."""
    match = re.match(r"python -m ([\w.]+)(?: (\S+) ([\w.]+))?", command)
    if match is None:
        raise ValueError(f"command does not run a module: {command}")
    return [match.group(1), match.group(3)] if match.group(1) == LAUNCHER else [match.group(1)]


def files_under(folder: Path) -> set[Path]:
    return {
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part in BYPRODUCTS for part in path.parts)
    }


def as_deps(closure: set[Path], root: Path = REPO) -> list[str]:
    """The closure as dvc.yaml entries: a folder where all of its files are in it."""
    files = {path for path in closure if path.is_file()}
    files |= {inner for path in closure if path.is_dir() for inner in files_under(path)}
    entries: list[str] = []

    def visit(folder: Path) -> None:
        inside = files_under(folder)
        if inside and inside <= files:
            entries.append(folder.relative_to(root).as_posix())
            return
        for path in sorted(folder.iterdir()):
            if path.is_dir() and path.name not in BYPRODUCTS:
                visit(path)
            elif path in files:
                entries.append(path.relative_to(root).as_posix())

    for code_root in CODE_ROOTS:
        visit(root / code_root)
    return entries


def stage_code_deps(dvc_yaml: dict, root: Path = REPO) -> dict[str, list[str]]:
    """Stage name -> its code entries, from its command."""
    return {
        name: as_deps(
            set().union(*(import_closure(m, root) for m in command_modules(spec["cmd"])))
        )
        for name, spec in dvc_yaml["stages"].items()
    }


def is_code(entry: str) -> bool:
    return entry.split("/")[0] in CODE_ROOTS


def rewrite(text: str, code_deps: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's code entries replaced, ahead of its data entries."""
    lines, out, stage, in_deps = text.splitlines(keepends=True), [], None, False
    for line in lines:
        if match := re.fullmatch(r"  ([\w-]+):\n", line):
            stage = match.group(1)
        if in_deps and (item := re.fullmatch(r"      - (.+)\n", line)):
            if is_code(item.group(1)):
                continue
        elif in_deps:
            in_deps = False
        out.append(line)
        if line == "    deps:\n" and stage in code_deps:
            in_deps = True
            out += [f"      - {entry}\n" for entry in code_deps[stage]]
    return "".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.stage_deps", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that dvc.yaml is current")
    args = parser.parse_args(argv)
    text = DVC_YAML.read_text(encoding="utf-8")
    new = rewrite(text, stage_code_deps(yaml.safe_load(text)))
    if new == text:
        return
    if args.check:
        sys.exit(f"stage_deps: {DVC_YAML}'s code dependencies are stale: run make deps")
    write_text_atomic(DVC_YAML, new)
    print(f"stage_deps: wrote the code dependencies of {DVC_YAML}", file=sys.stderr)


if __name__ == "__main__":
    main()
