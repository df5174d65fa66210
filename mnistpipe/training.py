"""The training loop: whole tensors in memory, shuffled index batches, per-batch augmentation.

Everything random draws from one generator seeded from `seed`, and deterministic algorithms
are on, so the same params and data on the same machine give the same weights, bit for bit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnistpipe.errors import PipelineError
from mnistpipe.models import normalize, predict_logits
from mnistpipe.params import TrainParams


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


def select_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} was asked for, but CUDA is not available here")
    return torch.device(name)


def make_deterministic(seed: int, threads: int) -> None:
    """Seed torch and turn on deterministic algorithms; `threads` 0 means every core."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # cuBLAS needs this for deterministic matrix products; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    # No weight decay on batch-norm weights and biases: it only slows their learning.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=True)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr)
    if params.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=params.lr)
    return torch.optim.AdamW(groups, lr=params.lr)


def make_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if params.schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=params.lr, total_steps=total_steps, pct_start=0.25
        )
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if params.schedule == "step":  # stepped per batch like the others, so once per epoch
        steps_per_epoch = total_steps // params.epochs
        return torch.optim.lr_scheduler.StepLR(optimizer, steps_per_epoch, params.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def augment(images: torch.Tensor, params: TrainParams, draws: torch.Tensor) -> torch.Tensor:
    """Random rotation, zoom and shift of each (N, 1, 28, 28) image, as one affine resampling;
    `draws` (N, 4) uniform in [0, 1) on the images' device picks angle, zoom and shift."""
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
    # The background of normalized images is their minimum value, so pad with that.
    background = images.amin()
    shifted = F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros")
    return (shifted + background).contiguous(memory_format=torch.channels_last)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    data: Data,
    stats: tuple[float, float],
    params: TrainParams,
    generator: torch.Generator,
    progress: tqdm | None = None,
) -> tuple[float, float]:
    """One pass over shuffled batches; returns mean loss and accuracy on the augmented batches.

    The epoch's random draws are made on the CPU generator and copied to the device once, so
    a GPU gets no host-to-device copy per batch. On CUDA the forward pass runs in bfloat16
    autocast (weights, gradients and the optimizer stay float32)."""
    model.train()
    device = data.labels.device
    order = torch.randperm(len(data.labels), generator=generator).to(device)
    draws = torch.rand(len(order), 4, generator=generator).to(device)  # augmentation
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(order), params.batch_size):
        batch = order[start : start + params.batch_size]
        inputs = normalize(data.images[batch], *stats)
        inputs = augment(inputs, params, draws[start : start + params.batch_size])
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(inputs)
        loss = F.cross_entropy(
            logits.float(), data.labels[batch], label_smoothing=params.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += loss.detach() * len(batch)
        correct += (logits.argmax(1) == data.labels[batch]).sum()
        if progress is not None:
            progress.update(len(batch))
    return total_loss.item() / len(order), correct.item() / len(order)


def evaluate(
    model: nn.Module, data: Data, stats: tuple[float, float], batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on a split."""
    logits = predict_logits(model, data.images, *stats, batch_size)
    labels = data.labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).sum().item() / len(labels)


def fit(
    model: nn.Module,
    train: Data,
    val: Data,
    stats: tuple[float, float],
    params: TrainParams,
    seed: int,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
    show_progress: bool = True,
) -> tuple[dict[str, torch.Tensor], EpochStats]:
    """Train for `params.epochs`; return the weights and stats of the best validation epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, params)
    steps = params.epochs * math.ceil(len(train.labels) / params.batch_size)
    schedule = make_schedule(optimizer, params, steps)
    best: tuple[dict[str, torch.Tensor], EpochStats] | None = None
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        with tqdm(
            total=len(train.labels), desc=f"epoch {epoch}/{params.epochs}", unit="img",
            disable=not show_progress, leave=False,
        ) as progress:  # fmt: skip
            train_loss, train_accuracy = train_epoch(
                model, optimizer, schedule, train, stats, params, generator, progress
            )
        val_loss, val_accuracy = evaluate(model, val, stats)
        epoch_stats = EpochStats(
            epoch, train_loss, train_accuracy, val_loss, val_accuracy,
            lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started,
        )  # fmt: skip
        on_epoch(epoch_stats)
        if best is None or val_accuracy > best[1].val_accuracy:
            weights = model.state_dict().items()
            state = {key: value.detach().cpu().clone() for key, value in weights}
            best = (state, epoch_stats)
    assert best is not None
    return best
