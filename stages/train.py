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
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from dvclive import Live

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, Seed, load_sections
from mnistpipe.data import processed
from mnistpipe.files import write_text_atomic
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import fit_temperature
from mnistpipe.modeling.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.modeling.device import (
    RuntimeParams,
    apply_numerics,
    check_numerics_layers,
    make_deterministic,
    select_device,
)
from mnistpipe.modeling.models import ModelParams, build_model, predict_logits
from mnistpipe.modeling.recipe import TrainParams
from mnistpipe.modeling.synthetic import training_outliers
from mnistpipe.modeling.training import Data, EpochStats, TrainResult, fit

log = logging.getLogger("train")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


class TrainSections(Sections):
    seed: Seed
    model: ModelParams
    train: TrainParams
    runtime: RuntimeParams


def load_data(folder: Path, split: str, device: torch.device) -> Data:
    arrays = processed.load_split(folder, split)
    return Data(
        images=torch.from_numpy(arrays.images).to(device),
        labels=torch.from_numpy(arrays.labels).to(device=device, dtype=torch.int64),
    )


def history_csv(rows: tuple[EpochStats, ...]) -> str:
    table = pd.DataFrame([dataclasses.asdict(row) for row in rows], columns=HISTORY_COLUMNS)
    return table.to_csv(index=False, float_format="%.6g")


def live_logger(live: Live) -> Callable[[EpochStats], None]:
    """Log each epoch's history columns to DVCLive as it ends, at step = the epoch, as the
    history rounds them (6 significant digits): `dvc exp show` and `dvc plots` see the run
    while it trains. No timestamps, so the files are the same bytes run to run."""

    def log_epoch(stats: EpochStats) -> None:
        live.step = stats.epoch
        for name in HISTORY_COLUMNS[1:]:
            live.log_metric(name, float(f"{getattr(stats, name):.6g}"))
        live.next_step()

    return log_epoch


def timings_csv(rows: tuple[EpochStats, ...]) -> str:
    seconds = pd.DataFrame(
        {"epoch": [r.epoch for r in rows], "seconds": [r.seconds for r in rows]}
    )
    return seconds.to_csv(index=False, float_format="%.3f")


def train(
    data_dir: Path,
    model_params: ModelParams,
    params: TrainParams,
    runtime: RuntimeParams,
    seed: int,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> tuple[Checkpoint, TrainResult]:
    """Train on `data_dir`: the calibrated checkpoint of the best epoch, and the loop's result."""
    make_deterministic(seed, runtime.threads)
    apply_numerics(runtime.numerics)  # after the thread count, which resets MKL's
    device = select_device(runtime.device)
    meta = processed.load_meta(data_dir)
    train_data, val_data = load_data(data_dir, "train", device), load_data(data_dir, "val", device)
    model = build_model(model_params.name, model_params.config, meta.mean, meta.std)
    model = model.to(device=device, memory_format=torch.channels_last)
    if device.type == "cpu":
        check_numerics_layers(runtime.numerics, model)
    log.info(
        "training %s (%d parameters) on %s for %d epochs, %d threads, %s numerics",
        model_params.name,
        sum(p.numel() for p in model.parameters()),
        device,
        params.epochs,
        torch.get_num_threads(),
        runtime.numerics,
    )
    outliers = None
    if params.outliers_per_batch:
        outliers = torch.from_numpy(training_outliers(params.outlier_images, seed)).to(device)
        log.info("outlier exposure: %d synthetic non-digits drawn", len(outliers))
    progress = sys.stderr.isatty()
    result = fit(model, train_data, val_data, params, seed, outliers, progress, on_epoch)
    checkpoint = Checkpoint(
        model_name=model_params.name,
        model_config=model_params.config,
        recipe=params,
        state_dict=result.state_dict,
        dataset=meta.dataset,
        classes=meta.classes,
        epoch=result.best.epoch,
        val_accuracy=result.best.val_accuracy,
        device=str(device),
        numerics=runtime.numerics,
    )
    return calibrated(checkpoint, val_data, params.ood_rejection), result


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
    parser.add_argument(
        "--live",
        type=Path,
        help="folder for DVCLive's per-epoch metrics and plots, written as each epoch ends"
        " (dvc.yaml's dvclive/); none without it",
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_sections(TrainSections, args.params)

    sections = (params.model, params.train, params.runtime, params.seed)
    if args.live is None:
        checkpoint, result = train(args.data, *sections)
    else:  # no dvc.yaml, experiment or report of DVCLive's own: dvc.yaml declares its files
        with Live(str(args.live), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            checkpoint, result = train(args.data, *sections, on_epoch=live_logger(live))
    save_checkpoint(args.model, checkpoint)
    write_text_atomic(args.history, history_csv(result.history))
    if args.timings is not None:
        write_text_atomic(args.timings, timings_csv(result.history))
    log.info(
        "saved %s from epoch %d (val accuracy %.4f)",
        args.model,
        checkpoint.epoch,
        checkpoint.val_accuracy,
    )


if __name__ == "__main__":
    run_stage(main, "train")
