"""Serve the exported model: a page to draw on, and an HTTP API for programs.

    python -m apps.serve [--port N] [--host ADDRESS] [--model FILE] [--metrics FILE]

Loads `models/model.onnx` once on ONNX Runtime (no PyTorch) and listens on 127.0.0.1:8000 by
default (params `serve`); a missing or damaged model stops it before it listens. Open
http://127.0.0.1:8000/ to draw; `POST /api/predict` with a multipart field `file`; `GET
/healthz` reports the model, its hash, its class names and metrics. Not a DVC stage: it
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
from argparse import SUPPRESS
from pathlib import Path
from typing import Any

import uvicorn

from apps.predict import DEFAULT_MODEL, HelpFormatter
from apps.webapp import create_app
from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE
from mnistpipe.deploy.onnx_model import OnnxClassifier, load_onnx
from mnistpipe.deploy.serving import load_serve_params, with_flags
from mnistpipe.errors import PipelineError
from mnistpipe.files import sha256_file

log = logging.getLogger("serve")
DEFAULT_METRICS = Path("metrics/metrics.json")


def health(model: OnnxClassifier, metrics_path: Path) -> dict[str, Any]:
    """What /healthz reports: the model, its hash and metadata, and the test metrics if any."""
    test_metrics = None
    if metrics_path.exists():
        try:
            test_metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PipelineError(f"{metrics_path}: not valid JSON ({exc})") from None
    meta = model.metadata
    return {
        "model": str(model.path),
        "sha256": sha256_file(model.path),
        "checkpoint_sha256": meta.checkpoint_sha256,
        "dataset": meta.dataset,
        "classes": list(meta.classes),
        "subject": meta.subject,
        "temperature": meta.temperature,
        "ood_score": meta.ood_score,
        "ood_threshold": meta.ood_threshold,
        "config": meta.model,  # as params.yaml's `model` section, with the one model it names
        "epoch": meta.epoch,
        "val_accuracy": meta.val_accuracy,
        "metrics_file": str(metrics_path) if test_metrics is not None else None,
        "test_metrics": test_metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m apps.serve", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX model to serve"
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=DEFAULT_METRICS,
        help="the model's test metrics, shown by /healthz if the file exists",
    )
    parser.add_argument(
        "--host", default=SUPPRESS, help="address to listen on (default: params serve.host)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=SUPPRESS,
        help="port; 0 = a free one (default: params serve.port)",
    )
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="params file whose serve section is read"
    )
    args = parser.parse_args(argv)
    params = load_serve_params(args.params)
    given = {flag: value for flag, value in vars(args).items() if flag in ("host", "port")}
    params = with_flags(params, **given)  # flags not given are absent (SUPPRESS)
    model = load_onnx(args.model)  # a bad model stops the server here, before it listens
    app = create_app(model, health(model, args.metrics), params)
    try:  # bound here, so a taken port is one clear line rather than uvicorn's exit
        listener = socket.create_server((params.host, params.port))
    except OSError as exc:
        raise PipelineError(f"cannot listen on {params.host}:{params.port} ({exc})") from None
    port = listener.getsockname()[1]  # the one the system picked for port 0
    log.info("serving %s on http://%s:%d/", args.model, params.host, port)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])


if __name__ == "__main__":
    run_stage(main, "serve")
