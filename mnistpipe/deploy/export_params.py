"""The export stage's params section: kept apart from `onnx_model`, which the apps import, so
that they start without pydantic (a tenth of a second of the one-image predict command)."""

from __future__ import annotations

from pydantic import Field

from mnistpipe.config import Config


class ExportParams(Config):
    # 18 is the oldest opset the dynamo exporter writes, 23 the newest the pinned onnxruntime runs
    opset: int = Field(ge=18, le=23, description="ONNX opset of `models/model.onnx` (18-23)")
    tolerance: float = Field(
        gt=0,
        le=0.01,
        description="the largest logit or OOD-score difference from PyTorch allowed on the"
        " validation split (float32 rounding gives about 1e-6); more, or another class for any"
        " image, fails the stage",
    )
