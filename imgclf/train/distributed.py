"""The training loop for several workers: a custom step under ``MultiWorkerMirroredStrategy``.

Under Keras 3.15 / TF 2.21, ``model.fit`` fails under that strategy in every worker ("Attempt to
convert a value (PerReplica:...) with an unsupported type", keras-team/keras#20585). The same
Keras model trains with a step of its own: ``strategy.run`` over
``strategy.experimental_distribute_dataset``, the loss averaged over the global batch, the
optimizer's ``apply_gradients`` (which advances ``optimizer.iterations``, so the learning-rate
schedule runs as under ``model.fit``). :func:`fit_phase` drives the very callbacks
``training.callbacks`` gives ``model.fit`` (epoch log, CSV history, MLflow metrics, resumable early
stopping, reduce-on-plateau, BackupAndRestore) through a ``keras.callbacks.CallbackList``, with the
epoch logs ``model.fit`` would give them: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.

Every worker runs the same collective operations in the same order: the step, the validation
(computed in every worker, summed across them), and two exchanges with the chief. Only the chief's
callbacks write where the pipeline looks (the train stage gives the other workers a temporary
folder), so after ``on_train_begin`` (where BackupAndRestore restores a killed training) the chief's
weights, optimizer state and epoch are copied to every worker, and after each epoch the chief's
decision to stop (early stopping) and its learning rate (reduce-on-plateau) are too: a resumed
training continues in step everywhere, whatever each worker's own folder held.

The loop works under any strategy (the tests run it under the default one as well).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)
SUM = tf.distribute.ReduceOp.SUM


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` is a MultiWorkerMirroredStrategy: the one ``model.fit`` cannot train under."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _per_example_loss(model: keras.Model) -> keras.losses.Loss:
    """The compiled loss, unreduced: one value per image, averaged over the global batch by the step."""
    loss = model.loss
    if not isinstance(loss, keras.losses.Loss):
        raise TypeError(f"the multi-worker loop needs a keras.losses.Loss instance, got {loss!r}")
    return type(loss).from_config({**loss.get_config(), "reduction": None})


def _regularization(model: keras.Model):
    return tf.add_n([tf.cast(x, tf.float32) for x in model.losses]) if model.losses else tf.constant(0.0)


class Steps:
    """The distributed train and validation steps of one compiled model under one strategy.

    Each step returns the global sums of this batch (images, loss, correct predictions), equal in
    every worker: one all-reduce per step, also used to average the loss over the global batch, so a
    last batch that is smaller, or split unevenly across workers, weighs as it does in ``model.fit``.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy):
        self.model, self.strategy = model, strategy
        self.loss_fn = _per_example_loss(model)
        replicas = strategy.num_replicas_in_sync

        def batch_sums(images, targets, training):
            predictions = model(images, training=training)
            per_example = tf.cast(self.loss_fn(targets, predictions), tf.float32)
            right = tf.cast(tf.equal(tf.argmax(targets, -1), tf.argmax(predictions, -1)), tf.float32)
            count = tf.cast(tf.shape(per_example)[0], tf.float32)
            regularization = _regularization(model)
            local = tf.stack([count, tf.reduce_sum(per_example) + regularization * count, tf.reduce_sum(right)])
            totals = tf.distribute.get_replica_context().all_reduce(SUM, tf.stop_gradient(local))
            return per_example, regularization, totals

        def train_step(images, targets):
            with tf.GradientTape() as tape:
                per_example, regularization, totals = batch_sums(images, targets, True)
                loss = tf.math.divide_no_nan(tf.reduce_sum(per_example), totals[0]) + regularization / replicas
                scaled = model.optimizer.scale_loss(loss)
            variables = model.trainable_variables
            gradients = tape.gradient(scaled, variables)
            model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return totals

        def val_step(images, targets):
            return batch_sums(images, targets, False)[2]

        self._train = tf.function(lambda batch: strategy.run(train_step, args=batch), reduce_retracing=True)
        self._val = tf.function(lambda batch: strategy.run(val_step, args=batch), reduce_retracing=True)

    def _epoch(self, step, batches, steps: int | None = None) -> np.ndarray:
        """``steps`` batches of ``batches`` (an iterator over a repeated dataset), or all of them."""
        totals = np.zeros(3)
        for batch in batches if steps is None else itertools.islice(batches, steps):
            totals += self.strategy.experimental_local_results(step(batch))[0].numpy()
        return totals

    def train_epoch(self, batches, steps: int | None = None) -> dict[str, float]:
        count, loss, right = self._epoch(self._train, batches, steps)
        return {"loss": loss / max(count, 1), "accuracy": right / max(count, 1)}

    def validate(self, dataset) -> dict[str, float]:
        count, loss, right = self._epoch(self._val, dataset)
        return {"val_loss": loss / max(count, 1), "val_accuracy": right / max(count, 1)}


class ChiefValues:
    """The chief's values (a list of tensors or arrays) in every worker: a sum in which the others
    take part with zeros, divided by the number of replicas that sent the chief's."""

    def __init__(self, strategy: tf.distribute.Strategy, chief: bool):
        self.strategy = strategy
        weight = 1.0 if chief else 0.0

        def send(*local):
            context = tf.distribute.get_replica_context()
            own = tf.constant(weight, tf.float64)
            senders = context.all_reduce(SUM, own)
            summed = context.all_reduce(SUM, [tf.cast(v, tf.float64) * own for v in local])
            return [tf.cast(s / senders, v.dtype) for s, v in zip(summed, local, strict=True)]

        self._send = tf.function(lambda *values: strategy.run(send, args=values), reduce_retracing=True)

    def __call__(self, values) -> list:
        result = self._send(*[tf.convert_to_tensor(v) for v in values])
        return [self.strategy.experimental_local_results(r)[0] for r in result]


def sync_from_chief(model: keras.Model, chief_values: ChiefValues) -> None:
    """Every worker takes the chief's weights, optimizer state (``iterations`` included) and
    ``_initial_epoch``: what the chief's BackupAndRestore restored, or its fresh start."""
    variables = list(model.variables) + list(model.optimizer.variables)
    epoch = model._initial_epoch or 0
    values = chief_values([v.value for v in variables] + [np.int64(epoch)])
    for variable, value in zip(variables, values[:-1], strict=True):
        variable.assign(value)
    model._initial_epoch = int(values[-1].numpy()) or None


def _learning_rate_variable(optimizer):
    rate = optimizer._learning_rate
    return None if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else rate


def fit_phase(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    first: int,
    last: int,
    callbacks: list[keras.callbacks.Callback],
    chief: bool,
    steps_per_epoch: int | None = None,
) -> dict:
    """Epochs ``first`` to ``last`` (exclusive) of ``model`` (compiled, built under its strategy), as
    ``model.fit(train, validation_data=val, initial_epoch=first, epochs=last, callbacks=...)`` would
    run them; returns the last epoch's logs. With ``steps_per_epoch``, ``train`` repeats and one
    iterator serves every epoch, as in ``model.fit(..., steps_per_epoch=...)``."""
    strategy = model.distribute_strategy
    if not model.built:
        model.build(tuple(train.element_spec[0].shape))
    if not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    steps = Steps(model, strategy)
    distributed_train = strategy.experimental_distribute_dataset(train)
    train_batches = iter(distributed_train) if steps_per_epoch else distributed_train
    distributed_val = strategy.experimental_distribute_dataset(val)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=last, steps=None, verbose=0)
    model.stop_training = False
    model._initial_epoch = None
    callback_list.on_train_begin()
    chief_values = ChiefValues(strategy, chief)
    sync_from_chief(model, chief_values)
    learning_rate = _learning_rate_variable(model.optimizer)
    logs: dict = {}
    for epoch in range(model._initial_epoch or first, last):
        callback_list.on_epoch_begin(epoch)
        logs = steps.train_epoch(train_batches, steps_per_epoch) | steps.validate(distributed_val)
        callback_list.on_epoch_end(epoch, logs)
        shared = [np.float64(model.stop_training)] + ([learning_rate.value] if learning_rate is not None else [])
        shared = chief_values(shared)
        model.stop_training = bool(shared[0].numpy())
        if learning_rate is not None:
            learning_rate.assign(shared[1])
        if model.stop_training:
            log.info("early stopping at epoch %d", epoch + 1)
            break
    if last > first:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    model._initial_epoch = None
    callback_list.on_train_end(logs)
    return logs


def outside_strategy(saved: Path) -> keras.Model:
    """The saved model, loaded outside any strategy: after a multi-worker training, the chief's model's
    own ``predict`` (MLflow's signature) would wait for the other workers, which have finished."""
    return keras.models.load_model(saved)
