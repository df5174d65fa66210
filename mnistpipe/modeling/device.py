"""Where and how torch computes: the device, the seed, deterministic algorithms, threads.

Shared by training and evaluation; nothing here knows about models or data.
"""

from __future__ import annotations

import ctypes
import os

import torch

from mnistpipe.errors import PipelineError


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
