"""Benchmark of the deployed model: the predict command, batched inference, the server.

    python -m benchmarks.deploy [--onnx models/model.onnx] [--checkpoint models/model.pt]

Measures, on the pipeline's own outputs:
- one-image predict: wall seconds of `python -m apps.predict digit.png`, process start-up
  included (the median of several runs);
- batched inference of the 10,000 test images: ONNX Runtime through `onnx_model.classify`
  (the function the predict command and the server use) at several batch sizes, against
  PyTorch (`models.predict_logits` on the checkpoint, as `evaluate` runs it);
- the load test of `python -m apps.serve`: 200 requests from 8 clients on loopback.
Writes benchmarks/results-deploy.json and .md. Timings depend on the machine: compare only
rows measured on the same CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import torch
from PIL import Image

from benchmarks.benchmark import machine, serve_load
from mnistpipe.data import processed
from mnistpipe.deploy.onnx_model import LOGITS, classify, load_onnx
from mnistpipe.modeling.checkpoints import load_checkpoint
from mnistpipe.modeling.models import predict_logits

BATCH_SIZES = (1, 32, 64, 100, 256, 1000)
REPEATS = 3  # each throughput is the best of this many passes over the test set


def predict_latency(model: Path, image: np.ndarray, runs: int) -> list[float]:
    """Wall seconds of each of `runs` predict commands on one PNG."""
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as folder:
        path = Path(folder) / "digit.png"
        Image.fromarray(image).save(path)
        command = [sys.executable, "-m", "apps.predict", str(path), "--model", str(model)]
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(round(time.perf_counter() - started, 3))
    return seconds


def images_per_s(infer, images: np.ndarray) -> int:
    """The best images/s of REPEATS passes of `infer` over `images`, after a warm-up."""
    infer(images[:1000])
    best = 0.0
    for _ in range(REPEATS):
        started = time.perf_counter()
        infer(images)
        best = max(best, len(images) / (time.perf_counter() - started))
    return round(best)


def throughput(onnx_path: Path, checkpoint_path: Path, images: np.ndarray) -> list[dict]:
    model = load_onnx(onnx_path)
    rows = [
        {
            "engine": f"onnxruntime {onnxruntime.__version__}",
            "batch_size": size,
            "images_per_s": images_per_s(lambda x, size=size: classify(model, x, size), images),
        }
        for size in BATCH_SIZES
    ]
    network = load_checkpoint(checkpoint_path).build()
    tensor = torch.from_numpy(images)
    for size in (100, 1000):
        speed = images_per_s(lambda x, size=size: predict_logits(network, x, size), tensor)
        rows.append(
            {"engine": f"torch {torch.__version__}", "batch_size": size, "images_per_s": speed}
        )
    theirs = predict_logits(network, tensor, 1000).numpy()
    (logits,) = model.run(images, (LOGITS,))
    difference = float(np.abs(logits - theirs).max())
    for row in rows:
        row["largest_logit_difference"] = round(difference, 8)  # the same models, checked
    return rows


def write_results(out: Path, results: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    described = ", ".join(f"{key}: {value}" for key, value in results["machine"].items())
    latency = results["predict_one_image_s"]
    text = (
        "# Deployment benchmark\n\n"
        f"Machine: {described}\n\n"
        "## One-image predict, end to end\n\n"
        f"`python -m apps.predict digit.png` (ONNX Runtime, no torch): median"
        f" {latency['median']} s over {len(latency['runs'])} runs {latency['runs']}.\n\n"
        "## Batched inference of the 10,000 test images\n\n"
        + pd.DataFrame(results["throughput"]).to_markdown(index=False)
        + "\n\n## apps.serve on loopback (200 requests, 8 clients)\n\n"
        + pd.DataFrame([results["serve"]]).to_markdown(index=False)
        + "\n"
    )
    out.with_suffix(".md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results-deploy"))
    parser.add_argument("--runs", type=int, default=7, help="one-image predict runs")
    args = parser.parse_args()
    test = processed.load_split(args.data, "test")
    print("deploy: one-image predict", file=sys.stderr)
    runs = predict_latency(args.onnx, test.images[0], args.runs)
    print("deploy: batched inference", file=sys.stderr)
    rows = throughput(args.onnx, args.checkpoint, test.images)
    print("deploy: load test of apps.serve", file=sys.stderr)
    results = {
        "machine": machine(),
        "predict_one_image_s": {"median": statistics.median(runs), "runs": runs},
        "throughput": rows,
        "serve": serve_load(args.onnx, args.data),
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
