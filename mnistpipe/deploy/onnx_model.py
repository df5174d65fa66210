"""The deployable model file, `models/model.onnx`: what `export` writes and the apps run.

The graph is the whole classifier, normalization and calibration included:
  input  `images`         (batch, 28, 28) uint8, MNIST-style (light ink on black, 0-255)
  output `logits`         (batch, classes) float32, uncalibrated (what PyTorch computes)
  output `probabilities`  (batch, classes) float32, softmax(logits / temperature)
  output `ood_score`      (batch,) float32, ood.py's score: above the metadata's
                          `ood_threshold`, the image does not look like the training data
uint8 in, because it is what every image decoder gives and what the pipeline stores: no client
has to know the scaling. The ONNX metadata (string key -> string value) says where the model
came from (METADATA). This module runs it on ONNX Runtime and never imports torch, so the
predict command and the server start in a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from mnistpipe.data.idx import IMAGE_SHAPE
from mnistpipe.errors import PipelineError

if TYPE_CHECKING:  # the onnx package is only for writing (export): the apps start faster
    import onnx

ONNX_FORMAT = "2"  # the `format` metadata value: bumped when the graph's contract changes
INPUT, LOGITS, PROBABILITIES, OOD_SCORE = "images", "logits", "probabilities", "ood_score"
BATCH_SIZE = 32  # images per run: 24-64 gave the most images/s on 2 cores (benchmarks/)


@dataclass(frozen=True)
class Metadata:
    """What the ONNX file says about itself, beside the graph."""

    dataset: str
    classes: tuple[str, ...]  # class index -> name
    subject: str  # what an image should show, as in "does not look like a digit"
    temperature: float  # fitted on the validation split; already inside `probabilities`
    ood_score: str  # the name of the score in `ood_score` (ood.SCORE_NAME)
    ood_threshold: float  # fitted on the validation split: higher scores are flagged
    checkpoint_sha256: str  # of the checkpoint it was exported from
    model: dict[str, Any]  # {"name": n, n: config}, as params.yaml's `model` section
    epoch: int
    val_accuracy: float

    def to_props(self) -> dict[str, str]:
        return {
            "format": ONNX_FORMAT,
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "subject": self.subject,
            "temperature": repr(float(self.temperature)),
            "ood_score": self.ood_score,
            "ood_threshold": repr(float(self.ood_threshold)),
            "checkpoint_sha256": self.checkpoint_sha256,
            "model": json.dumps(self.model, sort_keys=True),
            "epoch": str(self.epoch),
            "val_accuracy": repr(self.val_accuracy),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path) -> Metadata:
        if props.get("format") != ONNX_FORMAT:
            raise PipelineError(
                f"{path}: not a model exported by this pipeline (metadata format"
                f" {props.get('format')!r}, expected {ONNX_FORMAT!r}); rerun the export stage"
            )
        try:
            classes, model = json.loads(props["classes"]), json.loads(props["model"])
            if not isinstance(classes, list) or not isinstance(model, dict):
                raise ValueError("classes must be a JSON list and model a JSON object")
            return cls(
                dataset=props["dataset"],
                classes=tuple(str(name) for name in classes),
                subject=props["subject"],
                temperature=float(props["temperature"]),
                ood_score=props["ood_score"],
                ood_threshold=float(props["ood_threshold"]),
                checkpoint_sha256=props["checkpoint_sha256"],
                model=model,
                epoch=int(props["epoch"]),
                val_accuracy=float(props["val_accuracy"]),
            )
        except KeyError as exc:
            raise PipelineError(f"{path}: metadata key {exc} missing") from None
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: unreadable metadata ({exc})") from None


def finish(model: onnx.ModelProto, metadata: Metadata) -> bytes:
    """The file's bytes: `model` with `metadata`, less the exporter's debugging annotations
    (stack traces with this checkout's absolute paths, which would make the bytes depend on
    where the repository lies)."""
    import onnx

    for node in model.graph.node:
        del node.metadata_props[:]
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
    del model.graph.metadata_props[:]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """ONNX Runtime's settings that measured fastest for this model on 2 cores: every graph
    optimization (ENABLE_ALL's NCHWc layout gave 2x over EXTENDED) and denormals as zero."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice, one per physical core
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.log_severity_level = 3  # errors only: warnings would go to people's terminals
    return options


@dataclass(frozen=True)
class Answer:
    """What the model says of one image."""

    probabilities: np.ndarray  # (classes,) float32, calibrated
    score: float  # the OOD score
    flagged: bool  # the score is above the model's threshold: this is not like its data

    @property
    def best(self) -> int:
        """The most probable class's index: the answer, unless flagged, and the guess if so."""
        return int(self.probabilities.argmax())


@dataclass(frozen=True)
class Answers:
    """What the model says of N images."""

    probabilities: np.ndarray  # (N, classes) float32, calibrated
    scores: np.ndarray  # (N,) float32 OOD scores
    threshold: float  # the model's OOD threshold

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: int) -> Answer:
        score = float(self.scores[index])
        return Answer(self.probabilities[index], score, score > self.threshold)

    def __iter__(self) -> Iterator[Answer]:
        return (self[index] for index in range(len(self)))

    def part(self, start: int, stop: int) -> Answers:
        """The answers of images start to stop - 1 (one number's digits)."""
        return Answers(self.probabilities[start:stop], self.scores[start:stop], self.threshold)


@dataclass(frozen=True)
class OnnxClassifier:
    """An exported model, loaded once, ready for `classify`."""

    path: Path
    session: ort.InferenceSession
    metadata: Metadata

    @property
    def classes(self) -> tuple[str, ...]:
        return self.metadata.classes

    def run(
        self, images: np.ndarray, outputs: tuple[str, ...], batch_size: int = BATCH_SIZE
    ) -> list[np.ndarray]:
        """(N, 28, 28) uint8 images -> each of `outputs` for all N (float32), in batches."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        parts = [
            self.session.run(list(outputs), {INPUT: images[start : start + batch_size]})
            for start in range(0, len(images), batch_size)
        ]
        if not parts:  # no images: empty arrays of the outputs' shapes
            empty = {OOD_SCORE: (0,)}
            return [
                np.empty(empty.get(name, (0, len(self.classes))), np.float32) for name in outputs
            ]
        return [np.concatenate(pieces) for pieces in zip(*parts, strict=True)]


def classify(model: OnnxClassifier, images: np.ndarray, batch_size: int = BATCH_SIZE) -> Answers:
    """(N, 28, 28) uint8 MNIST-style images -> calibrated probabilities and OOD scores: the one
    inference function of the predict command, the server and the benchmark."""
    probabilities, scores = model.run(images, (PROBABILITIES, OOD_SCORE), batch_size)
    return Answers(probabilities, scores, model.metadata.ood_threshold)


def load_onnx(source: str | Path, data: bytes | None = None, threads: int = 0) -> OnnxClassifier:
    """Open an exported model (from `data` if given, named `source` in errors) and check that it
    keeps the contract above: one-line errors name the file."""
    path = Path(source)
    try:
        content = data if data is not None else path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: model not found; run the export stage") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, not an ONNX model") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        session = ort.InferenceSession(content, session_options(threads), ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for damaged files
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{path}: not a readable ONNX model ({reason})") from None
    metadata = Metadata.from_props(session.get_modelmeta().custom_metadata_map, path)
    check_signature(session, len(metadata.classes), path)
    return OnnxClassifier(path, session, metadata)


def check_signature(session: ort.InferenceSession, classes: int, path: Path) -> None:
    """The graph's inputs and outputs must be those of the module docstring."""
    inputs = {arg.name: arg for arg in session.get_inputs()}
    outputs = {arg.name: arg for arg in session.get_outputs()}
    expected_in = f"{INPUT} (batch, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) uint8"
    image = inputs.get(INPUT)
    if (
        len(inputs) != 1
        or image is None
        or image.type != "tensor(uint8)"
        or len(image.shape) != 3
        or isinstance(image.shape[0], int)  # the batch axis must be dynamic
        or tuple(image.shape[1:]) != IMAGE_SHAPE
    ):
        found = ", ".join(f"{a.name} {a.shape} {a.type}" for a in inputs.values())
        raise PipelineError(f"{path}: input must be {expected_in}, found {found}")
    for name in (LOGITS, PROBABILITIES):
        out = outputs.get(name)
        if (
            out is None
            or out.type != "tensor(float)"
            or len(out.shape) != 2
            or isinstance(out.shape[0], int)  # as dynamic as the input's
            or out.shape[1] != classes
        ):
            found = f"{out.shape} {out.type}" if out else "none"
            raise PipelineError(
                f"{path}: output {name} must be (batch, {classes}) float32 for the"
                f" {classes} classes of its metadata, found {found}"
            )
    score = outputs.get(OOD_SCORE)
    if score is None or score.type != "tensor(float)" or len(score.shape) != 1:
        found = f"{score.shape} {score.type}" if score else "none"
        raise PipelineError(f"{path}: output {OOD_SCORE} must be (batch,) float32, found {found}")
