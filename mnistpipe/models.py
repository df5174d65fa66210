"""The models, their input format and their checkpoints.

A checkpoint describes itself: the model config, the normalization stats, the dataset and
its class names travel with the weights, so evaluation and prediction rebuild the model from
the file alone. Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistpipe.errors import PipelineError
from mnistpipe.files import write_bytes_atomic
from mnistpipe.idx import IMAGE_SHAPE, NUM_CLASSES
from mnistpipe.params import ModelParams, section_from_mapping

CHECKPOINT_FORMAT = 1


class CheckpointError(PipelineError):
    pass


class CNN(nn.Module):
    """Stages of `convs` blocks of (3x3 conv, batch norm, ReLU), each stage ending in a 2x2
    max-pool, then a linear classifier."""

    def __init__(self, channels: tuple[int, ...], convs: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, side = 1, IMAGE_SHAPE[0]
        for stage_width, blocks in zip(channels, convs, strict=True):
            for _ in range(blocks):
                layers += [
                    nn.Conv2d(width, stage_width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(stage_width),
                    nn.ReLU(inplace=True),
                ]
                width = stage_width
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * side * side, NUM_CLASSES)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))  # (N, 1, 28, 28) -> (N, 10) logits


class ExamplesCNN(nn.Module):
    """The pytorch/examples MNIST net: conv 32, conv 64, max-pool, dropout 0.25, fc 128,
    dropout 0.5, fc 10 (1.2M parameters), kept as published for the side-by-side benchmark."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(inplace=True),  # (N, 32, 26, 26)
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),  # (N, 64, 24, 24)
            nn.MaxPool2d(2), nn.Dropout(0.25),  # (N, 64, 12, 12)
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(128, NUM_CLASSES),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class MLP(nn.Module):
    """Flatten, Dense(ReLU) layers of the given sizes, then Dense(10): the seeds' Keras nets."""

    def __init__(self, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def build_model(config: ModelParams) -> nn.Module:
    if config.name == "cnn":
        return CNN(config.channels, config.convs, config.dropout)
    if config.name == "examples-cnn":
        return ExamplesCNN()
    return MLP(config.hidden, config.dropout)


@torch.no_grad()
def fold_batch_norm(features: nn.Sequential) -> nn.Sequential:
    """For inference: each (conv, batch norm) pair becomes one conv with the norm's affine map
    in its weights and bias, the same function up to float rounding (~1e-6) with one pass over
    the activations fewer (1.3-1.8x faster on the CPU)."""
    layers: list[nn.Module] = []
    for layer in features:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            conv = layers.pop()
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)  # (C_out,)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding, bias=True,
            )  # fmt: skip
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(layer.bias + (bias - layer.running_mean) * scale)
            layer = fused
        layers.append(layer)
    return nn.Sequential(*layers)


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32, standardized with the training stats."""
    scaled = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return scaled.unsqueeze(1).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Checkpoint:
    config: ModelParams
    state_dict: dict[str, torch.Tensor]
    mean: float  # normalization stats of the training split, 0-1 pixel scale
    std: float
    dataset: str
    classes: tuple[str, ...]
    epoch: int  # the epoch whose weights these are: the best by validation accuracy
    val_accuracy: float
    device: str = "cpu"  # where it was trained
    torch_version: str = str(torch.__version__)  # that trained it

    def build(self) -> nn.Module:
        """The model with these weights for inference: eval mode, on the CPU, batch norm folded
        into the convs, in the channels-last memory format of `normalize`'s output (mixing
        formats costs a conversion per layer)."""
        model = build_model(self.config)
        model.load_state_dict(self.state_dict)
        if isinstance(model, CNN):
            model.features = fold_batch_norm(model.features)
        return model.to(memory_format=torch.channels_last).eval()


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        **dataclasses.asdict(checkpoint),
        "config": dataclasses.asdict(checkpoint.config),
        "classes": list(checkpoint.classes),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; run the train stage") from None
    except Exception as exc:  # torch raises many types for a damaged file
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of format {CHECKPOINT_FORMAT}")
    try:
        config = section_from_mapping(ModelParams, payload["config"], path)
        checkpoint = Checkpoint(
            config=config,
            state_dict=payload["state_dict"],
            mean=float(payload["mean"]),
            std=float(payload["std"]),
            dataset=str(payload["dataset"]),
            classes=tuple(payload["classes"]),
            epoch=int(payload["epoch"]),
            val_accuracy=float(payload["val_accuracy"]),
            device=str(payload["device"]),
            torch_version=str(payload["torch_version"]),
        )
        checkpoint.build()
    except (KeyError, TypeError, ValueError, RuntimeError, PipelineError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: inconsistent checkpoint ({reason})") from None
    return checkpoint


def predict_probabilities(
    model: nn.Module, checkpoint: Checkpoint, images: np.ndarray, batch_size: int = 1000
) -> torch.Tensor:
    """(N, 28, 28) uint8 MNIST-style images -> (N, 10) class probabilities, with `model` built
    from `checkpoint` (built once by callers that classify many times)."""
    logits = predict_logits(
        model, torch.from_numpy(images), checkpoint.mean, checkpoint.std, batch_size
    )
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, mean: float, std: float, batch_size: int
) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 10) float32 logits, in batches on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        model(normalize(images[start : start + batch_size].to(device), mean, std)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, NUM_CLASSES)
