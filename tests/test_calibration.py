"""Temperature scaling and the calibration error, against independent computations."""

import math

import numpy as np
import pytest
import torch

from mnistpipe.modeling.calibration import (
    ECE_BINS,
    TEMPERATURE_RANGE,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_table,
    softmax,
)


def random_logits(rows, classes=10, scale=3.0, seed=0):
    return np.random.default_rng(seed).normal(scale=scale, size=(rows, classes))


def sampled_labels(logits, temperature, seed=1):
    """Labels drawn from softmax(logits / temperature): the model is calibrated at that T."""
    scaled = logits / temperature
    probabilities = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    uniform = np.random.default_rng(seed).random((len(logits), 1))
    labels = (probabilities.cumsum(axis=1) < uniform).sum(axis=1)
    return np.minimum(labels, logits.shape[1] - 1)


def torch_nll(logits, labels, temperature):
    scaled = torch.tensor(logits, dtype=torch.float64) / temperature
    return torch.nn.functional.cross_entropy(scaled, torch.tensor(labels)).item()


def grid_minimum(logits, labels):
    """The NLL's minimiser by brute force: a fine log grid, then a finer one around its best."""

    def best(grid):
        losses = [negative_log_likelihood(logits, labels, t) for t in grid]
        return float(grid[int(np.argmin(losses))]), min(losses)

    coarse, _ = best(np.geomspace(*TEMPERATURE_RANGE, 1200))
    return best(np.geomspace(coarse / 1.01, coarse * 1.01, 801))


def reference_bins(probabilities, labels, bins=ECE_BINS):
    """Per bin (count, accuracy, mean confidence), by a plain loop over the images: bin b holds
    b/bins < confidence <= (b+1)/bins, and a confidence of exactly 0 joins bin 0."""
    members = [[] for _ in range(bins)]
    for row, label in zip(probabilities.tolist(), labels.tolist(), strict=True):
        confidence = max(row)
        correct = row.index(confidence) == label
        for b in range(bins):
            if b / bins < confidence <= (b + 1) / bins or (b == 0 and confidence == 0):
                members[b].append((correct, confidence))
                break
        else:
            raise AssertionError(f"confidence {confidence} fits no bin")
    table = []
    for group in members:
        if group:
            accuracy = sum(c for c, _ in group) / len(group)
            table.append((len(group), accuracy, sum(p for _, p in group) / len(group)))
        else:
            table.append((0, math.nan, math.nan))
    return table


def reference_ece(probabilities, labels, bins=ECE_BINS):
    table = reference_bins(probabilities, labels, bins)
    return sum(n * abs(acc - conf) for n, acc, conf in table if n) / len(labels)


def rows_with_confidence(confidences, classes=10):
    """Rows whose largest entry, class 0's, is each given confidence exactly (they sum to 1
    where that confidence allows; ECE only reads the largest entry and where it is)."""
    rows = []
    for confidence in confidences:
        rest = min((1.0 - confidence) / (classes - 1), confidence / 2)
        rows.append([confidence] + [rest] * (classes - 1))
    return np.array(rows)


# softmax and the negative log-likelihood


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_softmax_rows_sum_to_one_and_match_torch(temperature):
    logits = random_logits(500, scale=5.0)
    ours = softmax(logits, temperature)
    theirs = torch.softmax(torch.tensor(logits) / temperature, dim=1).numpy()
    assert ours.dtype == np.float64 and ours.shape == (500, 10)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_softmax_of_huge_logits_does_not_overflow():
    logits = np.array([[1000.0, 999.0, -1000.0], [-800.0, -800.0, -801.0]])
    ours = softmax(logits)
    theirs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 3.3, 20.0])
def test_negative_log_likelihood_is_torch_cross_entropy(temperature):
    logits = random_logits(1000, scale=4.0, seed=5)
    labels = np.random.default_rng(6).integers(0, 10, 1000)
    ours = negative_log_likelihood(logits, labels, temperature)
    assert isinstance(ours, float)
    assert ours == pytest.approx(torch_nll(logits, labels, temperature), rel=1e-12, abs=1e-12)


def test_negative_log_likelihood_of_huge_logits_is_finite():
    logits = np.array([[500.0, 0.0], [0.0, 500.0], [300.0, 301.0]])
    labels = np.array([0, 0, 1])
    ours = negative_log_likelihood(logits, labels, 0.5)
    assert math.isfinite(ours)
    assert ours == pytest.approx(torch_nll(logits, labels, 0.5), rel=1e-12)


# fit_temperature


@pytest.mark.parametrize(("scale", "true_t"), [(3.0, 1.0), (4.0, 2.0), (2.0, 0.4)])
def test_fit_temperature_is_the_grid_search_minimum(scale, true_t):
    logits = random_logits(3000, scale=scale, seed=11)
    labels = sampled_labels(logits, true_t, seed=12)
    fitted = fit_temperature(logits, labels)
    grid_t, grid_loss = grid_minimum(logits, labels)
    assert fitted == pytest.approx(grid_t, rel=1e-4, abs=1e-4)
    # No temperature of the grid does better, up to the rounding to 4 decimals.
    assert negative_log_likelihood(logits, labels, fitted) <= grid_loss + 1e-7


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    logits = random_logits(20_000, scale=4.0, seed=21)
    labels = sampled_labels(logits, 2.0, seed=22)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, abs=0.1)


def test_fit_temperature_is_rounded_to_four_decimals_and_in_range():
    logits = random_logits(2000, scale=4.0, seed=31)
    labels = sampled_labels(logits, 1.37, seed=32)
    fitted = fit_temperature(logits, labels)
    assert isinstance(fitted, float)
    assert TEMPERATURE_RANGE[0] <= fitted <= TEMPERATURE_RANGE[1]
    assert round(fitted * 10_000) == pytest.approx(fitted * 10_000, abs=1e-6)
    assert float(f"{fitted:.4f}") == fitted


def test_fit_temperature_softens_an_overconfident_model_and_sharpens_an_unsure_one():
    logits = random_logits(4000, scale=3.0, seed=41)
    labels = sampled_labels(logits, 1.0, seed=42)
    # The same model with its logits scaled up is overconfident (T > 1), scaled down unsure.
    assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits / 4.0, labels) == pytest.approx(0.25, rel=0.1)


def test_fit_temperature_never_changes_a_prediction():
    logits = random_logits(5000, scale=4.0, seed=51)
    labels = sampled_labels(logits, 1.8, seed=52)
    fitted = fit_temperature(logits, labels)
    assert fitted != 1.0
    before = softmax(logits, 1.0)
    after = softmax(logits, fitted)
    np.testing.assert_array_equal(after.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_fit_temperature_is_deterministic():
    logits = random_logits(2000, seed=61)
    labels = sampled_labels(logits, 1.5, seed=62)
    assert fit_temperature(logits, labels) == fit_temperature(logits.copy(), labels.copy())


# expected_calibration_error and reliability_table


def test_ece_of_a_hand_made_case():
    # Every confidence is 0.9 but only half are right: ECE = |0.5 - 0.9| = 0.4.
    probabilities = np.array([[0.9, 0.1]] * 4)
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4, abs=1e-12)
    # Perfectly confident and always right: ECE 0.
    certain = np.eye(3)
    assert expected_calibration_error(certain, np.arange(3)) == 0.0


def test_ece_of_two_bins_by_hand():
    # 2 images at 0.6 (one right) and 2 at 0.95 (both right):
    # (2/4) * |0.5 - 0.6| + (2/4) * |1.0 - 0.95| = 0.05 + 0.025 = 0.075.
    probabilities = np.array([[0.6, 0.4], [0.4, 0.6], [0.95, 0.05], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.075, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=rng.uniform(0.5, 5.0), size=(2000, 10))
    probabilities = softmax(logits)
    labels = rng.integers(0, 10, 2000)
    labels[:1000] = probabilities[:1000].argmax(axis=1)  # some right, some wrong
    ours = expected_calibration_error(probabilities, labels)
    assert isinstance(ours, float)
    assert ours == pytest.approx(reference_ece(probabilities, labels), rel=1e-12, abs=1e-15)


def test_confidences_on_bin_edges_go_to_the_lower_bin():
    # Every edge k/15 (k = 1..15), and a confidence of exactly 0 (a degenerate all-zero row).
    edges = [k / ECE_BINS for k in range(1, ECE_BINS + 1)]
    probabilities = np.vstack([np.zeros((1, 10)), rows_with_confidence(edges)])
    labels = np.zeros(len(probabilities), dtype=int)
    table = reliability_table(probabilities, labels)
    # 0 and 1/15 share bin 0; edge k/15 lies in bin k-1: (k-1)/15 < c <= k/15.
    assert table["images"].tolist() == [2] + [1] * (ECE_BINS - 1)
    assert reference_bins(probabilities, labels)[0][0] == 2
    ours = expected_calibration_error(probabilities, labels)
    assert ours == pytest.approx(reference_ece(probabilities, labels), rel=1e-12)


def test_confidence_one_is_in_the_last_bin_and_two_fifteenths_in_the_second():
    probabilities = np.vstack([np.eye(10)[:3], rows_with_confidence([2 / 15])])
    labels = np.array([0, 1, 5, 0])  # the third one-hot row is wrong
    table = reliability_table(probabilities, labels)
    assert table["images"].iloc[-1] == 3
    assert table["images"].iloc[1] == 1 and table["images"].iloc[2] == 0
    assert table["accuracy"].iloc[-1] == pytest.approx(2 / 3, abs=1e-6)
    assert table["confidence"].iloc[-1] == 1.0
    assert table["confidence"].iloc[1] == pytest.approx(2 / 15, abs=1e-6)
    # (3/4) * |2/3 - 1| + (1/4) * |1 - 2/15|
    expected = 0.75 * (1 / 3) + 0.25 * (13 / 15)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)


def test_reliability_table_rows_and_edges():
    rng = np.random.default_rng(7)
    probabilities = softmax(rng.normal(scale=1.5, size=(700, 10)))
    labels = rng.integers(0, 10, 700)
    table = reliability_table(probabilities, labels)
    assert list(table.columns) == ["lower", "upper", "images", "accuracy", "confidence"]
    assert len(table) == ECE_BINS == 15
    assert table["images"].sum() == 700
    assert table["lower"].iloc[0] == 0.0 and table["upper"].iloc[-1] == 1.0
    np.testing.assert_array_equal(table["lower"].to_numpy()[1:], table["upper"].to_numpy()[:-1])
    np.testing.assert_allclose(table["upper"] - table["lower"], 1 / 15, atol=2e-6)
    np.testing.assert_allclose(table["lower"], np.arange(15) / 15, atol=1e-6)
    reference = reference_bins(probabilities, labels)
    for (_, row), (count, accuracy, confidence) in zip(table.iterrows(), reference, strict=True):
        assert row["images"] == count
        if count:
            assert row["accuracy"] == pytest.approx(accuracy, abs=1e-6)
            assert row["confidence"] == pytest.approx(confidence, abs=1e-6)
            assert row["lower"] < row["confidence"] <= row["upper"] + 1e-6
        else:
            assert math.isnan(row["accuracy"]) and math.isnan(row["confidence"])
    # With ten classes no confidence is below 1/10: the first bin is empty.
    assert table["images"].iloc[0] == 0 and math.isnan(table["accuracy"].iloc[0])
    # The table's bins give the ECE, up to its rounding to 6 decimals.
    filled = table[table["images"] > 0]
    from_table = (filled["images"] * (filled["accuracy"] - filled["confidence"]).abs()).sum()
    ece = expected_calibration_error(probabilities, labels)
    assert from_table / 700 == pytest.approx(ece, abs=1e-5)


def test_reliability_table_of_other_bin_counts():
    probabilities = rows_with_confidence([0.25, 0.5, 0.75, 1.0], classes=4)
    labels = np.array([0, 1, 0, 0])
    table = reliability_table(probabilities, labels, bins=4)
    assert table["images"].tolist() == [1, 1, 1, 1]
    assert table["accuracy"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert table["upper"].tolist() == [0.25, 0.5, 0.75, 1.0]
    ece = expected_calibration_error(probabilities, labels, bins=4)
    assert ece == pytest.approx(reference_ece(probabilities, labels, bins=4), abs=1e-12)
    assert ece == pytest.approx((0.75 + 0.5 + 0.25 + 0.0) / 4, abs=1e-12)
