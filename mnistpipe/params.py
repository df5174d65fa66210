"""The whole params.yaml as one pydantic model, for the checks that see every section at once.

Each section's model lives beside the code it configures: `data` in data/datasets.py,
`download` in data/sources.py, `preprocess` in data/processed.py, `model` in
modeling/models.py, `train` in modeling/recipe.py, `runtime` in modeling/device.py, `export`
in deploy/onnx_model.py, `evaluate` in modeling/metrics.py, `report` in reporting/figures.py
and `serve` in deploy/serving.py. A stage reads only its own sections (`config.Sections`), so
that it loads only the code it runs. This model, which loads every layer (torch included),
checks the whole file when it is composed (tools/compose_params.py, for `make repro` and
`dvc exp run`), before any stage runs, and makes the params reference (tools/params_doc.py).
"""

from __future__ import annotations

from pathlib import Path

from mnistpipe.config import PARAMS_FILE, Config, Seed, parse, read_params
from mnistpipe.data.datasets import DataParams
from mnistpipe.data.processed import PreprocessParams
from mnistpipe.data.sources import DownloadParams
from mnistpipe.deploy.export_params import ExportParams
from mnistpipe.deploy.serving import ServeParams
from mnistpipe.modeling.device import RuntimeParams
from mnistpipe.modeling.metrics import EvaluateParams
from mnistpipe.modeling.models import ModelParams
from mnistpipe.modeling.recipe import TrainParams
from mnistpipe.reporting.figures import ReportParams


class Params(Config):
    """The whole params.yaml, in its order."""

    seed: Seed
    data: DataParams
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    runtime: RuntimeParams
    export: ExportParams
    evaluate: EvaluateParams
    report: ReportParams
    serve: ServeParams


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file."""
    return parse(Params, read_params(path), path)
