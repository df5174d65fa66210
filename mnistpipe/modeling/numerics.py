"""CPU numerics modes, and the launcher that sets them before torch is imported.

    python -m mnistpipe.modeling.numerics MODE MODULE [ARGS...]

runs `python -m MODULE ARGS...` in MODE; dvc.yaml runs the stages that compute through it,
so the mode is in each stage's command in dvc.lock. MKL, ATen and OpenMP read their settings
once, when they load, so only a launcher (or the environment) can set them:

- `portable`: the same bytes on every x86-64 CPU with AVX2, Intel or AMD, whatever the thread
  count. Every convolution, forward and backward, runs in portable_conv.py: NNPACK's AVX2
  kernels, which parallelise over outputs only, in channel chunks that no CPU's cache blocking
  splits. oneDNN is off (its kernels depend on the ISA, the caches and the thread count); ATen
  runs its AVX2 kernels (no AVX-512 variants), which give the same bytes with any thread
  count; what still reaches MKL (the linear layers) runs on its COMPATIBLE branch, the only
  fixed branch MKL honours on non-Intel CPUs, and on one thread, since that branch has no
  thread-invariant STRICT mode. OpenMP's idle threads sleep instead of spinning, so that they
  leave the cores to NNPACK's thread pool.
- `fast`: oneDNN and every kernel the CPU allows; the same bytes only on the same CPU model
  with the same thread count.

On a CUDA device the mode changes nothing: a GPU gives the same bytes on the same GPU model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import runpy
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistpipe.errors import PipelineError

LAUNCHED_MODE = "MNISTPIPE_NUMERICS"  # set by the launcher, so a stage can check its params


@dataclass(frozen=True)
class Mode:
    environment: dict[str, str]  # read by ATen, MKL and OpenMP when they load
    onednn: bool  # torch.backends.mkldnn.enabled
    portable_convolutions: bool  # every CPU convolution through portable_conv.py
    capability: str | None  # the ATen kernels torch must report, None = whatever it picks
    mkl_branch: str | None  # the CNR branch MKL must report, None = not checked
    mkl_threads: int | None  # MKL's threads for this process's calls, None = torch's count


# Mode name -> settings. `train.numerics` and `evaluate.numerics` name one.
MODES: dict[str, Mode] = {
    "portable": Mode(
        environment={
            "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_CBWR": "COMPATIBLE",
            # Spinning OpenMP threads hold the cores that NNPACK's pool needs next: with them
            # spinning, 2 threads made a step 0.95x the time of 1; sleeping, 0.7x.
            "OMP_WAIT_POLICY": "PASSIVE",
        },
        onednn=False,
        portable_convolutions=True,
        capability="AVX2",
        mkl_branch="COMPATIBLE",
        mkl_threads=1,
    ),
    "fast": Mode(
        environment={},
        onednn=True,
        portable_convolutions=False,
        capability=None,
        mkl_branch=None,
        mkl_threads=None,
    ),
}


def apply(name: str) -> None:
    """Set mode `name`'s run-time settings, and check that its load-time settings took effect
    (the process must have been started through this launcher). Call it after
    `torch.set_num_threads`, which resets MKL's thread count."""
    import torch

    from mnistpipe.modeling import (
        portable_conv,
    )  # imports torch: not before the launcher's settings

    mode = MODES[name]
    torch.backends.mkldnn.enabled = mode.onednn
    if mode.portable_convolutions:
        portable_conv.install()
    if mode.mkl_threads and torch.backends.mkl.is_available():
        set_mkl_threads(mode.mkl_threads)
    launched = os.environ.get(LAUNCHED_MODE) or None
    problems = (
        [f"the process was launched in {launched!r}"] if launched not in (None, name) else []
    )
    problems += [
        f"{key} is {os.environ.get(key)!r}, not {value!r}"
        for key, value in mode.environment.items()
        if os.environ.get(key) != value
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    if mode.capability and capability != mode.capability:
        problems.append(f"ATen runs its {capability} kernels, not {mode.capability}")
    if mode.mkl_branch and torch.backends.mkl.is_available():
        branch, threads = mkl_settings()
        if branch != mode.mkl_branch:
            problems.append(f"MKL reports CNR {branch!r}, not {mode.mkl_branch}")
        if mode.mkl_threads and threads != mode.mkl_threads:
            problems.append(f"MKL runs {threads} threads, not {mode.mkl_threads}")
    if problems:  # a stage started without the launcher, or a build that ignores the knobs
        raise PipelineError(
            f"numerics {name!r} did not take effect ({'; '.join(problems)}): run the stage as"
            f" python -m mnistpipe.modeling.numerics {name} stages.<name> ..., as dvc.yaml does"
        )


def check_model(name: str, model: Any) -> None:
    """Refuse, naming it, a layer of `model` (an nn.Module) that mode `name` cannot run."""
    if MODES[name].portable_convolutions:
        from mnistpipe.modeling import portable_conv

        portable_conv.check_layers(model)


def set_mkl_threads(count: int) -> None:
    """MKL's thread count for this thread's calls (CPU autograd runs on it too), through
    mkl_set_num_threads_local, the call torch itself makes. torch sets it when its first
    parallel op runs, so that op runs first here."""
    import ctypes

    import torch

    torch.ones(1024, 1024).sum()  # ATen's lazy thread set-up, which sets MKL's count too
    library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    library.mkl_set_num_threads_local(ctypes.byref(ctypes.c_int(count)))  # Fortran entry


def mkl_settings() -> tuple[str | None, int | None]:
    """The CNR branch (None if off) and thread count MKL reports for a call from here."""
    import torch

    captured: list[str] = []
    with _stdout_into(captured), torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
        torch.ones(64, 64) @ torch.ones(64, 64)  # one MKL call, to make it print
    # e.g. "MKL_VERBOSE SGEMM(...) 1.57ms CNR:COMPATIBLE Dyn:1 FastMM:1 TID:0  NThr:1"
    text = "".join(captured)
    branch, threads = re.search(r"CNR:(\S+)", text), re.search(r"NThr:(\d+)", text)
    return (
        None if branch is None or branch.group(1) == "OFF" else branch.group(1),
        int(threads.group(1)) if threads else None,
    )


@contextlib.contextmanager
def _stdout_into(captured: list[str]) -> Iterator[None]:
    """Append to `captured` what C code writes to file descriptor 1 inside the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            capture.seek(0)
            captured.append(capture.read())


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in MODES:
        sys.exit(
            f"usage: python -m mnistpipe.modeling.numerics {{{','.join(MODES)}}} MODULE [ARGS...]"
            + (f"\nnumerics: error: unknown mode {argv[0]!r}" if argv else "")
        )
    name, module, args = argv[0], argv[1], argv[2:]
    os.environ.update(MODES[name].environment)  # before anything imports torch
    os.environ[LAUNCHED_MODE] = name
    sys.argv = [module, *args]
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None:
        sys.exit(f"numerics: error: no module named {module!r}")
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
