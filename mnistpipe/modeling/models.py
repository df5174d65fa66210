"""The models, their configs and their input format.

Every model takes (N, 1, 28, 28) float32 images in [0, 1] and normalizes them itself: the
training split's pixel mean and std are buffers of its first layer, so they travel with the
weights. `MODELS` names each model with its config class; the `model` section of params.yaml
(params.ModelParams) holds one config per model and `model.name` picks one. Adding a model:
docs/guides/add-a-model.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mnistpipe.config import Config, Fraction, rule
from mnistpipe.data.idx import IMAGE_SHAPE, NUM_CLASSES

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


class Normalize(nn.Module):
    """(x - mean) / std with the training split's stats, kept as buffers in the state dict."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


Widths = Annotated[
    tuple[int, ...],
    rule(
        lambda v: 1 <= len(v) <= 4 and min(v) >= 1,
        "must list 1 to 4 positive widths (28 px halves at each)",
    ),
]
Sizes = Annotated[
    tuple[int, ...], rule(lambda v: min(v, default=1) >= 1, "must list positive layer sizes")
]


class CNNConfig(Config):
    # Narrow first: full-resolution convs cost the most. At most four stages fit in 28 px.
    channels: Widths = Field(
        (16, 32, 64),
        description="width of each stage (at 28, 14, 7 px); each stage ends in a 2x2 max-pool",
    )
    # Depth is cheap where the pixels are few.
    convs: tuple[int, ...] = Field(
        (1, 2, 2), description="3x3 conv + batch norm + ReLU blocks in each stage"
    )
    # Augmentation already regularizes the default well enough.
    dropout: Fraction = Field(0.0, description="before the classifier")

    @field_validator("convs")
    @classmethod
    def _one_count_per_stage(cls, convs: tuple[int, ...], info: ValidationInfo) -> tuple:
        channels = info.data.get("channels", ())
        if len(convs) != len(channels) or min(convs, default=0) < 1:
            raise ValueError("must give a positive block count for each of channels")
        return convs


class MLPConfig(Config):
    hidden: Sizes = Field(
        (256, 256),
        description="hidden ReLU layer sizes (`[128]` is the classic 784-128-10)",
    )
    dropout: Fraction = Field(0.0, description="after each hidden layer")


class ExamplesCNNConfig(Config):
    """pytorch/examples' net has no settings: it is kept as published for comparison."""


class CNN(nn.Module):
    """Stages of `convs` blocks of (3x3 conv, batch norm, ReLU), each stage ending in a 2x2
    max-pool, then a linear classifier."""

    def __init__(self, config: CNNConfig, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        width, side = 1, IMAGE_SHAPE[0]
        for stage_width, blocks in zip(config.channels, config.convs, strict=True):
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
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(width * side * side, NUM_CLASSES)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (N, 1, 28, 28) in [0, 1] -> (N, 10) logits
        return self.classifier(self.features(self.normalize(images)))


class ExamplesCNN(nn.Module):
    """The pytorch/examples MNIST net: conv 32, conv 64, max-pool, dropout 0.25, fc 128,
    dropout 0.5, fc 10 (1.2M parameters), kept as published for the side-by-side benchmark."""

    def __init__(self, config: ExamplesCNNConfig, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),  # (N, 32, 26, 26)
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),  # (N, 64, 24, 24)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (N, 64, 12, 12)
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, NUM_CLASSES),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(images)))


class MLP(nn.Module):
    """Flatten, Dense(ReLU) layers of the given sizes, then Dense(10): the seeds' Keras nets."""

    def __init__(self, config: MLPConfig, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = [nn.Flatten()]
        width = PIXELS
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))


@dataclass(frozen=True)
class ModelSpec:
    config: type[Config]
    model: type[nn.Module]  # built as model(config, mean, std)


# Model name -> its config and class. `model.name` may name exactly these; ModelParams below
# has one config field per entry (a test checks).
MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec(CNNConfig, CNN),
    "mlp": ModelSpec(MLPConfig, MLP),
    "examples-cnn": ModelSpec(ExamplesCNNConfig, ExamplesCNN),
}


class ModelParams(Config):
    """`name` picks the model; every model of MODELS keeps its config here, under its name."""

    name: Literal[tuple(MODELS)] = Field(description="which of the configs below is trained")
    cnn: CNNConfig
    mlp: MLPConfig
    examples_cnn: ExamplesCNNConfig = Field(
        alias="examples-cnn", description=ExamplesCNNConfig.__doc__
    )

    @property
    def config(self) -> Config:
        """The config of the model that `name` picks."""
        return getattr(self, self.name.replace("-", "_"))


def build_model(name: str, config: Config, mean: float = 0.0, std: float = 1.0) -> nn.Module:
    """A fresh model `name` of `config` that normalizes its input with `mean` and `std`."""
    spec = MODELS[name]
    if not isinstance(config, spec.config):
        raise TypeError(f"model {name!r} needs a {spec.config.__name__}, got {config!r}")
    return spec.model(config, mean, std)


@torch.no_grad()
def fuse_batch_norm(features: nn.Sequential) -> nn.Sequential:
    """For inference (eval mode): each (conv, batch norm) pair becomes one conv, the same
    function up to float rounding with one pass over the activations fewer (1.3-1.8x faster)."""
    layers: list[nn.Module] = []
    for layer in features:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layer = fuse_conv_bn_eval(layers.pop(), layer)
        layers.append(layer)
    return nn.Sequential(*layers)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1], channels-last (the memory
    format of the models' convs: mixing formats costs a conversion per layer)."""
    scaled = images.to(torch.float32).div_(255.0)
    return scaled.unsqueeze(1).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 10) float32 logits, in batches on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [
        model(to_unit(images[start : start + batch_size].to(device))).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, NUM_CLASSES)
