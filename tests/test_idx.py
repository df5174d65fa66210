import struct

import numpy as np
import pytest

from mnistpipe.data import idx
from mnistpipe.errors import PipelineError


def write(path, array):
    path.write_bytes(idx.encode(array))


@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_round_trip(tmp_path, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    write(tmp_path / "file", array)
    back = idx.read(tmp_path / "file")
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_encoding_matches_the_published_layout():
    # Header of MNIST's labels file: magic 0x00000801, then the count, big-endian.
    data = idx.encode(np.array([5, 0, 4], dtype=np.uint8))
    assert data == struct.pack(">II", 0x801, 3) + bytes([5, 0, 4])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda data: b"\x00\x00\x09" + data[3:], "bad magic number 0x00000903"),
        (lambda data: b"\x01" + data[1:], "bad magic number 0x01000803"),
        (
            lambda data: data[:-1],
            "truncated: shape (2, 28, 28) needs 1568 bytes of data, found 1567",
        ),
        (lambda data: data[:10], "truncated: header of 3 dimensions is incomplete"),
        (lambda data: data[:3], "truncated: 3 bytes is too short"),
        (lambda data: data + b"\x00\x00", "2 unexpected bytes after the data"),
    ],
)
def test_corrupt_files_are_named_errors(tmp_path, mutate, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx.encode(np.zeros((2, 28, 28), dtype=np.uint8))))
    with pytest.raises(PipelineError) as error:
        idx.read_images(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_label_out_of_range_is_an_error(tmp_path):
    path = tmp_path / "labels"
    write(path, np.array([1, 2, 10, 3, 11], dtype=np.uint8))
    with pytest.raises(
        PipelineError, match=r"labels: label 10 at index 2 is outside 0-9 \(2 such"
    ):
        idx.read_labels(path)


def test_image_file_with_wrong_dimensions_is_an_error(tmp_path):
    path = tmp_path / "images"
    write(path, np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(
        PipelineError, match=r"expected images of shape \(N, 28, 28\), found \(2, 32"
    ):
        idx.read_images(path)
    with pytest.raises(PipelineError, match="expected labels of shape"):
        idx.read_labels(path)


def test_image_and_label_counts_must_agree(tmp_path):
    write(tmp_path / "images", np.zeros((3, 28, 28), dtype=np.uint8))
    write(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    with pytest.raises(PipelineError, match="4 labels for the 3 images of"):
        idx.read_pair(tmp_path / "images", tmp_path / "labels")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PipelineError, match="absent: file not found"):
        idx.read(tmp_path / "absent")
