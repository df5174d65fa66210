"""Typed, frozen sections of params.yaml, the pipeline's only source of settings.

Each stage loads the sections it reads with `load_section` before doing any work. A section
rejects unknown keys (typos), missing keys, wrong types and values out of range, with a
one-line message that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from mnistpipe.datasets import DATASETS
from mnistpipe.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
SOURCE_NAMES = ("torchvision", "pypi", "debian", "local")


class ParamsError(PipelineError):
    pass


@dataclass(frozen=True)
class Section:
    """Base of all sections: subclasses set NAME and check their ranges in `check`."""

    NAME: ClassVar[str]

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        pass

    def to_mapping(self) -> dict[str, Any]:
        """The section as params.yaml writes it (lists, not tuples)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ParamsError(f"{self.NAME}.{key}: {message}, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class DataParams(Section):
    NAME: ClassVar[str] = "data"
    dataset: str

    def check(self) -> None:
        if self.dataset not in DATASETS:
            self.fail("dataset", f"must be one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class DownloadParams(Section):
    NAME: ClassVar[str] = "download"
    sources: tuple[str, ...]  # tried in this order until one gives files with the official MD5s
    local_dir: str | None  # folder with the four idx files, gzipped or not (source "local")

    def check(self) -> None:
        if not self.sources:
            self.fail("sources", "must name at least one source")
        unknown = [name for name in self.sources if name not in SOURCE_NAMES]
        if unknown:
            self.fail(
                "sources", f"unknown source {unknown[0]!r}; known: {', '.join(SOURCE_NAMES)}"
            )
        if len(set(self.sources)) != len(self.sources):
            self.fail("sources", "must not repeat a source")


@dataclass(frozen=True)
class PreprocessParams(Section):
    NAME: ClassVar[str] = "preprocess"
    val_size: int  # images held out of the training set for validation, stratified by class
    subset: int  # keep this many training images (stratified) before the split; 0 = all

    def check(self) -> None:
        if self.val_size < 1:
            self.fail("val_size", "must be at least 1")
        if self.subset < 0:
            self.fail("subset", "must be 0 (all images) or a positive count")


MODEL_NAMES = ("cnn", "mlp", "examples-cnn")
OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULES = ("none", "one-cycle", "cosine", "step")
NO_PRESET = "none"


@dataclass(frozen=True)
class ModelParams(Section):
    NAME: ClassVar[str] = "model"
    name: str  # cnn | mlp | examples-cnn (pytorch/examples' MNIST net; ignores the other keys)
    channels: tuple[int, ...]  # cnn: width of each conv stage; each stage ends in a 2x2 max-pool
    convs: tuple[int, ...]  # cnn: number of 3x3 conv + batch norm + ReLU blocks in each stage
    hidden: tuple[int, ...]  # mlp: sizes of the hidden ReLU layers
    dropout: float  # cnn: before the classifier; mlp: after each hidden layer

    def check(self) -> None:
        if self.name not in MODEL_NAMES:
            self.fail("name", f"must be one of {', '.join(MODEL_NAMES)}")
        if not 1 <= len(self.channels) <= 4 or min(self.channels) < 1:
            self.fail("channels", "must list 1 to 4 positive widths (28 px halves at each)")
        if len(self.convs) != len(self.channels) or min(self.convs, default=0) < 1:
            self.fail("convs", "must give a positive block count for each of model.channels")
        if any(size < 1 for size in self.hidden):
            self.fail("hidden", "must list positive layer sizes")
        if not 0.0 <= self.dropout < 1.0:
            self.fail("dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class TrainParams(Section):
    NAME: ClassVar[str] = "train"
    preset: str  # none, or a name under `presets` whose keys replace these and model's
    epochs: int
    batch_size: int
    optimizer: str  # sgd (Nesterov momentum) | adam | adamw | adadelta
    lr: float  # peak learning rate with a schedule
    momentum: float  # sgd only
    weight_decay: float
    schedule: str  # none | one-cycle | cosine (per batch) | step (x step_gamma per epoch)
    step_gamma: float  # step schedule only: the learning rate's factor after each epoch
    label_smoothing: float
    augment_rotate: float  # degrees of random rotation, each way; 0 = off
    augment_shift: float  # pixels of random translation, each way; 0 = off
    augment_scale: float  # random zoom of 1 +- this fraction; 0 = off
    device: str  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    threads: int  # CPU threads; 0 = all cores

    def check(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                self.fail(key, "must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            self.fail("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            self.fail("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            self.fail("lr", "must be positive")
        for key in ("momentum", "label_smoothing"):
            if not 0.0 <= getattr(self, key) < 1.0:
                self.fail(key, "must be in [0, 1)")
        if not 0.0 < self.step_gamma <= 1.0:
            self.fail("step_gamma", "must be in (0, 1]")
        for key in ("weight_decay", "augment_rotate", "augment_shift", "augment_scale"):
            if getattr(self, key) < 0:
                self.fail(key, "must not be negative")
        if self.augment_scale >= 1:
            self.fail("augment_scale", "must be below 1")
        _check_device(self, self.device)
        if self.threads < 0:
            self.fail("threads", "must be 0 (all cores) or a positive count")


@dataclass(frozen=True)
class EvaluateParams(Section):
    NAME: ClassVar[str] = "evaluate"
    batch_size: int  # images per inference batch; does not change the results
    device: str  # auto | cpu | cuda | cuda:N

    def check(self) -> None:
        if self.batch_size < 1:
            self.fail("batch_size", "must be at least 1")
        _check_device(self, self.device)


@dataclass(frozen=True)
class ReportParams(Section):
    NAME: ClassVar[str] = "report"
    misclassified_shown: int  # misclassified test digits in the grid
    samples_shown: int  # sample test predictions in the grid
    confused_pairs: int  # most confused (actual, predicted) pairs listed
    weakest_classes: int  # classes with the lowest F1 named

    def check(self) -> None:
        for key in ("misclassified_shown", "samples_shown"):
            if not 1 <= getattr(self, key) <= 100:
                self.fail(key, "must be between 1 and 100")
        for key in ("confused_pairs", "weakest_classes"):
            if not 1 <= getattr(self, key) <= 10:
                self.fail(key, "must be between 1 and 10")


@dataclass(frozen=True)
class ServeParams(Section):
    NAME: ClassVar[str] = "serve"
    host: str  # the address to listen on; 127.0.0.1 keeps the server on this machine
    port: int
    max_upload_mb: float  # larger uploads get 413
    max_batch: int  # requests classified in one forward pass at most
    batch_wait_ms: float  # how long the first request of a batch waits for others

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            self.fail("port", "must be between 1 and 65535")
        if not self.max_upload_mb > 0:
            self.fail("max_upload_mb", "must be positive")
        if self.max_batch < 1:
            self.fail("max_batch", "must be at least 1")
        if not 0 <= self.batch_wait_ms <= 1000:
            self.fail("batch_wait_ms", "must be between 0 and 1000")


def _check_device(section: Section, device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        section.fail("device", "must be auto, cpu, cuda or cuda:N")


SECTIONS: dict[str, type[Section]] = {
    cls.NAME: cls
    for cls in (
        DataParams,
        DownloadParams,
        PreprocessParams,
        ModelParams,
        TrainParams,
        EvaluateParams,
        ReportParams,
        ServeParams,
    )
}
TOP_LEVEL_SCALARS = ("seed",)
PRESETS_KEY = "presets"  # named recipes: {name: {model: {...}, train: {...}}}
PRESET_SECTIONS = (ModelParams, TrainParams)

S = TypeVar("S", bound=Section)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse the params file and check that it names only known sections."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    known = (*TOP_LEVEL_SCALARS, *SECTIONS, PRESETS_KEY)
    for key in raw:
        if key not in known:
            raise ParamsError(f"{path}: unknown section {key!r}; known: {', '.join(known)}")
    return raw


def load_section(cls: type[S], path: str | Path = PARAMS_FILE) -> S:
    """Load and validate one section of the params file."""
    raw = read_params(path)
    if cls.NAME not in raw:
        raise ParamsError(f"{path}: missing section {cls.NAME!r}")
    return section_from_mapping(cls, raw[cls.NAME], path)


def load_training(path: str | Path = PARAMS_FILE) -> tuple[ModelParams, TrainParams]:
    """The `model` and `train` sections, with the keys of `train.preset` (if not `none`)
    replacing theirs: one `-S train.preset=fast` switches a whole recipe."""
    raw = read_params(path)
    sections: dict[str, dict[str, Any]] = {}
    for cls in PRESET_SECTIONS:
        if not isinstance(raw.get(cls.NAME), dict):
            raise ParamsError(f"{path}: missing section {cls.NAME!r}")
        sections[cls.NAME] = dict(raw[cls.NAME])
    name = sections["train"].get("preset", NO_PRESET)
    if not isinstance(name, str):
        raise ParamsError(f"{path}: train.preset: expected str, got {name!r}")
    if name != NO_PRESET:
        presets = raw.get(PRESETS_KEY) or {}
        if not isinstance(presets, dict) or name not in presets:
            known = ", ".join([NO_PRESET, *presets]) if isinstance(presets, dict) else NO_PRESET
            raise ParamsError(f"{path}: train.preset: unknown preset {name!r}; known: {known}")
        for section, overrides in _preset_overrides(presets[name], name, path).items():
            sections[section].update(overrides)
    try:
        model = section_from_mapping(ModelParams, sections["model"], path)
        train = section_from_mapping(TrainParams, sections["train"], path)
    except ParamsError as exc:
        message = str(exc) if name == NO_PRESET else f"{exc} (preset {name!r})"
        raise ParamsError(message) from None
    return model, train


def _preset_overrides(preset: Any, name: str, path: str | Path) -> dict[str, dict[str, Any]]:
    allowed = [cls.NAME for cls in PRESET_SECTIONS]
    if not isinstance(preset, dict) or any(
        key not in allowed or not isinstance(value, dict) for key, value in preset.items()
    ):
        raise ParamsError(
            f"{path}: {PRESETS_KEY}.{name}: must map {' and/or '.join(allowed)} to their keys"
        )
    if "preset" in preset.get("train", {}):
        raise ParamsError(f"{path}: {PRESETS_KEY}.{name}.train.preset: a preset cannot name one")
    return preset


def load_seed(path: str | Path = PARAMS_FILE) -> int:
    """The one seed that every random choice of the pipeline derives from."""
    raw = read_params(path)
    if "seed" not in raw:
        raise ParamsError(f"{path}: missing key 'seed'")
    seed = _coerce(raw["seed"], int, f"{path}: seed")
    if not 0 <= seed < 2**32:
        raise ParamsError(f"{path}: seed: must be between 0 and 2**32 - 1, got {seed}")
    return seed


def section_from_mapping(cls: type[S], mapping: Any, path: str | Path = PARAMS_FILE) -> S:
    if not isinstance(mapping, dict):
        raise ParamsError(f"{path}: section {cls.NAME!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = [field.name for field in dataclasses.fields(cls)]
    for key in mapping:
        if key not in fields:
            raise ParamsError(
                f"{path}: unknown key {cls.NAME}.{key}; known keys: {', '.join(fields)}"
            )
    missing = [name for name in fields if name not in mapping]
    if missing:
        raise ParamsError(f"{path}: missing key {cls.NAME}.{missing[0]}")
    values = {
        name: _coerce(mapping[name], hints[name], f"{path}: {cls.NAME}.{name}") for name in fields
    }
    try:
        return cls(**values)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; lists become tuples so sections stay immutable."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(item, item_type, where) for item in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and type(value) is hint:
        return value
    raise ParamsError(f"{where}: expected {hint.__name__}, got {value!r}")
