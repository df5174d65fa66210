"""The base of every settings object, and the checks that several of them share.

At the bottom of the imports: the configs beside their code (models.py's model configs,
recipe.py's `train` section, sources.py's `download` section) and the file model of
params.py build on it. `read_params` reads the file and `parse` turns pydantic's report into
one line, for params.yaml and for the recipe a checkpoint carries. Torch-free, like
serving.py, so that the apps can read their section without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from mnistpipe.errors import ParamsError, PipelineError

PARAMS_FILE = Path("params.yaml")
SEED_RANGE = 2**32  # numpy's and torch's seeds are 32-bit


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

Seed = Annotated[
    int,
    Field(ge=0, lt=SEED_RANGE, description="every random choice of the pipeline derives from it"),
]


class Config(BaseModel):
    """Frozen, strict (no silent type coercion), unknown keys refused. Defaults are for code and
    tests: params.load_params requires every key in params.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_become_tuples(cls, values: Any) -> Any:
        """YAML gives lists; configs hold tuples so that they stay immutable."""
        if isinstance(values, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return values

    def to_mapping(self) -> dict[str, Any]:
        """As params.yaml writes it (lists, not tuples)."""
        return _plain(self.model_dump(by_alias=True))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


class Sections(Config):
    """A stage's view of params.yaml: the sections it reads (the fields of a subclass), each
    validated as strictly as in the whole file; the other stages' sections are not its concern
    (the whole file is checked once, when params.yaml is composed: tools/compose_params.py)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, populate_by_name=True)


C = TypeVar("C", bound=BaseModel)


def parse(model: type[C], mapping: Any, source: str | Path, prefix: str = "") -> C:
    """Validate `mapping` as `model`. The first problem becomes a one-line PipelineError that
    names `source` and the key (under `prefix`): a typo first (it also makes its key look
    missing), then a missing key, then the rest in pydantic's own words."""
    try:
        parsed, errors = model.model_validate(mapping), []
    except ValidationError as exc:
        parsed, errors = None, exc.errors()
    unknown = [error for error in errors if error["type"] == "extra_forbidden"]
    missing = _first_missing_key(model, mapping)
    if unknown:
        keys = _keys(unknown[0])
        key, known = prefix + ".".join(keys), ", ".join(_known_keys(model, keys[:-1])) or "none"
        raise ParamsError(str(source), key, f"unknown key {key}; known keys: {known}")
    if missing:
        raise ParamsError(str(source), prefix + missing, f"missing key {prefix}{missing}")
    if errors:
        error = errors[0]
        message = error["msg"].removeprefix("Value error, ").replace("valid tuple", "list")
        message = message[0].lower() + message[1:]
        key, value = prefix + ".".join(_keys(error)), error.get("input")
        value = list(value) if isinstance(value, tuple) else value  # as YAML wrote it
        raise ParamsError(str(source), key, f"{key}: {message}, got {value!r}")
    return parsed


def _keys(error: dict[str, Any]) -> list[str]:
    return [part for part in error["loc"] if isinstance(part, str)]  # ints index list items


def _first_missing_key(model: type[BaseModel], mapping: Any) -> str | None:
    """params.yaml spells out every key, nested configs included: defaults never fill in."""
    if not isinstance(mapping, dict):
        return None
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in mapping:
            return key
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            inner = _first_missing_key(nested, mapping[key])
            if inner:
                return f"{key}.{inner}"
    return None


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys allowed in the (possibly nested) mapping at `path` inside `model`."""
    for part in path:
        model = next(f for n, f in model.model_fields.items() if part in (n, f.alias)).annotation
    return [field.alias or name for name, field in model.model_fields.items()]


def load_sections(model: type[C], path: str | Path = PARAMS_FILE) -> C:
    """Read the params file and validate the sections that `model` (a `Sections`) names."""
    return parse(model, read_params(path), path)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file's YAML as a mapping, unvalidated (for tools that print it)."""
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
    return raw
