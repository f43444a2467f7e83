import urllib.error

import keras
import numpy as np
import pytest

from imgclf.io import PipelineError
from imgclf.train.models import MODELS, build_model, is_pretrained_transfer, simple_cnn_blocks, unfreeze_top
from tests.conftest import shipped

PARAMS = shipped(
    "train",
    simple_cnn={"filters": [8, 16], "dense": 32, "dropout": [0.1, 0.2]},
    resnet_small={"widths": [8, 16], "blocks_per_stage": 1, "dropout": 0.1},
    transfer={"weights": None, "input_size": 32, "dropout": 0.1},
)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 40, 3)])
def test_builders_take_uint8_and_return_probabilities(name, shape):
    model = build_model(name, shape, 7, PARAMS)
    assert model.input.dtype == "uint8"
    assert model.output_shape == (None, 7)
    images = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
    proba = model.predict(images, verbose=0)
    assert proba.shape == (3, 7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_scaling_lives_inside_the_model():
    """uint8 pixels in; the model's own first layer maps them to [0, 1] for the layers after it."""
    model = build_model("simple_cnn", (28, 28, 1), 3, PARAMS)
    rescaling = model.layers[1]
    assert isinstance(rescaling, keras.layers.Rescaling) and rescaling.scale == pytest.approx(1 / 255)
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    rest = keras.Model(model.layers[2].input, model.output)  # everything after the scaling
    expected = rest(images.astype("float32") / 255.0, training=False)
    np.testing.assert_allclose(model.predict(images, verbose=0), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_offline_imagenet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    with pytest.raises(PipelineError, match=r"offline\. Set train\.transfer\.weights to null"):
        build_model("mobilenet_v2", (28, 28, 1), 10, shipped("train", transfer={"weights": "imagenet"}))


def test_weights_from_a_file_and_fine_tuning(tmp_path):
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = tmp_path / "base.weights.h5"
    base.save_weights(weights)
    params = shipped("train", transfer={"weights": str(weights)})
    assert is_pretrained_transfer("mobilenet_v2", params)
    model = build_model("mobilenet_v2", (28, 28, 1), 4, params)
    base_layer = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(base_layer.get_weights()[0], base.get_weights()[0])
    assert not base_layer.trainable
    assert unfreeze_top(model, 10) > 0
    trainable = [layer for layer in base_layer.layers if layer.trainable and layer.weights]
    assert trainable and all(not isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)


def test_bad_model_names_and_weight_paths():
    with pytest.raises(PipelineError, match="is not one of"):
        build_model("vgg99", (28, 28, 1), 3, PARAMS)
    with pytest.raises(PipelineError, match="neither 'imagenet', null nor an existing weights file"):
        build_model("efficientnet_b0", (28, 28, 1), 3, shipped("train", transfer={"weights": "/no/such.h5"}))


@pytest.mark.parametrize(
    ("side", "stems", "widths"),
    [
        (28, 0, [32, 64, 128]),  # Fashion-MNIST: the network it always was
        (32, 0, [32, 64, 128]),
        (64, 0, [32, 64, 128, 256]),
        (128, 1, [32, 64, 128, 256]),
        (224, 2, [32, 64, 128, 256]),
        (512, 3, [32, 64, 128, 256]),
    ],
)
def test_simple_cnn_follows_the_image_size(side, stems, widths):
    assert simple_cnn_blocks(side, shipped("train")["simple_cnn"]) == (stems, widths)


def test_simple_cnn_size_stays_bounded_as_images_grow():
    """With a fixed block count the Flatten -> Dense head grew with the square of the side (4.3 M
    parameters at 128 px, nearly all in one layer: a network that never trained)."""
    train = shipped("train")
    counts = {side: build_model("simple_cnn", (side, side, 3), 5, train).count_params() for side in (28, 64, 128, 224)}
    assert counts[28] < 300_000
    assert max(counts.values()) < 1_000_000
    assert counts[224] <= counts[64] * 1.2  # the stem keeps the large inputs' head the 64 px one's
    flat = shipped("train", simple_cnn={"pooling": "flatten"})  # the bound holds even without averaging
    model = build_model("simple_cnn", (224, 224, 3), 5, flat)
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert flatten.output.shape[-1] <= 4 * 4 * train["simple_cnn"]["max_width"]


def test_pooling_auto_flattens_thumbnails_and_averages_photos():
    train = shipped("train")
    assert train["simple_cnn"]["pooling"] == "auto"

    def head(side):
        model = build_model("simple_cnn", (side, side, 3), 5, train)
        return {type(layer).__name__ for layer in model.layers} & {"Flatten", "GlobalAveragePooling2D"}

    assert head(28) == head(32) == {"Flatten"}  # Fashion-MNIST's network, as it was tuned
    assert head(64) == head(224) == {"GlobalAveragePooling2D"}
    pinned = shipped("train", simple_cnn={"pooling": "flatten"})
    assert {type(layer).__name__ for layer in build_model("simple_cnn", (64, 64, 3), 5, pinned).layers} >= {"Flatten"}
