"""``train.learning_rate: auto``: a learning-rate range test on the model and data about to train.

One learning rate does not fit every network and input: 0.0087 was the search's best for the
0.24 M-parameter network on 28 px Fashion-MNIST, and the same number left a 128 px photo set at
chance for 100 epochs (issue #23). So, before the real training, a throwaway copy of the model
(same initial weights, same loss, optimizer and input pipeline) trains for ``lr_test_steps`` steps
while the learning rate grows geometrically from ``lr_test_min`` to ``lr_test_max`` (Smith, "Cyclical
learning rates", 2017; fastai's ``lr_find``). The loss, smoothed, first falls, then turns up and
diverges. The chosen peak learning rate is the one where the smoothed loss was lowest, divided by
``lr_divisor`` (fastai's ``lr_min`` rule divides by 10; 5 reproduces, on Fashion-MNIST, the rate
the hyperparameter search found best: docs/DESIGN.md). The real model's weights are not touched.

Each step is one ``train_on_batch`` after ``reset_metrics`` (Keras reports a running mean since the
last reset, so this gives the step's own loss). One-step epochs of ``model.fit`` with Keras'
``LearningRateScheduler`` did the same at five times the cost (31 s for 100 steps on Fashion-MNIST:
each epoch starts a new pass over the shuffled data). The sweep stops early once the smoothed loss
is ``diverge_factor`` times its minimum.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import keras
import numpy as np

from imgclf.io import PipelineError

log = logging.getLogger(__name__)
SMOOTHING = 0.9  # exponential moving average of the loss, bias-corrected (as fastai)


@dataclass(frozen=True)
class RangeTest:
    """The sweep and what it suggests (``learning_rate``), with the reason in one sentence."""

    learning_rates: list[float]
    losses: list[float]  # each step's own loss
    smoothed: list[float]
    learning_rate: float
    reason: str
    seconds: float
    best_step: int  # the step whose rate, divided, was chosen

    def summary(self) -> dict:
        """The numbers plan.json keeps (the whole curve goes to MLflow as a CSV and a figure)."""
        best = self.best_step
        return {
            "steps_run": len(self.losses),
            "lr_at_min_loss": self.learning_rates[best],
            "min_smoothed_loss": round(self.smoothed[best], 4),
            "first_loss": round(self.losses[0], 4),
            "seconds": round(self.seconds, 1),
        }


def smooth(losses: list[float]) -> list[float]:
    """Bias-corrected exponential moving average; a non-finite loss stays non-finite."""
    average, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING**step))
    return out


def sweep(lr_min: float, lr_max: float, steps: int) -> np.ndarray:
    """``steps`` learning rates growing geometrically from ``lr_min`` to ``lr_max``."""
    if not 0 < lr_min < lr_max or steps < 2:
        raise PipelineError(
            f"the learning-rate range test needs 0 < min < max and 2+ steps, got {lr_min}, {lr_max}, {steps}"
        )
    return np.geomspace(lr_min, lr_max, steps)


def suggest(learning_rates, losses, divisor: float, diverge_factor: float) -> tuple[float, str, int, int]:
    """(learning rate, reason, steps that count, step chosen): the smoothed loss's minimum over the steps
    before it diverged (non-finite, or ``diverge_factor`` times the minimum so far), divided by ``divisor``."""
    smoothed = smooth(losses)
    used = len(smoothed)
    best = math.inf
    for step, value in enumerate(smoothed):
        if not math.isfinite(value) or (step > 0 and value > diverge_factor * best):
            used = step
            break
        best = min(best, value)
    if used < 2:
        raise PipelineError(
            f"the learning-rate range test diverged at once (loss {losses[0]:.3g} at {learning_rates[0]:.2g}): "
            "set train.learning_rate to a number, or lower train.auto.lr_test_min"
        )
    at = int(np.argmin(smoothed[:used]))
    chosen = float(learning_rates[at]) / divisor
    edge = "diverged" if used < len(smoothed) else "did not diverge"
    reason = (
        f"auto: range test over {used} steps ({learning_rates[0]:.0e} to {learning_rates[used - 1]:.2g}; the loss "
        f"{edge}): lowest smoothed loss {smoothed[at]:.3f} at {learning_rates[at]:.3g}, divided by {divisor:g}"
    )
    return chosen, reason, used, at


def range_test(model: keras.Model, train, compile_fn, auto: dict) -> RangeTest:
    """Sweep a copy of ``model`` (its current weights) over ``train`` (an endless dataset of batches).

    ``compile_fn(model, lr)`` compiles with the training's own loss and optimizer at a constant rate.
    """
    rates = sweep(float(auto["lr_test_min"]), float(auto["lr_test_max"]), int(auto["lr_test_steps"]))
    divisor, factor = float(auto["lr_divisor"]), float(auto["lr_diverge_factor"])
    started = time.perf_counter()
    probe = keras.models.clone_model(model)
    probe.set_weights(model.get_weights())
    compile_fn(probe, float(rates[0]))
    losses: list[float] = []
    batches = iter(train)
    for rate in rates:
        probe.optimizer.learning_rate = float(rate)
        probe.reset_metrics()  # Keras reports a running mean since the last reset: this step's own loss
        images, targets = next(batches)
        losses.append(float(probe.train_on_batch(images, targets, return_dict=True)["loss"]))
        smoothed = smooth(losses)
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > factor * min(smoothed):
            break
    chosen, reason, _, best_step = suggest(rates[: len(losses)], losses, divisor, factor)
    del probe
    return RangeTest(
        learning_rates=[float(r) for r in rates[: len(losses)]],
        losses=losses,
        smoothed=smooth(losses),
        learning_rate=chosen,
        reason=reason,
        seconds=time.perf_counter() - started,
        best_step=best_step,
    )
