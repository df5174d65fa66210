"""The out-of-distribution score, its threshold, the synthetic non-digits and outlier exposure."""

import math

import numpy as np
import pytest
import torch

from mnistpipe.deploy.imaging import ImageError, NoInkError, to_mnist
from mnistpipe.modeling import ood, synthetic
from mnistpipe.modeling.models import build_model, predict_logits
from mnistpipe.modeling.recipe import make_optimizer, make_schedule
from mnistpipe.modeling.training import outlier_loss, train_epoch
from tests.conftest import RECIPE, SMALL_CNN, toy_data


def test_the_score_is_minus_the_largest_logit_exactly():
    logits = np.array([[0.0, -1.0], [1000.0, 999.5], [-5.0, 3.0]], dtype=np.float32)
    assert ood.score(logits).tolist() == [-0.0, -1000.0, -3.0]
    assert ood.score(logits).dtype == np.float64


@pytest.mark.parametrize("rejection", [0.0, 0.01, 0.1, 0.5])
def test_the_threshold_flags_at_most_the_asked_share(rejection):
    scores = np.random.default_rng(0).normal(size=5000)
    threshold = ood.fit_threshold(scores, rejection)
    flagged = ood.flagged(scores, threshold).mean()
    assert flagged <= rejection and flagged >= rejection - 0.002
    assert round(threshold, ood.THRESHOLD_DECIMALS) == threshold


def test_auroc_counts_refused_inputs_as_certain_rejections():
    digits = np.array([-10.0, -9.0, -8.0])
    assert ood.auroc(digits, np.array([-7.0, np.inf])) == 1.0
    # Of the 6 (outlier, digit) pairs, +inf ranks above all 3 digits and -9.5 above one.
    assert ood.auroc(digits, np.array([-9.5, np.inf])) == pytest.approx(4 / 6)
    assert ood.auroc(digits, digits) == 0.5


@pytest.mark.parametrize("kind", list(synthetic.OOD_KINDS))
def test_each_kind_of_page_is_the_same_from_the_same_seed(kind):
    first, again, other = (synthetic.ood_pages(kind, seed) for seed in (5, 5, 6))
    _, count = synthetic.OOD_KINDS[kind]
    assert len(first) == count
    for (page, name), (same, same_name) in zip(first, again, strict=True):
        assert page.dtype == np.float32 and page.ndim == 2 and name == same_name
        np.testing.assert_array_equal(page, same)
        assert page.min() >= 0 and page.max() <= 255
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_blank_pages_are_all_refused_and_letters_all_reach_the_model():
    for page, _ in synthetic.ood_pages("blank", 1):
        with pytest.raises(NoInkError):
            to_mnist(page)
    letters = synthetic.ood_pages("letters", 1)
    assert {name.split()[0] for _, name in letters} == set(synthetic.LETTERS)
    for page, _ in letters:
        assert to_mnist(page).max() > 128  # refused pages would raise


def test_training_outliers_pass_the_preprocessing_and_hold_no_latin_letter():
    outliers = synthetic.training_outliers(40, seed=3)
    assert outliers.shape == (40, 28, 28) and outliers.dtype == np.uint8
    np.testing.assert_array_equal(outliers, synthetic.training_outliers(40, seed=3))
    assert not set(synthetic.TRAINING_GLYPHS) & set(synthetic.LETTERS + "0123456789")
    for image in outliers:  # what reaches the model: each passes to_mnist unchanged
        try:
            np.testing.assert_array_equal(to_mnist(image.astype(np.float32)), image)
        except ImageError:  # a 28x28 light-on-dark input the preprocessing keeps as it is
            pytest.fail("a training outlier would be refused before the model")


def test_the_outlier_loss_is_cross_entropy_against_equal_probabilities():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    log_p = torch.log_softmax(logits, 1)
    assert outlier_loss(logits).item() == pytest.approx(-log_p.mean().item(), rel=1e-6)
    assert outlier_loss(torch.zeros(4, 10)).item() == pytest.approx(math.log(10), rel=1e-6)


def test_outlier_exposure_flattens_the_outputs_on_outliers_and_keeps_the_digits():
    """Toy digits and noise: with outlier exposure the model's probabilities on the noise
    come close to equal (its loss against them nears log 10), without it they do not."""
    data = toy_data(400, seed=0)
    noise = torch.randint(0, 256, (200, 28, 28), generator=torch.Generator().manual_seed(1))
    noise = noise.to(torch.uint8)
    flatness, scores = {}, {}
    for per_batch in (0, 16):
        recipe = RECIPE.model_copy(update={"outliers_per_batch": per_batch, "epochs": 3})
        torch.manual_seed(0)
        model = build_model("cnn", SMALL_CNN, mean=0.1, std=0.3)
        optimizer = make_optimizer(model, recipe)
        schedule = make_schedule(optimizer, recipe, 3 * 13)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            _, accuracy = train_epoch(
                model, optimizer, schedule, data, recipe, generator, outliers=noise
            )
        assert accuracy > 0.9
        model.eval()
        noise_logits = predict_logits(model, noise, 100)
        flatness[per_batch] = outlier_loss(noise_logits).item() - math.log(10)
        digit_scores = ood.score(predict_logits(model, data.images, 100).numpy())
        scores[per_batch] = np.median(ood.score(noise_logits.numpy())) - np.median(digit_scores)
    assert flatness[16] < 0.2 < flatness[0], flatness
    assert scores[16] > scores[0], scores  # noise and digits further apart
