"""Image files: what they are (by content, not name), decoding them the same way everywhere, paths.

Validate, preprocess and predict all call :func:`decode`, so a photo becomes the same pixels
whichever stage reads it. OpenCV decodes (EXIF orientation applied, 16-bit scaled to 8-bit,
CMYK converted, GIF's first frame); Pillow only reads headers, which is cheap and lets us refuse
a decompression bomb before a single pixel is allocated.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

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

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> Header:
    """Format, size and mode from the file's header, without decoding pixels."""
    if len(data) == 0:
        raise ImageError("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit applies, see decode
        try:
            with Image.open(io.BytesIO(data)) as image:
                return Header(
                    format=image.format or "unknown",
                    width=int(image.width),
                    height=int(image.height),
                    mode=image.mode,
                    frames=int(getattr(image, "n_frames", 1)),
                )
        except UnidentifiedImageError as error:
            raise ImageError(f"not an image (content starts {bytes(data[:8])!r})") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"unreadable image header: {error}") from error
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _has_alpha(header: Header, data: bytes) -> bool:
    if header.mode in ALPHA_MODES:
        return True
    if header.mode == "P" and header.format in ("PNG", "GIF", "WEBP"):
        with Image.open(io.BytesIO(data)) as image:
            return "transparency" in image.info
    return False


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def decode(data: bytes | np.ndarray, max_pixels: int | None = None, header: Header | None = None) -> np.ndarray:
    """Decode an image file's bytes to (H, W, 3) uint8 RGB, upright.

    Transparent pixels are composited over white (a product photo's background, not black).
    Raises :class:`ImageError` for anything that is not a whole, decodable image.
    """
    data = bytes(data) if isinstance(data, np.ndarray) else data
    header = header or read_header(data)
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageError(f"{header.width}x{header.height} = {header.pixels:,} pixels > limit {max_pixels:,}")
    buffer = np.frombuffer(data, dtype=np.uint8)
    alpha = _has_alpha(header, data)
    try:
        # IMREAD_COLOR applies EXIF orientation and converts gray/palette/CMYK/16-bit to 8-bit BGR;
        # images with an alpha channel need IMREAD_UNCHANGED to keep it.
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED if alpha else cv2.IMREAD_COLOR)
    except cv2.error as error:
        raise ImageError(f"cannot decode {header.format}: {str(error).strip().splitlines()[-1]}") from error
    if image is None:
        raise ImageError(f"cannot decode {header.format} (truncated or corrupt)")
    image = _to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        rgb = image[:, :, 2::-1].astype(np.float32)
        weight = image[:, :, 3:4].astype(np.float32) / 255.0
        return np.round(rgb * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    if image.shape[2] == 2:  # gray + alpha
        gray = image[:, :, :1].astype(np.float32)
        weight = image[:, :, 1:2].astype(np.float32) / 255.0
        composite = np.round(gray * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
        return np.repeat(composite, 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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


def resolve_inside(folder: Path, name: str, search: tuple[str, ...] = ("", "images")) -> tuple[Path | None, str, str]:
    """The file ``name`` inside ``folder`` (or one of its ``search`` subfolders), or why not.

    Returns ``(path, "", "")`` or ``(None, rule, reason)`` with the validate rule it breaks:
    ``path_outside`` for a name that leaves the folder (``..``, absolute, or a symlink pointing
    out), ``file_missing`` for one that is not there. Names without a suffix also match
    ``name.jpg`` and the like.
    """
    if not name:
        return None, "file_missing", "empty file name"
    relative = Path(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return None, "path_outside", f"{name!r} leaves the dataset folder"
    root = folder.resolve()
    candidates = [folder / sub / relative for sub in search]
    if not relative.suffix:
        candidates += [folder / sub / f"{relative}{suffix}" for sub in search for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_symlink() or candidate.exists():
            resolved = candidate.resolve()
            if not resolved.is_relative_to(root):
                return None, "path_outside", f"{name!r} is a link to {resolved}, outside the dataset folder"
            if not resolved.is_file():
                return None, "file_missing", f"{name!r} is not a file"
            return resolved, "", ""
    return None, "file_missing", f"{name!r} not found in {folder}"
