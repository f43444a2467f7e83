"""augment: an albumentations policy from params, materialized into seeded copies.

The policy is saved with albumentations' own serializer (``A.save``), so it can be
reloaded with ``A.load`` and audited. Each chunk of images gets its own seed
derived from (augment.seed, copy, chunk) with ``numpy.random.SeedSequence``, so
the output is byte-identical however many worker processes share the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
from tqdm import tqdm

from imgclf.io import PipelineError, atomic_path
from imgclf.parallel import process_pool, usable_cpus

log = logging.getLogger(__name__)
CHUNK_SIZE = 2048


def _transform(name: str, spec: dict, size: tuple[int, int]) -> A.BasicTransform:
    p = float(spec["p"])
    if name == "horizontal_flip":
        return A.HorizontalFlip(p=p)
    if name == "vertical_flip":
        return A.VerticalFlip(p=p)
    if name == "affine":
        shift = float(spec["shift"])
        return A.Affine(
            translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
            scale=tuple(spec["scale"]),
            rotate=(-float(spec["rotate"]), float(spec["rotate"])),
            border_mode=0,
            fill=0,
            p=p,
        )
    if name == "random_resized_crop":
        return A.RandomResizedCrop(size=size, scale=tuple(spec["scale"]), p=p)
    if name == "brightness_contrast":
        return A.RandomBrightnessContrast(
            brightness_limit=float(spec["brightness"]),
            contrast_limit=float(spec["contrast"]),
            p=p,
        )
    if name == "gauss_noise":
        return A.GaussNoise(std_range=tuple(spec["std_range"]), p=p)
    if name == "blur":
        return A.Blur(blur_limit=tuple(spec["blur_limit"]), p=p)
    if name == "coarse_dropout":
        return A.CoarseDropout(
            num_holes_range=tuple(spec["holes"]),
            hole_height_range=tuple(spec["hole_size"]),
            hole_width_range=tuple(spec["hole_size"]),
            fill=0,
            p=p,
        )
    raise PipelineError(f"augment.policy.{name} is not a known transform")


TRANSFORMS = (
    "horizontal_flip",
    "vertical_flip",
    "affine",
    "random_resized_crop",
    "brightness_contrast",
    "gauss_noise",
    "blur",
    "coarse_dropout",
)


def build_policy(policy: dict, size: tuple[int, int]) -> A.Compose:
    """A.Compose of the transforms in ``augment.policy`` with p > 0, in a fixed order.

    The params schema (imgclf/params.py) has already checked the names and values."""
    transforms = [_transform(name, policy[name], size) for name in TRANSFORMS if float(policy[name]["p"]) > 0]
    return A.Compose(transforms)


def save_policy(policy: A.Compose, path) -> None:
    with atomic_path(path) as tmp:
        A.save(policy, str(tmp), data_format="yaml")


def chunk_seed(seed: int, copy: int, group: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, copy, group, chunk]).generate_state(1)[0])


def augment_batch(policy: A.Compose, images: np.ndarray, seed: int) -> np.ndarray:
    """Augment a batch with a policy re-seeded for this batch alone."""
    policy.set_random_seed(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        result = policy(image=image)["image"]
        out[i] = result.reshape(image.shape)
    return out


def _work(args):
    policy_dict, images, seed = args
    return augment_batch(A.from_dict(policy_dict), images, seed)


def _blocks(groups: np.ndarray, copies: int) -> Iterator[tuple[int, int, int, int]]:
    """(group, copy, first image, image count) in the output's order: group after group, copy after
    copy within a group. ``groups``: non-decreasing, one per image."""
    names, starts, counts = np.unique(groups, return_index=True, return_counts=True)
    for group, first, count in zip(names, starts, counts, strict=True):
        for copy in range(copies):
            yield int(group), copy, int(first), int(count)


def source_rows(groups: np.ndarray, copies: int) -> np.ndarray:
    """The image behind each row of :func:`materialize`'s output, for its labels and shards."""
    blocks = [np.arange(first, first + count) for _, _, first, count in _blocks(np.asarray(groups), copies)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def materialize(
    policy: A.Compose,
    images: np.ndarray,
    copies: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """``copies`` augmented versions of ``images``: group after group, copy after copy within a group.

    ``groups`` (non-decreasing, one per image; default: one group) are the shards of
    :mod:`imgclf.data.shards`; :func:`source_rows` says which image each output row comes from. Every chunk is seeded by (seed, copy, group, chunk within the group), so a
    group's augmentations depend on that group alone: a photo added to one shard leaves the other
    shards' augmented copies byte for byte as they were. A progress bar shows in a terminal.
    """
    if copies < 0:
        raise PipelineError(f"augment.copies must be >= 0, got {copies}")
    if copies == 0 or len(images) == 0:
        return np.empty((0, *images.shape[1:]), dtype=np.uint8)
    groups = np.zeros(len(images), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if len(groups) != len(images) or np.any(np.diff(groups) < 0):
        raise ValueError("groups must give one non-decreasing group per image")
    workers = workers or usable_cpus()
    policy_dict = A.to_dict(policy)
    jobs = []  # (output offset, first image, images, seed)
    offset = 0
    for group, copy, first, count in _blocks(groups, copies):
        for chunk, start in enumerate(range(first, first + count, CHUNK_SIZE)):
            size = min(CHUNK_SIZE, first + count - start)
            jobs.append((offset, start, size, chunk_seed(seed, copy, group, chunk)))
            offset += size
    out = np.empty((copies * len(images), *images.shape[1:]), dtype=np.uint8)
    bar = tqdm(total=len(out), desc="augment", unit="img", disable=None if progress else True)
    args = ((policy_dict, np.asarray(images[start : start + size]), s) for _, start, size, s in jobs)
    if workers == 1:
        results = map(_work, args)
        executor = None
    else:
        executor = process_pool(workers)
        results = executor.map(_work, args)
    try:
        for (offset, _, size, _), batch in zip(jobs, results, strict=True):
            out[offset : offset + size] = batch
            bar.update(size)
    finally:
        bar.close()
        if executor:
            executor.shutdown()
    return out


def preview_grid(originals: np.ndarray, augmented: list[np.ndarray], captions: list[str], path) -> None:
    """Save a PNG: each row an original beside its augmentations, captioned with the class name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(originals), 1 + len(augmented)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            image = originals[r] if c == 0 else augmented[c - 1][r]
            ax = axes[r][c]
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(captions[r], fontsize=8)
            if r == 0:
                ax.set_title("original" if c == 0 else f"copy {c}", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
