"""The params schema: the type, range, choices and meaning of every key in params.yaml, and no values.

``params.yaml`` holds every value; this module says what each may be. A stage loads its own
section through :func:`load_section`, which fails before the stage touches anything, in one line
naming the file, the key, what is allowed and, for a typo, the closest existing key:

    params.yaml: train.epoch is not a key of train; did you mean train.epochs?

The params reference (docs/params.md) is generated from here (``python -m imgclf.params``) and a test
keeps the two equal. Adding a param: a field here (with a description), its value in
params.yaml, and the code that reads it with ``params["name"]``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgclf.io import PipelineError

# Stage name (dvc.yaml) -> its params section, where the two differ.
STAGE_SECTIONS = {"export-tflite": "export"}
# Sections read by a command or the service rather than a stage (imgclf.train.tune, imgclf.ship.serve).
COMMAND_SECTIONS = ("tune", "serve", "monitor")

Rule = Literal["error", "warn", "off"]
Workers = Annotated[int, Field(ge=1)] | None
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Auto = Literal["auto"]
Variant = Literal["float32", "float16", "dynamic", "int8", "onnx"]


def Pair(item) -> Any:
    """Two values, as a YAML list: [low, high]."""
    return Annotated[list[item], Field(min_length=2, max_length=2)]


class Section(BaseModel):
    """Every key required (values live in params.yaml), none unknown, no silent conversions."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def describe(text: str) -> Any:
    return Field(description=text)


# ingest
class CsvColumns(Section):
    image_column: str | None = describe("CSV layout: the column of image names; null = detect (image, filename, ...)")
    label_column: str | None = describe("CSV layout: the column of labels; null = detect (label, class, ...)")
    train_file: str | None = describe("CSV layout: the training CSV when train/ holds several")
    test_file: str | None = describe("CSV layout: the test CSV when test/ holds several")


class Ingest(Section):
    source: str = describe(
        "fashion-mnist, or a folder of your own images (CSV or class folders); under data/raw, DVC sees them change"
    )
    fashion_mnist_dir: str | None = describe("folder with the four Fashion-MNIST IDX files; null = search")
    extra: str | None = describe(
        "class folders of extra training images added to the source (python -m imgclf.feedback export); null = none"
    )
    limit: PositiveInt | None = describe("images per class per split, for quick runs; null = all")
    classes: list[str] | None = describe("folder datasets: the class list; null = the labels or folders found")
    csv: CsvColumns
    max_pack_mb: Annotated[float, Field(gt=0)] = describe("larger files are listed but not packed")
    workers: Workers = describe("threads reading files; null = all cores")


# validate
class Rules(Section):
    """Every rule a row or the dataset can survive; path_outside, file_missing, readable and max_pixels
    are always errors (such a row has no usable pixels)."""

    file_size: Rule = describe("larger than validate.max_file_mb")
    format: Rule = describe("a real image in a format not in validate.formats")
    unknown_label: Rule = describe("an empty label or one outside the classes")
    min_edge: Rule = describe("shortest edge below validate.min_edge")
    duplicate_name: Rule = describe("the same file listed twice in a split")
    duplicate_in_split: Rule = describe("identical bytes twice in a split")
    duplicate_across_splits: Rule = describe("a training image identical to a test image")
    near_duplicate_across_splits: Rule = describe("perceptual hash within near_duplicate_distance of a test image")
    min_per_class: Rule = describe("fewer than validate.min_per_class training images in a class")
    class_imbalance: Rule = describe("largest / smallest class above validate.max_imbalance_ratio")


class Validate(Section):
    on_error: Literal["quarantine", "fail"] = describe("what an error rule does to a row")
    max_bad_fraction: Fraction = describe("fail when more than this share of rows is quarantined")
    min_edge: PositiveInt = describe("shortest image edge in pixels")
    max_file_mb: Annotated[float, Field(gt=0)] = describe("larger files are quarantined")
    max_pixels: PositiveInt = describe("width x height from the header, checked before decoding")
    formats: list[Literal["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF"]] = describe("accepted formats, by content")
    near_duplicate_distance: Annotated[int, Field(ge=0, le=64)] = describe("pHash bits; 0 = same pHash")
    workers: Workers = describe("processes decoding images; null = all cores")
    min_per_class: Annotated[int, Field(ge=0)] = describe("training images per class")
    max_imbalance_ratio: Annotated[float, Field(ge=1)] = describe("largest / smallest class")
    rules: Rules


# preprocess
class Preprocess(Section):
    image_size: Annotated[int, Field(ge=8, le=1024)] = describe("every image is resized to this square")
    color_mode: Literal["grayscale", "rgb"] = describe("channels the model sees")
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = describe("of the labelled pool, stratified")
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = describe("used only when the source has no test split")
    seed: int = describe("split seed")
    workers: Workers = describe("processes decoding images; null = all cores")


# augment
class Transform(Section):
    p: Probability = describe("probability; 0 disables the transform")


class Affine(Transform):
    shift: Fraction = describe("fraction of the image size")
    scale: Pair(float) = describe("zoom range")
    rotate: float = describe("degrees either way")


class ResizedCrop(Transform):
    scale: Pair(Fraction) = describe("area range of the crop")


class BrightnessContrast(Transform):
    brightness: Fraction = describe("brightness change either way")
    contrast: Fraction = describe("contrast change either way")


class GaussNoise(Transform):
    std_range: Pair(Fraction) = describe("noise standard deviation range (of 255)")


class Blur(Transform):
    blur_limit: Pair(PositiveInt) = describe("kernel size range (odd)")


class CoarseDropout(Transform):
    holes: Pair(PositiveInt) = describe("number of holes range")
    hole_size: Pair(Fraction) = describe("hole size range, fraction of the image")


class Policy(Section):
    horizontal_flip: Transform
    vertical_flip: Transform
    affine: Affine
    random_resized_crop: ResizedCrop
    brightness_contrast: BrightnessContrast
    gauss_noise: GaussNoise
    blur: Blur
    coarse_dropout: CoarseDropout


class Augment(Section):
    copies: Annotated[int, Field(ge=0)] = describe("augmented copies of the training split")
    seed: int = describe("augmentation seed")
    workers: Workers = describe("processes; null = all cores")
    preview_samples: Annotated[int, Field(ge=0)] = describe("originals in reports/augment_preview.png")
    policy: Policy


# train
class OnlineAugment(Section):
    when: Literal["auto", "always", "never"] = describe("auto: on when the plan trains at least min_epochs epochs")
    min_epochs: PositiveInt = describe("... (small data, seen many times, is where memorizing starts)")
    horizontal_flip: bool = describe("random flips of each batch as it is drawn")
    shift: Fraction = describe("random shifts, fraction of the image size; 0 = off")


class TrainAuto(Section):
    max_batch_size: PositiveInt = describe("batch_size: auto never goes above this")
    min_batch_size: PositiveInt = describe("... nor below this")
    min_steps_per_epoch: PositiveInt = describe("batch_size: auto halves the batch until an epoch has this many steps")
    min_epochs: PositiveInt = describe("epochs: auto trains at least this many epochs")
    min_total_steps: PositiveInt = describe("... and enough of them for this many optimizer steps")
    max_epochs: PositiveInt = describe("... but at most this many")
    patience_fraction: Annotated[float, Field(gt=0, le=1)] = describe("early_stopping_patience: auto, of the epochs")
    min_val_images: Annotated[int, Field(ge=0)] = describe("a smaller validation split turns early stopping off")
    min_val_per_class: Annotated[int, Field(ge=0)] = describe("... as does a class with fewer validation images")
    lr_test_steps: Annotated[int, Field(ge=10)] = describe("learning_rate: auto: steps of the range test")
    lr_test_min: Annotated[float, Field(gt=0)] = describe("... its first learning rate")
    lr_test_max: Annotated[float, Field(gt=0)] = describe("... its last (the rate grows geometrically)")
    lr_divisor: Annotated[float, Field(ge=1)] = describe("... the rate at the lowest smoothed loss, divided by this")
    lr_diverge_factor: Annotated[float, Field(gt=1)] = describe(
        "... the test stops once the loss is this times its lowest"
    )


class Stall(Section):
    check_fraction: Fraction = describe("after this share of the steps, the training must have left chance...")
    min_steps: Annotated[int, Field(ge=1)] = describe("... and at least this many (a shorter training is not checked)")
    margin: Fraction = describe("...: training accuracy above chance + this share of the way from chance to 1")
    restarts: Annotated[int, Field(ge=0)] = describe("a stalled training restarts from its initial weights this often")
    lr_divisor: Annotated[float, Field(gt=1)] = describe("... each time with the learning rate divided by this")
    underfit_accuracy: Fraction = describe("a final training accuracy below this is reported as underfitting")


class SimpleCnn(Section):
    filters: list[PositiveInt] = describe("one Conv-BN-ReLU-MaxPool block per entry (the first blocks)")
    stem_size: Annotated[int, Field(ge=8)] = describe("stride-2 stem convs halve a larger input's side down to this")
    final_size: PositiveInt = describe("blocks are added until the feature map's side is at most this")
    max_width: PositiveInt = describe("added blocks double the width up to this")
    pooling: Literal["auto", "flatten", "average"] = describe(
        "the last feature map into the dense layer: flatten, average, or auto (flatten up to flatten_max_size)"
    )
    flatten_max_size: PositiveInt = describe("pooling: auto flattens images up to this size, averages larger ones")
    dense: PositiveInt = describe("units of the dense layer")
    dropout: Pair(Fraction) = describe("after the conv blocks, before the output")
    l2: Annotated[float, Field(ge=0)] = describe("kernel L2 penalty")


class ResnetSmall(Section):
    widths: list[PositiveInt] = describe("one stage per entry")
    blocks_per_stage: PositiveInt = describe("residual blocks per stage")
    dropout: Fraction = describe("before the output")
    l2: Annotated[float, Field(ge=0)] = describe("kernel L2 penalty")


class Transfer(Section):
    weights: str | None = describe("imagenet, null (from scratch) or a path to a .weights.h5 file")
    input_size: Annotated[int, Field(ge=32)] = describe("images are resized inside the model to at least this")
    frozen_epochs: Annotated[int, Field(ge=0)] = describe("epochs with the base frozen (pretrained weights)")
    fine_tune_layers: Annotated[int, Field(ge=0)] = describe("top base layers unfrozen afterwards")
    fine_tune_lr_factor: Annotated[float, Field(gt=0)] = describe("learning-rate factor for fine-tuning")
    dropout: Fraction = describe("before the output")


class Train(Section):
    model: Literal["simple_cnn", "resnet_small", "mobilenet_v2", "efficientnet_b0"] = describe("the network")
    epochs: Auto | PositiveInt = describe("auto (sized to the data, see train.auto) or a number")
    batch_size: Auto | PositiveInt = describe("auto (sized to the data, see train.auto) or a number")
    seed: int = describe("weights and shuffling seed")
    use_augmented: bool = describe("train on the preprocessed train split plus augment's copies")
    online_augment: OnlineAugment
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = describe("the optimizer")
    learning_rate: Auto | Annotated[float, Field(gt=0)] = describe(
        "peak learning rate: auto (a range test on the model and data, see train.auto) or a number"
    )
    momentum: Fraction = describe("sgd and rmsprop")
    weight_decay: Annotated[float, Field(ge=0)] = describe("decoupled weight decay (adamw, sgd, rmsprop)")
    schedule: Literal["constant", "cosine", "plateau"] = describe("learning-rate schedule")
    warmup_fraction: Fraction = describe("cosine: linear warmup over this share of all steps")
    min_lr_fraction: Fraction = describe("cosine: final learning rate, of the peak")
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = describe("plateau: factor on each reduction")
    plateau_patience: PositiveInt = describe("plateau: epochs without improvement before a reduction")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = describe("cross-entropy label smoothing")
    early_stopping_patience: Auto | Annotated[int, Field(ge=0)] = describe("auto, 0 (off) or epochs")
    auto: TrainAuto
    stall: Stall
    mixed_precision: Literal["auto", "on", "bf16", "off"] = describe("auto = mixed_float16 on a GPU")
    experiment_name: str = describe("MLflow experiment")
    registered_model_name: str | None = describe("MLflow registered model; null = do not register")
    simple_cnn: SimpleCnn
    resnet_small: ResnetSmall
    transfer: Transfer


# evaluate
class Baseline(Section):
    thumbnail: Annotated[int, Field(ge=2, le=64)] = describe("pixels per side of the thumbnails")
    max_iter: PositiveInt = describe("logistic regression iterations")
    max_fit_images: PositiveInt = describe("a stratified, seeded sample of train+val when there are more")
    seed: int = describe("sample seed")
    fail_below: bool = describe("fail evaluate when the network is below the baseline beyond noise")
    significance: Annotated[float, Field(gt=0)] = describe("McNemar p below this: the shortfall is not noise")


class Evaluate(Section):
    batch_size: PositiveInt = describe("prediction batch")
    top_k: PositiveInt = describe("top-k accuracy")
    mistakes: Annotated[int, Field(ge=0)] = describe("images in the most-confident-mistakes grid")
    grad_cam_samples: Annotated[int, Field(ge=0)] = describe("images in the Grad-CAM grid")
    seed: int = describe("Grad-CAM sample seed")
    baseline: Baseline


# audit
class ImageChecks(Section):
    blur_below_median: Annotated[float, Field(gt=0, lt=1)] = describe(
        "blurred: variance of the Laplacian below this share of the dataset's median"
    )
    dark_below: Annotated[float, Field(ge=0, le=255)] = describe(
        "too dark: the brightest 1 % of pixels below this (0-255)"
    )
    bright_above: Annotated[float, Field(ge=0, le=255)] = describe(
        "too bright: the darkest 1 % of pixels above this (0-255)"
    )
    low_information_below: Annotated[float, Field(ge=0, le=8)] = describe(
        "low information: entropy of the luminance histogram below this many bits (a blank frame: ~0)"
    )
    aspect_ratio_factor: Annotated[float, Field(gt=1)] = describe(
        "odd aspect ratio: this many times wider or taller than the dataset's median shape"
    )
    size_factor: Annotated[float, Field(gt=1)] = describe(
        "odd size: this many times more or fewer pixels than the median"
    )
    duplicate_distance: Annotated[int, Field(ge=0, le=64)] = describe(
        "conflicting duplicates: pHash within this many bits of an image with another label (0 = same pHash)"
    )


class Audit(Section):
    folds: Annotated[int, Field(ge=2)] = describe("out-of-fold: k of the k-fold on the network's penultimate features")
    max_iter: PositiveInt = describe("logistic regression iterations per fold")
    seed: int = describe("fold assignment seed")
    batch_size: PositiveInt = describe("feature extraction batch")
    workers: Workers = describe("processes measuring the images; null = all cores")
    gallery: Annotated[int, Field(ge=0)] = describe("flagged images shown in reports/audit/report.html, per table")
    accepted: Annotated[str, Field(min_length=1)] = describe(
        "a CSV (columns source, and optionally issue) of findings you checked and keep; the audit skips them"
    )
    images: ImageChecks


# export-tflite
class Unknown(Section):
    detector: Literal["max_softmax", "energy", "mahalanobis", "knn"] = describe(
        "out-of-distribution score (docs/serving.md#unknown-answers; benchmarks/ood.py compares them)"
    )
    unknown_rate: Annotated[float, Field(gt=0.0, lt=0.5)] = describe(
        "share of in-distribution images the threshold calls unknown (set on the validation split)"
    )
    max_fit_images: PositiveInt = describe("training images (seeded sample) the detector is fitted on")
    min_images: PositiveInt = describe(
        "fewer validation images than this: the threshold comes from out-of-fold scores on train + val"
    )
    folds: Annotated[int, Field(ge=2)] = describe("out-of-fold scores for the threshold: k of the k-fold")
    seed: int = describe("fold and knn reference sample seed")
    knn_k: PositiveInt = describe("knn: the k-th nearest reference image's distance is the score")
    knn_reference: PositiveInt = describe("knn: training images kept as the reference (shipped beside the model)")


class Export(Section):
    variants: Annotated[list[Variant], Field(min_length=1)] = describe("TFLite variants (and onnx) to write")
    calibration_samples: PositiveInt = describe("training images drawn to calibrate int8")
    seed: int = describe("calibration sample seed")
    max_accuracy_drop: float = describe("a variant is not blessed when its accuracy is this much below Keras'...")
    significance: Annotated[float, Field(gt=0)] = describe("... and McNemar's p is below this")
    latency_runs: PositiveInt = describe("batch-1 invokes timed per variant")
    on_gate_failure: Literal["record", "fail"] = describe(
        "record = write the variant, marked not blessed, and finish; fail = the stage fails (CI)"
    )
    unknown: Unknown


# predict
class Predict(Section):
    variant: Variant = describe("which exported model to run (one of export.variants)")
    top_k: PositiveInt = describe("labels per image in the predictions")
    csv_column: str | None = describe("CLI: column of image names in a CSV; null = detect")
    allow_unfit: bool = describe("predict even with a model not fit to ship, or only unblessed variants (smoke runs)")


# promote
class Promote(Section):
    min_gain: Annotated[float, Field(ge=0)] = describe("champion only when accuracy beats it by more than this...")
    significance: Annotated[float, Field(gt=0)] = describe("... and McNemar's p (the gain is noise) is below this")
    allow_unfit: bool = describe("aliases even for a model not fit to ship or not blessed (smoke runs)")


# serve (the HTTP service, imgclf.serve:app; not a stage)
class Serve(Section):
    model: str | None = describe(
        "a .tflite or .onnx path, or a registry URI (models:/imgclf-classifier@champion); null = models/ (IMGCLF_MODEL wins)"
    )
    variant: Variant = describe("the file a registry version or models/ serves (IMGCLF_VARIANT wins)")
    top_k: PositiveInt = describe("labels per image in a prediction")
    max_upload_mb: Annotated[float, Field(gt=0)] = describe("a request's body; larger: 413")
    max_file_mb: Annotated[float, Field(gt=0)] = describe("one image; larger: a per-file file_size error")
    max_files: PositiveInt = describe("images per request; more: 413")
    max_pixels: PositiveInt = describe("width x height from the header, checked before decoding (bombs)")
    workers: Workers = describe(
        "model instances (one per inference thread); null = the cores it may use (a container's CPU limit)"
    )
    log: str | None = describe(
        "the prediction log, a SQLite file (every answer, its id, feedback); null = off (IMGCLF_LOG wins)"
    )
    capture: Literal["off", "unknown", "all"] = describe(
        "uploaded images kept beside the log: off, unknown (answers called unknown), all (IMGCLF_CAPTURE wins)"
    )
    capture_max_mb: Annotated[float, Field(gt=0)] = describe("disk budget of the kept images; the oldest go first")


# monitor (python -m imgclf.monitor; not a stage)
class Monitor(Section):
    days: Annotated[float, Field(gt=0)] | None = describe("only the log's last N days; null = all of it")
    min_requests: PositiveInt = describe("fewer answers than this: no distribution alert (too little to judge)")
    max_unknown_rate: Fraction = describe("alert when more answers than this are called unknown")
    class_shift_p: Probability = describe("alert when the answered classes differ from the test split's, p below this")
    confidence_shift_p: Probability = describe(
        "alert when the top probabilities differ from the test split's, p below this"
    )
    min_feedback: PositiveInt = describe("fewer feedback answers than this: no accuracy alert")
    min_feedback_accuracy: Fraction = describe("alert when accuracy on feedback is below this")


# tune (python -m imgclf.tune; not a stage: see imgclf/tune.py)
class SearchRange(Section):
    """A number between ``low`` and ``high``: integers when both are integers, else floats."""

    low: int | float = describe("smallest value tried")
    high: int | float = describe("largest value tried")
    log: bool = Field(False, description="sample on a log scale (learning rates, weight decay)")


class SearchChoices(Section):
    choices: Annotated[list[int | float | str | bool], Field(min_length=1)] = describe("the values tried")


class TunePruner(Section):
    startup_trials: Annotated[int, Field(ge=0)] = describe("trials that are never pruned (the median needs them)")
    warmup_epochs: Annotated[int, Field(ge=0)] = describe("epochs of a trial before it can be pruned")


class Tune(Section):
    study_name: str = describe("the Optuna study; trials add up across runs of the search with the same name")
    storage: str | None = describe("Optuna RDB URL; null = sqlite optuna.db in the workspace; postgresql:// shares it")
    trials: PositiveInt = describe("the study's trial budget, shared by every process working on it")
    timeout_min: Annotated[float, Field(gt=0)] | None = describe("stop starting trials after this long; null = none")
    epochs: PositiveInt = describe("epochs per trial (the schedule spans them)")
    max_train_images: PositiveInt | None = describe("stratified, seeded subset of the training images; null = all")
    max_val_images: PositiveInt | None = describe("... and of the validation images")
    metric: Literal["val_accuracy", "val_loss"] = describe("best epoch's value is the objective; reported for pruning")
    seed: int = describe("sampler seed")
    pruner: TunePruner
    space: dict[str, SearchRange | SearchChoices] = describe(
        "train params to search, by dotted key (a list item by index): {low, high, log} or {choices}"
    )


SCHEMA: dict[str, type[Section]] = {
    "ingest": Ingest,
    "validate": Validate,
    "preprocess": Preprocess,
    "augment": Augment,
    "train": Train,
    "evaluate": Evaluate,
    "audit": Audit,
    "export": Export,
    "predict": Predict,
    "promote": Promote,
    "tune": Tune,
    "serve": Serve,
    "monitor": Monitor,
}


def section_of(stage: str) -> str:
    return STAGE_SECTIONS.get(stage, stage)


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 scalars, as DVC (ruamel) reads and writes params.yaml: only true/false are booleans
    (``mixed_precision: off`` stays the string "off") and ``3e-4`` is a number, not a string."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_file(path: str | Path = "params.yaml") -> dict:
    """The whole file as written, unchecked (the train stage logs it to MLflow)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run the stage from the repository root")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader) or {}
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected sections (ingest:, validate:, ...), got {type(params).__name__}")
    return params


def _closest(word: str, candidates) -> str | None:
    match = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return match[0] if match else None


def _model_at(model: type[Section], loc: tuple) -> type[Section]:
    """The schema model that holds the key at ``loc`` (for the list of keys a typo is compared with)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, Section):
            model = annotation
        else:
            break
    return model


def _field_loc(model: type[Section], loc: tuple) -> tuple:
    """``loc`` without the union-member tags pydantic adds (``epochs.literal['auto']`` -> ``epochs``)."""
    clean, current = [], model
    for part in loc:
        if isinstance(part, int):
            clean.append(part)
        elif current is not None and part in current.model_fields:
            clean.append(part)
            annotation = current.model_fields[part].annotation
            current = annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None
        elif current is not None:  # an unknown key: keep it, the message names it
            clean.append(part)
    return tuple(clean)


def _one_line(path: Path, section: str, model: type[Section], error: ValidationError) -> str:
    """The first problem, said in one line a user can act on."""
    errors = [{**e, "loc": _field_loc(model, e["loc"])} for e in error.errors()]
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")  # a renamed key: name the typo first
    first = errors[0]
    loc = first["loc"]
    key = ".".join(str(part) for part in (section, *loc))
    names = tuple(part for part in loc if not isinstance(part, int))
    if first["type"] == "extra_forbidden":
        parent = _model_at(model, names[:-1])
        guess = _closest(names[-1], parent.model_fields)
        owner = ".".join((section, *names[:-1]))
        hint = (
            f"did you mean {owner}.{guess}?" if guess else f"the keys of {owner} are: {', '.join(parent.model_fields)}"
        )
        return f"{path}: {key} is not a key of {owner}; {hint}"
    field = _model_at(model, names[:-1]).model_fields.get(names[-1]) if names else None
    meaning = f" ({field.description})" if field is not None and field.description else ""
    if first["type"] == "missing":
        return f"{path}: {key} is missing{meaning}"
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        keys = ", ".join(_model_at(model, names).model_fields)
        return f"{path}: {key} = {first['input']!r} is not allowed: should be a section with the keys {keys}"
    # a union (auto | a number) reports one error per member at the same place: say them all
    messages = list(dict.fromkeys(e["msg"] for e in errors if e["loc"] == loc))
    prefix = "Input should be "
    if all(m.startswith(prefix) for m in messages):
        allowed = "should be " + " or ".join(m.removeprefix(prefix) for m in messages)
    else:
        allowed = "; ".join(messages)
    return f"{path}: {key} = {first['input']!r} is not allowed: {allowed}{meaning}"


def load_section(section: str, path: str | Path = "params.yaml") -> dict:
    """The checked section as a dict (tuples as lists, as YAML gives them), or a one-line PipelineError."""
    path = Path(path)
    params = read_file(path)
    unknown = [name for name in params if name not in SCHEMA]
    if unknown:
        guess = _closest(unknown[0], SCHEMA)
        hint = f"did you mean {guess}?" if guess else f"the sections are: {', '.join(SCHEMA)}"
        raise PipelineError(f"{path}: unknown section {unknown[0]!r}; {hint}")
    if section not in SCHEMA:
        raise PipelineError(f"no params section {section!r}; the sections are: {', '.join(SCHEMA)}")
    if section not in params:
        raise PipelineError(f"{path} has no '{section}' section")
    model = SCHEMA[section]
    try:
        checked = model.model_validate(params[section] or {})
    except ValidationError as error:
        raise PipelineError(_one_line(path, section, model, error)) from None
    return yaml.safe_load(yaml.safe_dump(checked.model_dump(mode="json")))


def leaf_keys(model: type[Section] | None = None, prefix: str = "") -> list[str]:
    """Every key the schema declares, dotted (``train.auto.min_epochs``)."""
    if model is None:
        return [key for name, section in SCHEMA.items() for key in leaf_keys(section, f"{name}.")]
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def reference_markdown(path: str | Path | None = None) -> str:
    """The params reference (docs/params.md): one row per key, its shipped value and the schema's description."""
    from imgclf.paths import REPO_ROOT

    shipped = read_file(path or REPO_ROOT / "params.yaml")
    lines = ["| key | shipped value | what it is |", "|---|---|---|"]
    for key in leaf_keys():
        section, *rest = key.split(".")
        model = _model_at(SCHEMA[section], tuple(rest[:-1]))
        value = shipped[section]
        for part in rest:
            value = value[part]
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        lines.append(f"| `{key}` | `{shown}` | {model.model_fields[rest[-1]].description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
