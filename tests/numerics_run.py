"""A short training run for the numerics tests, run through the launcher:

    python -m mnistpipe.modeling.numerics MODE tests.numerics_run THREADS [--unpinned]

trains the default CNN with the default recipe's ops (conv, batch norm, max-pool, linear,
augmentation, Nesterov SGD, one-cycle, label smoothing) for 100 steps of 64 synthetic digits,
then prints JSON: the sha256 of the weights, of the inference logits on held-out images, of
the blur augmentation's output on other ones (that op alone), and what the machine and the
knobs were. `--unpinned` gives MKL torch's thread count back after the mode is applied: the
run that shows the tests would notice a thread-dependent MKL.
"""

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

from mnistpipe.modeling import device, numerics
from mnistpipe.modeling.checkpoints import Checkpoint
from mnistpipe.modeling.device import make_deterministic
from mnistpipe.modeling.models import CNNConfig, build_model, predict_logits, to_unit
from mnistpipe.modeling.training import blur, fit
from tests.conftest import RECIPE, toy_data

STEPS, BATCH = 100, 64
CONFIG = CNNConfig()  # the default model's


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                flags = cpuinfo.read_text()
                return line.split(":", 1)[1].strip() + (" (avx512f)" if "avx512f" in flags else "")
    return platform.processor() or "unknown"


def main() -> None:
    mode, threads = os.environ[numerics.LAUNCHED_MODE], int(sys.argv[1])
    make_deterministic(seed=5, threads=threads)
    device.apply_numerics(mode)
    if "--unpinned" in sys.argv:
        torch.set_num_threads(threads)  # resets MKL's count to torch's
    train, val = toy_data(STEPS * BATCH, 1), toy_data(500, 2)
    recipe = RECIPE.model_copy(update={"epochs": 1, "batch_size": BATCH})
    model = build_model("cnn", CONFIG, mean=0.15, std=0.3)
    model = model.to(memory_format=torch.channels_last)
    result = fit(model, train, val, recipe, seed=5, show_progress=False)
    state, best = result.state_dict, result.best
    weights = b"".join(state[key].numpy().tobytes() for key in sorted(state))
    checkpoint = Checkpoint("cnn", CONFIG, recipe, state, "synthetic", tuple("0123456789"), 1, 0)
    logits = predict_logits(checkpoint.build(), toy_data(1000, 3).images, 250)
    # train.augment_blur's resampling, every image at a side drawn from the seed (a key of
    # its own: the weights' fingerprint predates it and was checked on two vendors' CPUs)
    sharp = to_unit(toy_data(512, 4).images)
    blurred = blur(
        sharp, 1.0, torch.rand(len(sharp), 2, generator=torch.Generator().manual_seed(6))
    )
    print(
        json.dumps(
            {
                "weights_sha256": hashlib.sha256(weights).hexdigest(),
                "logits_sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
                "blur_sha256": hashlib.sha256(blurred.numpy().tobytes()).hexdigest(),
                "val_accuracy": best.val_accuracy,
                "cpu": cpu_model(),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "knobs": {
                    key: os.environ.get(key) for key in numerics.MODES["portable"].environment
                }
                | {"mkl": device.mkl_settings(), "onednn": torch.backends.mkldnn.enabled},
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
