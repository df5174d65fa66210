"""Benchmark of the training recipes: accuracy, wall time, time to 99%, images/s, peak memory.

The recipes are those of conf/recipe/ (`default` is conf/config.yaml's own model and train
sections), among them the reference recipes `seed-mlp` and `examples-cnn`; each is composed
into a params file as `dvc exp run -S recipe=NAME` would. Each runs the real `train`
stage in its own process (so its wall time includes start-up and data loading, and its peak
RSS is its own) on the processed data of `dvc repro`, then is scored on the test set here.
Timings never go into DVC metrics: they land in the results files.

    python -m benchmarks.benchmark [--recipes default fast] [--quick] [--dvc] [--serve]
        [--numerics fast portable] [--step-threads 1 2] [--repro]

`--quick` trains every recipe for one epoch on 4,000 training images, with 400 outlier images
drawn instead of 6,000 (under 2 minutes): a smoke test of the benchmark itself, whose numbers
mean nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from benchmarks import load_test
from mnistpipe.data import processed
from mnistpipe.modeling.checkpoints import load_checkpoint
from mnistpipe.modeling.metrics import summary_metrics
from mnistpipe.modeling.models import predict_logits
from mnistpipe.modeling.numerics import MODES
from mnistpipe.modeling.page_scores import FOREIGN, foreign_pages, right_answers, scored_pages
from tools.compose_params import CONFIG_DIR, compose

REPO = Path(__file__).resolve().parents[1]
DEFAULT = "default"  # the recipe of conf/config.yaml's own model and train sections
REFERENCE = "examples-cnn"  # the ratios table compares the default with this recipe
QUICK_SIZES = {"train": 4000, "val": 500, "test": 1000}
STEP_SIZES = {"train": 12800, "val": 500, "test": 1000}  # 100 steps of the default's batch


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
    }


def recipes() -> list[str]:
    """The recipes of conf/recipe/, the default first."""
    names = sorted(path.stem for path in (REPO / CONFIG_DIR / "recipe").glob("*.yaml"))
    return [DEFAULT, *(name for name in names if name != DEFAULT)]


def recipe_params(name: str, quick: bool, numerics: str | None = None) -> str:
    """params.yaml composed with the recipe (one epoch and fewer outlier images when quick,
    other numerics if given)."""
    quick_overrides = ["train.epochs=1", "train.outlier_images=400"] if quick else []
    overrides = [f"recipe={name}", *quick_overrides]
    return compose(REPO, overrides + ([f"runtime.numerics={numerics}"] if numerics else []))


def quick_data(data_dir: Path, out: Path, sizes: dict[str, int] = QUICK_SIZES) -> Path:
    """The first images of each split of `data_dir`, as a processed-data folder."""
    meta = processed.load_meta(data_dir)
    splits = {}
    for name, size in sizes.items():
        split = processed.load_split(data_dir, name)
        splits[name] = processed.Split(split.images[:size], split.labels[:size])
    processed.save(out, splits, meta.dataset, meta.classes)
    return out


def run_train(params: str, workdir: Path, data_dir: Path) -> tuple[float, float, Path, Path]:
    """Run the train stage; return its wall seconds, peak RSS in MB, checkpoint and the
    history with each epoch's seconds."""
    params_path, model, history = workdir / "params.yaml", workdir / "model.pt", workdir / "h.csv"
    params_path.write_text(params)
    numerics = yaml.safe_load(params)["runtime"]["numerics"]  # through the launcher, as dvc.yaml
    command = [
        *(sys.executable, "-m", "mnistpipe.modeling.numerics", numerics, "stages.train"),
        *("--data", data_dir, "--model", model),
        *("--history", history, "--timings", workdir / "timings.csv", "--params", params_path),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(list(map(str, command)))
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"benchmark: train stage failed with exit code {child.returncode}")
    timings = pd.read_csv(workdir / "timings.csv")
    pd.read_csv(history).merge(timings, on="epoch").to_csv(history, index=False)
    return seconds, usage.ru_maxrss / 1024, model, history


def first_epoch_time(history: pd.DataFrame, accuracy: float) -> float | None:
    """Training seconds until validation accuracy first reaches `accuracy`, or None."""
    reached = history.index[history["val_accuracy"] >= accuracy]
    return round(float(history["seconds"].cumsum()[reached[0]]), 1) if len(reached) else None


def timed_logits(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, float]:
    """The logits of `images`, and the images/s of computing them after one warm-up batch."""
    predict_logits(model, images[:batch_size], batch_size)
    started = time.perf_counter()
    logits = predict_logits(model, images, batch_size)
    return logits, len(images) / (time.perf_counter() - started)


def foreign_accuracy(model: torch.nn.Module, temperature: float) -> tuple[float, float]:
    """Accuracy on foreign digit pages with MNIST-style preprocessing (evaluate's check), and
    with a plain resize of the page to 28x28 instead."""
    pages = foreign_pages()
    table = scored_pages(FOREIGN, pages, model, temperature, batch_size=1000)
    resized = np.stack(
        [np.asarray(Image.fromarray(page.astype(np.uint8)).resize((28, 28))) for page, _ in pages]
    )
    logits = predict_logits(model, torch.from_numpy(resized), 1000)
    labels = np.array([int(digit) for _, digit in pages])
    resized_right = float((logits.argmax(1).numpy() == labels).mean())
    return round(float(right_answers(table).mean()), 4), round(resized_right, 4)


def benchmark(name: str, data_dir: Path, quick: bool, numerics: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        workdir = Path(folder)
        params = recipe_params(name, quick, numerics)
        seconds, rss_mb, model_path, history_path = run_train(params, workdir, data_dir)
        history = pd.read_csv(history_path)
        test = processed.load_split(data_dir, "test")
        images = torch.from_numpy(test.images)
        checkpoint = load_checkpoint(model_path)
        model = checkpoint.build()
        logits, infer = timed_logits(model, images)
        metrics = summary_metrics(test.labels.astype("int64"), logits)
        foreign = (None, None) if quick else foreign_accuracy(model, checkpoint.temperature)
    train_images = processed.load_meta(data_dir).sizes["train"] * len(history)
    epochs_s = float(history["seconds"].sum())
    return {
        "recipe": name,
        "numerics": yaml.safe_load(params)["runtime"]["numerics"],
        "test_accuracy": metrics["accuracy"],
        "best_val_accuracy": float(history["val_accuracy"].max()),
        "epochs": len(history),
        "train_wall_s": round(seconds, 1),
        "epochs_s": round(epochs_s, 1),
        "time_to_val_99.0_s": first_epoch_time(history, 0.99),
        "time_to_val_99.5_s": first_epoch_time(history, 0.995),
        "train_images_per_s": round(train_images / epochs_s),
        "inference_images_per_s": round(infer),
        "peak_rss_mb": round(rss_mb),
        "foreign_digits_accuracy": foreign[0],
        "foreign_digits_resize_only": foreign[1],
    }


def step_times(data_dir: Path, modes: list[str], threads: list[int]) -> list[dict]:
    """Milliseconds per training step of the default recipe in each numerics mode and thread
    count: the train stage's one epoch over the first 100 batches of the training split (its
    validation pass, on 500 images, included)."""
    steps = STEP_SIZES["train"] // yaml.safe_load(compose(REPO, []))["train"]["batch_size"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as folder:
        data = quick_data(data_dir, Path(folder) / "data", STEP_SIZES)
        for mode in modes:
            for count in threads:
                overrides = [
                    "train.epochs=1",
                    f"runtime.numerics={mode}",
                    f"runtime.threads={count}",
                ]
                workdir = Path(folder) / f"{mode}-{count}"
                workdir.mkdir()
                _, _, _, history = run_train(compose(REPO, overrides), workdir, data)
                seconds = float(pd.read_csv(history)["seconds"].sum())
                row = {"numerics": mode, "threads": count, "ms_per_step": seconds / steps * 1000}
                rows.append(row)
    for row in rows:  # against the same mode's first thread count
        first = next(other for other in rows if other["numerics"] == row["numerics"])
        row["vs_first_threads"] = round(row["ms_per_step"] / first["ms_per_step"], 2)
        row["ms_per_step"] = round(row["ms_per_step"], 1)
    return rows


def repro_time(repo: Path) -> dict:
    """Seconds of a full `dvc repro` in a fresh clone with nothing cached (download included,
    the virtual environment not), and whether it reproduced the committed outputs."""
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as workdir:
        clone = Path(workdir) / "clone"
        subprocess.run(["git", "clone", "-q", str(repo.resolve()), str(clone)], check=True)
        compose_seconds = timed([sys.executable, "-m", "tools.compose_params"], clone)
        seconds = timed([*dvc, "repro"], clone)
        changed = subprocess.run(
            ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True
        ).stdout.split("\n")
    return {
        "repro_s": round(compose_seconds + seconds, 1),
        "changed_files": [line[3:] for line in changed if line.strip()],
    }


def ratios(rows: list[dict]) -> list[dict]:
    """The default against the reference recipe, metric by metric (when both ran)."""
    by_name = {row["recipe"]: row for row in rows}
    if DEFAULT not in by_name or REFERENCE not in by_name:
        return []
    ours, theirs = by_name[DEFAULT], by_name[REFERENCE]

    def ratio(key: str, transform=lambda value: value) -> float | None:
        if ours[key] is None or theirs[key] is None or not transform(theirs[key]):
            return None
        return round(transform(ours[key]) / transform(theirs[key]), 3)

    return [
        {"metric": "test error", "ratio": ratio("test_accuracy", lambda a: 1 - a)},
        {"metric": "training wall time", "ratio": ratio("train_wall_s")},
        {"metric": "time to 99.0% validation", "ratio": ratio("time_to_val_99.0_s")},
        {"metric": "time to 99.5% validation", "ratio": ratio("time_to_val_99.5_s")},
        {"metric": "training images/s", "ratio": ratio("train_images_per_s")},
        {"metric": "inference images/s", "ratio": ratio("inference_images_per_s")},
        {"metric": "peak RSS", "ratio": ratio("peak_rss_mb")},
    ]


def timed(command: list[str], cwd: Path) -> float:
    # The stages' `python` must be this environment's, as `make` and an activated venv give.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    started = time.perf_counter()
    subprocess.run(
        command,
        cwd=cwd,
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"},
    )
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
    return {
        "noop_repro_s": noop,
        "report_change_repro_s": repro,
        "report_change_exp_run_s": experiment,
    }


def serve_load(model: Path, data_dir: Path) -> dict:
    """p50/p95 latency of 200 requests from 8 concurrent clients on loopback."""
    payloads = load_test.mnist_payloads(data_dir)
    expected = load_test.expected_labels(model, payloads)
    with load_test.running_server(model) as url:
        result = load_test.run_load(url, payloads, expected, requests=200, clients=8)
    if result.correct != result.requests:
        raise SystemExit(f"benchmark: the server answered {result.correct} of 200 correctly")
    return dataclasses.asdict(result)


def write_results(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    described = ", ".join(f"{key}: {value}" for key, value in results["machine"].items())
    text = f"# Benchmark results\n\nMachine: {described}\n"
    if results["quick"]:
        text += "\n**Quick mode**: one epoch on 4,000 images; these numbers mean nothing.\n"
    text += "\n" + pd.DataFrame(results["runs"]).to_markdown(index=False) + "\n"
    if results["ratios"]:
        text += f"\n## {DEFAULT} / {REFERENCE}\n\n"
        text += "Below 1 is better for error and times, above 1 for images/s.\n\n"
        text += pd.DataFrame(results["ratios"]).to_markdown(index=False) + "\n"
    if results["serve"]:
        text += "\n## apps.serve on loopback\n\n"
        text += pd.DataFrame([results["serve"]]).to_markdown(index=False) + "\n"
    if results.get("steps"):
        text += "\n## Training step, default recipe\n\n"
        text += pd.DataFrame(results["steps"]).to_markdown(index=False) + "\n"
    if results.get("repro"):
        repro = results["repro"]
        text += "\n## Fresh clone, `dvc repro` (download included, venv excluded)\n\n"
        text += f"{repro['repro_s']} s; files that differ from the commit:"
        text += f" {', '.join(repro['changed_files']) or 'none'}.\n"
    if results["dvc"]:
        text += "\n## DVC, seconds\n\n" + pd.DataFrame([results["dvc"]]).to_markdown(index=False)
        text += "\n"
    text += "\nWhat helped and what did not, measured: [findings.md](findings.md).\n"
    out.with_suffix(".md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", help="names of conf/recipe/ (all)")
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="one epoch on 4,000 images")
    parser.add_argument(
        "--numerics",
        nargs="+",
        choices=list(MODES),
        help="train each recipe in these numerics modes (default: the recipe's own)",
    )
    parser.add_argument(
        "--step-threads",
        nargs="+",
        type=int,
        help="also time the default recipe's steps with these thread counts (per --numerics)",
    )
    parser.add_argument(
        "--repro", action="store_true", help="also time dvc repro in a fresh clone of HEAD"
    )
    parser.add_argument("--dvc", action="store_true", help="also time dvc repro and exp run")
    parser.add_argument(
        "--serve", action="store_true", help="also load-test apps.serve with models/model.onnx"
    )
    args = parser.parse_args()
    known = recipes()
    chosen = args.recipes or known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; known: {', '.join(known)}")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        data = quick_data(args.data, Path(folder)) if args.quick else args.data
        rows = []
        for name in chosen:
            print(f"benchmark: recipe {name}", file=sys.stderr)
            for numerics in args.numerics or [None]:
                rows.append(benchmark(name, data, args.quick, numerics))
            print(json.dumps(rows[-1]), file=sys.stderr)
    steps = None
    if args.step_threads:
        print("benchmark: training steps per thread count", file=sys.stderr)
        steps = step_times(args.data, args.numerics or list(MODES), args.step_threads)
    repro = None
    if args.repro:
        print("benchmark: dvc repro in a fresh clone", file=sys.stderr)
        repro = repro_time(Path.cwd())
    dvc_times = None
    if args.dvc:
        print("benchmark: dvc repro against dvc exp run", file=sys.stderr)
        dvc_times = dvc_overhead(Path.cwd())
    serve = None
    if args.serve:
        print("benchmark: 200 requests from 8 clients to apps.serve", file=sys.stderr)
        serve = serve_load(Path("models/model.onnx"), args.data)
    results = {
        "machine": machine(),
        "quick": args.quick,
        "runs": rows,
        "ratios": ratios(rows),
        "steps": steps,
        "repro": repro,
        "dvc": dvc_times,
        "serve": serve,
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
