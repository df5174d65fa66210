"""The checkpoint format that `train` writes and everything after it reads.

A checkpoint describes itself: the model's name and config, the resolved training recipe, the
dataset and its class names, the calibration temperature and the OOD threshold travel with the
weights (whose first layer holds the normalization stats), so evaluation, export and the
report rebuild the model from the file alone. It holds only tensors and plain Python values,
so it loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistpipe.config import Config, parse
from mnistpipe.data.processed import Meta
from mnistpipe.errors import PipelineError
from mnistpipe.files import write_bytes_atomic
from mnistpipe.modeling.models import CNN, MODELS, build_model, fuse_batch_norm
from mnistpipe.modeling.recipe import TrainParams

# 2: normalization inside the model, recipe and per-model config; 3: calibration temperature;
# 4: the OOD score's threshold; 5: the recipe as given, the numerics mode beside the device
CHECKPOINT_FORMAT = 5
READABLE_FORMATS = (4, 5)  # 4 is read by moving its recipe's device and numerics out
# Recipe keys added since format 4, with what training did before they existed: an older
# checkpoint reads back with the recipe that really trained it.
ADDED_RECIPE_KEYS = {"outlier_images": 6000, "augment_blur": 0.0}


@dataclass(frozen=True)
class Checkpoint:
    model_name: str  # a key of MODELS
    model_config: Config  # that model's config
    recipe: TrainParams  # the train section it was trained with, as given
    state_dict: dict[str, torch.Tensor]
    dataset: str
    classes: tuple[str, ...]  # class index -> name
    epoch: int  # the epoch whose weights these are: the best by validation accuracy
    val_accuracy: float
    # softmax(logits / temperature) is calibrated: fitted on the validation split (1.0: not)
    temperature: float = 1.0
    # an input whose OOD score (ood.py) is above this is flagged as unlike the training data
    ood_threshold: float = float("inf")
    device: str = "cpu"  # where it was trained
    numerics: str = "portable"  # the CPU numerics mode it was trained in (numerics.MODES)
    torch_version: str = str(torch.__version__)  # that trained it

    def model_section(self) -> dict[str, Any]:
        """The model as params.yaml's `model` section writes it, with the one config it uses."""
        return {"name": self.model_name, self.model_name: self.model_config.to_mapping()}

    def build(self) -> nn.Module:
        """The model with these weights for inference: eval mode, on the CPU, batch norm fused
        into the convs, channels-last like `models.to_unit`'s output."""
        model = build_model(self.model_name, self.model_config)
        model.load_state_dict(self.state_dict)
        model.eval()
        if isinstance(model, CNN):
            model.features = fuse_batch_norm(model.features)
        return model.to(memory_format=torch.channels_last)


def require_same_dataset(
    checkpoint: Checkpoint, meta: Meta, model_path: Path, data_path: Path
) -> None:
    """A model is only scored or checked on the dataset (and classes) it was trained on."""
    if (meta.dataset, meta.classes) == (checkpoint.dataset, checkpoint.classes):
        return
    ours, theirs = meta.dataset, checkpoint.dataset
    if ours == theirs:  # same name, other classes: say which
        ours, theirs = f"classes {list(meta.classes)}", f"classes {list(checkpoint.classes)}"
    raise PipelineError(
        f"{data_path} holds {ours} but {model_path} was trained on {theirs};"
        " rerun the pipeline (dvc repro)"
    )


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": {"name": checkpoint.model_name, "config": checkpoint.model_config.to_mapping()},
        "recipe": checkpoint.recipe.to_mapping(),
        "state_dict": checkpoint.state_dict,
        "dataset": checkpoint.dataset,
        "classes": list(checkpoint.classes),
        "epoch": checkpoint.epoch,
        "val_accuracy": checkpoint.val_accuracy,
        "temperature": checkpoint.temperature,
        "ood_threshold": checkpoint.ood_threshold,
        "device": checkpoint.device,
        "numerics": checkpoint.numerics,
        "torch_version": checkpoint.torch_version,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: checkpoint not found; run the train stage") from None
    except Exception as exc:  # torch raises many types for a damaged file
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        formats = " or ".join(map(str, READABLE_FORMATS))
        raise PipelineError(f"{path}: not a checkpoint of format {formats}; retrain it")
    try:
        if payload["format"] == 4:  # its recipe held the runtime's device and numerics
            recipe = dict(payload["recipe"])
            payload |= {"numerics": recipe.pop("numerics"), "recipe": recipe}
            recipe.pop("device")
        payload["recipe"] = ADDED_RECIPE_KEYS | dict(payload["recipe"])
        name = str(payload["model"]["name"])
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        checkpoint = Checkpoint(
            model_name=name,
            model_config=MODELS[name].config.model_validate(payload["model"]["config"]),
            recipe=parse(TrainParams, payload["recipe"], path, "train."),
            state_dict=payload["state_dict"],
            dataset=str(payload["dataset"]),
            classes=tuple(payload["classes"]),
            epoch=int(payload["epoch"]),
            val_accuracy=float(payload["val_accuracy"]),
            temperature=float(payload["temperature"]),
            ood_threshold=float(payload["ood_threshold"]),
            device=str(payload["device"]),
            numerics=str(payload["numerics"]),
            torch_version=str(payload["torch_version"]),
        )
        checkpoint.build()
    except (KeyError, TypeError, ValueError, RuntimeError, PipelineError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise PipelineError(f"{path}: inconsistent checkpoint ({reason})") from None
    return checkpoint
