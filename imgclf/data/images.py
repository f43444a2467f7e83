"""Image files: what they are (by content, not name), decoding them the same way everywhere, paths.

Validate, preprocess and predict all call :func:`decode`, so a photo becomes the same pixels
whichever stage reads it. OpenCV decodes (EXIF orientation applied, 16-bit scaled to 8-bit,
CMYK converted, GIF's first frame); Pillow only reads headers, which is cheap and lets us refuse
a decompression bomb before a single pixel is allocated.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Pillow's format names for the suffixes above.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
MAX_PIXELS = 50_000_000  # default decompression-bomb limit (validate.max_pixels overrides it)
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """A file that is not a usable image; the message says why, for the quarantine table."""


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str
    frames: int
    alpha: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


@contextmanager
def _no_pillow_limit() -> Iterator[None]:
    """Pillow's own bomb guard off: we compare the header with ``max_pixels`` ourselves, first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def read_header(data: bytes) -> Header:
    """Format, size, mode and transparency from the file's header, without decoding pixels."""
    if len(data) == 0:
        raise ImageError("zero-byte file")
    with _no_pillow_limit():
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or "unknown"
                return Header(
                    format="JPEG" if fmt == "MPO" else fmt,  # MPO: a camera JPEG with an embedded preview
                    width=int(image.width),
                    height=int(image.height),
                    mode=image.mode,
                    frames=int(getattr(image, "n_frames", 1)),
                    alpha=image.mode in ALPHA_MODES or "transparency" in image.info,
                )
        except UnidentifiedImageError as error:
            raise ImageError(f"not an image (content starts {bytes(data[:8])!r})") from error
        except Exception as error:  # corrupt headers raise all sorts (OSError, TypeError, struct.error...)
            raise ImageError(f"unreadable image header: {type(error).__name__}: {error}") from error


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def _decode_with_alpha(data: bytes) -> np.ndarray:
    """Pillow for transparent images: EXIF orientation applied, composited over white."""
    with _no_pillow_limit(), Image.open(io.BytesIO(data)) as image:
        rgba = np.asarray(ImageOps.exif_transpose(image).convert("RGBA"), dtype=np.float32)
    weight = rgba[:, :, 3:4] / 255.0
    return np.round(rgba[:, :, :3] * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


def decode(data: bytes | np.ndarray, max_pixels: int | None = None, header: Header | None = None) -> np.ndarray:
    """Decode an image file's bytes to (H, W, 3) uint8 RGB, upright.

    OpenCV's IMREAD_COLOR applies EXIF orientation and converts gray, palette, CMYK and 16-bit to
    8-bit. Transparent images go through Pillow instead (OpenCV ignores orientation when it keeps
    the alpha channel) and are composited over white: a product photo's background, not black.
    Raises :class:`ImageError` for anything that is not a whole, decodable image.
    """
    data = bytes(data) if isinstance(data, np.ndarray) else data
    header = header or read_header(data)
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageError(f"{header.width}x{header.height} = {header.pixels:,} pixels > limit {max_pixels:,}")
    try:
        if header.alpha:
            return _decode_with_alpha(data)
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:
        raise ImageError(f"cannot decode {header.format}: {str(error).strip().splitlines()[-1]}") from error
    except Exception as error:  # Pillow's errors for truncated or corrupt data
        raise ImageError(f"cannot decode {header.format}: {type(error).__name__}: {error}") from error
    if image is None:
        raise ImageError(f"cannot decode {header.format} (truncated or corrupt)")
    return cv2.cvtColor(_to_uint8(image), cv2.COLOR_BGR2RGB)


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit pHash (imagehash) of an image array, as an int: near-duplicates differ in few bits."""
    import imagehash

    pil = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    bits = imagehash.phash(pil).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming_within(queries: np.ndarray, pool: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(query position, pool position, distance) for every pair of 64-bit hashes within ``max_distance`` bits.

    Chunked so that memory stays near ``256 * len(pool)`` words whatever the sizes.
    """
    queries, pool = np.asarray(queries, dtype=np.uint64), np.asarray(pool, dtype=np.uint64)
    pairs = []
    for start in range(0, len(queries), 256):
        distances = np.bitwise_count(queries[start : start + 256, None] ^ pool[None, :])
        for q, p in zip(*np.nonzero(distances <= max_distance), strict=True):
            pairs.append((start + int(q), int(p), int(distances[q, p])))
    return pairs


def resolve_inside(
    folder: Path, name: str, search: tuple[str, ...] = ("", "images"), root: Path | None = None
) -> tuple[Path | None, str, str]:
    """The file ``name`` in ``folder`` (or one of its ``search`` subfolders), kept inside ``root``.

    ``root`` (default ``folder``) is the dataset folder: nothing outside it is ever returned,
    whatever links ``folder`` itself went through. Returns ``(path, "", "")`` or
    ``(None, rule, reason)`` with the validate rule it breaks: ``path_outside`` for a name that
    leaves the dataset (``..``, absolute, or a symlink pointing out), ``file_missing`` for one
    that is not there. Names without a suffix also match ``name.jpg`` and the like.
    """
    if not name:
        return None, "file_missing", "empty file name"
    relative = Path(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return None, "path_outside", f"{name!r} leaves the dataset folder"
    boundary = (root or folder).resolve()
    candidates = [folder / sub / relative for sub in search]
    if not relative.suffix:
        candidates += [folder / sub / f"{relative}{suffix}" for sub in search for suffix in IMAGE_SUFFIXES]
    try:
        for candidate in candidates:
            if candidate.is_symlink() or candidate.exists():
                resolved = candidate.resolve()
                if not resolved.is_relative_to(boundary):
                    return None, "path_outside", f"{name!r} is a link to {resolved}, outside the dataset folder"
                if not resolved.is_file():
                    return None, "file_missing", f"{name!r} is not a file"
                return resolved, "", ""
    except (OSError, ValueError) as error:  # a name too long for the file system, a NUL byte...
        return None, "file_missing", f"cannot look up {name[:80]!r}: {error}"
    return None, "file_missing", f"{name!r} not found in {folder}"


# -- the model's input: the same for preprocess, predict and the HTTP service
COLOR_MODES = {"grayscale": 1, "rgb": 3}


def to_color_mode(image: np.ndarray, color_mode: str) -> np.ndarray:
    """Convert an (H,W), (H,W,1), (H,W,3) or (H,W,4) uint8 image to (H,W,C) for ``color_mode``."""
    if color_mode not in COLOR_MODES:
        raise ValueError(f"preprocess.color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if color_mode == "grayscale":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return image[:, :, None]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size; INTER_AREA when shrinking (no aliasing), INTER_LINEAR when growing."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized[:, :, None] if resized.ndim == 2 else resized


def prepare(image: np.ndarray, size: int, color_mode: str) -> np.ndarray:
    """The model's input for one decoded image: colour mode, then a square resize."""
    return resize(to_color_mode(image, color_mode), size)
