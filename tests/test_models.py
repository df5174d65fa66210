import pytest
import torch

from mnistpipe.models import (
    CNN,
    MLP,
    Checkpoint,
    CheckpointError,
    ExamplesCNN,
    build_model,
    fold_batch_norm,
    load_checkpoint,
    normalize,
    predict_logits,
    save_checkpoint,
)
from mnistpipe.params import ModelParams


def config(**changes):
    values = dict(name="cnn", channels=(4, 8), convs=(1, 1), hidden=(16,), dropout=0.0)
    return ModelParams(**{**values, **changes})


@pytest.mark.parametrize(
    "model_config, model_type",
    [
        (config(), CNN),
        (config(channels=(4, 8, 8, 8), convs=(2, 2, 1, 1)), CNN),
        (config(channels=(3,), convs=(2,)), CNN),
        (config(name="mlp", hidden=(128,)), MLP),
        (config(name="mlp", hidden=(256, 256), dropout=0.2), MLP),
        (config(name="mlp", hidden=()), MLP),
        (config(name="examples-cnn"), ExamplesCNN),
    ],
)
def test_models_map_images_to_ten_logits(model_config, model_type):
    model = build_model(model_config)
    assert isinstance(model, model_type)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert model(normalize(images, 0.13, 0.31)).shape == (5, 10)


def test_mlp_layers_are_the_seed_networks():
    model = build_model(config(name="mlp", hidden=(256, 256)))
    linear = [layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [
        (784, 256),
        (256, 256),
        (256, 10),
    ]


def test_examples_cnn_is_the_published_net():
    model = build_model(config(name="examples-cnn"))
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # pytorch/examples' Net
    layers = [type(layer).__name__ for layer in model.modules() if not list(layer.children())]
    assert layers == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Dropout", "Flatten",
                      "Linear", "ReLU", "Dropout", "Linear"]  # fmt: skip
    dropouts = [layer.p for layer in model.modules() if isinstance(layer, torch.nn.Dropout)]
    assert dropouts == [0.25, 0.5]


def test_folding_batch_norm_keeps_the_function_of_the_eval_model():
    torch.manual_seed(0)
    model = build_model(config(channels=(4, 8), convs=(2, 1))).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1)  # stats and affine maps far from the identity
        norm.running_var.uniform_(0.2, 3.0)
        norm.weight.data.uniform_(0.5, 2.0)
        norm.bias.data.uniform_(-1, 1)
    folded = fold_batch_norm(model.features)
    kinds = [type(layer).__name__ for layer in folded]
    assert "BatchNorm2d" not in kinds and kinds.count("Conv2d") == 3
    images = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model.features(images), atol=1e-5, rtol=1e-5)


def test_normalize_uses_the_given_stats():
    images = torch.tensor([[[0, 255] + [0] * 26] * 28], dtype=torch.uint8)
    out = normalize(images, 0.5, 0.25)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx(-2.0)
    assert out[0, 0, 0, 1].item() == pytest.approx(2.0)


def make_checkpoint(model_config=None):
    model_config = model_config or config()
    torch.manual_seed(0)
    model = build_model(model_config)
    return Checkpoint(
        config=model_config, state_dict=model.state_dict(), mean=0.1, std=0.3,
        dataset="mnist", classes=tuple("0123456789"), epoch=3, val_accuracy=0.5,
    )  # fmt: skip


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    checkpoint = make_checkpoint()
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.config == checkpoint.config and loaded.classes == checkpoint.classes
    assert (loaded.mean, loaded.std, loaded.epoch, loaded.dataset) == (0.1, 0.3, 3, "mnist")
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    expected = predict_logits(checkpoint.build(), images, 0.1, 0.3, batch_size=3)
    actual = predict_logits(loaded.build(), images, loaded.mean, loaded.std, batch_size=7)
    torch.testing.assert_close(actual, expected)


def test_missing_and_corrupt_checkpoints_are_named_errors(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=r"model.pt: checkpoint not found"):
        load_checkpoint(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"model.pt: not a readable checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, make_checkpoint())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"model.pt: not a checkpoint of format 1"):
        load_checkpoint(path)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    checkpoint = make_checkpoint()
    wrong = Checkpoint(**{**checkpoint.__dict__, "config": config(channels=(4, 16))})
    save_checkpoint(tmp_path / "model.pt", wrong)
    with pytest.raises(CheckpointError, match=r"inconsistent checkpoint .*size mismatch"):
        load_checkpoint(tmp_path / "model.pt")
