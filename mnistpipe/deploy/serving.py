"""The web server's settings: the `serve` section of params.yaml.

Torch-free, like everything the apps import (the server runs the ONNX model on ONNX Runtime),
so the server reads its own section rather than params.py's whole file model, which loads
the models' and the recipe's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from mnistpipe.config import Config, parse, read_params, rule
from mnistpipe.errors import ParamsError, PipelineError


class ServeParams(Config):
    host: str = Field(
        description="where `python -m apps.serve` listens; 127.0.0.1 keeps it on this machine,"
        " 0.0.0.0 would expose it to your network"
    )
    port: Annotated[int, rule(lambda v: 0 <= v <= 65535, "must be between 0 and 65535")] = Field(
        description="its port; 0 = a free port that the system picks (the log names it)"
    )
    max_upload_mb: float = Field(gt=0, description="larger uploads get 413")
    max_batch: int = Field(
        ge=1, description="requests arriving together share one forward pass, up to this many"
    )
    batch_wait_ms: Annotated[
        float, rule(lambda v: 0 <= v <= 1000, "must be between 0 and 1000")
    ] = Field(description="how long the first request of a batch waits for others to join it")


def load_serve_params(path: str | Path) -> ServeParams:
    """The `serve` section of the params file at `path`, validated."""
    raw = read_params(path)
    if "serve" not in raw:
        raise PipelineError(f"{path}: missing key serve")
    return parse(ServeParams, raw["serve"], path, "serve.")


def with_flags(params: ServeParams, **flags: object) -> ServeParams:
    """`params` with the command line's flags (None: not given), validated as the file is,
    so that a bad flag is one line naming it."""
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return parse(ServeParams, params.to_mapping() | given, "the command line", "serve.")
    except ParamsError as error:
        flag = error.key.removeprefix("serve.")
        raise PipelineError(f"--{flag}: {error.problem.split(': ', 1)[1]}") from None
