"""Probe CPU numerics settings: which give the same weights whatever the thread count, and
what each costs.

    python -m benchmarks.numerics_probe [--images 8000] [--threads 1 2 3] [--data DIR]

Each probe trains the default CNN recipe for one epoch on the first `--images` training images
in a fresh process per thread count, with the probe's environment set before torch is
imported, and prints the md5 of the trained weights and the seconds per thread count. Two
probes with the same md5 gave identical weights. Results go to stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Candidate settings: environment read at load time, and whether oneDNN runs the convs.
PROBES: dict[str, tuple[dict[str, str], bool]] = {
    "fast (oneDNN)": ({}, True),
    "oneDNN off": ({}, False),
    "oneDNN off, ATen avx2, MKL COMPATIBLE": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"},
        False,
    ),
    "oneDNN off, ATen avx2, MKL COMPATIBLE,STRICT": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"},
        False,
    ),
    "oneDNN off, ATen avx2, MKL COMPATIBLE, one MKL thread": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "PROBE_MKL_THREADS": "1"},
        False,
    ),
    "oneDNN off, ATen avx2, MKL AVX2,STRICT": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"},
        False,
    ),
}


def child(data: Path, images: int, threads: int, mkldnn: bool) -> None:
    """In the probe's process: train one epoch, print md5 and seconds as JSON."""
    import torch
    import yaml

    from mnistpipe.config import parse
    from mnistpipe.data import processed
    from mnistpipe.modeling.device import make_deterministic
    from mnistpipe.modeling.models import MODELS, build_model
    from mnistpipe.modeling.recipe import TrainParams
    from mnistpipe.modeling.training import Data, fit
    from tools.compose_params import compose

    torch.backends.mkldnn.enabled = mkldnn
    make_deterministic(42, threads)
    if os.environ.get("PROBE_MKL_THREADS"):
        from mnistpipe.modeling.device import set_mkl_threads

        set_mkl_threads(int(os.environ["PROBE_MKL_THREADS"]))
    meta = processed.load_meta(data)
    split = processed.load_split(data, "train")
    train = Data(
        torch.from_numpy(split.images[:images]), torch.from_numpy(split.labels[:images]).long()
    )
    val = Data(train.images[:500], train.labels[:500])
    composed = yaml.safe_load(compose(Path.cwd(), ["train.epochs=1", "runtime.device=cpu"]))
    recipe = parse(TrainParams, composed["train"], "composed params", "train.")
    model = build_model("cnn", MODELS["cnn"].config(), meta.mean, meta.std)
    model = model.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    state = fit(model, train, val, recipe, 42, show_progress=False).state_dict
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    torch.save(state, buffer)
    digest = hashlib.md5(buffer.getvalue()).hexdigest()[:8]
    capability = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"md5": digest, "seconds": round(seconds, 1), "capability": capability}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES))
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "MKLDNN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data, args.images, int(args.child[0]), args.child[1] == "1")
        return
    for name in args.probes:
        env, mkldnn = PROBES[name]
        runs = {}
        for threads in args.threads:
            command = [
                sys.executable,
                "-m",
                "benchmarks.numerics_probe",
                "--data",
                str(args.data),
                "--images",
                str(args.images),
                "--child",
                str(threads),
                str(int(mkldnn)),
            ]
            result = subprocess.run(
                command, env={**os.environ, **env}, capture_output=True, text=True, check=True
            )
            runs[threads] = json.loads(result.stdout.strip().splitlines()[-1])
        digests = {run["md5"] for run in runs.values()}
        print(
            json.dumps({"probe": name, "invariant": len(digests) == 1, "runs": runs}), flush=True
        )


if __name__ == "__main__":
    main()
