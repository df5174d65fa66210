"""Stage `train`: fit the model of `model` with the recipe of `train` on the processed data.

Writes the checkpoint of the epoch with the best validation accuracy (never chosen by test
accuracy), with the temperature that calibrates its probabilities and the threshold of its
out-of-distribution score, both fitted on the validation split, and a history CSV with one
row per epoch (no timings: they differ run to run, and the history is a DVC-tracked output).
With outlier exposure on, each batch also holds synthetic non-digits (synthetic.py). Reads
params `seed`, `model` and `train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from mnistpipe import numerics, ood, processed
from mnistpipe.calibration import fit_temperature
from mnistpipe.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.cli import run_stage
from mnistpipe.files import write_text_atomic
from mnistpipe.models import ModelParams, build_model, predict_logits
from mnistpipe.params import PARAMS_FILE, load_section, load_seed
from mnistpipe.synthetic import training_outliers
from mnistpipe.training import (
    Data,
    EpochStats,
    TrainParams,
    fit,
    make_deterministic,
    select_device,
)

log = logging.getLogger("train")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
# Synthetic non-digits drawn once for outlier exposure: each is seen about 7 times in the
# default recipe's 6 epochs (16 a batch), always differently augmented.
OUTLIER_IMAGES = 6000


def load_data(folder: Path, split: str, device: torch.device) -> Data:
    arrays = processed.load_split(folder, split)
    return Data(
        images=torch.from_numpy(arrays.images).to(device),
        labels=torch.from_numpy(arrays.labels).to(device=device, dtype=torch.int64),
    )


def history_csv(rows: list[EpochStats]) -> str:
    table = pd.DataFrame([dataclasses.asdict(row) for row in rows], columns=HISTORY_COLUMNS)
    return table.to_csv(index=False, float_format="%.6g")


def train(
    data_dir: Path,
    model_params: ModelParams,
    params: TrainParams,
    seed: int,
    history: Path,
    timings: Path | None = None,
) -> Checkpoint:
    """Train on `data_dir`, rewriting the history CSV (and the timings) after every epoch."""
    make_deterministic(seed, params.threads)
    numerics.apply(params.numerics)  # after the thread count, which resets MKL's
    device = select_device(params.device)
    meta = processed.load_meta(data_dir)
    train_data, val_data = load_data(data_dir, "train", device), load_data(data_dir, "val", device)
    model = build_model(model_params.name, model_params.config, meta.mean, meta.std)
    model = model.to(device=device, memory_format=torch.channels_last)
    if device.type == "cpu":
        numerics.check_model(params.numerics, model)
    log.info(
        "training %s (%d parameters) on %s for %d epochs, %d threads, %s numerics",
        model_params.name,
        sum(p.numel() for p in model.parameters()),
        device,
        params.epochs,
        torch.get_num_threads(),
        params.numerics,
    )
    rows: list[EpochStats] = []

    def record(stats: EpochStats) -> None:
        rows.append(stats)
        write_text_atomic(history, history_csv(rows))
        if timings is not None:
            seconds = pd.DataFrame(
                {"epoch": [r.epoch for r in rows], "seconds": [r.seconds for r in rows]}
            )
            write_text_atomic(timings, seconds.to_csv(index=False, float_format="%.3f"))
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s",
            stats.epoch,
            stats.train_loss,
            stats.train_accuracy,
            stats.val_loss,
            stats.val_accuracy,
            stats.seconds,
        )

    outliers = None
    if params.outliers_per_batch:
        outliers = torch.from_numpy(training_outliers(OUTLIER_IMAGES, seed)).to(device)
        log.info("outlier exposure: %d synthetic non-digits drawn", len(outliers))
    show_progress = sys.stderr.isatty()
    state, best = fit(model, train_data, val_data, params, seed, record, show_progress, outliers)
    checkpoint = Checkpoint(
        model_name=model_params.name,
        model_config=model_params.config,
        recipe=params,
        state_dict=state,
        dataset=meta.dataset,
        classes=meta.classes,
        epoch=best.epoch,
        val_accuracy=best.val_accuracy,
        device=str(device),
    )
    return calibrated(checkpoint, val_data, params.ood_rejection)


def calibrated(checkpoint: Checkpoint, val_data: Data, ood_rejection: float) -> Checkpoint:
    """The checkpoint with the temperature that calibrates its inference model on `val_data`,
    and the OOD threshold that flags a share `ood_rejection` of it."""
    model = checkpoint.build().to(val_data.images.device)
    logits = predict_logits(model, val_data.images, batch_size=1000).numpy()
    temperature = fit_temperature(logits, val_data.labels.cpu().numpy())
    threshold = ood.fit_threshold(ood.score(logits), ood_rejection)
    log.info(
        "calibration temperature %.4f, %s threshold %.4f (flags %.1f%% of the validation split)",
        temperature,
        ood.SCORE_NAME,
        threshold,
        100 * ood_rejection,
    )
    return dataclasses.replace(checkpoint, temperature=temperature, ood_threshold=threshold)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV to write")
    parser.add_argument(
        "--timings",
        type=Path,
        help="also write each epoch's wall seconds here (for the benchmark: never a DVC"
        " output, since timings differ run to run)",
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    seed = load_seed(args.params)
    model_params = load_section(ModelParams, args.params)
    params = load_section(TrainParams, args.params)

    checkpoint = train(args.data, model_params, params, seed, args.history, args.timings)
    save_checkpoint(args.model, checkpoint)
    log.info(
        "saved %s from epoch %d (val accuracy %.4f)",
        args.model,
        checkpoint.epoch,
        checkpoint.val_accuracy,
    )


if __name__ == "__main__":
    run_stage(main, "train")
