"""Training: the input pipeline, optimizer and schedule, callbacks, device strategy and the fit loop.

The fit is resumable: ``keras.callbacks.BackupAndRestore`` keeps the last finished
epoch under ``.cache/train_backup/<key>``, where the key hashes the train params and
the training data, so a training killed mid-way and started again with the same
inputs continues from its last epoch, and a changed config starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from imgclf.io import PipelineError, atomic_path, read_json, write_json
from imgclf.train import distributed
from imgclf.train.plan import TrainingPlan, with_learning_rate

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class TrainData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and TensorFlow's generators, before anything draws from them."""
    keras.utils.set_random_seed(seed)


def online_augmentation(spec: dict, seed: int) -> keras.Sequential | None:
    """Light random flips and shifts applied to each batch as it is drawn (``train.online_augment``).

    Unlike augment's offline copies, every epoch sees new variants at no extra epoch length.
    Keras' own preprocessing layers, seeded; ``None`` when the spec turns everything off.
    """
    steps = []
    if spec["horizontal_flip"]:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if float(spec["shift"]) > 0:
        shift = float(spec["shift"])
        steps.append(keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 1))
    return keras.Sequential(steps, name="online_augmentation") if steps else None


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    batch_size: int,
    seed: int,
    augment: keras.Sequential | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Shuffled (seeded, reshuffled each epoch) batches of uint8 images with one-hot labels.

    Plain slices, cached, shuffled over the whole set: on two cores this measured both faster and
    far steadier than gathering whole batches by shuffled index inside a ``map`` (benchmarks/NOTES.md).
    ``augment`` (see :func:`online_augmentation`) runs on each batch, sequentially so that the
    random draws are reproducible, and the batch goes back to uint8: the model's input contract.
    ``repeat``: endless, one epoch after another, for one iterator that lives through the whole fit
    (``steps_per_epoch`` marks the epochs): a new iterator every epoch stalled the CPU, idle, for
    4-10 s at each epoch's start (benchmarks/NOTES.md, section 7).
    """
    labels = tf.one_hot(np.asarray(y, dtype=np.int32), num_classes)
    dataset = (
        tf.data.Dataset.from_tensor_slices((np.asarray(x), labels))
        .cache()
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    if augment is not None:

        def apply(images, targets):
            moved = augment(tf.cast(images, tf.float32), training=True)
            return tf.cast(tf.clip_by_value(tf.round(moved), 0, 255), tf.uint8), targets

        dataset = dataset.map(apply)
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int) -> tf.data.Dataset:
    return (
        tf.data.Dataset.from_tensor_slices((np.asarray(x), tf.one_hot(np.asarray(y, dtype=np.int32), num_classes)))
        .batch(batch_size)
        .cache()
        .prefetch(AUTOTUNE)
    )


def distribution_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG is set, Mirrored over several GPUs (or, without a GPU, over
    several logical CPU devices, as a test sets up with ``tf.config.set_logical_device_configuration``),
    else the default strategy."""
    if os.environ.get("TF_CONFIG"):
        log.info("TF_CONFIG set: MultiWorkerMirroredStrategy")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("%d GPUs: MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    cpus = [] if gpus else tf.config.list_logical_devices("CPU")
    if len(cpus) > 1:
        log.info("%d logical CPU devices: MirroredStrategy", len(cpus))
        return tf.distribute.MirroredStrategy([device.name for device in cpus])
    log.info("device: %s", "GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


def describe_setup(strategy: tf.distribute.Strategy, policy) -> str:
    """One line for the log and the ``training_setup`` MLflow tag: strategy, its devices, precision."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list: it runs where TensorFlow places ops
        devices = [(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name]
    name = getattr(policy, "name", policy)
    where = f"{len(devices)} device{'s' if len(devices) != 1 else ''} ({', '.join(devices)})"
    if distributed.is_multi_worker(strategy):  # the devices above are this worker's share
        spec = strategy.cluster_resolver.cluster_spec()
        workers = sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)
        replicas = strategy.num_replicas_in_sync
        where = f"{workers} workers, {replicas} replicas in all; this worker: {where}"
        return f"MultiWorkerMirroredStrategy on {where}, precision {name}"
    return f"{type(strategy).__name__.lstrip('_')} on {where}, precision {name}"


def is_chief() -> bool:
    """Only the chief writes outputs and logs to MLflow: the 'chief' task, else worker 0."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task")
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def set_precision(mode: str) -> str:
    """``train.mixed_precision``: auto (mixed_float16 on a GPU), on (mixed_float16), off (float32), or
    bf16 (mixed_bfloat16: for CPUs with bfloat16 instructions and TPUs; no loss scaling needed)."""
    if mode not in ("auto", "on", "off", "bf16", True, False):
        raise PipelineError(f"train.mixed_precision must be auto, on, off or bf16, got {mode!r}")
    use = mode in ("on", True) or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    policy = "mixed_bfloat16" if mode == "bf16" else "mixed_float16" if use else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def learning_rate(params: dict, total_steps: int, base_lr: float | None = None):
    """A float for constant and reduce-on-plateau, a CosineDecay over ``total_steps`` (with a linear
    warmup over ``warmup_fraction`` of them) for cosine."""
    if base_lr is None and params["learning_rate"] == "auto":
        raise PipelineError("train.learning_rate is auto: resolve it first (training.resolve_learning_rate)")
    lr = float(base_lr if base_lr is not None else params["learning_rate"])
    schedule = params["schedule"]
    if schedule in ("constant", "plateau"):
        return lr
    if schedule == "cosine":
        warmup_steps = int(float(params["warmup_fraction"]) * total_steps)
        decay_steps = max(1, total_steps - warmup_steps)
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr / 10 if warmup_steps else lr,
            decay_steps=decay_steps,
            alpha=float(params["min_lr_fraction"]),
            warmup_target=lr if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    raise PipelineError(f"train.schedule must be constant, cosine or plateau, got {schedule!r}")


def optimizer(params: dict, lr) -> keras.optimizers.Optimizer:
    name = params["optimizer"]
    weight_decay = float(params["weight_decay"]) or None
    momentum = float(params["momentum"])
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay or 0.0)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, momentum=momentum, weight_decay=weight_decay)
    raise PipelineError(f"train.optimizer must be adam, adamw, sgd or rmsprop, got {name!r}")


def compile_for_plan(model: keras.Model, params: dict, plan: TrainingPlan) -> None:
    """Compile ``model`` for its first phase at the plan's (resolved) learning rate, under its strategy."""
    steps = plan.steps_per_epoch * first_phase_epochs(params, plan)
    with model.distribute_strategy.scope():  # the optimizer must belong to the model's strategy
        compile_model(model, params, learning_rate(params, steps, plan.learning_rate))


def compile_model(model: keras.Model, params: dict, lr) -> None:
    """Categorical cross-entropy on one-hot targets (the input pipeline one-hots), so label smoothing works."""
    model.compile(
        optimizer=optimizer(params, lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(params["label_smoothing"])),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


class EpochLogger(keras.callbacks.Callback):
    """Adds ``epoch_time_s`` to the epoch's logs (so history.csv and MLflow get it), logs each epoch in
    one line, and remembers the first epoch run (> 0 when resumed). Must come before CSVLogger."""

    def __init__(self, echo: bool = True):
        super().__init__()
        self.echo = echo  # off while Keras' progress bar already shows each epoch (a terminal)
        self.first_epoch: int | None = None
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        if self.first_epoch is None:
            self.first_epoch = epoch
            if epoch:
                log.info("resumed from backup: continuing at epoch %d", epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time_s"] = round(time.perf_counter() - self._started, 3)
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if isinstance(v, float | int))
        log.log(logging.INFO if self.echo else logging.DEBUG, "epoch %d: %s", epoch + 1, shown)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping on validation loss, best weights restored, whose state survives a kill.

    Keras' EarlyStopping starts afresh in every process, so a resumed training would forget its
    best epoch and patience. Here the best weights are kept in ``best_path`` and ``best``/``wait``
    are rebuilt from the epoch log, so a resumed training stops where an uninterrupted one would.
    """

    def __init__(self, best_path: Path, history_path: Path, patience: int):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.best_path, self.history_path = Path(best_path), Path(history_path)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if not (self.best_path.exists() and self.history_path.exists()):
            return
        history = read_history(self.history_path)
        if history.empty or "val_loss" not in history:
            return
        best_row = history["val_loss"].idxmin()
        self.best = float(history.at[best_row, "val_loss"])
        self.best_epoch = int(history.at[best_row, "epoch"])
        self.wait = int(history["epoch"].iloc[-1]) - self.best_epoch
        with np.load(self.best_path) as saved:
            self.best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]
        log.info("early stopping resumed: best val_loss %.4f at epoch %d", self.best, self.best_epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch and self.best_weights is not None:
            with atomic_path(self.best_path) as tmp:
                np.savez(tmp, **{f"w{i}": w for i, w in enumerate(self.best_weights)})


class StallCheck(keras.callbacks.Callback):
    """Stops a training that never left chance, or whose loss is not a number (``train.stall``).

    After ``check_epoch`` epochs the training accuracy must be above chance (the largest class's
    share) by ``margin`` of the way from chance to 1, and the loss below the loss of predicting the
    class frequencies (ln K for balanced classes); a NaN or infinite loss stops it at any epoch.
    ``stalled`` then holds one sentence saying which. Keras' ``TerminateOnNaN`` would stop too, but
    could not tell the caller why, and a stall at chance is no NaN.
    """

    def __init__(self, check_epoch: int, chance_accuracy: float, chance_loss: float, margin: float):
        super().__init__()
        self.check_epoch, self.chance_accuracy, self.chance_loss = check_epoch, chance_accuracy, chance_loss
        self.threshold = chance_accuracy + margin * (1 - chance_accuracy)
        self.stalled: str | None = None
        self.checked = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss, accuracy = float(logs.get("loss", np.nan)), float(logs.get("accuracy", np.nan))
        due = self.check_epoch and epoch + 1 >= self.check_epoch and not self.checked  # also when resumed past it
        if not np.isfinite(loss):
            self.stalled = f"the training loss is {loss} at epoch {epoch + 1} (diverged)"
        elif due:
            self.checked = True
        if due and not self.stalled and (accuracy <= self.threshold or loss >= self.chance_loss):
            self.stalled = (
                f"after {epoch + 1} epochs the training accuracy is {accuracy:.3f} (chance {self.chance_accuracy:.3f}, "
                f"needed > {self.threshold:.3f}) and the loss {loss:.3f} (chance level {self.chance_loss:.3f})"
            )
        if self.stalled:
            self.model.stop_training = True


def stall_check(params: dict, plan: TrainingPlan, y_train: np.ndarray, num_classes: int) -> StallCheck:
    """The :class:`StallCheck` for this data: chance is the largest class's share, and its loss the
    cross-entropy of always predicting the (label-smoothed) class frequencies: ln K when balanced."""
    stall = params["stall"]
    shares = np.bincount(np.asarray(y_train), minlength=num_classes) / max(1, len(y_train))
    smoothing = float(params["label_smoothing"])
    targets = (1 - smoothing) * shares + smoothing / num_classes  # what a constant prediction can best match
    chance_loss = float(-(targets[targets > 0] * np.log(targets[targets > 0])).sum())
    return StallCheck(check_epoch(stall, plan), float(shares.max()), chance_loss, float(stall["margin"]))


def check_epoch(stall: dict, plan: TrainingPlan) -> int:
    """The first epoch after which ``check_fraction`` of the steps, and at least ``min_steps``, are done;
    0 (no check) when the whole training is shorter (a smoke run: evaluate's verdict still judges it)."""
    needed = max(float(stall["check_fraction"]) * plan.total_steps, int(stall["min_steps"]))
    epoch = max(1, int(np.ceil(needed / plan.steps_per_epoch)))
    return epoch if epoch <= plan.epochs else 0


def resolve_learning_rate(
    model: keras.Model, data: TrainData, params: dict, plan: TrainingPlan, saved: Path | None = None
):
    """``plan`` with its learning rate: the number in params.yaml, else a range test's choice
    (:mod:`imgclf.train.lr_finder`) on a copy of ``model`` over the training pipeline. Returns ``(plan, test)``
    (``test`` is ``None`` without a range test). ``saved`` (in the training's backup folder) keeps the
    decision, so a resumed training keeps its rate and skips the test; a restart after a stall writes
    its lower rate there too. In a multi-worker training every worker takes the chief's rate."""
    from imgclf.train import lr_finder

    multi_worker = distributed.is_multi_worker(model.distribute_strategy)
    test = None
    if saved is not None and saved.exists():
        kept = read_json(saved)
        log.info("learning rate %.3g kept from the interrupted training (%s)", kept["learning_rate"], saved)
        plan = with_learning_rate(plan, kept["learning_rate"], kept["reason"], kept.get("lr_range_test"))
        plan = replace(plan, restarts=kept.get("restarts", []), warnings=kept.get("warnings", plan.warnings))
    elif plan.learning_rate is None and (is_chief() or not multi_worker):  # the other workers take the chief's
        seed = int(params["seed"])
        augment = online_augmentation(params["online_augment"], seed) if plan.online_augment else None
        num_classes = len(data.class_names)
        train = train_dataset(data.x_train, data.y_train, num_classes, plan.batch_size, seed, augment, repeat=True)
        test = lr_finder.range_test(model, train, lambda probe, lr: compile_model(probe, params, lr), params["auto"])
        log.info("learning rate %.3g: %s (%.1f s)", test.learning_rate, test.reason, test.seconds)
        plan = with_learning_rate(plan, test.learning_rate, test.reason, test.summary())
        if saved is not None:
            save_learning_rate(saved, plan)
    if multi_worker:  # every worker, whatever its own folder holds: the chief's rate and its stalled attempts
        mine = [plan.learning_rate or 0.0, float(len(plan.restarts))]
        rate, restarts = (
            float(v.numpy()) for v in distributed.ChiefValues(model.distribute_strategy, is_chief())(mine)
        )
        if not is_chief():
            stalled = [{"learning_rate": None, "stalled": "(the chief's attempt)"}] * round(restarts)
            plan = replace(with_learning_rate(plan, rate, "the chief's"), restarts=stalled)
    return plan, test


def save_learning_rate(saved: Path, plan: TrainingPlan) -> None:
    reason = plan.reasons["learning_rate"]
    write_json(
        saved,
        {
            "learning_rate": plan.learning_rate,
            "reason": reason,
            "lr_range_test": plan.lr_range_test,
            "restarts": plan.restarts,
            "warnings": plan.warnings,
        },
    )


def reset_progress(run_dir: Path, history_path: Path) -> None:
    """Forget a stalled attempt: its epoch log, backups, early-stopping state and phase markers (the
    MLflow run id and the learning-rate decision stay)."""
    history_path.unlink(missing_ok=True)
    for child in run_dir.iterdir():
        if child.name in ("train", "frozen", "fine_tune") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.endswith((".best.npz", ".done.weights.h5")):
            child.unlink(missing_ok=True)


def fit_guarded(
    model: keras.Model,
    data: TrainData,
    params: dict,
    plan: TrainingPlan,
    run_dir: Path,
    history_path: Path,
    extra_callbacks=(),
    saved: Path | None = None,
) -> tuple[EpochLogger, TrainingPlan]:
    """:func:`fit` under a :class:`StallCheck`: a training that never leaves chance (or goes NaN) is said
    in one loud line and restarted from its initial weights with the learning rate divided by
    ``stall.lr_divisor``, up to ``stall.restarts`` times; then it fails. Returns the epoch logger and
    the plan as it ended (its learning rate and ``restarts``). ``model`` must be compiled with
    ``plan.learning_rate``."""
    stall = params["stall"]
    initial = model.get_weights()
    tried = [*plan.restarts]
    while True:
        guard = stall_check(params, plan, data.y_train, len(data.class_names))
        epoch_logger = fit(model, data, params, plan, run_dir, history_path, [*extra_callbacks, guard])
        if not guard.stalled:
            return epoch_logger, plan
        tried.append({"learning_rate": plan.learning_rate, "stalled": guard.stalled})
        rates = ", ".join(f"{t['learning_rate']:.3g}" for t in tried if t["learning_rate"] is not None)
        reset_progress(run_dir, history_path)  # first: a kill from here on restarts from the initial weights
        if len(tried) > int(stall["restarts"]):
            raise PipelineError(
                f"TRAINING STALLED at every learning rate tried ({rates}): {guard.stalled}. No model is saved. "
                "Check the labels (reports/validation.md), try train.model: resnet_small, a smaller "
                "preprocess.image_size, or train.learning_rate set lower by hand"
            )
        lower = plan.learning_rate / float(stall["lr_divisor"])
        log.error(
            "TRAINING STALLED: %s at learning rate %.3g; restarting from the initial weights at %.3g (attempt %d of %d)",
            guard.stalled,
            plan.learning_rate,
            lower,
            len(tried) + 1,
            int(stall["restarts"]) + 1,
        )
        plan = with_learning_rate(
            plan, lower, f"{plan.reasons['learning_rate']}; divided by {stall['lr_divisor']:g} after a stall"
        )
        plan = replace(
            plan,
            restarts=list(tried),
            warnings=[
                *plan.warnings,
                f"stalled at learning rate {tried[-1]['learning_rate']:.3g} ({guard.stalled}); restarted at {lower:.3g}",
            ],
        )
        if saved is not None:
            save_learning_rate(saved, plan)
        from imgclf.train.models import is_pretrained_transfer, transfer_base

        if is_pretrained_transfer(params["model"], params):
            transfer_base(model).trainable = False  # a stall in fine-tuning restarts at the frozen phase
        model.set_weights(initial)
        compile_for_plan(model, params, plan)


def underfit_warning(history: pd.DataFrame, params: dict, plan: TrainingPlan) -> str | None:
    """A sentence with what to try when the last epoch's training accuracy stays below
    ``stall.underfit_accuracy`` (a small set that a network should fit nearly perfectly)."""
    if history.empty or "accuracy" not in history:
        return None
    accuracy, limit = float(history["accuracy"].iloc[-1]), float(params["stall"]["underfit_accuracy"])
    if accuracy >= limit:
        return None
    return (
        f"UNDERFITTING: the training accuracy is {accuracy:.3f} after {len(history)} epochs (below {limit:g}); "
        f"the network did not fit its own training images. Try more epochs (train.auto.min_epochs, now giving "
        f"{plan.epochs}), a lower learning rate (train.learning_rate, now {plan.learning_rate:.3g}), or a larger "
        "model (train.simple_cnn.dense or filters, or train.model: resnet_small); lighter augmentation "
        "(augment.policy) if the augmented copies are harder than the photos"
    )


def backup_key(params: dict, data_hash: str) -> str:
    """Backups are only resumed by a training with the same params and data."""
    text = json.dumps({"train": params, "data": data_hash}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def callbacks(
    params: dict, patience: int, backup_dir: Path, history_path: Path, epoch_logger: EpochLogger, extra=()
) -> list[keras.callbacks.Callback]:
    """``patience`` 0 turns early stopping off (the plan's choice for a tiny validation split)."""
    # Order matters for a kill between callbacks: epoch logs are written before the backup is, so a
    # kill can repeat an epoch's row (read_history keeps the last) but never lose one.
    result = [epoch_logger, keras.callbacks.CSVLogger(str(history_path), append=True), *extra]
    if patience:
        best_path = backup_dir.parent / f"{backup_dir.name}.best.npz"
        result.append(ResumableEarlyStopping(best_path, history_path, int(patience)))
    if params["schedule"] == "plateau":
        result.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=float(params["plateau_factor"]),
                patience=int(params["plateau_patience"]),
            )
        )
    return [*result, keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True)]


def read_history(path: Path) -> pd.DataFrame:
    """The per-epoch CSV, with repeated epochs (a kill between logging and backup) resolved to the last."""
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def clear_backup(backup_root: Path, keep: str | None = None) -> None:
    """Drop stale backups (other keys) so the cache does not grow."""
    if backup_root.is_dir():
        for child in backup_root.iterdir():
            if child.name != keep:
                shutil.rmtree(child, ignore_errors=True)


def load_train_data(paths, use_augmented: bool) -> TrainData:
    """Training = the preprocessed train split plus, if wanted, augment's copies; val as preprocessed."""
    from imgclf.data.shards import read_sharded, read_split
    from imgclf.io import require

    x_train, y_train = read_split(paths, "train", empty="check reports/validation.md and ingest.limit")
    if use_augmented:
        require(paths.augment_policy, "augment")
        x_train = np.concatenate([x_train, read_sharded(paths.augmented, "x", x_train.shape[1:])])
        y_train = np.concatenate([y_train, read_sharded(paths.augmented, "y", (), dtype=np.int64)])
    x_val, y_val = read_split(paths, "val", empty="set preprocess.val_fraction > 0")
    return TrainData(x_train, np.asarray(y_train), x_val, y_val, read_json(paths.preprocessed_meta)["class_names"])


def data_hash(data: TrainData) -> str:
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_val, data.y_val):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def first_phase_epochs(params: dict, plan: TrainingPlan) -> int:
    """Epochs of the first phase, which the first optimizer's schedule spans: the whole plan, or for a
    pretrained transfer model only its ``transfer.frozen_epochs`` (fine-tuning gets a schedule of its own)."""
    from imgclf.train.models import is_pretrained_transfer

    if not is_pretrained_transfer(params["model"], params):
        return plan.epochs
    return min(int(params["transfer"]["frozen_epochs"]), plan.epochs)


def fit(
    model: keras.Model,
    data: TrainData,
    params: dict,
    plan: TrainingPlan,
    run_dir: Path,
    history_path: Path,
    extra_callbacks=(),
) -> EpochLogger:
    """Train ``model`` (already compiled for phase 1) as ``plan`` says; resumable via ``run_dir``.

    ``model.fit`` trains it, except under a MultiWorkerMirroredStrategy, where the custom step of
    :mod:`imgclf.train.distributed` does, with the same callbacks; there ``run_dir`` and ``history_path``
    of a worker other than the chief should be a temporary folder (the train stage's choice).

    Pretrained transfer models run two phases: the head on the frozen base for
    ``transfer.frozen_epochs``, then the top ``transfer.fine_tune_layers`` layers unfrozen at
    ``learning_rate * transfer.fine_tune_lr_factor``; the epoch count runs on across phases.
    """
    from imgclf.train.models import is_pretrained_transfer, unfreeze_top

    num_classes = len(data.class_names)
    batch_size, epochs, seed = plan.batch_size, plan.epochs, int(params["seed"])
    augment = online_augmentation(params["online_augment"], seed) if plan.online_augment else None
    train = train_dataset(data.x_train, data.y_train, num_classes, batch_size, seed, augment, repeat=True)
    val = eval_dataset(data.x_val, data.y_val, num_classes, batch_size)
    # In a terminal, Keras' progress bar shows progress within each epoch (an epoch can be a minute);
    # in a log file or CI, EpochLogger's one line per epoch is all there is.
    verbose = 1 if sys.stdout.isatty() else 0  # Keras draws its bar on stdout
    epoch_logger = EpochLogger(echo=not verbose)
    phases = [("train", 0, epochs)]
    multi_worker = distributed.is_multi_worker(model.distribute_strategy)
    if multi_worker:  # every worker skips a finished phase when the chief does (only the chief's folder has them)
        verbose, epoch_logger.echo = 0, True

        # A ChiefValues of its own: sharing fit_phase's (one value here, then every variable there) fails
        # to retrace under TF 2.21 (IndexError in function_cache.generalize).
        def chief_says(flag: bool) -> bool:
            return bool(distributed.ChiefValues(model.distribute_strategy, is_chief())([float(flag)])[0].numpy())

    else:
        chief_says = bool
    if is_pretrained_transfer(params["model"], params):
        frozen = first_phase_epochs(params, plan)
        phases = [("frozen", 0, frozen), ("fine_tune", frozen, epochs)]
    for name, first, last in phases:
        done_marker = run_dir / f"{name}.done.weights.h5"
        if chief_says(done_marker.exists()):
            model.load_weights(done_marker)
            log.info("phase %s already finished before an interruption: weights restored", name)
            continue
        if name == "fine_tune":
            transfer = params["transfer"]
            lr = float(plan.learning_rate) * float(transfer["fine_tune_lr_factor"])
            with model.distribute_strategy.scope():  # the new optimizer must belong to the model's strategy
                count = unfreeze_top(model, int(transfer["fine_tune_layers"]))
                schedule = learning_rate(params, plan.steps_per_epoch * (last - first), lr)
                compile_model(model, params, schedule)
            log.info("fine-tuning: %d base layers unfrozen, learning rate %.2g", count, lr)
        if last > first:
            phase_callbacks = callbacks(
                params, plan.early_stopping_patience, run_dir / name, history_path, epoch_logger, extra_callbacks
            )
            if multi_worker:  # model.fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585)
                distributed.fit_phase(
                    model,
                    train,
                    val,
                    first,
                    last,
                    phase_callbacks,
                    chief=is_chief(),
                    steps_per_epoch=plan.steps_per_epoch,
                )
            else:
                model.fit(
                    train,
                    validation_data=val,
                    initial_epoch=first,
                    epochs=last,
                    steps_per_epoch=plan.steps_per_epoch,  # the dataset repeats: one iterator for all epochs
                    callbacks=phase_callbacks,
                    verbose=verbose,
                    shuffle=False,  # the dataset shuffles itself (seeded); Keras would only warn about it
                )
        if any(getattr(callback, "stalled", None) for callback in extra_callbacks):
            break  # a stalled phase is not done, and the next would train on it (fit_guarded restarts)
        if len(phases) > 1:
            with atomic_path(done_marker) as tmp:
                model.save_weights(tmp)
    return epoch_logger
