import pytest
import torch

from mnistpipe.errors import PipelineError
from mnistpipe.modeling.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from mnistpipe.modeling.models import (
    CNN,
    MLP,
    MODELS,
    CNNConfig,
    ExamplesCNN,
    ExamplesCNNConfig,
    MLPConfig,
    ModelParams,
    build_model,
    fuse_batch_norm,
    predict_logits,
    to_unit,
)
from tests.conftest import RECIPE


@pytest.mark.parametrize(
    "name, model_config, model_type",
    [
        ("cnn", CNNConfig(channels=(4, 8), convs=(1, 1)), CNN),
        ("cnn", CNNConfig(channels=(4, 8, 8, 8), convs=(2, 2, 1, 1)), CNN),
        ("cnn", CNNConfig(channels=(3,), convs=(2,)), CNN),
        ("mlp", MLPConfig(hidden=(128,)), MLP),
        ("mlp", MLPConfig(hidden=(256, 256), dropout=0.2), MLP),
        ("mlp", MLPConfig(hidden=()), MLP),
        ("examples-cnn", ExamplesCNNConfig(), ExamplesCNN),
    ],
)
def test_models_map_images_to_ten_logits(name, model_config, model_type):
    model = build_model(name, model_config)
    assert isinstance(model, model_type)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert model(to_unit(images)).shape == (5, 10)


def test_every_registered_model_has_a_params_entry_and_its_own_config():
    fields = {
        field.alias or name: field.annotation for name, field in ModelParams.model_fields.items()
    }
    assert fields == {
        "name": fields["name"],
        **{name: spec.config for name, spec in MODELS.items()},
    }
    section = ModelParams.model_validate(
        {"name": "mlp", **{name: {} for name in MODELS}, "cnn": {"channels": [8], "convs": [1]}}
    )
    assert section.config == MLPConfig()  # `name` picks the config; defaults fill the rest
    for name, spec in MODELS.items():
        assert isinstance(build_model(name, spec.config()), spec.model)
    with pytest.raises(TypeError, match="model 'cnn' needs a CNNConfig"):
        build_model("cnn", MLPConfig())


def test_mlp_layers_are_the_seed_networks():
    model = build_model("mlp", MLPConfig(hidden=(256, 256)))
    linear = [layer for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [
        (784, 256),
        (256, 256),
        (256, 10),
    ]


def test_examples_cnn_is_the_published_net():
    model = build_model("examples-cnn", ExamplesCNNConfig())
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # pytorch/examples' Net
    layers = [type(layer).__name__ for layer in model.modules() if not list(layer.children())]
    # Normalize does what the published script does as a transform, Normalize((0.1307,), ...)
    assert layers == [
        "Normalize",
        "Conv2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Dropout",
        "Flatten",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    dropouts = [layer.p for layer in model.modules() if isinstance(layer, torch.nn.Dropout)]
    assert dropouts == [0.25, 0.5]


def test_fusing_batch_norm_keeps_the_function_of_the_eval_model():
    torch.manual_seed(0)
    model = build_model("cnn", CNNConfig(channels=(4, 8), convs=(2, 1))).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1)  # stats and affine maps far from the identity
        norm.running_var.uniform_(0.2, 3.0)
        norm.weight.data.uniform_(0.5, 2.0)
        norm.bias.data.uniform_(-1, 1)
    fused = fuse_batch_norm(model.features)
    kinds = [type(layer).__name__ for layer in fused]
    assert "BatchNorm2d" not in kinds and kinds.count("Conv2d") == 3
    images = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(images), model.features(images), atol=1e-5, rtol=1e-5)


def test_the_model_normalizes_its_own_input():
    model = build_model("mlp", MLPConfig(hidden=()), mean=0.5, std=0.25)
    images = torch.tensor([[[0, 255] + [0] * 26] * 28], dtype=torch.uint8)
    unit = to_unit(images)
    assert unit.shape == (1, 1, 28, 28) and unit.dtype == torch.float32
    assert unit.min().item() == 0.0 and unit.max().item() == 1.0
    normalized = model.normalize(unit)
    assert normalized[0, 0, 0, 0].item() == pytest.approx(-2.0)
    assert normalized[0, 0, 0, 1].item() == pytest.approx(2.0)
    assert set(model.state_dict()) >= {"normalize.mean", "normalize.std"}  # saved with weights


def make_checkpoint(model_config=None, name="cnn"):
    model_config = model_config or CNNConfig(channels=(4, 8), convs=(1, 1))
    torch.manual_seed(0)
    model = build_model(name, model_config, mean=0.1, std=0.3)
    return Checkpoint(
        model_name=name,
        model_config=model_config,
        recipe=RECIPE,
        state_dict=model.state_dict(),
        dataset="mnist",
        classes=tuple("0123456789"),
        epoch=3,
        val_accuracy=0.5,
    )


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    checkpoint = make_checkpoint()
    save_checkpoint(tmp_path / "model.pt", checkpoint)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.model_config == checkpoint.model_config and loaded.classes == checkpoint.classes
    assert loaded.recipe == checkpoint.recipe == RECIPE  # the recipe as given
    assert (loaded.device, loaded.numerics) == (checkpoint.device, checkpoint.numerics)
    assert (loaded.epoch, loaded.dataset) == (3, "mnist")
    assert loaded.state_dict["normalize.mean"].item() == pytest.approx(0.1)
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    expected = predict_logits(checkpoint.build(), images, batch_size=3)
    actual = predict_logits(loaded.build(), images, batch_size=7)
    torch.testing.assert_close(actual, expected)


def test_missing_and_corrupt_checkpoints_are_named_errors(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(PipelineError, match=r"model.pt: checkpoint not found"):
        load_checkpoint(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(PipelineError, match=r"model.pt: not a readable checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, make_checkpoint())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PipelineError, match=r"model.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(PipelineError, match=r"model.pt: not a checkpoint of format 4 or 5;"):
        load_checkpoint(path)


def test_a_format_4_checkpoint_still_loads_with_its_runtime_moved_out_of_the_recipe(tmp_path):
    """Format 4 kept the device and the numerics mode inside its recipe (models/model.pt of
    main before the runtime section); the recipe read back is the train section alone."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_checkpoint())
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == 5 and payload["recipe"] == RECIPE.to_mapping()
    numerics = payload.pop("numerics")
    payload["recipe"] |= {"device": "auto", "numerics": numerics}
    torch.save({**payload, "format": 4}, path)
    loaded = load_checkpoint(path)
    assert loaded.recipe == RECIPE and loaded.numerics == numerics
    torch.save({**payload, "format": 3}, path)
    with pytest.raises(PipelineError, match=r"not a checkpoint of format 4 or 5; retrain it$"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_a_recipe_key_reads_back_with_what_trained_it(tmp_path):
    """Keys added to the recipe later (ADDED_RECIPE_KEYS) read as the value training used
    before they existed; a key that was there keeps its own value."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_checkpoint())
    payload = torch.load(path, weights_only=True)
    payload["recipe"] = {**payload["recipe"], "outlier_images": 123, "augment_blur": 0.25}
    torch.save(payload, path)
    assert load_checkpoint(path).recipe.augment_blur == 0.25  # a stored value is kept
    del payload["recipe"]["augment_blur"]
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert (loaded.recipe.augment_blur, loaded.recipe.outlier_images) == (0.0, 123)
    del payload["recipe"]["outlier_images"]
    torch.save(payload, path)
    assert load_checkpoint(path).recipe.outlier_images == 6000
    payload["recipe"]["epochs"] = "many"
    torch.save(payload, path)
    with pytest.raises(PipelineError, match=r"model.pt: inconsistent checkpoint"):
        load_checkpoint(path)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    checkpoint = make_checkpoint()
    wrong_config = CNNConfig(channels=(4, 16), convs=(1, 1))
    wrong = Checkpoint(**{**checkpoint.__dict__, "model_config": wrong_config})
    save_checkpoint(tmp_path / "model.pt", wrong)
    with pytest.raises(PipelineError, match=r"inconsistent checkpoint .*size mismatch"):
        load_checkpoint(tmp_path / "model.pt")
