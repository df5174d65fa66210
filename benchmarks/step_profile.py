"""Where a training step of the default recipe goes, operation by operation, in each numerics
mode and thread count: the breakdown that benchmarks/results-numerics.md publishes.

    python -m benchmarks.step_profile [--numerics fast portable] [--threads 1 2] [--out FILE]

Each (mode, threads) runs in its own process, started through the numerics launcher as the
train stage is. There every operation of a step is timed alone on the default CNN's own layer
shapes (a batch of `batch_size` digits and `outliers_per_batch` outliers): each convolution's
three products, batch norm, ReLU and max pooling (forward and backward together), the linear
layer, the optimizer's step and the augmentation; then whole steps of the train stage's own
`train_epoch` on random images. Parts that sum to less than the whole leave the rest (loss,
normalisation, batch indexing) in "other". Medians of `REPEATS` runs after `WARMUP`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tools.compose_params import compose

if TYPE_CHECKING:  # torch is imported by the workers only, after the launcher set numerics
    import torch
    from torch import nn

    from mnistpipe.modeling.recipe import TrainParams

REPO = Path(__file__).resolve().parents[1]

WARMUP, REPEATS = 3, 15
STEPS = 20  # whole steps timed (after one warm-up epoch of as many)
PRODUCTS = (("grad-input", [True, False, False]), ("grad-weight", [False, True, False]))


def median_ms(run: Callable[[], object]) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# Per-layer operations other than convolutions, by the name the table gives them
OTHER_LAYERS = {"BatchNorm2d": "batch norm", "ReLU": "relu", "MaxPool2d": "max pool"}
CONV_ARGS = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, ... groups


def profile(mode: str, threads: int) -> dict[str, float]:
    """{operation: ms per step} in this process, which the launcher started in `mode`."""
    import torch

    from mnistpipe.modeling.device import apply_numerics, make_deterministic
    from mnistpipe.modeling.models import ModelParams, build_model
    from mnistpipe.modeling.recipe import TrainParams, make_optimizer
    from mnistpipe.modeling.training import augment

    params = yaml.safe_load(compose(REPO, ["recipe=default"]))
    recipe = TrainParams(**params["train"])
    model_params = ModelParams(**params["model"])
    make_deterministic(params["seed"], threads)
    apply_numerics(mode)
    model = build_model(model_params.name, model_params.config, 0.13, 0.31)
    model = model.to(memory_format=torch.channels_last)
    batch = recipe.batch_size + recipe.outliers_per_batch
    probe = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)

    rows = layer_times(layer_inputs(model, probe))
    optimizer = make_optimizer(model, recipe)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    rows["optimizer step"] = median_ms(optimizer.step)
    draws = torch.rand(batch, 4)
    rows["augmentation"] = median_ms(lambda: augment(probe, recipe, draws))
    rows["whole step"] = whole_step_ms(model, optimizer, recipe)
    return {name: round(ms, 2) for name, ms in rows.items()}


def layer_inputs(model: nn.Module, probe: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """{layer: its input in a training forward pass of `probe`, in the step's memory layout}
    for the convolutions, batch norms, ReLUs, max pools and linear layers of `model`."""
    from torch import nn

    inputs: dict[nn.Module, torch.Tensor] = {}

    def keep_input(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs[layer] = args[0].detach().clone()

    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Linear)
    hooks = [m.register_forward_hook(keep_input) for m in model.modules() if isinstance(m, kinds)]
    model.train()
    model(probe)
    for hook in hooks:
        hook.remove()
    return inputs


def layer_times(inputs: dict[nn.Module, torch.Tensor]) -> dict[str, float]:
    """Milliseconds of each convolution's three products, and of the other layers' forward and
    backward summed by kind."""
    import torch
    from torch import nn

    rows: dict[str, float] = {}
    for layer, x in inputs.items():
        if isinstance(layer, nn.Conv2d):
            name = f"conv {layer.in_channels}->{layer.out_channels} @{x.shape[-1]}px"
            w = layer.weight.detach()
            g = torch.randn_like(torch.ops.aten.convolution(x, w, None, *CONV_ARGS))
            rows[f"{name} forward"] = median_ms(
                lambda x=x, w=w: torch.ops.aten.convolution(x, w, None, *CONV_ARGS)
            )
            for product, mask in PRODUCTS:
                rows[f"{name} {product}"] = median_ms(
                    lambda g=g, x=x, w=w, mask=mask: torch.ops.aten.convolution_backward(
                        g, x, w, None, *CONV_ARGS, mask
                    )
                )
            continue
        key = f"{OTHER_LAYERS.get(type(layer).__name__, 'linear')} (fwd+bwd)"
        # the model's ReLUs work in place, which a leaf tensor that needs a gradient refuses
        timed = nn.ReLU() if isinstance(layer, nn.ReLU) else layer
        x = x.clone().requires_grad_()
        grad = torch.randn_like(timed(x))
        rows[key] = rows.get(key, 0.0) + median_ms(lambda t=timed, x=x, g=grad: t(x).backward(g))
    return rows


def whole_step_ms(
    model: nn.Module, optimizer: torch.optim.Optimizer, recipe: TrainParams
) -> float:
    """Milliseconds per step of the train stage's own `train_epoch` on `STEPS` batches of random
    images, with outliers, after an epoch of warm-up."""
    import torch

    from mnistpipe.modeling.training import Data, train_epoch

    count = recipe.batch_size * STEPS
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8)
    data = Data(images, torch.randint(0, 10, (count,)))
    outliers = torch.randint(0, 256, (500, 28, 28), dtype=torch.uint8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, schedule, data, recipe, generator, None, outliers)  # warm-up
    start = time.perf_counter()
    train_epoch(model, optimizer, schedule, data, recipe, generator, None, outliers)
    return (time.perf_counter() - start) / STEPS * 1000


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per operation, one column per (mode, threads), then the parts' sum,
    the rest of the whole step, and the whole step."""
    columns = list(results)
    operations = [name for name in next(iter(results.values())) if name != "whole step"]
    lines = [
        "| operation | " + " | ".join(f"{c} (ms)" for c in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name in operations:
        lines.append(
            f"| {name} | " + " | ".join(f"{results[c][name]:.2f}" for c in columns) + " |"
        )
    parts = {c: sum(v for k, v in results[c].items() if k != "whole step") for c in columns}
    lines.append("| sum of the parts | " + " | ".join(f"{parts[c]:.1f}" for c in columns) + " |")
    rest = {c: results[c]["whole step"] - parts[c] for c in columns}
    lines.append(
        "| whole step minus the parts | " + " | ".join(f"{rest[c]:.1f}" for c in columns) + " |"
    )
    lines.append(
        "| **whole step** | "
        + " | ".join(f"**{results[c]['whole step']:.1f}**" for c in columns)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numerics", nargs="+", default=["fast", "portable"], help="modes")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts")
    parser.add_argument("--out", type=Path, help="write the table here (default: print it)")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one (mode, threads), in the process the launcher set up
        print(json.dumps(profile(args.worker[0], int(args.worker[1]))))
        return
    results = {}
    for mode in args.numerics:
        for threads in args.threads:
            print(f"profiling {mode} numerics on {threads} threads", file=sys.stderr)
            command = [sys.executable, "-m", "mnistpipe.modeling.numerics", mode]
            command += ["benchmarks.step_profile", "--worker", mode, str(threads)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"step_profile: {mode} on {threads} threads failed: {done.stderr[-500:]}")
            results[f"{mode}, {threads} thread{'s' * (threads > 1)}"] = json.loads(done.stdout)
    markdown = table(results)
    if args.out:
        args.out.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
