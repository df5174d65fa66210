import numpy as np
import pytest
import torch

from mnistpipe.errors import PipelineError
from mnistpipe.modeling import training
from mnistpipe.modeling.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.modeling.device import make_deterministic, select_device
from mnistpipe.modeling.models import build_model, to_unit
from mnistpipe.modeling.recipe import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from mnistpipe.modeling.training import (
    BLUR_SIDES,
    Data,
    augment,
    blur,
    fit,
    loss_and_accuracy,
    train_epoch,
)
from tests.conftest import RECIPE, SMALL_CNN, toy_data


def small_cnn(device: str = "cpu") -> torch.nn.Module:
    model = build_model("cnn", SMALL_CNN, mean=0.1, std=0.3)
    return model.to(device=device, memory_format=torch.channels_last)


def test_loss_falls_over_a_few_steps():
    make_deterministic(seed=0, threads=1)
    data = toy_data(320, seed=1)
    model = small_cnn()
    params = RECIPE.model_copy(update={"schedule": "none", "augment_rotate": 0.0})
    optimizer = make_optimizer(model, params)
    schedule = make_schedule(optimizer, params, total_steps=40)
    generator = torch.Generator().manual_seed(0)
    before, _ = loss_and_accuracy(model, data)
    losses = [
        train_epoch(model, optimizer, schedule, data, params, generator)[0] for _ in range(4)
    ]
    after, accuracy = loss_and_accuracy(model, data)
    assert losses[-1] < losses[0] and after < before * 0.5
    assert accuracy > 0.9


def test_fit_returns_the_best_validation_epoch():
    make_deterministic(seed=0, threads=1)
    recipe = RECIPE.model_copy(update={"epochs": 3})
    model, val = small_cnn(), toy_data(50, 2)
    result = fit(model, toy_data(200, 1), val, recipe, 0, show_progress=False)
    assert [row.epoch for row in result.history] == [1, 2, 3]
    first_best = max(result.history, key=lambda row: (row.val_accuracy, -row.epoch))
    assert result.best == first_best
    assert set(result.state_dict) == set(model.state_dict())
    # the state is the best epoch's: its validation accuracy, recomputed, is the best one's
    model.load_state_dict(result.state_dict)
    assert loss_and_accuracy(model, val)[1] == result.best.val_accuracy
    assert all(row.seconds > 0 for row in result.history)


def on_device(data: Data, device: str) -> Data:
    return Data(data.images.to(device), data.labels.to(device))


def checkpoint_of(model: torch.nn.Module, epoch: int = 1, val_accuracy: float = 0.5):
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return Checkpoint(
        "cnn", SMALL_CNN, RECIPE, state, "mnist", tuple("0123456789"), epoch, val_accuracy
    )


def trained_checkpoint_bytes(tmp_path, seed: int, device: str = "cpu") -> bytes:
    make_deterministic(seed, threads=1)
    model = small_cnn(device)
    train, val = on_device(toy_data(200, 1), device), on_device(toy_data(50, 2), device)
    result = fit(model, train, val, RECIPE, seed, show_progress=False)
    model.load_state_dict(result.state_dict)
    best = result.best
    path = tmp_path / f"{seed}-{device}.pt"
    save_checkpoint(path, checkpoint_of(model, best.epoch, best.val_accuracy))
    return path.read_bytes()


def test_training_is_deterministic_to_the_byte(tmp_path):
    first = trained_checkpoint_bytes(tmp_path / "a", seed=3)
    assert trained_checkpoint_bytes(tmp_path / "b", seed=3) == first
    assert trained_checkpoint_bytes(tmp_path / "c", seed=4) != first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_is_deterministic_to_the_byte(tmp_path):
    """With deterministic algorithms and CUBLAS_WORKSPACE_CONFIG (set by make_deterministic),
    a GPU gives the same weights run to run; they differ from the CPU's (other kernels, and
    bfloat16 autocast), which is why a checkpoint records its device."""
    first = trained_checkpoint_bytes(tmp_path / "a", seed=3, device="cuda")
    assert trained_checkpoint_bytes(tmp_path / "b", seed=3, device="cuda") == first
    assert trained_checkpoint_bytes(tmp_path / "c", seed=3) != first


def test_saved_checkpoints_are_byte_identical(tmp_path):
    make_deterministic(0, threads=1)
    checkpoint = checkpoint_of(small_cnn())
    save_checkpoint(tmp_path / "a.pt", checkpoint)
    save_checkpoint(tmp_path / "b.pt", checkpoint)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_augmentation_moves_pixels_but_keeps_shape_and_background():
    data = toy_data(16, 0)
    images = to_unit(data.images)
    draws = torch.rand(16, 4, generator=torch.Generator().manual_seed(0))
    moved = augment(images, RECIPE, draws)
    assert moved.shape == images.shape
    assert not torch.allclose(moved, images)
    assert moved.min().item() == pytest.approx(0.0, abs=1e-6)  # black comes in at the edges
    assert moved.max().item() <= 1.0 + 1e-6
    off = RECIPE.model_copy(update={"augment_rotate": 0, "augment_shift": 0, "augment_scale": 0})
    assert augment(images, off, draws) is images
    middle = torch.full((16, 4), 0.5)  # every draw at the centre of its range: the identity
    torch.testing.assert_close(augment(images, RECIPE, middle), images, atol=1e-4, rtol=0)


def test_pure_shift_moves_an_image_by_whole_pixels():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    params = RECIPE.model_copy(update={"augment_rotate": 0.0, "augment_scale": 0.0})
    moved = augment(image, params, torch.rand(1, 4, generator=torch.Generator().manual_seed(0)))
    # A sub-pixel shift spreads the dot; its mass moves by at most 2 px each way.
    rows, cols = torch.nonzero(moved[0, 0] > 1e-6, as_tuple=True)
    assert rows.min() >= 8 and rows.max() <= 12 and cols.min() >= 8 and cols.max() <= 12
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-4)
    # Draws of 1.0 on both shift axes sample 2 px further on: the dot moves exactly 2 px back.
    exact = augment(image, params, torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    assert torch.nonzero(exact[0, 0] > 0.99).tolist() == [[8, 8]]


def bilinear_up(image: np.ndarray, size: int) -> np.ndarray:
    """(s, s) -> (size, size) by bilinear interpolation between pixel centres, the edge pixel
    repeated beyond them: PyTorch's align_corners=False, written out."""
    centres = (np.arange(size) + 0.5) * image.shape[0] / size - 0.5
    low = np.clip(np.floor(centres), 0, image.shape[0] - 1).astype(int)
    high = np.minimum(low + 1, image.shape[0] - 1)
    weight = np.clip(centres - low, 0, 1)
    rows = image[low] * (1 - weight)[:, None] + image[high] * weight[:, None]
    return rows[:, low] * (1 - weight)[None, :] + rows[:, high] * weight[None, :]


def area_down(image: np.ndarray, size: int) -> np.ndarray:
    """(n, n) -> (size, size): each output pixel the mean of the input pixels its cell
    overlaps, cells from floor(i * n / size) to ceil((i + 1) * n / size): PyTorch's "area"."""
    n = image.shape[0]
    edges = [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
    return np.array([[image[a:b, c:d].mean() for c, d in edges] for a, b in edges])


def test_blur_draws_the_chosen_images_at_a_lower_resolution_with_their_peak_kept():
    images = to_unit(toy_data(6, 0).images) * torch.tensor([1.0, 0.5, 1, 1, 1, 1]).view(6, 1, 1, 1)
    sides = (14, 10)  # 14 px: 2x2 blocks; 10 px: cells that straddle pixels
    which = [(side - BLUR_SIDES.start + 0.5) / len(BLUR_SIDES) for side in sides]
    draws = torch.tensor(
        [[0.1, which[0]], [0.2, which[1]], [0.9, which[0]], [0.6, which[1]], [0.7, 0], [0.7, 0]]
    )
    blurred = blur(images, 0.5, draws)
    assert blurred.shape == images.shape
    torch.testing.assert_close(blurred[2:], images[2:], atol=0, rtol=0)  # draws >= share
    for index, side in enumerate(sides):
        sharp = images[index, 0].numpy().astype(np.float64)
        expected = bilinear_up(area_down(sharp, side), 28)
        expected *= sharp.max() / expected.max()
        np.testing.assert_allclose(blurred[index, 0].numpy(), expected, atol=1e-5)
        assert blurred[index].max().item() == pytest.approx(sharp.max(), abs=1e-6)
    assert not torch.allclose(blurred[:2], images[:2])
    assert blur(images, 0.0, draws) is images
    everything = blur(images, 1.0, torch.rand(6, 2, generator=torch.Generator().manual_seed(1)))
    assert not torch.isclose(everything, images).all((1, 2, 3)).any()  # each one blurred


def test_blur_in_training_is_seeded_and_covers_the_outliers_too(monkeypatch):
    """train_epoch with blur on and outliers in the batches: the same weights from the same
    seed, other weights than without blur, and each whole batch (digits and outliers) goes
    through `blur` after the affine augmentation."""
    seen = []

    def recording_blur(images, share, draws):
        seen.append((images.shape[0], draws.shape[0]))
        return blur(images, share, draws)

    monkeypatch.setattr(training, "blur", recording_blur)

    def weights(share: float) -> torch.Tensor:
        make_deterministic(0, threads=1)
        model = small_cnn()
        update = {"augment_blur": share, "outliers_per_batch": 4, "epochs": 1}
        params = RECIPE.model_copy(update=update)
        optimizer = make_optimizer(model, params)
        schedule = make_schedule(optimizer, params, 8)  # one-cycle needs some room
        outliers = torch.randint(0, 256, (12, 28, 28), generator=torch.Generator().manual_seed(2))
        generator = torch.Generator().manual_seed(3)
        data = toy_data(128, 1)
        train_epoch(model, optimizer, schedule, data, params, generator, None, outliers.byte())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    blurred = weights(0.5)
    assert seen == [(RECIPE.batch_size + 4, RECIPE.batch_size + 4)] * 4  # 128 digits, 4 steps
    torch.testing.assert_close(weights(0.5), blurred, atol=0, rtol=0)
    seen.clear()
    assert not torch.equal(weights(0.0), blurred)
    assert seen == []  # off: never called, and the random stream is the one without blur


@pytest.mark.parametrize(
    "optimizer, schedule, expected",
    [
        ("adadelta", "step", [1.0] * 3 + [0.7] * 3 + [0.49] * 3),  # x0.7 after each epoch
        ("sgd", "none", [1.0] * 9),
    ],
)
def test_step_schedule_multiplies_the_rate_once_per_epoch(optimizer, schedule, expected):
    update = {"epochs": 3, "optimizer": optimizer, "lr": 1.0, "schedule": schedule}
    params = RECIPE.model_copy(update=update)
    model = small_cnn()
    optim = make_optimizer(model, params)
    assert type(optim).__name__ == {"adadelta": "Adadelta", "sgd": "SGD"}[optimizer]
    schedule_ = make_schedule(optim, params, total_steps=9)  # 3 steps per epoch
    rates = []
    for _ in range(9):
        rates.append(optim.param_groups[0]["lr"])
        optim.step()
        schedule_.step()
    assert rates == pytest.approx(expected)


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available on this machine")
    with pytest.raises(PipelineError, match="device 'cuda' was asked for, but CUDA"):
        select_device("cuda")
    assert select_device("auto") == torch.device("cpu")


def test_each_registered_name_builds_its_own_optimizer_and_schedule():
    model = small_cnn()
    optimizers = {
        name: make_optimizer(model, RECIPE.model_copy(update={"optimizer": name}))
        for name in OPTIMIZERS
    }
    assert {name: type(o).__name__ for name, o in optimizers.items()} == {
        "sgd": "SGD",
        "adam": "Adam",
        "adamw": "AdamW",
        "adadelta": "Adadelta",
    }
    assert optimizers["sgd"].defaults["nesterov"] is True
    schedules = {
        name: type(
            make_schedule(optimizers["sgd"], RECIPE.model_copy(update={"schedule": name}), 10)
        )
        for name in SCHEDULES
    }
    assert len(set(schedules.values())) == len(SCHEDULES)
