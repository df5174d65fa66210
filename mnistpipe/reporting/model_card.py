"""The model card (Mitchell et al., 2019) that `report` writes beside the report.

Sections as model cards usually have them: details, intended and out-of-scope uses, training
data, metrics per class, calibration, foreign inputs, inputs that are not of the classes,
limitations, how to reproduce. The prose is templates/model_card.md.j2; every number comes from
the run's tracked files or the pipeline's constants, so the card is as reproducible as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from mnistpipe.data.datasets import DATASETS, DIGITS
from mnistpipe.deploy.imaging import FOREIGN_DIGITS
from mnistpipe.modeling.calibration import ECE_BINS
from mnistpipe.modeling.checkpoints import Checkpoint
from mnistpipe.modeling.ood import SCORE_NAME, metric
from mnistpipe.modeling.synthetic import OOD_KINDS
from mnistpipe.reporting.markdown import render


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    what: str


def model_card(
    checkpoint: Checkpoint,
    metrics: dict,
    per_class: pd.DataFrame,
    class_counts: pd.DataFrame,
    confused: pd.DataFrame,
    files: list[ModelFile],
) -> str:
    """The card's markdown. `confused` lists the most frequent (actual, predicted) errors."""
    spec = DATASETS.get(checkpoint.dataset)
    state = checkpoint.state_dict.values()
    rejected = [
        (kind, metrics[metric(kind, "rejected")])
        for kind in OOD_KINDS
        if metric(kind, "rejected") in metrics
    ]
    values = {
        "dataset": checkpoint.dataset,
        "digits": checkpoint.classes == DIGITS,
        "dataset_description": spec.description if spec else checkpoint.dataset,
        "model_name": checkpoint.model_name,
        "config_json": json.dumps(checkpoint.model_config.to_mapping()),
        "stored_values": sum(t.numel() for t in state if t.is_floating_point()),
        "classes": checkpoint.classes,
        "recipe": checkpoint.recipe,
        "device": checkpoint.device,
        "numerics": checkpoint.numerics,
        "torch_version": checkpoint.torch_version,
        "epoch": checkpoint.epoch,
        "val_accuracy": checkpoint.val_accuracy,
        "ood_threshold": checkpoint.ood_threshold,
        "files": files,
        "m": metrics,
        "class_counts_table": class_counts.reset_index().to_markdown(index=False),
        "per_class_table": per_class.to_markdown(index=False, floatfmt=".4f"),
        "ece_bins": ECE_BINS,
        "foreign_digits": FOREIGN_DIGITS,
        "score_name": SCORE_NAME,
        "rejected": rejected,
        "confused": list(confused.itertuples()),
    }
    return render("model_card.md.j2", values)
