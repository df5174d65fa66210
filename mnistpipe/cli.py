"""How a stage runs from the command line: logging for people, one-line errors, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from mnistpipe.errors import PipelineError

DVC_STAGE = "DVC_STAGE"  # set by DVC in the environment of each stage's command
# DVC removes a stage's cached outputs before running it (its git-kept ones persist, dvc.yaml)
RESTORE_HINT = " (`dvc checkout` brings back the outputs DVC removed before this run)"


def run_stage(main: Callable[[], None], name: str) -> None:
    """Run a stage's `main`; expected failures print `<name>: error: ...` and exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        main()
    except (PipelineError, OSError) as exc:
        print(
            f"{name}: error: {exc}{RESTORE_HINT if os.environ.get(DVC_STAGE) else ''}",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
