"""A sweep's grid, expanded as `dvc exp run -S` expands it, for .github/workflows/sweep.yml.

    python -m tools.sweep_grid matrix --grid 'train.lr=0.05,0.1 train.epochs=1,2' --prefix s7
    dvc exp show --csv | python -m tools.sweep_grid best --matrix "$MATRIX" --metric accuracy

`matrix` prints the GitHub job matrix as one line of JSON: one job per combination, each with
its experiment's name (a valid git ref name that says its params) and its `-S` values, one
per line. `best` reads `dvc exp show --csv` and prints, in Markdown, the sweep's best
experiment, the experiments that never arrived, and how to take the best one.

The `-S` values are parsed by Hydra's override parser, as DVC parses them, so a grid means
here what it means to `dvc exp run --queue -S ...`. Bad input is one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import re
import shlex
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TextIO

DEFAULT_PARAMS_FILE = "params.yaml"  # DVC's, for a -S value that names no file
MAX_EXPERIMENTS = 16  # the default cap: each combination is a CI job
GITHUB_MATRIX_LIMIT = 256  # GitHub runs at most this many jobs of one matrix
MAX_READABLE = 80  # characters of params in a name; longer ones are cut and get a digest

Combination = tuple[str, ...]  # the `-S` values of one experiment, in the grid's key order


class SweepError(ValueError):
    """Input the sweep cannot use; the message is one line for the user."""


def _split_file(override: str) -> tuple[str, str]:
    """('params.yaml', 'train.lr=0.1') from 'train.lr=0.1'; DVC's rule for `file:key=value`."""
    name, equals, _ = override.partition("=")
    if not equals or not name.strip():
        raise SweepError(f"{override!r} is not KEY=VALUE[,VALUE...], the form of a -S value")
    if ":" not in name:
        return DEFAULT_PARAMS_FILE, override
    path, _, rest = override.partition(":")
    return path, rest


def _choices(path: str, overrides: list[str]) -> dict[str, list[str]]:
    """For each key of one params file, the `key=value` strings it sweeps over, in order.

    A key given twice keeps its first place and its last values, as in Hydra's sweeper.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except HydraException as error:
        message = " ".join(str(error).split())
        raise SweepError(f"{path}: cannot parse the -S values: {message}") from None
    choices: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            raise SweepError(f"{override.input_line!r}: glob sweeps are not supported by DVC")
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise SweepError(f"{override.input_line!r}: an interval cannot be enumerated")
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return choices


def expand_grid(
    overrides: Sequence[str], max_experiments: int = MAX_EXPERIMENTS
) -> list[Combination]:
    """Every combination of a grid given as `dvc exp run -S` values, in DVC's order.

    ['train.lr=0.05,0.1', 'train.epochs=1,2'] gives ('train.lr=0.05', 'train.epochs=1'),
    ('train.lr=0.05', 'train.epochs=2'), ('train.lr=0.1', 'train.epochs=1'), ... A value for
    a file other than params.yaml keeps its `file:` prefix.
    """
    if not 1 <= max_experiments <= GITHUB_MATRIX_LIMIT:
        raise SweepError(f"the cap must be 1 to {GITHUB_MATRIX_LIMIT}, not {max_experiments}")
    if not overrides:
        raise SweepError("nothing to sweep: give -S values such as train.lr=0.05,0.1")
    by_file: dict[str, list[str]] = {}
    for override in overrides:
        if "\n" in override or "\r" in override:
            raise SweepError(f"{override!r}: a -S value cannot span lines")
        path, rest = _split_file(override)
        by_file.setdefault(path, []).append(rest)

    axes: list[list[str]] = []
    for path, file_overrides in by_file.items():
        prefix = "" if path == DEFAULT_PARAMS_FILE else f"{path}:"
        for values in _choices(path, file_overrides).values():
            axes.append([prefix + value for value in values])
    count = math.prod(len(axis) for axis in axes)
    if count == 0:
        raise SweepError("the grid is empty: a sweep has no values")
    if count > max_experiments:
        raise SweepError(
            f"the grid has {count} combinations, over the cap of {max_experiments}: "
            "sweep fewer values, or raise the cap"
        )
    grid = list(itertools.product(*axes))
    repeated = [combination for combination in grid if grid.count(combination) > 1]
    if repeated:
        raise SweepError(f"the grid repeats a combination: {' '.join(repeated[0])}")
    return grid


_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")  # outside these, a character may break a ref name
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*")


def _slug(text: str) -> str:
    return re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", text)).strip("-.")


def _digest(combination: Combination) -> str:
    return hashlib.sha1("\n".join(combination).encode()).hexdigest()[:7]


def _key_and_value(override: str) -> tuple[str, str]:
    name, _, value = override.partition("=")
    key = name.partition(":")[2] if ":" in name else name
    return key.lstrip("+~"), value


def experiment_names(combinations: Sequence[Combination], prefix: str = "") -> list[str]:
    """A name for each combination that says its params and is a valid experiment name.

    ('train.lr=0.05', 'train.epochs=2') with prefix 'sweep-7' gives
    'sweep-7-lr-0.05_epochs-2'. A key is shortened to its last part unless that is ambiguous;
    a value whose characters had to be replaced (or a name cut for length) gets a digest of
    the combination appended, so the names of a grid are always distinct.
    """
    if prefix and (
        not _PREFIX.fullmatch(prefix) or ".." in prefix or prefix.endswith((".", ".lock"))
    ):
        raise SweepError(
            f"{prefix!r} cannot start an experiment name: use letters, digits, '.', '_', "
            "'+' and '-', starting with a letter or digit"
        )
    names = []
    for combination in combinations:
        pairs = [_key_and_value(override) for override in combination]
        lasts = [key.rsplit(".", 1)[-1] for key, _ in pairs]
        labels = [
            _slug(last if lasts.count(last) == 1 else key)
            for last, (key, _) in zip(lasts, pairs, strict=True)
        ]
        values = [_slug(value) for _, value in pairs]
        readable = "_".join(
            f"{label}-{value}" for label, value in zip(labels, values, strict=True)
        )
        lossy = values != [value for _, value in pairs] or len(readable) > MAX_READABLE
        name = "-".join(filter(None, [prefix, readable[:MAX_READABLE].strip("-.")]))
        if lossy or name.endswith(".lock"):
            name = f"{name}-{_digest(combination)}"
        names.append(name)
    repeated = {name for name in names if names.count(name) > 1}
    return [
        f"{name}-{_digest(combination)}" if name in repeated else name
        for name, combination in zip(names, combinations, strict=True)
    ]


def job_matrix(overrides: Sequence[str], prefix: str, max_experiments: int) -> dict:
    """The `strategy.matrix` of the sweep's run job: {"include": [{"name", "params"}, ...]}."""
    grid = expand_grid(overrides, max_experiments)
    names = experiment_names(grid, prefix)
    return {
        "include": [
            {"name": name, "params": "\n".join(combination)}
            for name, combination in zip(names, grid, strict=True)
        ]
    }


def best_experiment(
    rows: Iterable[Mapping[str, str]],
    names: Collection[str],
    metric: str,
    lower_is_better: bool = False,
) -> tuple[dict[str, float], str | None]:
    """The metric of each named experiment found in `dvc exp show --csv` rows, and the best."""
    scores: dict[str, float] = {}
    for row in rows:
        if metric not in row:
            raise SweepError(f"dvc exp show has no column {metric!r}")
        name, value = row.get("Experiment") or "", row[metric] or ""
        if name in names and value.strip() not in ("", "-"):
            scores[name] = float(value)
    if not scores:
        return scores, None
    pick = min if lower_is_better else max
    return scores, pick(scores, key=scores.__getitem__)


def best_markdown(table: TextIO, matrix: Mapping, metric: str, lower_is_better: bool) -> str:
    names = [job["name"] for job in matrix["include"]]
    scores, best = best_experiment(csv.DictReader(table), names, metric, lower_is_better)
    if best is None:
        raise SweepError(f"none of the sweep's {len(names)} experiments arrived with {metric}")
    lines = [
        f"**Best of {len(scores)} experiments by {metric}: `{best}`** "
        f"({metric} {scores[best]:g}).",
        "",
    ]
    missing = [name for name in names if name not in scores]
    if missing:
        listed = ", ".join(f"`{name}`" for name in missing)
        lines += [f"Never arrived (their jobs failed before pushing): {listed}.", ""]
    lines += [
        "To take it:",
        "",
        "```sh",
        f"dvc exp pull origin {best}",
        f"dvc exp apply {best}",
        "dvc pull",
        "```",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sweep_grid", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    matrix = commands.add_parser("matrix", help="print the GitHub job matrix of a grid")
    matrix.add_argument("overrides", nargs="*", metavar="KEY=VALUE[,VALUE...]")
    matrix.add_argument("--grid", default="", help="-S values in one string, split as sh does")
    matrix.add_argument("--prefix", default="", help="the sweep's name, before each name")
    matrix.add_argument("--max", type=int, default=MAX_EXPERIMENTS, dest="max_experiments")
    best = commands.add_parser("best", help="name the best experiment in dvc exp show --csv")
    best.add_argument("table", nargs="?", type=argparse.FileType(), default=sys.stdin)
    best.add_argument("--matrix", required=True, help="the JSON that `matrix` printed")
    best.add_argument("--metric", default="accuracy")
    best.add_argument("--lower-is-better", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "matrix":
            try:
                overrides = [*shlex.split(args.grid), *args.overrides]
            except ValueError as error:
                raise SweepError(f"cannot split --grid: {error}") from None
            print(json.dumps(job_matrix(overrides, args.prefix, args.max_experiments)))
        else:
            try:
                jobs = json.loads(args.matrix)
            except json.JSONDecodeError as error:
                raise SweepError(f"--matrix is not JSON: {error}") from None
            print(best_markdown(args.table, jobs, args.metric, args.lower_is_better))
    except SweepError as error:
        print(f"sweep_grid: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
