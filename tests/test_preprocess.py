import json

import numpy as np
import pytest

from mnistpipe.data import processed
from mnistpipe.data.processed import PreprocessParams, Split
from mnistpipe.errors import PipelineError
from stages.preprocess import class_counts, split_dataset, stratified_choice


def imbalanced_labels(rng):
    # 1000 labels with very unequal classes: class k has 20 * (k + 1) images, shuffled.
    labels = np.repeat(np.arange(10), [20 * (k + 1) for k in range(10)])[:1000]
    return rng.permutation(labels).astype(np.uint8)


def test_choice_is_stratified_disjoint_and_complete():
    labels = imbalanced_labels(np.random.default_rng(0))
    chosen, rest = stratified_choice(labels, 110, seed=1, key="preprocess.val_size")
    assert len(chosen) == 110 and len(rest) == len(labels) - 110
    assert np.array_equal(np.sort(np.concatenate([chosen, rest])), np.arange(len(labels)))
    expected = np.bincount(labels, minlength=10) * 110 / len(labels)
    assert np.all(np.abs(np.bincount(labels[chosen], minlength=10) - expected) <= 1)
    assert np.all(np.diff(chosen) > 0) and np.all(np.diff(rest) > 0)


def test_choice_depends_on_the_seed_only():
    labels = imbalanced_labels(np.random.default_rng(0))
    first = stratified_choice(labels, 100, seed=5, key="k")[0]
    assert np.array_equal(first, stratified_choice(labels, 100, seed=5, key="k")[0])
    assert not np.array_equal(first, stratified_choice(labels, 100, seed=6, key="k")[0])


@pytest.mark.parametrize("size", [9, 991, 5000])
def test_choice_that_cannot_fit_names_the_param(size):
    labels = imbalanced_labels(np.random.default_rng(0))
    with pytest.raises(
        PipelineError, match=f"preprocess.val_size={size} does not fit 1000 images"
    ):
        stratified_choice(labels, size, seed=0, key="preprocess.val_size")


def test_split_applies_subset_then_validation_and_leaves_test_alone():
    rng = np.random.default_rng(2)
    labels = imbalanced_labels(rng)
    train = Split(rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels)
    test = Split(np.zeros((7, 28, 28), np.uint8), np.arange(7, dtype=np.uint8))
    splits = split_dataset(train, test, PreprocessParams(val_size=50, subset=400), seed=3)
    assert splits["test"] is test
    assert len(splits["train"].labels) == 350 and len(splits["val"].labels) == 50
    # Every kept image is an original one, and no image is in both splits.
    originals = {image.tobytes(): label for image, label in zip(train.images, labels, strict=True)}
    for split in ("train", "val"):
        for image, label in zip(splits[split].images, splits[split].labels, strict=True):
            assert originals[image.tobytes()] == label
    seen = [image.tobytes() for split in ("train", "val") for image in splits[split].images]
    assert len(set(seen)) == 400


def test_class_counts_table():
    splits = {
        "train": Split(np.zeros((3, 28, 28), np.uint8), np.array([0, 0, 9], np.uint8)),
        "val": Split(np.zeros((1, 28, 28), np.uint8), np.array([9], np.uint8)),
    }
    table = class_counts(splits, tuple("abcdefghij"))
    assert list(table.columns) == ["name", "train", "val"]
    assert table.loc[0, "train"] == 2 and table.loc[9, "train"] == 1 and table.loc[9, "val"] == 1
    assert table["train"].sum() == 3 and table.loc[5, "name"] == "f"


def make_splits(rng):
    return {
        name: Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        for name, n in [("train", 30), ("val", 10), ("test", 20)]
    }


def test_processed_round_trip_and_stats(tmp_path):
    splits = make_splits(np.random.default_rng(4))
    meta = processed.save(tmp_path, splits, "mnist", tuple("0123456789"))
    pixels = splits["train"].images.reshape(-1) / 255.0
    assert meta.mean == pytest.approx(sum(pixels) / len(pixels), rel=1e-12)
    assert meta.std == pytest.approx(np.sqrt(np.mean((pixels - meta.mean) ** 2)), rel=1e-12)
    assert processed.load_meta(tmp_path) == meta
    assert meta.sizes == {"train": 30, "val": 10, "test": 20}
    for name, split in splits.items():
        loaded = processed.load_split(tmp_path, name)
        np.testing.assert_array_equal(loaded.images, split.images)
        np.testing.assert_array_equal(loaded.labels, split.labels)
        assert loaded.labels.dtype == np.uint8


def test_processed_files_are_byte_identical_run_to_run(tmp_path):
    splits = make_splits(np.random.default_rng(4))
    processed.save(tmp_path / "a", splits, "mnist", tuple("0123456789"))
    processed.save(tmp_path / "b", splits, "mnist", tuple("0123456789"))
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_processed_load_errors_name_the_file(tmp_path):
    with pytest.raises(PipelineError, match=r"meta.json: file not found; run the preprocess"):
        processed.load_split(tmp_path, "train")
    processed.save(tmp_path, make_splits(np.random.default_rng(4)), "mnist", tuple("0123456789"))
    np.save(tmp_path / "val_images.npy", np.zeros((10, 28, 27), np.uint8))
    with pytest.raises(PipelineError, match=r"val_images.npy: expected uint8 \(10, 28, 28\)"):
        processed.load_split(tmp_path, "val")
    (tmp_path / "test_labels.npy").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match=r"test_labels.npy: not a valid .npy file"):
        processed.load_split(tmp_path, "test")
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["mean"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match="not valid processed-data metadata"):
        processed.load_meta(tmp_path)
