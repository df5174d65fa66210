"""Stage `export`: the checkpoint as `models/model.onnx`, which runs on ONNX Runtime alone.

The graph is the whole classifier: uint8 images in; logits, calibrated probabilities and the
out-of-distribution score out (the contract is in mnistpipe/deploy/onnx_model.py, with the
metadata: dataset, class names, temperature, OOD threshold, the checkpoint's SHA-256). It is
made by torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`), the default
since torch 2.9 and the one PyTorch maintains; the TorchScript exporter is deprecated. Its
`dynamic_shapes` marks the batch axis. Before anything is written, ONNX Runtime must agree
with PyTorch on the validation split: the largest logit and OOD-score difference under
`export.tolerance`, and the same class for every image. Reads params `export`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, load_sections
from mnistpipe.data import processed
from mnistpipe.data.datasets import DATASETS
from mnistpipe.deploy.export_params import ExportParams
from mnistpipe.deploy.onnx_model import (
    INPUT,
    LOGITS,
    OOD_SCORE,
    PROBABILITIES,
    Metadata,
    finish,
    load_onnx,
)
from mnistpipe.errors import PipelineError
from mnistpipe.files import sha256_file, write_bytes_atomic
from mnistpipe.modeling import ood
from mnistpipe.modeling.checkpoints import Checkpoint, load_checkpoint, require_same_dataset
from mnistpipe.modeling.models import predict_logits, to_unit

log = logging.getLogger("export")


class ExportSections(Sections):
    export: ExportParams


class Deployable(nn.Module):
    """uint8 images in, (logits, calibrated probabilities, OOD score) out: what the ONNX graph
    computes. The score is ood.score's, -max(logits)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(to_unit(images))  # (N, 28, 28) uint8 -> (N, classes) float32
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        return logits, probabilities, -logits.amax(dim=1)  # (N,) OOD score


def export_graph(checkpoint: Checkpoint, opset: int) -> onnx.ModelProto:
    """The checkpoint's inference model (batch norm fused) as an ONNX graph, batch axis free."""
    model = checkpoint.build().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    program = torch.onnx.export(
        Deployable(model, checkpoint.temperature).eval(),
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=[LOGITS, PROBABILITIES, OOD_SCORE],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    return program.model_proto


def export_bytes(checkpoint: Checkpoint, checkpoint_sha256: str, opset: int) -> bytes:
    """The ONNX file of `checkpoint` (whose file has hash `checkpoint_sha256`), unchecked."""
    metadata = Metadata(
        dataset=checkpoint.dataset,
        classes=checkpoint.classes,
        subject=DATASETS[checkpoint.dataset].subject,
        temperature=checkpoint.temperature,
        ood_score=ood.SCORE_NAME,
        ood_threshold=checkpoint.ood_threshold,
        checkpoint_sha256=checkpoint_sha256,
        model=checkpoint.model_section(),
        epoch=checkpoint.epoch,
        val_accuracy=checkpoint.val_accuracy,
    )
    return finish(export_graph(checkpoint, opset), metadata)


def largest_difference(
    onnx_bytes: bytes, checkpoint: Checkpoint, images: np.ndarray, name: str
) -> tuple[float, int]:
    """(largest |logit or OOD score difference|, images whose class differs) of ONNX Runtime
    against PyTorch and ood.py on `images`; `name` names the exported file in errors."""
    deployed = load_onnx(name, data=onnx_bytes)
    ours, our_scores = deployed.run(images, (LOGITS, OOD_SCORE))
    theirs = predict_logits(checkpoint.build(), torch.from_numpy(images), 1000).numpy()
    differing = int(np.sum(ours.argmax(1) != theirs.argmax(1)))
    logit_difference = np.abs(ours - theirs).max(initial=0.0)
    score_difference = np.abs(our_scores - ood.score(theirs)).max(initial=0.0)
    return float(max(logit_difference, score_difference)), differing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.export", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to export")
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    for chatty in ("onnx_ir", "onnxscript"):  # each optimizer pass logs at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    params = load_sections(ExportSections, args.params).export
    checkpoint = load_checkpoint(args.model)
    require_same_dataset(checkpoint, processed.load_meta(args.data), args.model, args.data)
    onnx_bytes = export_bytes(checkpoint, sha256_file(args.model), params.opset)
    val = processed.load_split(args.data, "val")
    difference, differing = largest_difference(onnx_bytes, checkpoint, val.images, str(args.out))
    if difference >= params.tolerance or differing:
        raise PipelineError(
            f"{args.out}: ONNX Runtime disagrees with PyTorch on the validation split: largest"
            f" logit or score difference {difference:.3g} (export.tolerance {params.tolerance:g}),"
            f" {differing} images of another class; nothing written"
        )
    write_bytes_atomic(args.out, onnx_bytes)
    log.info(
        "wrote %s (%d bytes, opset %d): ONNX Runtime against PyTorch on %d validation images,"
        " largest logit or score difference %.2g, same classes",
        args.out,
        len(onnx_bytes),
        params.opset,
        len(val.images),
        difference,
    )


if __name__ == "__main__":
    run_stage(main, "export")
