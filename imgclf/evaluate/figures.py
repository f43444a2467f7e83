"""Evaluation figures for people: confusion matrix, per-class bars, ROC curves, mistakes, Grad-CAM.

All PNGs, rendered with matplotlib's Agg backend and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from imgclf.io import atomic_path


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)


def _show(ax, image):
    ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def confusion_matrix(y_true, y_pred, class_names, path: Path) -> None:
    size = max(6, 0.6 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=range(len(class_names)),
        display_labels=class_names,
        ax=ax,
        colorbar=False,
        xticks_rotation=45,
        cmap="Blues",
    )
    ax.set_title("Confusion matrix (test split, counts)")
    _save(fig, path)


def per_class_bars(per_class: dict, path: Path) -> None:
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(names)), 4))
    for offset, metric in zip((-0.27, 0, 0.27), ("precision", "recall", "f1"), strict=True):
        ax.bar(x + offset, [per_class[n][metric] for n in names], width=0.27, label=metric)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Per-class precision, recall and F1 (test split)")
    _save(fig, path)


def roc_curves(y_true, proba, class_names, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 6))
    for index, name in enumerate(class_names):
        if (y_true == index).any() and (y_true != index).any():
            RocCurveDisplay.from_predictions(
                y_true == index, proba[:, index], name=name, ax=ax, plot_chance_level=index == 0
            )
    ax.set_title("ROC, one class vs rest (test split)")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def confident_mistakes(images, y_true, proba, class_names, path: Path, count: int = 16) -> None:
    """The wrong predictions the model was most sure of: often label noise or a confusable pair."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    worst = wrong[np.argsort(-proba[wrong, y_pred[wrong]], kind="stable")][:count]
    cols = 4
    rows = max(1, int(np.ceil(len(worst) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, worst, strict=False):
        ax.axis("on")
        _show(ax, images[index])
        ax.set_title(
            f"true: {class_names[y_true[index]]}\npred: {class_names[y_pred[index]]} ({proba[index, y_pred[index]]:.0%})",
            fontsize=8,
        )
    fig.suptitle("Most confident mistakes" if len(worst) else "No mistakes on the test split")
    _save(fig, path)


def last_feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The last top-level layer with a spatial (4-D) output that is not pooling or dropout: the
    finest late feature map, which is what Grad-CAM explains (a conv block's activation, a ResNet
    block's output, or a transfer model's whole base)."""
    skip = (keras.layers.InputLayer, keras.layers.Dropout, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    for layer in reversed(model.layers):
        if isinstance(layer, skip):
            continue
        if len(getattr(layer, "output", np.empty(0)).shape) == 4:
            return layer
    raise ValueError("the model has no spatial feature layer")


def grad_cam(model: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps (N,H',W') in [0,1] for the predicted class, and the predictions."""
    layer = last_feature_layer(model)
    cam_model = keras.Model(model.inputs, [layer.output, model.output])
    inputs = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        features, proba = cam_model(inputs, training=False)
        predicted = tf.argmax(proba, axis=1)
        score = tf.gather(proba, predicted, axis=1, batch_dims=1)
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    cam /= cam.max(axis=(1, 2), keepdims=True) + 1e-8
    return cam, predicted.numpy()


def grad_cam_grid(model: keras.Model, images: np.ndarray, y_true, class_names, path: Path) -> None:
    cams, predicted = grad_cam(model, images)
    fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 5.2), squeeze=False)
    for col, (image, cam) in enumerate(zip(images, cams, strict=True)):
        _show(axes[0][col], image)
        axes[0][col].set_title(f"true: {class_names[y_true[col]]}", fontsize=8)
        _show(axes[1][col], image)
        heat = tf.image.resize(cam[:, :, None], image.shape[:2]).numpy().squeeze()
        axes[1][col].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1][col].set_xlabel(f"pred: {class_names[predicted[col]]}", fontsize=8)
    fig.suptitle(f"Grad-CAM on '{last_feature_layer(model).name}' (red: what drove the prediction)")
    _save(fig, path)
