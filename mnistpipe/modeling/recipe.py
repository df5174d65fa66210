"""The training recipe: the `train` section of params.yaml, and the optimizers and schedules
that it names (registries beside the code they build). Checkpoints carry the recipe, so this
module is what reading one needs of training; the loop itself is in training.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from mnistpipe.config import Config, Fraction, rule

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


class TrainParams(Config):
    """The `train` section: the recipe, what to compute (where it runs is the `runtime`
    section's, device.py). Checkpoints carry it, as given, beside the weights."""

    epochs: int = Field(ge=1, description="passes over the training split")
    batch_size: int = Field(ge=1, description="training images per step")
    optimizer: Literal[tuple(OPTIMIZERS)] = Field(
        description="the optimizer (`sgd` with Nesterov momentum)"
    )
    lr: float = Field(gt=0, description="peak learning rate of the schedule")
    momentum: Fraction = Field(description="sgd only")
    weight_decay: float = Field(
        ge=0, description="on weights, not on biases or batch-norm parameters"
    )
    schedule: Literal[tuple(SCHEDULES)] = Field(
        description="the learning rate's schedule, stepped per batch"
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
    augment_blur: Fraction = Field(
        description="share of training images (digits and outliers) drawn at a lower"
        " resolution, 10-20 px, as a blurred photo or a low-resolution scan gives them; 0 = off"
    )
    # Outlier exposure (Hendrycks et al., 2019), synthetic.py's non-digits
    outliers_per_batch: int = Field(
        ge=0,
        description="synthetic non-digits added to each batch, trained towards equal"
        " probabilities (outlier exposure); 0 = off",
    )
    outlier_images: int = Field(
        ge=1,
        description="synthetic non-digits drawn once before training, from which each batch"
        " takes its outliers (about 8 ms each to draw and prepare)",
    )
    outlier_weight: float = Field(ge=0, description="their loss's weight beside the digits'")
    ood_rejection: Fraction = Field(
        description='share of validation digits above the fitted "not a digit" threshold (ood.py)'
    )


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
