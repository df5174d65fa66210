"""The idx file format that MNIST ships in, for unsigned-byte data.

Layout (big-endian): two zero bytes, the type code 0x08 (unsigned byte), the number of
dimensions, one uint32 per dimension, then the values in C order. Images are idx3
(N, 28, 28), labels idx1 (N,).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mnistpipe.errors import PipelineError

UBYTE = 0x08
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


def encode(array: np.ndarray) -> bytes:
    """The idx bytes of a uint8 array of 1 to 4 dimensions."""
    if array.dtype != np.uint8:
        raise ValueError(f"idx encoding supports uint8 only, got {array.dtype}")
    if not 1 <= array.ndim <= 4:
        raise ValueError(f"idx encoding supports 1 to 4 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes, name: str) -> np.ndarray:
    """Parse idx bytes; `name` (usually the file path) prefixes every error message."""
    if len(data) < 4:
        raise PipelineError(f"{name}: truncated: {len(data)} bytes is too short for an idx header")
    zeros, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zeros != 0 or type_code != UBYTE or not 1 <= ndim <= 4:
        magic = int.from_bytes(data[:4], "big")
        raise PipelineError(
            f"{name}: bad magic number 0x{magic:08x}; expected 0x000008NN "
            "(idx of unsigned bytes with NN = 01 to 04 dimensions)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise PipelineError(f"{name}: truncated: header of {ndim} dimensions is incomplete")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    if actual < expected:
        raise PipelineError(
            f"{name}: truncated: shape {shape} needs {expected} bytes of data, found {actual}"
        )
    if actual > expected:
        extra = actual - expected
        raise PipelineError(f"{name}: {extra} unexpected bytes after the data of {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    return decode(data, str(path))


def read_images(path: str | Path) -> np.ndarray:
    """(N, 28, 28) uint8 images from an idx3 file."""
    images = read(path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise PipelineError(f"{path}: expected images of shape (N, 28, 28), found {images.shape}")
    return images


def read_labels(path: str | Path) -> np.ndarray:
    """(N,) uint8 class labels in 0-9 from an idx1 file."""
    labels = read(path)
    if labels.ndim != 1:
        raise PipelineError(f"{path}: expected labels of shape (N,), found {labels.shape}")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise PipelineError(
            f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0-{NUM_CLASSES - 1}"
            f" ({bad.size} such labels)"
        )
    return labels


def read_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and their labels, checked to be of the same count."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise PipelineError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}"
        )
    return images, labels
