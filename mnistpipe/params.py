"""params.yaml, the pipeline's only source of settings, as one explicit nested pydantic model.

`Params` is the whole file: the seed and one section per stage (plus `data`, and `serve` for
the web server). Sections that configure one piece of code live beside it and are referenced
here: the model configs in models.py, the `train` recipe in recipe.py, `download` in
sources.py, `serve` in serving.py (torch-free, for the apps). Every model is frozen and strict
(no silent type coercion), with `Literal` choices read from the registries and `Field`
bounds. Each stage calls `load_params` once, before doing any work; the first problem becomes
one line that names the file, the key and the value (config.parse).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from mnistpipe.config import PARAMS_FILE, Config, Device, parse, read_params, rule
from mnistpipe.data.datasets import DATASETS
from mnistpipe.data.sources import DownloadParams
from mnistpipe.deploy.serving import ServeParams
from mnistpipe.modeling.models import MODELS, CNNConfig, ExamplesCNNConfig, MLPConfig
from mnistpipe.modeling.numerics import MODES
from mnistpipe.modeling.recipe import TrainParams

SEED_RANGE = 2**32  # numpy's and torch's seeds are 32-bit


class DataParams(Config):
    dataset: Literal[tuple(DATASETS)] = Field(description="the dataset to train and test on")


class PreprocessParams(Config):
    val_size: int = Field(
        ge=1, description="training images held out for validation, stratified by class"
    )
    subset: Annotated[
        int, rule(lambda v: v >= 0, "must be 0 (all images) or a positive count")
    ] = Field(
        description="keep this many training images (stratified) before the split; 0 = all."
        " For smoke runs"
    )


class ModelParams(Config):
    """`name` picks the model; every model of MODELS keeps its config here, under its name."""

    name: Literal[tuple(MODELS)] = Field(description="which of the configs below is trained")
    cnn: CNNConfig
    mlp: MLPConfig
    examples_cnn: ExamplesCNNConfig = Field(
        alias="examples-cnn", description=ExamplesCNNConfig.__doc__
    )

    @property
    def config(self) -> Config:
        """The config of the model that `name` picks."""
        return getattr(self, self.name.replace("-", "_"))


class ExportParams(Config):
    # 18 is the oldest opset the dynamo exporter writes, 23 the newest the pinned onnxruntime runs
    opset: int = Field(ge=18, le=23, description="ONNX opset of `models/model.onnx` (18-23)")
    tolerance: float = Field(
        gt=0,
        le=0.01,
        description="the largest logit or OOD-score difference from PyTorch allowed on the"
        " validation split (float32 rounding gives about 1e-6); more, or another class for any"
        " image, fails the stage",
    )


class EvaluateParams(Config):
    batch_size: int = Field(
        ge=1, description="images per inference batch; does not change the results"
    )
    device: Device = Field(description="as `train.device`")
    numerics: Literal[tuple(MODES)] = Field(description="as `train.numerics`")


ShownCount = Annotated[int, rule(lambda v: 1 <= v <= 100, "must be between 1 and 100")]
ListedCount = Annotated[int, rule(lambda v: 1 <= v <= 10, "must be between 1 and 10")]


class ReportParams(Config):
    misclassified_shown: ShownCount = Field(description="misclassified test digits in the grid")
    samples_shown: ShownCount = Field(description="sample test predictions in the grid")
    confused_pairs: ListedCount = Field(
        description="most confused (actual, predicted) pairs listed"
    )
    weakest_classes: ListedCount = Field(description="classes with the lowest F1 named")


class Params(Config):
    """The whole params.yaml, in its order."""

    seed: int = Field(
        ge=0, lt=SEED_RANGE, description="every random choice of the pipeline derives from it"
    )
    data: DataParams
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    export: ExportParams
    evaluate: EvaluateParams
    report: ReportParams
    serve: ServeParams


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file, once per stage."""
    return parse(Params, read_params(path), path)
