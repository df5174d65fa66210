import dataclasses
import io

import pytest
import torch

from mnistpipe.errors import PipelineError
from mnistpipe.models import Checkpoint, build_model, normalize, save_checkpoint
from mnistpipe.params import ModelParams, TrainParams
from mnistpipe.training import (
    Data,
    augment,
    evaluate,
    fit,
    make_deterministic,
    make_optimizer,
    make_schedule,
    select_device,
    train_epoch,
)

RECIPE = TrainParams(
    preset="none", epochs=2, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9,
    weight_decay=5e-4, schedule="one-cycle", step_gamma=0.7, label_smoothing=0.1,
    augment_rotate=10.0, augment_shift=2.0, augment_scale=0.1, device="cpu", threads=1,
)  # fmt: skip
SMALL_CNN = ModelParams(name="cnn", channels=(4, 8), convs=(1, 1), hidden=(), dropout=0.0)


def toy_data(count: int, seed: int) -> Data:
    """Digits stand-in: class k is a bright 6x6 block at its own place on a dark image."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        row, col = 4 + 12 * (label // 5), 1 + 5 * (label % 5)
        images[index, row : row + 6, col : col + 6] = 255
    return Data(images=images, labels=labels)


def test_loss_falls_over_a_few_steps():
    make_deterministic(seed=0, threads=1)
    data, stats = toy_data(320, seed=1), (0.1, 0.3)
    model = build_model(SMALL_CNN)
    params = dataclasses.replace(RECIPE, schedule="none", augment_rotate=0.0)
    optimizer = make_optimizer(model, params)
    schedule = make_schedule(optimizer, params, total_steps=40)
    generator = torch.Generator().manual_seed(0)
    before, _ = evaluate(model, data, stats)
    losses = [
        train_epoch(model, optimizer, schedule, data, stats, params, generator)[0]
        for _ in range(4)
    ]
    after, accuracy = evaluate(model, data, stats)
    assert losses[-1] < losses[0] and after < before * 0.5
    assert accuracy > 0.9


def test_fit_returns_the_best_validation_epoch():
    make_deterministic(seed=0, threads=1)
    seen = []
    state, best = fit(
        build_model(SMALL_CNN), toy_data(200, 1), toy_data(50, 2), (0.1, 0.3),
        dataclasses.replace(RECIPE, epochs=3), seed=0, on_epoch=seen.append, show_progress=False,
    )  # fmt: skip
    assert [row.epoch for row in seen] == [1, 2, 3]
    assert best == max(seen, key=lambda row: (row.val_accuracy, -row.epoch))
    assert set(state) == set(build_model(SMALL_CNN).state_dict())


def on_device(data: Data, device: str) -> Data:
    return Data(data.images.to(device), data.labels.to(device))


def trained_checkpoint_bytes(seed: int, device: str = "cpu") -> bytes:
    make_deterministic(seed, threads=1)
    model = build_model(SMALL_CNN).to(device=device, memory_format=torch.channels_last)
    train, val = on_device(toy_data(200, 1), device), on_device(toy_data(50, 2), device)
    state, best = fit(model, train, val, (0.1, 0.3), RECIPE, seed, show_progress=False)
    checkpoint = Checkpoint(SMALL_CNN, state, 0.1, 0.3, "mnist", tuple("0123456789"),
                            best.epoch, best.val_accuracy)  # fmt: skip
    buffer = io.BytesIO()
    torch.save(dataclasses.asdict(checkpoint), buffer)
    return buffer.getvalue()


def test_training_is_deterministic_to_the_byte():
    first, second = trained_checkpoint_bytes(seed=3), trained_checkpoint_bytes(seed=3)
    assert first == second
    assert trained_checkpoint_bytes(seed=4) != first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_is_deterministic_to_the_byte():
    """With deterministic algorithms and CUBLAS_WORKSPACE_CONFIG (set by make_deterministic),
    a GPU gives the same weights run to run; they differ from the CPU's (other kernels, and
    bfloat16 autocast), which is why a checkpoint records its device."""
    first = trained_checkpoint_bytes(seed=3, device="cuda")
    assert trained_checkpoint_bytes(seed=3, device="cuda") == first
    assert trained_checkpoint_bytes(seed=3) != first


def test_saved_checkpoints_are_byte_identical(tmp_path):
    make_deterministic(0, threads=1)
    model = build_model(SMALL_CNN)
    checkpoint = Checkpoint(SMALL_CNN, model.state_dict(), 0.1, 0.3, "mnist",
                            tuple("0123456789"), 1, 0.5)  # fmt: skip
    save_checkpoint(tmp_path / "a.pt", checkpoint)
    save_checkpoint(tmp_path / "b.pt", checkpoint)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_augmentation_moves_pixels_but_keeps_shape_and_background():
    data = toy_data(16, 0)
    images = normalize(data.images, 0.1, 0.3)
    draws = torch.rand(16, 4, generator=torch.Generator().manual_seed(0))
    moved = augment(images, RECIPE, draws)
    assert moved.shape == images.shape
    assert not torch.allclose(moved, images)
    assert moved.min().item() == pytest.approx(images.min().item(), abs=1e-5)
    off = dataclasses.replace(RECIPE, augment_rotate=0.0, augment_shift=0.0, augment_scale=0.0)
    assert augment(images, off, draws) is images
    middle = torch.full((16, 4), 0.5)  # every draw at the centre of its range: the identity
    torch.testing.assert_close(augment(images, RECIPE, middle), images, atol=1e-4, rtol=0)


def test_pure_shift_moves_an_image_by_whole_pixels():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    params = dataclasses.replace(RECIPE, augment_rotate=0.0, augment_scale=0.0, augment_shift=2.0)
    moved = augment(image, params, torch.rand(1, 4, generator=torch.Generator().manual_seed(0)))
    # A sub-pixel shift spreads the dot; its mass moves by at most 2 px each way.
    rows, cols = torch.nonzero(moved[0, 0] > 1e-6, as_tuple=True)
    assert rows.min() >= 8 and rows.max() <= 12 and cols.min() >= 8 and cols.max() <= 12
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-4)
    # Draws of 1.0 on both shift axes sample 2 px further on: the dot moves exactly 2 px back.
    exact = augment(image, params, torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    assert torch.nonzero(exact[0, 0] > 0.99).tolist() == [[8, 8]]


@pytest.mark.parametrize(
    "optimizer, schedule, expected",
    [
        ("adadelta", "step", [1.0] * 3 + [0.7] * 3 + [0.49] * 3),  # x0.7 after each epoch
        ("sgd", "none", [1.0] * 9),
    ],
)
def test_step_schedule_multiplies_the_rate_once_per_epoch(optimizer, schedule, expected):
    params = dataclasses.replace(RECIPE, epochs=3, optimizer=optimizer, lr=1.0, schedule=schedule)
    model = build_model(SMALL_CNN)
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
