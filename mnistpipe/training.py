"""The training loop: whole tensors in memory, shuffled index batches, per-batch augmentation.

Everything random draws from one generator seeded from `seed`, and deterministic algorithms
are on, so the same params and data on the same machine give the same weights, bit for bit.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm import tqdm

from mnistpipe.errors import PipelineError
from mnistpipe.models import predict_logits, to_unit
from mnistpipe.numerics import MODES
from mnistpipe.params import Device, Fraction, Section, rule

Groups = list[dict]  # optimizer parameter groups
Optimizer = torch.optim.Optimizer
Schedule = torch.optim.lr_scheduler.LRScheduler

# Optimizer name -> factory(parameter groups, lr, momentum). `train.optimizer` names one.
OPTIMIZERS: dict[str, Callable[[Groups, float, float], Optimizer]] = {
    "sgd": lambda groups, lr, momentum: torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=True
    ),
    "adam": lambda groups, lr, momentum: torch.optim.Adam(groups, lr=lr),
    "adamw": lambda groups, lr, momentum: torch.optim.AdamW(groups, lr=lr),
    "adadelta": lambda groups, lr, momentum: torch.optim.Adadelta(groups, lr=lr),
}


def _one_cycle(optimizer: Optimizer, params: TrainParams, total_steps: int) -> Schedule:
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=total_steps, pct_start=0.25
    )


def _step(optimizer: Optimizer, params: TrainParams, total_steps: int) -> Schedule:
    # Stepped per batch like the others, so the rate is multiplied once per epoch.
    steps_per_epoch = total_steps // params.epochs
    return torch.optim.lr_scheduler.StepLR(optimizer, steps_per_epoch, params.step_gamma)


# Schedule name -> factory(optimizer, params, total batches). `train.schedule` names one.
SCHEDULES: dict[str, Callable[[Optimizer, TrainParams, int], Schedule]] = {
    "none": lambda optimizer, params, total_steps: torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0
    ),
    "one-cycle": _one_cycle,
    "cosine": lambda optimizer, params, total_steps: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps
    ),
    "step": _step,
}


class TrainParams(Section):
    """The `train` section: the recipe. Checkpoints carry it, resolved, beside the weights."""

    NAME: ClassVar[str] = "train"
    epochs: int = Field(ge=1, description="passes over the training split")
    batch_size: int = Field(ge=1, description="training images per step")
    optimizer: Literal[tuple(OPTIMIZERS)] = Field(
        description="`sgd` (Nesterov momentum), `adam`, `adamw` or `adadelta`"
    )
    lr: float = Field(gt=0, description="peak learning rate of the schedule")
    momentum: Fraction = Field(description="sgd only")
    weight_decay: float = Field(
        ge=0, description="on weights, not on biases or batch-norm parameters"
    )
    schedule: Literal[tuple(SCHEDULES)] = Field(
        description="`none`, `one-cycle`, `cosine` or `step`, stepped per batch"
    )
    step_gamma: Annotated[float, rule(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")] = Field(
        description="`step` schedule only: the learning rate's factor after each epoch"
    )
    label_smoothing: Fraction = Field(description="share of each target spread over the classes")
    augment_rotate: float = Field(
        ge=0, description="degrees of random rotation, each way; 0 = off"
    )
    augment_shift: float = Field(
        ge=0, description="pixels of random translation, each way; 0 = off"
    )
    augment_scale: float = Field(ge=0, lt=1, description="random zoom of 1 ± this; 0 = off")
    device: Device = Field(
        description="`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`"
    )
    threads: Annotated[
        int, rule(lambda v: v >= 0, "must be 0 (all cores) or a positive count")
    ] = Field(
        description="CPU threads; 0 = all cores (in portable numerics the bytes are the"
        " same for any count)"
    )
    numerics: Literal[tuple(MODES)] = Field(
        description="CPU numerics (numerics.py): `portable` (the same bytes on any x86-64 CPU"
        " with AVX2) or `fast` (oneDNN; the same CPU model and thread count only)"
    )
    # Outlier exposure (Hendrycks et al., 2019), synthetic.py's non-digits
    outliers_per_batch: int = Field(
        ge=0,
        description="synthetic non-digits added to each batch, trained towards equal"
        " probabilities (outlier exposure); 0 = off",
    )
    outlier_weight: float = Field(ge=0, description="their loss's weight beside the digits'")
    ood_rejection: Fraction = Field(
        description='share of validation digits above the fitted "not a digit" threshold (ood.py)'
    )


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
    # That also fills every new tensor with NaN, a guard against ops that leave memory unset;
    # every op here writes its whole output (the repeat and thread tests would see one that
    # didn't), and the fills were 5% of a training step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    keep_freed_memory()
    # cuBLAS needs this for deterministic matrix products; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 32 MiB for reuse instead of handing them back to
    the system: otherwise each step's activations (6 MiB each) are page-faulted in afresh,
    which cost 0.4 ms per tensor here. Not glibc (macOS, musl): nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 1 << 30)


def make_optimizer(model: nn.Module, params: TrainParams) -> Optimizer:
    # No weight decay on batch-norm weights and biases: it only slows their learning.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return OPTIMIZERS[params.optimizer](groups, params.lr, params.momentum)


def make_schedule(optimizer: Optimizer, params: TrainParams, total_steps: int) -> Schedule:
    return SCHEDULES[params.schedule](optimizer, params, total_steps)


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
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for step, start in enumerate(range(0, len(order), params.batch_size)):
        batch = order[start : start + params.batch_size]
        images, batch_draws = data.images[batch], draws[start : start + len(batch)]
        if exposed:  # one forward pass: the digits, then the outliers
            images = torch.cat([images, outliers[picks[step]]])
            batch_draws = torch.cat([batch_draws, outlier_draws[step]])
        inputs = augment(to_unit(images), params, batch_draws)
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


def evaluate(model: nn.Module, data: Data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on a split."""
    logits = predict_logits(model, data.images, batch_size)
    labels = data.labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).sum().item() / len(labels)


def fit(
    model: nn.Module,
    train: Data,
    val: Data,
    params: TrainParams,
    seed: int,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
    show_progress: bool = True,
    outliers: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], EpochStats]:
    """Train for `params.epochs` (with `outliers` as in `train_epoch`); return the weights and
    stats of the best validation epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, params)
    steps = params.epochs * math.ceil(len(train.labels) / params.batch_size)
    schedule = make_schedule(optimizer, params, steps)
    best: tuple[dict[str, torch.Tensor], EpochStats] | None = None
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
        val_loss, val_accuracy = evaluate(model, val)
        epoch_stats = EpochStats(
            epoch,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
        )
        on_epoch(epoch_stats)
        if best is None or val_accuracy > best[1].val_accuracy:
            weights = model.state_dict().items()
            state = {key: value.detach().cpu().clone() for key, value in weights}
            best = (state, epoch_stats)
    assert best is not None
    return best
