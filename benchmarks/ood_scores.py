"""Which out-of-distribution score, measured: the max logit (the pipeline's), the energy and
the max softmax probability on one checkpoint, each with its threshold fitted as the train
stage fits it.

    python -m mnistpipe.modeling.numerics portable benchmarks.ood_scores [--model models/model.pt]

For each score: the share of the test digits flagged and the accuracy on the rest; per kind of
evaluate's synthetic non-digits, the share rejected (refused by the preprocessing, or flagged)
and the AUROC against the test digits; the foreign digits answered and right; and, where
Debian's `dataset-fashion-mnist` is installed, Fashion-MNIST's test set, the classic
out-of-distribution set of an MNIST model (never in the pipeline's metrics: it would make
them depend on the machine). Writes a Markdown table (default benchmarks/results-ood.md).
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp

from mnistpipe.data import idx, processed
from mnistpipe.data.datasets import DATASETS, TEST_IMAGES
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import softmax
from mnistpipe.modeling.checkpoints import load_checkpoint
from mnistpipe.modeling.models import predict_logits
from mnistpipe.modeling.page_scores import foreign_pages, prepare_pages
from mnistpipe.modeling.synthetic import OOD_KINDS, ood_pages

Score = Callable[[np.ndarray, float], np.ndarray]  # (logits, temperature) -> higher: less known
SCORES: dict[str, Score] = {
    "max logit": lambda logits, t: ood.score(logits),
    "energy": lambda logits, t: -logsumexp(logits, axis=1),
    "max softmax": lambda logits, t: -softmax(logits, t).max(axis=1),
}


def fashion_images() -> np.ndarray | None:
    """Fashion-MNIST's 10,000 test images from Debian's package, or None if not installed."""
    path = Path(DATASETS["fashion-mnist"].debian_dir or "") / f"{TEST_IMAGES}.gz"
    if not path.is_file():
        return None
    return idx.decode(gzip.decompress(path.read_bytes()), str(path)).copy()  # writable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--seed", type=int, default=42, help="for the synthetic pages")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-ood.md"))
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.build()

    def logits_of(images: np.ndarray) -> np.ndarray:
        return predict_logits(model, torch.from_numpy(images), 1000).numpy().astype(np.float64)

    val, test = (processed.load_split(args.data, split) for split in ("val", "test"))
    val_logits, test_logits = logits_of(val.images), logits_of(test.images)
    sets = {}
    for kind in OOD_KINDS:
        images, refused = prepare_pages(ood_pages(kind, args.seed))
        sets[kind] = (images, int(refused.sum()))
    pages = foreign_pages()
    foreign, foreign_refused = prepare_pages(pages)
    labels = np.array([int(digit) for _, digit in pages])[~foreign_refused]
    fashion = fashion_images()
    rows = []
    for name, score in SCORES.items():
        t = checkpoint.temperature
        threshold = ood.fit_threshold(score(val_logits, t), checkpoint.recipe.ood_rejection)
        test_scores = score(test_logits, t)
        flagged = test_scores > threshold
        correct = test_logits.argmax(1) == test.labels
        row = {
            "score": name,
            "test flagged": flagged.mean(),
            "accuracy of the rest": correct[~flagged].mean(),
        }
        for kind, (images, refused) in sets.items():
            scores = score(logits_of(images), t) if len(images) else np.empty(0)
            row[f"{kind} rejected"] = (refused + (scores > threshold).sum()) / (
                refused + len(scores)
            )
            every = np.concatenate([scores, np.full(refused, np.inf)])
            row[f"{kind} AUROC"] = ood.auroc(test_scores, every)
        foreign_logits = logits_of(foreign)
        answered = score(foreign_logits, t) <= threshold
        row["foreign answered and right"] = np.mean(
            answered & (foreign_logits.argmax(1) == labels)
        )
        if fashion is not None:
            fashion_scores = score(logits_of(fashion), t)
            row["Fashion-MNIST rejected"] = np.mean(fashion_scores > threshold)
            row["Fashion-MNIST AUROC"] = ood.auroc(test_scores, fashion_scores)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("score").T
    text = (
        f"# Out-of-distribution scores on `{args.model}`\n\n"
        f"Threshold of each score fitted to flag {checkpoint.recipe.ood_rejection:.0%} of the"
        f" validation split; synthetic pages from seed {args.seed}"
        + ("" if fashion is not None else "; Fashion-MNIST not installed here")
        + ".\n\n"
        + table.to_markdown(floatfmt=".4f")
        + "\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
