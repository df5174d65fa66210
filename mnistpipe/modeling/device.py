"""Where and how torch computes: the device, the seed, deterministic algorithms, threads, and
the CPU numerics mode (numerics.py's MODES) applied and checked inside a stage.

Shared by training and evaluation; nothing here knows about models or data. It imports torch,
so only a stage that the numerics launcher started may import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from mnistpipe.config import Config, Device, rule
from mnistpipe.errors import PipelineError
from mnistpipe.modeling import portable_conv
from mnistpipe.modeling.numerics import LAUNCHED_MODE, MODES


class RuntimeParams(Config):
    """The `runtime` section: where and how train and evaluate compute, not what. Checkpoints
    record the device and the numerics mode beside the recipe, never the thread count."""

    device: Device = Field(
        description="`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`"
    )
    threads: Annotated[
        int, rule(lambda v: v >= 0, "must be 0 (all cores) or a positive count")
    ] = Field(
        description="CPU threads; 0 = all cores (in portable numerics the bytes are the"
        " same for any count)"
    )
    numerics: Literal[tuple(MODES)] = Field(
        description="CPU numerics (numerics.py): portable gives the same bytes on any x86-64"
        " CPU with AVX2, fast (oneDNN) only on the same CPU model and thread count"
    )


def select_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} was asked for, but CUDA is not available here")
    return torch.device(name)


def make_deterministic(seed: int, threads: int) -> None:
    """Seed torch and turn on deterministic algorithms; `threads` 0 means every core."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # That also fills every new tensor with NaN, a guard against ops that leave memory unset;
    # every op here writes its whole output (the repeat and thread tests would see one that
    # didn't), and the fills were 5% of a training step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    keep_freed_memory()
    # cuBLAS needs this for deterministic matrix products; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 32 MiB for reuse instead of handing them back to
    the system: otherwise each step's activations (6 MiB each) are page-faulted in afresh,
    which cost 0.4 ms per tensor here. Not glibc (macOS, musl): nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 1 << 30)


def apply_numerics(name: str) -> None:
    """Set mode `name`'s run-time settings, and check that its load-time settings took effect
    (the process must have been started through this launcher). Call it after
    `torch.set_num_threads`, which resets MKL's thread count."""
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


def check_numerics_layers(name: str, model: nn.Module) -> None:
    """Refuse, naming it, a layer of `model` (an nn.Module) that mode `name` cannot run."""
    if MODES[name].portable_convolutions:
        portable_conv.check_layers(model)


def set_mkl_threads(count: int) -> None:
    """MKL's thread count for this thread's calls (CPU autograd runs on it too), through
    mkl_set_num_threads_local, the call torch itself makes. torch sets it when its first
    parallel op runs, so that op runs first here."""
    torch.ones(1024, 1024).sum()  # ATen's lazy thread set-up, which sets MKL's count too
    library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    library.mkl_set_num_threads_local(ctypes.byref(ctypes.c_int(count)))  # Fortran entry


def mkl_settings() -> tuple[str | None, int | None]:
    """The CNR branch (None if off) and thread count MKL reports for a call from here."""
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
