"""Compose params.yaml from conf/ with DVC's own Hydra composition, as `dvc exp run` does.

    python -m tools.compose_params [--check] [--out FILE] [OVERRIDE...]

`make repro` runs it before `dvc repro`, so that an edit of conf/ is never left out of
params.yaml. Overrides are Hydra's, as with `dvc exp run -S` (e.g. `recipe=fast`,
`train.epochs=2`). `--check` changes nothing and exits 1 when params.yaml is not the
composition of conf/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dvc.utils.hydra import compose_and_dump

from mnistpipe.config import PARAMS_FILE
from mnistpipe.files import write_text_atomic

CONFIG_DIR = Path("conf")  # DVC's default hydra.config_dir
CONFIG_NAME = "config"  # DVC's default hydra.config_name


def compose(repo: Path, overrides: list[str]) -> str:
    """The text of params.yaml composed from `repo`/conf with `overrides`."""
    with tempfile.TemporaryDirectory(prefix="compose-params-") as scratch:
        out = Path(scratch) / "params.yaml"
        config_dir = str((repo / CONFIG_DIR).resolve())
        compose_and_dump(out, config_dir, None, CONFIG_NAME, str(repo.resolve()), overrides)
        return out.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.compose_params", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as dvc exp run -S takes")
    parser.add_argument("--out", type=Path, default=PARAMS_FILE, help="file to write")
    parser.add_argument("--check", action="store_true", help="only check that --out is current")
    args = parser.parse_args(argv)
    try:
        text = compose(Path.cwd(), args.overrides)
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
