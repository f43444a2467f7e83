"""Model builders, chosen by ``train.model``.

Every model takes raw uint8 pixels, (H, W, C) as preprocess wrote them, and returns
class probabilities. Scaling, channel repetition and resizing are layers inside
the model, so Keras, the exported .tflite files and any caller share one input
contract.

- ``simple_cnn``: the default; Conv-BN-ReLU-MaxPool blocks, as many as the image size needs
  (three at 28 px, four at 64 px; a stride-2 stem first above 64 px).
- ``resnet_small``: a narrow ResNet without pre-activation.
- ``mobilenet_v2``, ``efficientnet_b0``: ``keras.applications`` bases for transfer learning, from
  ImageNet weights (online) or from a weights file: :func:`save_base_weights` writes one from a
  model this pipeline trained, so a base trained on one dataset can be fine-tuned on another offline.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import keras
from keras import layers

from imgclf.io import PipelineError

log = logging.getLogger(__name__)
# Keras' default 0.99 needs hundreds of steps before the moving statistics fit the data; 0.9 also
# gives sane validation numbers in short runs (smoke tests, small datasets) and costs nothing in long ones.
BN_MOMENTUM = 0.9

APPLICATIONS = {
    # name: (constructor, minimum input edge, layers that map 0..255 to the range the weights expect)
    "mobilenet_v2": (keras.applications.MobileNetV2, 32, lambda: layers.Rescaling(1 / 127.5, offset=-1.0)),
    "efficientnet_b0": (keras.applications.EfficientNetB0, 32, None),  # has its own rescaling inside
}


def _regularizer(l2: float):
    return keras.regularizers.L2(l2) if l2 else None


def _head(x, num_classes: int, dropout: float):
    if dropout:
        x = layers.Dropout(dropout)(x)
    # float32 softmax, also under mixed precision, for stable probabilities
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def _conv_bn_relu(x, width: int, l2: float, strides: int = 1):
    x = layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False, kernel_regularizer=_regularizer(l2))(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.ReLU()(x)


def simple_cnn_blocks(side: int, params: dict) -> tuple[int, list[int]]:
    """(stem convs, block widths) that fit an input of ``side`` pixels.

    The network follows the image size, so 28 px and 224 px both get a sound network from the same
    params: stride-2 stem convs halve a side above ``stem_size`` (a 224 px photo costs what a 56 px
    one does, as in every ImageNet network's stem), then one block per ``filters`` entry, then more
    blocks (width doubling up to ``max_width``) until the feature map's side is at most
    ``final_size``. The Flatten -> Dense head therefore sees at most ``final_size`` squared x width
    features whatever the input; with a fixed block count it grew with the square of the side
    (4.3 M parameters at 128 px, nearly all in one dense layer, which never trained: issue #23).
    """
    stem, side = 0, int(side)
    while side > int(params["stem_size"]):
        stem, side = stem + 1, math.ceil(side / 2)
    widths = [int(w) for w in params["filters"]]
    side //= 2 ** len(widths)
    while side > int(params["final_size"]):
        widths.append(min(2 * widths[-1], int(params["max_width"])))
        side //= 2
    return stem, widths


def simple_cnn_pooling(side: int, params: dict) -> str:
    """``flatten`` or ``average`` (global average pooling) for the last feature map; ``auto``: flatten up to
    ``flatten_max_size`` px, average above.

    A 28 px thumbnail is a 3x3 map at the end, and where in it a feature sits is part of the class (a
    shirt's collar, a boot's heel): Flatten keeps it, and is what Fashion-MNIST was tuned with. A photo's
    class does not depend on where in the frame its texture or object sits, and averaging drops the
    head from 4x4x256 inputs to 256, which a few hundred photos cannot fit by heart: on the texture
    photo set at 64 px, validation accuracy 0.95 against 0.79 with Flatten (issue #23, DESIGN).
    """
    pooling = params["pooling"]
    if pooling == "auto":
        return "flatten" if side <= int(params["flatten_max_size"]) else "average"
    return pooling


def simple_cnn(input_shape, num_classes: int, params: dict) -> keras.Model:
    """Stem convs, Conv(3x3)-BN-ReLU-MaxPool blocks (:func:`simple_cnn_blocks`), Dropout, Dense, Dropout, softmax."""
    dropout, l2 = params["dropout"], float(params["l2"])
    stem, widths = simple_cnn_blocks(min(input_shape[:2]), params)
    inputs = keras.Input(input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    for _ in range(stem):
        x = _conv_bn_relu(x, widths[0], l2, strides=2)
    for width in widths:
        x = _conv_bn_relu(x, width, l2)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(dropout[0])(x)
    x = (
        layers.GlobalAveragePooling2D()(x)
        if simple_cnn_pooling(min(input_shape[:2]), params) == "average"
        else layers.Flatten()(x)
    )
    x = layers.Dense(int(params["dense"]), activation="relu", kernel_regularizer=_regularizer(l2))(x)
    return keras.Model(inputs, _head(x, num_classes, dropout[1]), name="simple_cnn")


def _residual_block(x, width: int, stride: int, l2: float):
    shortcut = x
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=_regularizer(l2))(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_regularizer=_regularizer(l2))(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    if stride != 1 or shortcut.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, kernel_regularizer=_regularizer(l2))(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet_small(input_shape, num_classes: int, params: dict) -> keras.Model:
    """A stem conv, then stages of residual blocks (the first of each later stage halves the size), GAP, softmax."""
    widths, blocks, l2 = params["widths"], int(params["blocks_per_stage"]), float(params["l2"])
    inputs = keras.Input(input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, kernel_regularizer=_regularizer(l2))(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.ReLU()(x)
    for stage, width in enumerate(widths):
        for block in range(blocks):
            x = _residual_block(x, width, 2 if stage > 0 and block == 0 else 1, l2)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, num_classes, float(params["dropout"])), name="resnet_small")


def _application_weights(weights):
    if weights in (None, "null", "none", ""):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PipelineError(
            f"train.transfer.weights: {weights} is neither 'imagenet', null nor an existing weights file"
        )
    return str(path)


def transfer(name: str, input_shape, num_classes: int, params: dict) -> keras.Model:
    """An ImageNet-style base (frozen; see :func:`unfreeze_top`) under a GAP + Dropout + softmax head."""
    constructor, min_edge, scaling = APPLICATIONS[name]
    weights = _application_weights(params["weights"])
    size = max(int(params["input_size"]), min_edge, input_shape[0])
    inputs = keras.Input(input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0)(inputs)  # uint8 -> float
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if input_shape[0] != size or input_shape[1] != size:
        x = layers.Resizing(size, size, name="resize_to_base")(x)
    if scaling is not None:
        x = scaling()(x)
    try:
        base = constructor(include_top=False, weights=weights, input_shape=(size, size, 3))
    except Exception as error:
        if weights == "imagenet":
            raise PipelineError(
                f"could not download the ImageNet weights for {name} ({type(error).__name__}): the machine "
                "seems offline. Set train.transfer.weights to null (train from scratch) or to a local weights file."
            ) from error
        raise PipelineError(f"could not build {name} with weights={weights}: {error}") from error
    if weights is None:
        x = base(x)  # from scratch: the whole base trains, BatchNorm included
    else:
        base.trainable = False  # phase 1 trains the head; see unfreeze_top for phase 2
        x = base(x, training=False)  # BatchNorm stays in inference mode, also when fine-tuned
    x = layers.GlobalAveragePooling2D()(x)  # at top level, so Grad-CAM sees the base's feature map
    return keras.Model(inputs, _head(x, num_classes, float(params["dropout"])), name=name)


def unfreeze_top(model: keras.Model, count: int) -> int:
    """Make the top ``count`` layers of the transfer base trainable (BatchNorm layers stay frozen)."""
    base = transfer_base(model)
    base.trainable = True
    trainable = 0
    for index, layer in enumerate(base.layers):
        unfreeze = index >= len(base.layers) - count and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = unfreeze
        trainable += unfreeze
    return trainable


MODELS = ("simple_cnn", "resnet_small", *APPLICATIONS)


def build_model(name: str, input_shape, num_classes: int, params: dict) -> keras.Model:
    """The model ``train.model`` names, configured by the params section of the same name."""
    if name == "simple_cnn":
        return simple_cnn(input_shape, num_classes, params["simple_cnn"])
    if name == "resnet_small":
        return resnet_small(input_shape, num_classes, params["resnet_small"])
    if name in APPLICATIONS:
        return transfer(name, input_shape, num_classes, params["transfer"])
    raise PipelineError(f"train.model={name!r} is not one of {', '.join(MODELS)}")


def is_pretrained_transfer(name: str, params: dict) -> bool:
    """Transfer models with pretrained weights train in two phases (frozen base, then fine-tuning)."""
    if name not in APPLICATIONS:
        return False
    return _application_weights(params["transfer"]["weights"]) is not None


def load_trained(paths) -> keras.Model:
    """The train stage's model (``paths`` is the pipeline's Layout), for inference: not compiled."""
    from imgclf.io import require

    return keras.models.load_model(require(paths.model, "train"), compile=False)


def transfer_base(model: keras.Model) -> keras.Model:
    """The ``keras.applications`` base inside a transfer model built by :func:`transfer`."""
    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not bases:
        raise PipelineError(
            f"model {model.name!r} has no transfer base (train.model must be one of {', '.join(APPLICATIONS)})"
        )
    return bases[0]


def save_base_weights(model_path: str | Path, weights_path: str | Path) -> Path:
    """Write the base of a trained transfer model as a ``.weights.h5`` file for ``train.transfer.weights``."""
    from imgclf.io import atomic_path

    weights_path = Path(weights_path)
    if not weights_path.name.endswith(".weights.h5"):
        raise PipelineError(f"{weights_path}: Keras weights files must end in .weights.h5")
    model = keras.models.load_model(model_path, compile=False)
    with atomic_path(weights_path) as tmp:
        transfer_base(model).save_weights(tmp)
    return weights_path


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.models base-weights models/model.keras base.weights.h5``"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m imgclf.models", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base-weights", help="save a trained transfer model's base for train.transfer.weights")
    base.add_argument("model", help="a .keras model trained with train.model: mobilenet_v2 or efficientnet_b0")
    base.add_argument("weights", help="the .weights.h5 file to write")
    args = parser.parse_args(argv)
    try:
        path = save_base_weights(args.model, args.weights)
    except (PipelineError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}: set train.transfer.weights to it (and train.model to the same base)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
