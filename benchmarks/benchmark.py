"""Benchmark of the training recipes: accuracy, wall time, time to 99%, images/s, peak memory.

Each recipe runs the real `train` stage in its own process (so its wall time includes start-up
and data loading, and its peak RSS is its own) on the processed data of `dvc repro`, then is
scored on the test set in this process. Timings never go into DVC metrics: they land here.

    python -m benchmarks.benchmark [--recipes default mlp] [--dvc] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from mnistpipe import processed
from mnistpipe.imaging import to_mnist
from mnistpipe.models import Checkpoint, load_checkpoint, predict_logits
from mnistpipe.params import PARAMS_FILE
from stages.evaluate import summary_metrics

# Overrides of params.yaml per recipe, as `dvc exp run -S section.key=value` would set them.
RECIPES: dict[str, dict[str, dict]] = {
    "default": {},
    "mlp": {
        "model": {"name": "mlp", "hidden": [256, 256], "dropout": 0.0},
        "train": {
            "optimizer": "adam", "lr": 0.001, "schedule": "cosine", "epochs": 8,
            "batch_size": 128, "label_smoothing": 0.0, "weight_decay": 0.0,
            "augment_rotate": 0.0, "augment_shift": 0.0, "augment_scale": 0.0,
        },
    },
}  # fmt: skip


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
    }


def run_train(params: dict, workdir: Path, data_dir: Path) -> tuple[float, float, Path, Path]:
    """Run the train stage; return its wall seconds, peak RSS in MB, checkpoint and history."""
    params_path, model, history = workdir / "params.yaml", workdir / "model.pt", workdir / "h.csv"
    params_path.write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "stages.train", "--data", str(data_dir), "--model",
               str(model), "--history", str(history), "--params", str(params_path)]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"benchmark: train stage failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024, model, history


def first_epoch_time(history: pd.DataFrame, accuracy: float) -> float | None:
    """Training seconds until validation accuracy first reaches `accuracy`, or None."""
    reached = history.index[history["val_accuracy"] >= accuracy]
    return float(history["seconds"].cumsum()[reached[0]]) if len(reached) else None


def inference_rate(checkpoint: Checkpoint, images: torch.Tensor, batch_size: int = 1000) -> float:
    model = checkpoint.build()
    predict_logits(model, images[:batch_size], checkpoint.mean, checkpoint.std, batch_size)
    started = time.perf_counter()
    predict_logits(model, images, checkpoint.mean, checkpoint.std, batch_size)
    return len(images) / (time.perf_counter() - started)


def foreign_pages(count: int = 500, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """scikit-learn's 8x8 digits as dark ink on a 200x160 light page at random offsets."""
    digits, rng = load_digits(), np.random.default_rng(seed)
    pages = []
    for image in digits.images[:count]:
        ink = Image.fromarray(np.uint8(image / 16 * 255))
        ink = ink.resize((64, 64), Image.Resampling.BILINEAR)
        page = np.full((160, 200), 235.0, dtype=np.float32)
        top, left = rng.integers(0, 160 - 64), rng.integers(0, 200 - 64)
        page[top : top + 64, left : left + 64] -= np.asarray(ink, np.float32) / 255 * 200
        pages.append(page)
    return pages, digits.target[:count]


def foreign_accuracy(checkpoint: Checkpoint) -> tuple[float, float]:
    """Accuracy on foreign digit pages with MNIST-style preprocessing, and with a plain resize."""
    model = checkpoint.build()
    pages, labels = foreign_pages()
    prepared = np.stack([to_mnist(page) for page in pages])
    resized = np.stack([np.asarray(Image.fromarray(page.astype(np.uint8)).resize((28, 28)))
                        for page in pages])  # fmt: skip
    accuracies = []
    for images in (prepared, resized):
        logits = predict_logits(model, torch.from_numpy(images), checkpoint.mean,
                                checkpoint.std, 1000)  # fmt: skip
        accuracies.append(round(float((logits.argmax(1).numpy() == labels).mean()), 4))
    return accuracies[0], accuracies[1]


def benchmark(name: str, base: dict, data_dir: Path) -> dict:
    params = {section: dict(values) if isinstance(values, dict) else values
              for section, values in base.items()}  # fmt: skip
    for section, overrides in RECIPES[name].items():
        params[section].update(overrides)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        seconds, rss_mb, model_path, history_path = run_train(params, Path(workdir), data_dir)
        history = pd.read_csv(history_path)
        test = processed.load_split(data_dir, "test")
        images = torch.from_numpy(test.images)
        checkpoint = load_checkpoint(model_path)
        logits = predict_logits(checkpoint.build(), images, checkpoint.mean, checkpoint.std, 1000)
        metrics = summary_metrics(test.labels.astype("int64"), logits)
        infer = inference_rate(checkpoint, images)
        foreign, foreign_resized = foreign_accuracy(checkpoint)
    train_images = processed.load_meta(data_dir).sizes["train"] * len(history)
    return {
        "recipe": name,
        "test_accuracy": metrics["accuracy"],
        "best_val_accuracy": float(history["val_accuracy"].max()),
        "epochs": len(history),
        "train_wall_s": round(seconds, 1),
        "epochs_s": round(float(history["seconds"].sum()), 1),
        "time_to_val_99.0_s": first_epoch_time(history, 0.99),
        "time_to_val_99.5_s": first_epoch_time(history, 0.995),
        "train_images_per_s": round(train_images / float(history["seconds"].sum())),
        "inference_images_per_s": round(infer),
        "peak_rss_mb": round(rss_mb),
        "foreign_digits_accuracy": foreign,
        "foreign_digits_resize_only": foreign_resized,
    }


def timed(command: list[str], cwd: Path) -> float:
    # The stages' `python` must be this environment's, as `make` and an activated venv give.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env={**os.environ,
                   "PATH": path, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    return round(time.perf_counter() - started, 2)


def dvc_overhead(repo: Path) -> dict[str, float]:
    """Seconds of a no-op `dvc repro`, and of `dvc repro` against `dvc exp run` for the same
    report-only change, in a clone that shares this repository's DVC cache."""
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as workdir:
        clone = Path(workdir) / "clone"
        subprocess.run(["git", "clone", "-q", str(repo.resolve()), str(clone)], check=True)
        cache = str((repo / ".dvc" / "cache").resolve())
        subprocess.run([*dvc, "cache", "dir", "--local", cache], cwd=clone, check=True)
        subprocess.run([*dvc, "checkout", "-q"], cwd=clone, check=True)
        noop = timed([*dvc, "repro"], clone)
        params = clone / "params.yaml"
        original = params.read_text()
        params.write_text(original.replace("samples_shown: 32", "samples_shown: 16"))
        repro = timed([*dvc, "repro"], clone)
        subprocess.run(["git", "checkout", "-q", "."], cwd=clone, check=True)
        subprocess.run([*dvc, "checkout", "-q"], cwd=clone, check=True)
        experiment = timed([*dvc, "exp", "run", "-S", "report.samples_shown=16"], clone)
    return {"noop_repro_s": noop, "report_change_repro_s": repro,
            "report_change_exp_run_s": experiment}  # fmt: skip


def write_results(out: Path, rows: list[dict], info: dict, dvc_times: dict | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": info, "runs": rows, "dvc": dvc_times}
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    described = ", ".join(f"{key}: {value}" for key, value in info.items())
    text = f"# Benchmark results\n\nMachine: {described}\n\n"
    text += pd.DataFrame(rows).to_markdown(index=False) + "\n"
    if dvc_times:
        text += "\n## DVC, seconds\n\n" + pd.DataFrame([dvc_times]).to_markdown(index=False)
    out.with_suffix(".md").write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dvc", action="store_true", help="also time dvc repro and exp run")
    args = parser.parse_args()
    base = yaml.safe_load(args.params.read_text())
    rows = []
    for name in args.recipes:
        print(f"benchmark: recipe {name}", file=sys.stderr)
        rows.append(benchmark(name, base, args.data))
        print(json.dumps(rows[-1]), file=sys.stderr)
    dvc_times = None
    if args.dvc:
        print("benchmark: dvc repro against dvc exp run", file=sys.stderr)
        dvc_times = dvc_overhead(Path.cwd())
    write_results(args.out, rows, machine(), dvc_times)


if __name__ == "__main__":
    main()
