"""Compose params.yaml from conf/ with DVC's own Hydra composition, as `dvc exp run` does, and
check the whole file before anything runs.

    python -m tools.compose_params [--check] [--out FILE] [OVERRIDE...]

`make repro` runs it before `dvc repro`, so that an edit of conf/ is never left out of
params.yaml. Overrides are Hydra's, as with `dvc exp run -S` (e.g. `recipe=fast`,
`train.epochs=2`). `--check` changes nothing and exits 1 when params.yaml is not the
composition of conf/.

The check: conf/config.yaml's `seed` goes through the `params_check` resolver, which the Hydra
plugin in the folder `.dvc/config` names as `hydra.plugins_path` registers. DVC imports that
plugin before it composes, for `dvc exp run -S` and for this tool alike, so a bad value stops
both before params.yaml is written and before any stage removes an output. The message names
the key, the value, and where it came from: conf/config.yaml, or the -S overrides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from dvc.config import Config as DvcConfig
from dvc.utils.hydra import compose_and_dump

from mnistpipe.config import PARAMS_FILE, parse
from mnistpipe.errors import ParamsError, PipelineError
from mnistpipe.files import write_text_atomic
from mnistpipe.params import Params

CONFIG_DIR = Path("conf")  # DVC's default hydra.config_dir
CONFIG_NAME = "config"  # DVC's default hydra.config_name
MISSING = object()


def plugins_path(repo: Path) -> Path:
    """`hydra.plugins_path` of the repository's DVC config, where the params check lives."""
    hydra = DvcConfig(dvc_dir=str(repo / ".dvc"), validate=False).get("hydra", {})
    return repo / hydra.get("plugins_path", "")


def compose(repo: Path, overrides: list[str]) -> str:
    """The text of params.yaml composed from `repo`/conf with `overrides`, checked."""
    with tempfile.TemporaryDirectory(prefix="compose-params-") as scratch:
        out = Path(scratch) / "params.yaml"
        config_dir = str((repo / CONFIG_DIR).resolve())
        plugins = str(plugins_path(repo.resolve()))
        compose_and_dump(out, config_dir, None, CONFIG_NAME, plugins, overrides)
        return out.read_text(encoding="utf-8")


def _lookup(mapping: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return MISSING
        mapping = mapping[part]
    return mapping


def conf_as_written(repo: Path) -> dict[str, Any]:
    """conf/ composed without overrides and unresolved (so without the check)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str((repo / CONFIG_DIR).resolve()), version_base=None):
        return OmegaConf.to_container(hydra_compose(config_name=CONFIG_NAME), resolve=False)


def check(composed: dict[str, Any], repo: Path) -> None:
    """Validate the whole composed file; a ParamsError names where the bad key came from:
    conf/config.yaml when conf/ alone gives the same value, else the -S overrides."""
    try:
        parse(Params, composed, PARAMS_FILE)
    except ParamsError as error:
        value = _lookup(composed, error.key)
        written = _lookup(conf_as_written(repo), error.key)
        if written == value or _is_check(written):  # (both MISSING: a key missing in conf/)
            source = str(CONFIG_DIR / f"{CONFIG_NAME}.yaml")
        else:
            source = f"-S {error.key}={value}"
        raise ParamsError(source, error.key, error.problem) from None


def _is_check(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${params_check:")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.compose_params", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as dvc exp run -S takes")
    parser.add_argument("--out", type=Path, default=PARAMS_FILE, help="file to write")
    parser.add_argument("--check", action="store_true", help="only check that --out is current")
    args = parser.parse_args(argv)
    try:
        text = compose(Path.cwd(), args.overrides)
    except PipelineError as exc:
        sys.exit(f"compose_params: error: {exc}")
    except Exception as exc:  # Hydra's errors: a missing file, a bad override, bad YAML
        sys.exit(f"compose_params: error: {' '.join(str(exc).split())}")
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if current == text:
        return
    if args.check:
        sys.exit(f"compose_params: {args.out} is not composed from {CONFIG_DIR}/: run make params")
    write_text_atomic(args.out, text)
    print(f"compose_params: wrote {args.out} from {CONFIG_DIR}/", file=sys.stderr)


if __name__ == "__main__":
    main()
