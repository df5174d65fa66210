"""Typed, frozen sections of params.yaml, the pipeline's only source of settings.

Each stage loads the sections it reads with `load_section` before doing any work. Sections are
pydantic models: frozen, strict (no silent type coercion), with `Literal` choices read from the
registries and `Field` bounds. `load_section` turns pydantic's report into one line that names
the file, the key and the value. The `model` section lives beside the models (models.py), and
`train` beside the training loop (training.py); this module knows the file and the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnistpipe.datasets import DATASETS
from mnistpipe.errors import PipelineError
from mnistpipe.numerics import MODES
from mnistpipe.sources import SOURCES

PARAMS_FILE = Path("params.yaml")
# The top-level keys of params.yaml: the seed, then one section per Section subclass's NAME.
SECTION_NAMES = (
    "data",
    "download",
    "preprocess",
    "model",
    "train",
    "export",
    "evaluate",
    "report",
    "serve",
)
SEED_RANGE = 2**32  # numpy's and torch's seeds are 32-bit
SEED_DESCRIPTION = "every random choice of the pipeline derives from it"  # (docs/params.md)


def rule(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    """A check with its own wording, for constraints that a bound alone says badly."""

    def validate(value: Any) -> Any:
        if not ok(value):
            raise ValueError(message)
        return value

    return AfterValidator(validate)


Fraction = Annotated[float, rule(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")]
Device = Annotated[
    str,
    rule(
        lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
        "must be auto, cpu, cuda or cuda:N",
    ),
]


class Config(BaseModel):
    """Base of every settings object: frozen, strict (no silent type coercion), unknown keys
    refused. Defaults are for code and tests: load_section requires every key in params.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_become_tuples(cls, values: Any) -> Any:
        """YAML gives lists; sections hold tuples so that they stay immutable."""
        if isinstance(values, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return values

    def to_mapping(self) -> dict[str, Any]:
        """As params.yaml writes it (lists, not tuples)."""
        return _plain(self.model_dump(by_alias=True))


class Section(Config):
    """A top-level section of params.yaml, named NAME there."""

    NAME: ClassVar[str]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class DataParams(Section):
    NAME: ClassVar[str] = "data"
    dataset: Literal[tuple(DATASETS)] = Field(description="the dataset to train and test on")


def _check_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    if not sources:
        raise ValueError("must name at least one source")
    unknown = [name for name in sources if name not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source {unknown[0]!r}; known: {', '.join(SOURCES)}")
    if len(set(sources)) != len(sources):
        raise ValueError("must not repeat a source")
    return sources


class DownloadParams(Section):
    NAME: ClassVar[str] = "download"
    sources: Annotated[tuple[str, ...], AfterValidator(_check_sources)] = Field(
        description="sources to try, in order, until one gives the official MD5s"
    )
    local_dir: str | None = Field(
        description="folder of your own four idx files, gzipped or not, for source `local`"
    )


class PreprocessParams(Section):
    NAME: ClassVar[str] = "preprocess"
    val_size: int = Field(
        ge=1, description="training images held out for validation, stratified by class"
    )
    subset: Annotated[
        int, rule(lambda v: v >= 0, "must be 0 (all images) or a positive count")
    ] = Field(
        description="keep this many training images (stratified) before the split; 0 = all."
        " For smoke runs"
    )


class ExportParams(Section):
    NAME: ClassVar[str] = "export"
    # 18 is the oldest opset the dynamo exporter writes, 23 the newest the pinned onnxruntime runs
    opset: int = Field(ge=18, le=23, description="ONNX opset of `models/model.onnx` (18-23)")
    tolerance: float = Field(
        gt=0,
        le=0.01,
        description="the largest logit or OOD-score difference from PyTorch allowed on the"
        " validation split (float32 rounding gives about 1e-6); more, or another class for any"
        " image, fails the stage",
    )


class EvaluateParams(Section):
    NAME: ClassVar[str] = "evaluate"
    batch_size: int = Field(
        ge=1, description="images per inference batch; does not change the results"
    )
    device: Device = Field(description="as `train.device`")
    numerics: Literal[tuple(MODES)] = Field(description="as `train.numerics`")


ShownCount = Annotated[int, rule(lambda v: 1 <= v <= 100, "must be between 1 and 100")]
ListedCount = Annotated[int, rule(lambda v: 1 <= v <= 10, "must be between 1 and 10")]


class ReportParams(Section):
    NAME: ClassVar[str] = "report"
    misclassified_shown: ShownCount = Field(description="misclassified test digits in the grid")
    samples_shown: ShownCount = Field(description="sample test predictions in the grid")
    confused_pairs: ListedCount = Field(
        description="most confused (actual, predicted) pairs listed"
    )
    weakest_classes: ListedCount = Field(description="classes with the lowest F1 named")


class ServeParams(Section):
    NAME: ClassVar[str] = "serve"
    host: str = Field(
        description="where `python -m apps.serve` listens; 127.0.0.1 keeps it on this machine,"
        " 0.0.0.0 would expose it to your network"
    )
    port: Annotated[int, rule(lambda v: 1 <= v <= 65535, "must be between 1 and 65535")] = Field(
        description="its port"
    )
    max_upload_mb: float = Field(gt=0, description="larger uploads get 413")
    max_batch: int = Field(
        ge=1, description="requests arriving together share one forward pass, up to this many"
    )
    batch_wait_ms: Annotated[
        float, rule(lambda v: 0 <= v <= 1000, "must be between 0 and 1000")
    ] = Field(description="how long the first request of a batch waits for others to join it")


S = TypeVar("S", bound=Section)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse the params file and check that it names only known sections."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise PipelineError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    known = ("seed", *SECTION_NAMES)
    for key in raw:
        if key not in known:
            raise PipelineError(f"{path}: unknown section {key!r}; known: {', '.join(known)}")
    return raw


def load_section(cls: type[S], path: str | Path = PARAMS_FILE) -> S:
    """Load and validate one section of the params file."""
    raw = read_params(path)
    if cls.NAME not in raw:
        raise PipelineError(f"{path}: missing section {cls.NAME!r}")
    return section_from_mapping(cls, raw[cls.NAME], path)


def load_seed(path: str | Path = PARAMS_FILE) -> int:
    """The one seed that every random choice of the pipeline derives from."""
    raw = read_params(path)
    if "seed" not in raw:
        raise PipelineError(f"{path}: missing key 'seed'")
    seed = raw["seed"]
    if type(seed) is not int:
        raise PipelineError(f"{path}: seed: expected int, got {seed!r}")
    if not 0 <= seed < SEED_RANGE:
        raise PipelineError(f"{path}: seed: must be between 0 and 2**32 - 1, got {seed}")
    return seed


def section_from_mapping(cls: type[S], mapping: Any, path: str | Path = PARAMS_FILE) -> S:
    """Validate a section's mapping; the first problem becomes a one-line PipelineError."""
    if not isinstance(mapping, dict):
        raise PipelineError(f"{path}: section {cls.NAME!r} must be a mapping")
    try:
        section, errors = cls.model_validate(mapping), []
    except ValidationError as exc:
        section, errors = None, exc.errors()
    # A typo first (it also makes its key look missing), then a missing key, then the rest.
    unknown = [error for error in errors if error["type"] == "extra_forbidden"]
    missing = _first_missing_key(cls, mapping)
    if unknown:
        raise PipelineError(f"{path}: {describe(cls, unknown[0])}")
    if missing:
        raise PipelineError(f"{path}: missing key {cls.NAME}.{missing}")
    if errors:
        raise PipelineError(f"{path}: {describe(cls, errors[0])}")
    return section


def _first_missing_key(cls: type[BaseModel], mapping: dict[str, Any]) -> str | None:
    """params.yaml spells out every key, nested configs included: defaults never fill in."""
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key not in mapping:
            return key
        nested, value = field.annotation, mapping[key]
        if isinstance(nested, type) and issubclass(nested, BaseModel) and isinstance(value, dict):
            inner = _first_missing_key(nested, value)
            if inner:
                return f"{key}.{inner}"
    return None


TYPE_NAMES = {
    "int_type": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
    "tuple_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
}


def describe(cls: type[Section], error: dict[str, Any]) -> str:
    """One pydantic error as `<section>.<key>: <what is wrong>, got <value>`."""
    keys = [str(part) for part in error["loc"] if isinstance(part, str)]
    key = ".".join([cls.NAME, *keys])
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {key}; known keys: {', '.join(_known_keys(cls, keys[:-1]))}"
    if kind == "missing":
        return f"missing key {key}"
    if kind in TYPE_NAMES:
        return f"{key}: expected {TYPE_NAMES[kind]}, got {value!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return f"{key}: must be one of {', '.join(choices)}, got {value!r}"
    return f"{key}: {_bound_message(kind, error.get('ctx', {}), error['msg'])}, got {value!r}"


def _bound_message(kind: str, ctx: dict[str, Any], fallback: str) -> str:
    if kind == "greater_than_equal":
        return "must not be negative" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return "must be positive" if ctx["gt"] == 0 else f"must be greater than {ctx['gt']}"
    if kind == "less_than":
        return f"must be below {ctx['lt']:g}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']:g}"
    return fallback.removeprefix("Value error, ")


def _known_keys(cls: type[BaseModel], path: list[str]) -> list[str]:
    """The keys allowed in the (possibly nested) mapping at `path` inside section `cls`."""
    for part in path:
        field = next(f for name, f in cls.model_fields.items() if part in (name, f.alias))
        cls = field.annotation
    return [field.alias or name for name, field in cls.model_fields.items()]
