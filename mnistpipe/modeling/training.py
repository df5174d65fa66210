"""The training loop: whole tensors in memory, shuffled index batches, per-batch augmentation.

Everything random draws from one generator seeded from `seed`, and deterministic algorithms
are on (device.make_deterministic), so the same params and data on the same machine give the
same weights, bit for bit. `fit` is the one loop: it returns a `TrainResult`, and the caller
writes what it wants of it (the train stage the checkpoint and history, the benchmark the
timings).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistpipe.modeling.metrics import cross_entropy
from mnistpipe.modeling.models import predict_logits, to_unit
from mnistpipe.modeling.recipe import TrainParams, make_optimizer, make_schedule

log = logging.getLogger("train")


@dataclass(frozen=True)
class Data:
    """One split on the training device: (N, 28, 28) uint8 images and (N,) int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # at the end of the epoch
    seconds: float  # wall time of the epoch, evaluation included


def augment(images: torch.Tensor, params: TrainParams, draws: torch.Tensor) -> torch.Tensor:
    """Random rotation, zoom and shift of each (N, 1, 28, 28) image in [0, 1], as one affine
    resampling with a black (0) background; `draws` (N, 4) uniform in [0, 1) on the images'
    device picks angle, zoom and shift."""
    if not (params.augment_rotate or params.augment_shift or params.augment_scale):
        return images
    signed = draws * 2 - 1  # (N, 4) in [-1, 1)
    angle = signed[:, 0] * math.radians(params.augment_rotate)
    zoom = 1 + signed[:, 1] * params.augment_scale
    shift = signed[:, 2:] * (2 * params.augment_shift / images.shape[-1])  # grid units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    return shifted.contiguous(memory_format=torch.channels_last)


# Sides (px) that `blur` draws an image down to, evenly. 10 px leaves MNIST's 20 px digit box
# at about half resolution, as scikit-learn's 8x8 digits are once the photo path scales them
# to that box; 20 px is a faint softening.
BLUR_SIDES = range(10, 21)


def blur(images: torch.Tensor, share: float, draws: torch.Tensor) -> torch.Tensor:
    """A share `share` of the (N, 1, 28, 28) images in [0, 1], drawn at a lower resolution:
    averaged down to a side from BLUR_SIDES, bilinear back up to 28, and scaled so that their
    brightest pixel stays as bright (the photo path stretches ink to the full range, so a
    blurred digit never arrives dim). `draws` (N, 2) uniform in [0, 1) picks which and how.
    The rest are returned as they are."""
    if not share:
        return images
    chosen = draws[:, 0] < share
    sides = BLUR_SIDES.start + (draws[:, 1] * len(BLUR_SIDES)).long()
    blurred = images.clone()
    for side in sides[chosen].unique().tolist():
        pick = chosen & (sides == side)
        sharp = images[pick]
        small = F.interpolate(sharp, size=side, mode="area")
        soft = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
        peak, soft_peak = sharp.amax((1, 2, 3), keepdim=True), soft.amax((1, 2, 3), keepdim=True)
        blurred[pick] = soft * (peak / soft_peak.clamp_min(1e-6))
    return blurred


def outlier_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, C) logits against equal probabilities for every class: outlier
    exposure's "none of these"."""
    return F.cross_entropy(logits, torch.full_like(logits, 1.0 / logits.shape[1]))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    data: Data,
    params: TrainParams,
    generator: torch.Generator,
    progress: tqdm | None = None,
    outliers: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over shuffled batches; returns the digits' mean loss (without the outliers',
    to compare with the validation loss) and accuracy, on the augmented batches.

    With `outliers` ((M, 28, 28) uint8 non-digits) each batch also holds
    `params.outliers_per_batch` of them, drawn at random and augmented like the digits. The
    epoch's random draws are made on the CPU generator and copied to the device once, so a GPU
    gets no host-to-device copy per batch. On CUDA the forward pass runs in bfloat16 autocast
    (weights, gradients and the optimizer stay float32)."""
    model.train()
    device = data.labels.device
    order = torch.randperm(len(data.labels), generator=generator).to(device)
    draws = torch.rand(len(order), 4, generator=generator).to(device)  # augmentation
    exposed = outliers is not None and params.outliers_per_batch > 0
    if exposed:
        steps, per_batch = math.ceil(len(order) / params.batch_size), params.outliers_per_batch
        picks = torch.randint(len(outliers), (steps, per_batch), generator=generator).to(device)
        outlier_draws = torch.rand(steps, per_batch, 4, generator=generator).to(device)
    if params.augment_blur:  # drawn last: a recipe without blur keeps its random stream
        # Two more columns for `blur`: (N, 6) and (steps, per_batch, 6)
        draws = torch.cat([draws, torch.rand(len(order), 2, generator=generator).to(device)], 1)
        if exposed:
            blurs = torch.rand(steps, per_batch, 2, generator=generator).to(device)
            outlier_draws = torch.cat([outlier_draws, blurs], 2)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for step, start in enumerate(range(0, len(order), params.batch_size)):
        batch = order[start : start + params.batch_size]
        images, batch_draws = data.images[batch], draws[start : start + len(batch)]
        if exposed:  # one forward pass: the digits, then the outliers
            images = torch.cat([images, outliers[picks[step]]])
            batch_draws = torch.cat([batch_draws, outlier_draws[step]])
        inputs = augment(to_unit(images), params, batch_draws[:, :4])
        if params.augment_blur:
            inputs = blur(inputs, params.augment_blur, batch_draws[:, 4:])
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            all_logits = model(inputs).float()
        logits = all_logits[: len(batch)]
        digit_loss = F.cross_entropy(
            logits, data.labels[batch], label_smoothing=params.label_smoothing
        )
        loss = digit_loss
        if exposed:
            loss = loss + params.outlier_weight * outlier_loss(all_logits[len(batch) :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += digit_loss.detach() * len(batch)
        correct += (logits.argmax(1) == data.labels[batch]).sum()
        if progress is not None:
            progress.update(len(batch))
    return total_loss.item() / len(order), correct.item() / len(order)


def loss_and_accuracy(model: nn.Module, data: Data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on a split."""
    logits = predict_logits(model, data.images, batch_size)
    labels = data.labels.cpu()
    return cross_entropy(logits, labels), (logits.argmax(1) == labels).sum().item() / len(labels)


@dataclass(frozen=True)
class TrainResult:
    """What `fit` gives back: the weights of the best validation epoch, and every epoch's
    stats (whose `seconds` are the only timings: never written to a DVC-tracked file)."""

    state_dict: dict[str, torch.Tensor]  # on the CPU
    best: EpochStats  # the epoch of `state_dict`, by validation accuracy
    history: tuple[EpochStats, ...]


def fit(
    model: nn.Module,
    train: Data,
    val: Data,
    params: TrainParams,
    seed: int,
    outliers: torch.Tensor | None = None,
    show_progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train for `params.epochs` (with `outliers` as in `train_epoch`), logging each epoch and
    handing its stats to `on_epoch` as soon as it ends (the stage's live metrics)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, params)
    steps = params.epochs * math.ceil(len(train.labels) / params.batch_size)
    schedule = make_schedule(optimizer, params, steps)
    history: list[EpochStats] = []
    best, best_state = None, {}
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        description = f"epoch {epoch}/{params.epochs}"
        with tqdm(
            total=len(train.labels),
            desc=description,
            unit="img",
            disable=not show_progress,
            leave=False,
        ) as progress:
            train_loss, train_accuracy = train_epoch(
                model, optimizer, schedule, train, params, generator, progress, outliers
            )
        val_loss, val_accuracy = loss_and_accuracy(model, val)
        stats = EpochStats(
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
        )
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s",
            *(stats.epoch, train_loss, train_accuracy, val_loss, val_accuracy, stats.seconds),
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if best is None or val_accuracy > best.val_accuracy:
            weights = model.state_dict().items()
            best, best_state = stats, {k: v.detach().cpu().clone() for k, v in weights}
    assert best is not None  # params.epochs >= 1
    return TrainResult(best_state, best, tuple(history))
