"""The model card (Mitchell et al., 2019) that `report` writes beside the report.

Sections as model cards usually have them: details, intended and out-of-scope uses, training
data, metrics per class, calibration, foreign inputs, inputs that are not of the classes,
limitations, how to reproduce. Every number comes from the run's tracked files, so the card is
as reproducible as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from mnistpipe.checkpoints import Checkpoint
from mnistpipe.datasets import DATASETS
from mnistpipe.ood import SCORE_NAME, metric
from mnistpipe.synthetic import OOD_KINDS


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
    digits = checkpoint.dataset == "mnist"
    recipe = checkpoint.recipe
    weights = sum(t.numel() for n, t in checkpoint.state_dict.items() if t.is_floating_point())
    lines = [
        f"# Model card: {checkpoint.dataset} classifier ({checkpoint.model_name})",
        "",
        "## Model details",
        "",
        f"- **Model:** `{checkpoint.model_name}` with config"
        f" `{json.dumps(checkpoint.model_config.to_mapping())}`, {weights:,} stored values"
        " (weights, biases, batch-norm statistics and the input normalization).",
        f"- **Classes:** {', '.join(checkpoint.classes)}.",
        f"- **Trained** for {recipe.epochs} epochs with {recipe.optimizer} (peak learning rate"
        f" {recipe.lr}, {recipe.schedule} schedule, label smoothing {recipe.label_smoothing},"
        f" augmentation: rotation ±{recipe.augment_rotate}°, shift ±{recipe.augment_shift} px,"
        f" scale ±{recipe.augment_scale:.0%}), {recipe.numerics} numerics, on"
        f" {checkpoint.device} with torch {checkpoint.torch_version}. The weights are those of"
        f" epoch {checkpoint.epoch}, the best by validation accuracy"
        f" ({checkpoint.val_accuracy:.4f}).",
        "- **Input:** (batch, 28, 28) uint8 images in the dataset's format (light on black,"
        " 0-255). **Outputs:** logits and calibrated probabilities, (batch, classes) float32,"
        " and the out-of-distribution score, (batch,) float32.",
        "- **Files:**",
        *(f"  - `{f.path}`: {f.what}, SHA-256 `{f.sha256}`" for f in files),
        "",
        "## Intended use",
        "",
        *(
            [
                "- Classifying one handwritten digit, 0-9: an MNIST-format image, or a photo or"
                " scan of one digit on plain paper given to `python -m apps.predict` or the web"
                " server, which prepare it as MNIST's digits were made (inverted to light on"
                " dark, cropped to the ink, fitted into 20x20, centred by mass in 28x28).",
                "- Teaching and research: a reproducible baseline to compare changes against.",
            ]
            if digits
            else [
                f"- Classifying 28x28 images like those of {checkpoint.dataset} into its"
                f" {len(checkpoint.classes)} classes; teaching and research.",
            ]
        ),
        "",
        "## Out-of-scope uses",
        "",
        "- People's handwriting or photos *without* the MNIST-style preprocessing: a plain"
        " resize to 28x28 is not the format the model learnt."
        if digits
        else "- Photos of real products: the model saw only the dataset's centred 28x28"
        " catalogue images.",
        "- Other scripts (Arabic-Indic, Devanagari or Chinese numerals), letters, several"
        " digits at once, or anything that is not one of the classes: the out-of-distribution"
        " score flags many such inputs as unknown, not all (below), and an input it does not"
        " flag gets one of the classes, with a probability that means nothing there.",
        "- Decisions about people (forms, cheques, exams) without a person checking.",
        "",
        "## Training data",
        "",
        f"{spec.description if spec else checkpoint.dataset}.",
        "",
        "Images per class in each split (validation is held out of the training images,"
        " stratified by class; test is the dataset's own test set, never used for choices):",
        "",
        class_counts.reset_index().to_markdown(index=False),
        "",
        "## Metrics (test set)",
        "",
        f"Accuracy {metrics['accuracy']:.4f} ({metrics['misclassified']} errors in"
        f" {metrics['test_images']:,} images), macro F1 {metrics['f1_macro']:.4f},"
        f" cross-entropy {metrics['loss']:.4f}.",
        "",
        per_class.to_markdown(index=False, floatfmt=".4f"),
        "",
        "## Calibration",
        "",
        f"Probabilities are softmax(logits / T) with T = {metrics['temperature']}, fitted on"
        " the validation split by minimising the negative log-likelihood (temperature"
        " scaling), which changes no prediction. Expected calibration error on the test set"
        f" (15 bins): {metrics['ece_uncalibrated']:.2%} before, {metrics['ece_calibrated']:.2%}"
        f" after; cross-entropy {metrics['loss']:.4f} before,"
        f" {metrics['loss_calibrated']:.4f} after. See the reliability diagram in"
        " [report.md](report.md#calibration).",
        "",
        "## Foreign inputs",
        "",
        (
            f"Accuracy on 500 foreign digits (scikit-learn's 8x8 handwritten digits, another"
            f" set of writers, drawn as dark ink on light pages and put through the predict"
            f" command's preprocessing): {metrics['foreign_digits_accuracy']:.1%}, against"
            f" {metrics['accuracy']:.1%} on MNIST's test set, with a mean confidence of"
            f" {metrics['foreign_digits_confidence']:.1%} there."
            if "foreign_digits_accuracy" in metrics
            else "Not measured: the foreign-digit set applies to digit models only."
        ),
        "",
        "## Inputs that are not " + ("digits" if digits else "of the classes"),
        "",
        f"The predict command and the server refuse blank, faint and speck-sized images before"
        f" the model, and answer `unknown` when the {SCORE_NAME} score (ONNX output `ood_score`)"
        f" is above {checkpoint.ood_threshold}, a threshold fitted to flag"
        f" {recipe.ood_rejection:.0%} of the validation split. The model was trained with"
        f" outlier exposure: {recipe.outliers_per_batch} synthetic non-digits (noise, dots,"
        " scribbles, printed symbols and Greek letters) in each batch, pushed towards equal"
        " probabilities. On the test set the threshold flags"
        f" {metrics['ood_test_flagged']:.2%} of the images; accuracy on the rest is"
        f" {metrics['ood_test_accuracy_accepted']:.4f}. Rejected by preprocessing or score: "
        + ", ".join(
            f"{kind} {metrics[metric(kind, 'rejected')]:.1%}"
            for kind in OOD_KINDS
            if metric(kind, "rejected") in metrics
        )
        + " (Latin letters were never shown in training). See"
        " [report.md](report.md#out-of-distribution).",
        "",
        "## Limitations",
        "",
        "- Most frequent errors (actual → predicted, count): "
        + ", ".join(f"{r.actual} → {r.predicted} ({r.count})" for r in confused.itertuples())
        + ".",
        "- Calibration holds on average over images like the test set's; it says nothing"
        " for one image, nor for inputs unlike MNIST's (compare confidence and accuracy on"
        " the foreign digits above).",
        "- The whole test set comes from the same source as the training data: accuracy on"
        " other sources is lower (above).",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "git clone <this repository> && cd <it>",
        "make repro   # download → preprocess → train → export, evaluate → report",
        "```",
        "",
        "The same commit gives the same model bytes and this same card on any x86-64 CPU with"
        ' AVX2 in portable numerics (docs/reproducibility.md: "What is reproducible, where");'
        " `dvc.lock` records every file's hash.",
    ]
    return "\n".join(lines) + "\n"
