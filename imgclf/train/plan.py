"""The training plan: batch size, epochs, warmup and early stopping, sized to the data.

The same params must train well on 150 photos and on 100,000 images. What goes wrong on
small sets is the number of optimizer steps: batch 256 over 220 images is one step an
epoch, so ten epochs are ten steps, BatchNorm's moving statistics never settle and early
stopping keeps a half-trained epoch. So ``auto`` values are resolved from the data:

- ``batch_size: auto``: the largest power of two up to ``auto.max_batch_size`` that still
  gives ``auto.min_steps_per_epoch`` steps an epoch (never below ``auto.min_batch_size``).
- ``epochs: auto``: at least ``auto.min_epochs``, more when that is needed to reach
  ``auto.min_total_steps`` optimizer steps, at most ``auto.max_epochs``.
- ``early_stopping_patience: auto``: ``auto.patience_fraction`` of the epochs (at least 5),
  and off when the validation split is too small to choose an epoch from
  (``auto.min_val_images`` images or ``auto.min_val_per_class`` of its rarest class): the
  full cosine schedule then runs to its end, which needs no validation to be sound.
- warmup: ``warmup_fraction`` of all optimizer steps.
- ``online_augment.when: auto``: the online flips and shifts on when the plan has at least
  ``online_augment.min_epochs`` epochs: a small set seen 67 times is memorized without them (the
  texture photo set at 64 px: test 0.887 without, 0.953 with), while Fashion-MNIST's 8 epochs
  converge more slowly with them (benchmarks/NOTES.md).
- ``learning_rate: auto``: left open here (``None``) and resolved by a range test on the model
  and data (:mod:`imgclf.train.lr_finder`, through :func:`with_learning_rate`) before training starts.

An explicit number in params.yaml always wins; the plan still warns when it looks unsound.
The train stage logs the plan with its reasons, writes it to ``reports/train/plan.json``
and logs it to MLflow as ``plan.*`` params.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from imgclf.io import PipelineError

AUTO = "auto"


@dataclass(frozen=True)
class TrainingPlan:
    batch_size: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    early_stopping_patience: int  # 0 = off
    train_images: int
    val_images: int
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    learning_rate: float | None = None  # None until an ``auto`` value is resolved (with_learning_rate)
    lr_range_test: dict | None = None  # the range test's numbers, when it chose the learning rate
    restarts: list[dict] = field(default_factory=list)  # stalled attempts, each restarted at a lower rate
    online_augment: bool = False  # train.online_augment's flips and shifts on each batch

    def as_dict(self) -> dict:
        return asdict(self)

    def mlflow_params(self) -> dict[str, str]:
        """The chosen numbers as ``plan.*`` params (the reasons go to plan.json, they are prose)."""
        skip = ("reasons", "warnings", "lr_range_test", "restarts")
        return {f"plan.{key}": str(value) for key, value in self.as_dict().items() if key not in skip}


def with_learning_rate(plan: TrainingPlan, learning_rate: float, reason: str, range_test: dict | None = None):
    """The plan with its learning rate resolved (``auto``), or changed (a restart after a stall)."""
    return replace(
        plan,
        learning_rate=float(learning_rate),
        lr_range_test=range_test if range_test is not None else plan.lr_range_test,
        reasons={**plan.reasons, "learning_rate": reason},
    )


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def _explicit(params: dict, key: str) -> int | None:
    """``None`` for ``auto``, else the user's number."""
    value = params[key]
    if value == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(f"train.{key} must be 'auto' or a whole number >= 0, got {value!r}")
    return value


def auto_batch_size(n_train: int, auto: dict) -> int:
    largest, smallest = int(auto["max_batch_size"]), int(auto["min_batch_size"])
    wanted_steps = int(auto["min_steps_per_epoch"])
    batch = 1 << max(0, int(math.log2(max(1, largest))))
    while batch > smallest and steps(n_train, batch) < wanted_steps:
        batch //= 2
    return max(batch, smallest)


def plan_training(params: dict, n_train: int, val_labels: np.ndarray, num_classes: int) -> TrainingPlan:
    """Resolve ``train``'s ``auto`` values for ``n_train`` training images and this validation split."""
    if n_train <= 0:
        raise PipelineError("the training split is empty: check reports/validation.md and ingest.limit")
    auto = params["auto"]
    reasons: dict[str, str] = {}
    warnings: list[str] = []

    batch_size = _explicit(params, "batch_size")
    if batch_size is None:
        batch_size = auto_batch_size(n_train, auto)
        reasons["batch_size"] = (
            f"auto: largest power of two <= {auto['max_batch_size']} giving >= {auto['min_steps_per_epoch']} "
            f"steps per epoch over {n_train} images (at least {auto['min_batch_size']})"
        )
    elif batch_size == 0:
        raise PipelineError("train.batch_size must be 'auto' or at least 1, got 0")
    else:
        reasons["batch_size"] = "set in params.yaml"
    steps_per_epoch = steps(n_train, batch_size)

    epochs = _explicit(params, "epochs")
    if epochs is None:
        min_epochs, max_epochs = int(auto["min_epochs"]), int(auto["max_epochs"])
        needed = math.ceil(int(auto["min_total_steps"]) / steps_per_epoch)
        epochs = min(max(min_epochs, needed), max_epochs)
        why = f"{needed} epochs reach {auto['min_total_steps']} optimizer steps" if needed > min_epochs else ""
        reasons["epochs"] = f"auto: {why or f'at least {min_epochs} epochs'}" + (
            f", capped at {max_epochs}" if needed > max_epochs else ""
        )
    elif epochs == 0:
        raise PipelineError("train.epochs must be 'auto' or at least 1, got 0")
    else:
        reasons["epochs"] = "set in params.yaml"
    total_steps = epochs * steps_per_epoch
    if total_steps < int(auto["min_total_steps"]):
        fix = (
            "train.epochs: auto sizes this"
            if reasons["epochs"] == "set in params.yaml"
            else "raise train.auto.max_epochs"
        )
        warnings.append(
            f"{total_steps} optimizer steps in all ({epochs} epochs x {steps_per_epoch}): fewer than "
            f"{auto['min_total_steps']}, the model may be undertrained ({fix})"
        )

    val_labels = np.asarray(val_labels)
    val_images = len(val_labels)
    rarest = int(np.bincount(val_labels, minlength=num_classes).min()) if val_images else 0
    val_too_small = val_images < int(auto["min_val_images"]) or rarest < int(auto["min_val_per_class"])
    patience = _explicit(params, "early_stopping_patience")
    if patience is None:
        if val_too_small:
            patience = 0
            reasons["early_stopping_patience"] = "auto: off, the validation split is too small to choose an epoch"
        else:
            patience = max(5, math.ceil(float(auto["patience_fraction"]) * epochs))
            reasons["early_stopping_patience"] = f"auto: {auto['patience_fraction']} of the epochs, at least 5"
    else:
        reasons["early_stopping_patience"] = "set in params.yaml"
    if val_too_small:
        consequence = (
            "early stopping is off: the full schedule runs to its end"
            if patience == 0
            else f"early stopping (patience {patience}, set in params.yaml) will choose an epoch from noise"
        )
        warnings.append(
            f"the validation split has {val_images} images ({rarest} in its rarest class), under "
            f"{auto['min_val_images']} images or {auto['min_val_per_class']} per class: {consequence}. "
            "Its val_* numbers are rough; more images or a higher preprocess.val_fraction help"
        )

    warmup_steps = int(float(params["warmup_fraction"]) * total_steps)
    reasons["warmup_steps"] = f"warmup_fraction {params['warmup_fraction']} of {total_steps} steps"
    online = params["online_augment"]
    if online["when"] == AUTO:
        online_augment = epochs >= int(online["min_epochs"])
        reasons["online_augment"] = (
            f"auto: {'on' if online_augment else 'off'}, {epochs} epochs "
            f"{'>=' if online_augment else '<'} online_augment.min_epochs {online['min_epochs']}"
        )
    else:
        online_augment = online["when"] == "always"
        reasons["online_augment"] = f"{online['when']} (params.yaml)"
    learning_rate = None
    if params["learning_rate"] != AUTO:
        learning_rate = float(params["learning_rate"])
        reasons["learning_rate"] = "set in params.yaml"
    return TrainingPlan(
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        early_stopping_patience=patience,
        train_images=n_train,
        val_images=val_images,
        reasons=reasons,
        warnings=warnings,
        learning_rate=learning_rate,
        online_augment=online_augment,
    )
