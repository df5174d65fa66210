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

import importlib.util
import os
import runpy
import sys
from dataclasses import dataclass

LAUNCHED_MODE = "MNISTPIPE_NUMERICS"  # set by the launcher, so a stage can check its params


@dataclass(frozen=True)
class Mode:
    environment: dict[str, str]  # read by ATen, MKL and OpenMP when they load
    onednn: bool  # torch.backends.mkldnn.enabled
    portable_convolutions: bool  # every CPU convolution through portable_conv.py
    capability: str | None  # the ATen kernels torch must report, None = whatever it picks
    mkl_branch: str | None  # the CNR branch MKL must report, None = not checked
    mkl_threads: int | None  # MKL's threads for this process's calls, None = torch's count


# Mode name -> settings. `runtime.numerics` names one, for train and evaluate; device.py applies it
# inside the stage (apply_numerics), after the launcher below has set its environment.
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
