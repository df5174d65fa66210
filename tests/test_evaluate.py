import itertools

import numpy as np
import pytest
import torch

from mnistpipe.modeling.metrics import (
    confusion_table,
    misclassified_table,
    per_class_table,
    summary_metrics,
)
from mnistpipe.modeling.page_scores import evenly_spread

CLASSES = tuple("0123456789")


def fake_predictions(seed=0, count=500):
    """Labels, and logits that are right about 80% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    logits = rng.normal(size=(count, 10)).astype(np.float32)
    right = rng.random(count) < 0.8
    logits[right, labels[right]] += 5.0
    return labels, torch.from_numpy(logits)


def test_summary_metrics_match_an_independent_computation():
    labels, logits = fake_predictions()
    metrics = summary_metrics(labels, logits)
    predicted = logits.argmax(1).numpy()
    # Independent: explicit loops over the samples and classes.
    correct = sum(int(p == t) for p, t in zip(predicted, labels, strict=True))
    assert metrics["accuracy"] == pytest.approx(correct / len(labels), abs=1e-6)
    assert metrics["misclassified"] == len(labels) - correct
    probabilities = np.exp(logits.numpy().astype(np.float64))
    probabilities /= probabilities.sum(1, keepdims=True)
    loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert metrics["loss"] == pytest.approx(loss, abs=1e-5)
    recalls, precisions = [], []
    for k in range(10):
        true_positive = np.sum((predicted == k) & (labels == k))
        recalls.append(true_positive / np.sum(labels == k))
        precisions.append(true_positive / np.sum(predicted == k))
    assert metrics["recall_macro"] == pytest.approx(np.mean(recalls), abs=1e-6)
    assert metrics["precision_macro"] == pytest.approx(np.mean(precisions), abs=1e-6)
    f1 = [2 * p * r / (p + r) for p, r in zip(precisions, recalls, strict=True)]
    assert metrics["f1_macro"] == pytest.approx(np.mean(f1), abs=1e-6)


def test_confusion_matrix_agrees_with_the_accuracy():
    labels, logits = fake_predictions(1)
    predicted = logits.argmax(1).numpy()
    table = confusion_table(labels, predicted, CLASSES)
    assert table.shape == (10, 10) and table.index.name == "actual"
    assert table.columns.name == "predicted"
    assert table.to_numpy().sum() == len(labels)
    accuracy = summary_metrics(labels, logits)["accuracy"]
    assert np.trace(table.to_numpy()) == round(accuracy * len(labels))
    for actual, guess in [(3, 3), (2, 7)]:
        expected = np.sum((labels == actual) & (predicted == guess))
        assert table.loc[str(actual), str(guess)] == expected
    csv = table.to_csv().splitlines()
    assert csv[0] == "actual,0,1,2,3,4,5,6,7,8,9"


def test_per_class_recall_is_the_confusion_diagonal_over_row_sums():
    labels, logits = fake_predictions(2)
    predicted = logits.argmax(1).numpy()
    matrix = confusion_table(labels, predicted, CLASSES).to_numpy()
    table = per_class_table(labels, predicted, CLASSES)
    np.testing.assert_allclose(table["recall"], np.diag(matrix) / matrix.sum(1), atol=1e-6)
    np.testing.assert_allclose(table["precision"], np.diag(matrix) / matrix.sum(0), atol=1e-6)
    assert table["support"].tolist() == matrix.sum(1).tolist()


def test_misclassified_rows_hold_the_top_two_classes():
    labels = np.array([0, 1, 2])
    logits = torch.tensor(
        [
            [5.0, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # right
            [0.0, 0, 0, 3, 2, 0, 0, 0, 0, 0],  # wrong: 3, then 4
            [0.0, 0, 1, 0, 0, 0, 0, 0, 0, 4],
        ]
    )
    probabilities = torch.softmax(logits, 1)
    table = misclassified_table(labels, probabilities.numpy())
    assert table["index"].tolist() == [1, 2]
    assert table["predicted"].tolist() == [3, 9] and table["second"].tolist() == [4, 2]
    assert table["confidence"].iloc[0] == pytest.approx(probabilities[1, 3].item(), abs=1e-6)
    assert table["second_confidence"].iloc[1] == pytest.approx(
        probabilities[2, 2].item(), abs=1e-6
    )


def test_a_share_of_the_non_digit_pages_is_evenly_spread_and_never_none():
    pages = [(np.full((2, 2), shade, np.float32), f"shade {shade}") for shade in range(256)]
    assert all(a is b for a, b in zip(evenly_spread(pages, 1.0), pages, strict=True))
    names = [name for _, name in evenly_spread(pages, 0.1)]
    assert len(names) == 26  # ceil(25.6)
    assert names[0] == "shade 0" and names[-1] == "shade 255"  # dark to light, both ends
    shades = [int(name.split()[1]) for name in names]
    assert all(9 <= b - a <= 11 for a, b in itertools.pairwise(shades))  # 255 / 25 apart
    assert [name for _, name in evenly_spread(pages[:3], 0.01)] == ["shade 0"]
