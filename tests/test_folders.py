"""Own images: both folder layouts, every image format and mode, and a hostile dataset that must lose nothing."""

import io
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgclf.data import images
from imgclf.data.folders import detect_layout, list_folder
from imgclf.data.ingest import ingest, read_ingested
from imgclf.data.preprocess import shard_order, write_split
from imgclf.data.shards import read_sharded
from imgclf.data.validation import validate
from imgclf.io import PipelineError
from imgclf.paths import Layout
from tests.conftest import folder_bytes, run, set_params, shipped
from tests.photos import CLASSES, class_folder_dataset, csv_dataset, photo, random_photo, save

RNG = np.random.default_rng(7)
VALIDATE = {
    "min_edge": 64,
    "min_per_class": 10,
    "max_file_mb": 0.1,
    "max_pixels": 20_000_000,
    "formats": ["JPEG", "PNG", "BMP", "GIF", "WEBP"],  # no TIFF, so scan.tif breaks the format rule
    "near_duplicate_distance": 6,
    "max_bad_fraction": 1.0,
}  # over the shipped validate section


# --- decoding: every mode a photo folder holds -------------------------------------------------


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _halves(height: int = 100, width: int = 200) -> np.ndarray:
    """Left half red, right half blue."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)
    image[:, width // 2 :] = (0, 0, 255)
    return image


def rgba_png() -> bytes:
    rgba = np.zeros((80, 80, 4), np.uint8)  # fully transparent...
    rgba[20:60, 20:60] = (255, 0, 0, 255)  # ...but for an opaque red square
    return _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")


def deep_png() -> bytes:
    deep = np.zeros((80, 80, 3), np.uint16)
    deep[..., 0] = 40000  # 16-bit red channel: 40000 >> 8 == 156
    return cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))[1].tobytes()


def cmyk_jpeg() -> bytes:
    return _pil_bytes(Image.fromarray(_halves()).convert("CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg() -> bytes:
    """Stored 100x200 (left red, right blue) with EXIF orientation 6: shown upright, 200x100, red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _pil_bytes(Image.fromarray(_halves()), "JPEG", exif=exif, quality=95)


def palette_gif() -> bytes:
    frames = [Image.fromarray(_halves()).convert("P"), Image.fromarray(_halves()[:, ::-1]).convert("P")]
    return _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])


def test_decode_applies_orientation_alpha_depth_cmyk_and_first_frame():
    upright = images.decode(exif_rotated_jpeg())
    assert upright.shape == (200, 100, 3)
    assert upright[10, 50, 0] > 200 and upright[-10, 50, 2] > 200  # red on top, blue below
    transparent = images.decode(rgba_png())
    assert tuple(transparent[0, 0]) == (255, 255, 255) and tuple(transparent[40, 40]) == (255, 0, 0)
    assert tuple(images.decode(deep_png())[0, 0]) == (156, 0, 0)
    cmyk = images.decode(cmyk_jpeg())
    assert np.abs(cmyk[50, 20].astype(int) - (255, 0, 0)).max() < 12
    assert np.abs(cmyk[50, 180].astype(int) - (0, 0, 255)).max() < 12
    gif = images.decode(palette_gif())
    assert gif.shape == (100, 200, 3) and gif[50, 20, 0] > 200  # the first frame, red on the left
    for fmt in ("BMP", "WEBP", "TIFF"):
        decoded = images.decode(_pil_bytes(Image.fromarray(_halves()), fmt))
        assert decoded.shape == (100, 200, 3) and decoded[50, 20, 0] > 200, fmt


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte file"),
        (b"id,label\nthis is text\n", "not an image"),
        (cv2.imencode(".jpg", _halves())[1].tobytes()[:700], "cannot decode JPEG"),
    ],
)
def test_decode_refuses_what_is_not_a_whole_image(data, reason):
    with pytest.raises(images.ImageError, match=reason):
        images.decode(data)


def test_decode_refuses_a_bomb_before_allocating_it():
    bomb = _png_declaring(100_000, 100_000)
    assert images.read_header(bomb).pixels == 10**10
    with pytest.raises(images.ImageError, match="pixels > limit"):
        images.decode(bomb, max_pixels=images.MAX_PIXELS)


def test_resolve_inside_refuses_paths_that_leave_the_folder(tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (folder / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert images.resolve_inside(folder, "a.jpg") == ((folder / "images" / "a.jpg").resolve(), "", "")
    assert images.resolve_inside(folder, "a")[0] == (folder / "images" / "a.jpg").resolve()  # no suffix
    for name in ("../secret.jpg", str(tmp_path / "secret.jpg"), "images/../../secret.jpg", "..\\secret.jpg"):
        assert images.resolve_inside(folder, name)[1] == "path_outside", name
    assert images.resolve_inside(folder, "link.jpg")[1:] == (
        "path_outside",
        f"'link.jpg' is a link to {(tmp_path / 'secret.jpg').resolve()}, outside the dataset folder",
    )
    assert images.resolve_inside(folder, "nope.jpg")[1] == "file_missing"


# --- the hostile dataset -----------------------------------------------------------------------


def _good(folder: Path, label: str, count: int, prefix: str = "") -> list[str]:
    names = []
    for i in range(count):
        name = f"{prefix}{label}_{i:02d}.{'jpg' if i % 2 else 'png'}"
        save(folder / name, random_photo(label, RNG))
        names.append(name)
    return names


@pytest.fixture
def hostile_csv(tmp_path) -> Path:
    """The seed layout with every kind of bad row the issue names (and a few more)."""
    root = tmp_path / "hostile"
    images_dir = root / "train" / "images"
    rows = [(name, label) for label in CLASSES for name in _good(images_dir, label, 12)]
    rows += [(name, "rare") for name in _good(images_dir, "rare", 2)]  # a class with too few images
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": cv2.imencode(".jpg", random_photo("disc", RNG))[1].tobytes()[:900],
        "notes.jpg": b"these are my notes, not a photo\n",
        "bomb.png": _png_declaring(60_000, 60_000),
        "scan.tif": _pil_bytes(Image.fromarray(random_photo("disc", RNG)), "TIFF"),
        "big.png": cv2.imencode(".png", RNG.integers(0, 256, (300, 300, 3), dtype=np.uint8))[1].tobytes(),
    }
    small = cv2.imencode(".png", random_photo("disc", RNG)[:20, :20])[1].tobytes()
    kept = {
        "rgba.png": rgba_png(),
        "deep.png": deep_png(),
        "cmyk.jpg": cmyk_jpeg(),
        "rotated.jpg": exif_rotated_jpeg(),
        "ünïcødé 写真.png": cv2.imencode(".png", random_photo("square", RNG))[1].tobytes(),
        "palette.gif": palette_gif(),
    }
    for name, data in {**bad, **kept, "small.png": small}.items():
        (images_dir / name).write_bytes(data)
    shutil.copy(images_dir / "disc_00.png", images_dir / "disc_copy.png")  # same content, other name
    (tmp_path / "outside.jpg").write_bytes(kept["rgba.png"])
    (images_dir / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    rows += [(name, "disc") for name in bad]
    rows += [(name, "square") for name in kept] + [("small.png", "disc"), ("disc_copy.png", "disc")]
    rows += [
        ("square_00.png", "hexagon"),  # unknown label (the file is fine)
        ("triangle_00.png", ""),  # empty label
        ("disc_01.jpg", "disc"),  # the same row twice
        ("../outside.jpg", "disc"),
        (str(tmp_path / "outside.jpg"), "disc"),  # absolute path
        ("escape.jpg", "disc"),  # symlink out of the folder
        ("missing.jpg", "disc"),
    ]
    pd.DataFrame(rows, columns=["filename", "class"]).to_csv(root / "train" / "labels.csv", index=False)
    (root / "test" / "images").mkdir(parents=True)
    _good(root / "test" / "images", "disc", 2, prefix="new_")
    (root / "test" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "test" / "test.csv").write_text("filename\nnew_disc_00.png\nbroken.jpg\nnew_disc_01.jpg\n")
    return root


EXPECTED_CSV = {
    "train/empty.jpg": ("readable", "zero-byte file"),
    "train/truncated.jpg": ("readable", "truncated or corrupt"),
    "train/notes.jpg": ("readable", "not an image"),
    "train/bomb.png": ("max_pixels", "decompression bomb"),
    "train/scan.tif": ("format", "format TIFF is not one of"),
    "train/big.png": ("file_size", "> validate.max_file_mb 0.1"),
    "train/small.png": ("min_edge", "shortest edge 20 px < validate.min_edge 64"),
    "train/disc_copy.png": ("duplicate_in_split", "same content as train/disc_00.png"),
    "train/square_00.png#2": ("unknown_label", "label 'hexagon' is not one of the 4 classes"),
    "train/triangle_00.png#2": ("unknown_label", "label is empty"),
    "train/disc_01.jpg#2": ("duplicate_name", "listed again (first as train/disc_01.jpg)"),
    "train/../outside.jpg": ("path_outside", "leaves the dataset folder"),
    "train/escape.jpg": ("path_outside", "is a link to"),
    "train/missing.jpg": ("file_missing", "not found"),
    "test/broken.jpg": ("readable", "unreadable image header"),
}


def _ingest_and_validate(source: Path, tmp_path: Path, ingest_params: dict, validate_params: dict):
    layout = Layout(tmp_path / "repo")
    ingest(shipped("ingest", source=str(source), **ingest_params), layout)
    reader, manifest, meta = read_ingested(layout)
    return (
        meta,
        reader,
        manifest,
        validate(manifest, reader, meta["class_names"], shipped("validate", **validate_params), workers=2),
    )


def test_hostile_csv_dataset_every_row_kept_or_quarantined_with_its_reason(hostile_csv, tmp_path):
    classes = {"classes": [*CLASSES, "rare"], "csv": {"image_column": "filename", "label_column": "class"}}
    meta, reader, manifest, result = _ingest_and_validate(hostile_csv, tmp_path, classes, VALIDATE)
    assert meta["layout"] == "csv" and meta["format"] == "bytes"
    csv_rows = len(pd.read_csv(hostile_csv / "train" / "labels.csv")) + 3
    report = result.report
    assert report["rows_in"] == len(manifest) == csv_rows == report["rows_kept"] + report["rows_quarantined"]

    quarantine = result.quarantine.set_index("id")
    absolute = next(i for i in quarantine.index if i.startswith(f"train/{tmp_path}"))
    assert quarantine.loc[absolute, "rule"] == "path_outside"
    for id_, (rule, reason) in EXPECTED_CSV.items():
        assert quarantine.loc[id_, "rule"] == rule, id_
        assert reason in quarantine.loc[id_, "reason"], (id_, quarantine.loc[id_, "reason"])
    assert len(quarantine) == len(EXPECTED_CSV) + 1  # nothing else: the odd-but-good images are kept

    kept = result.kept.set_index("id")
    for name in ("rgba.png", "deep.png", "cmyk.jpg", "rotated.jpg", "ünïcødé 写真.png", "palette.gif"):
        assert f"train/{name}" in kept.index, name
    assert kept.loc["train/rotated.jpg", ["width", "height"]].tolist() == [100, 200]  # upright
    assert kept.loc["train/cmyk.jpg", "mode"] == "CMYK" and kept.loc["train/deep.png", "format"] == "PNG"
    assert set(kept.loc[kept["split"] == "predict"].index) == {"test/new_disc_00.png", "test/new_disc_01.jpg"}
    assert any("rare (2)" in failure and "min_per_class" in failure for failure in result.failures)
    assert not report["passed"] and report["classes"]["rare"] == 2

    # preprocess reads the kept rows of every odd format into the same input contract
    odd = result.kept[result.kept["id"].isin([f"train/{n}" for n in ("rgba.png", "rotated.jpg", "deep.png")])]
    odd = shard_order(odd.assign(label_index=0))
    write_split(reader, odd, tmp_path / "x", 32, "rgb", workers=1)
    x = read_sharded(tmp_path / "x", "x", (32, 32, 3))
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    rotated = x[list(odd["id"]).index("train/rotated.jpg")]
    assert rotated[2, 16, 0] > 200 and rotated[-3, 16, 2] > 200  # red on top after orientation


def test_hostile_class_folders_leakage_near_duplicates_links_and_hidden_files(tmp_path):
    root = class_folder_dataset(tmp_path / "folders", per_class=12, test_per_class=3, seed=3)
    shutil.copy(root / "train" / "disc" / "disc_004.png", root / "test" / "disc" / "leaked.png")
    near = cv2.imread(str(root / "train" / "square" / "square_005.jpg"))
    cv2.imwrite(str(root / "test" / "square" / "recompressed.jpg"), near, [cv2.IMWRITE_JPEG_QUALITY, 60])
    (tmp_path / "elsewhere.png").write_bytes((root / "train" / "disc" / "disc_000.png").read_bytes())
    (root / "train" / "disc" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (root / "train" / "disc" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _good(root / "train" / "café", "disc", 3)  # a unicode class with too few images
    save(root / "test" / "unlabelled.jpg", photo("disc", RNG, 90, 90))  # loose in test/: predict
    (root / "README.txt").write_text("my photos\n")

    meta, _, manifest, result = _ingest_and_validate(root, tmp_path, {}, VALIDATE)
    assert meta["layout"] == "class_folders"
    assert meta["class_names"] == ["café", *CLASSES]  # sorted folder names
    assert "train/disc/.DS_Store" in meta["skipped"] and "README.txt" in meta["skipped"]
    files = [p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")]
    assert len(manifest) == len(files) - 1  # every file but README.txt, which is outside train/ and test/
    quarantine = result.quarantine.set_index("id")
    assert quarantine.loc["train/disc/disc_004.png", "rule"] == "duplicate_across_splits"
    assert "test/disc/leaked.png" in quarantine.loc["train/disc/disc_004.png", "reason"]
    assert quarantine.loc["train/disc/link.png", "rule"] == "path_outside"
    warned = result.warnings.set_index("id")
    assert warned.loc["train/square/square_005.jpg", "rule"] == "near_duplicate_across_splits"
    assert "test/square/recompressed.jpg" in warned.loc["train/square/square_005.jpg", "reason"]
    assert result.report["splits"]["predict"] == 1 and "train/café/disc_00.png" in set(result.kept["id"])
    assert any("café (3)" in failure for failure in result.failures)


def test_layouts_are_detected_and_limit_applies_per_class_and_split(tmp_path):
    csv_root = csv_dataset(tmp_path / "csv", per_class=4, unlabelled=3)
    flat_root = class_folder_dataset(tmp_path / "flat", per_class=4)
    assert detect_layout(csv_root) == "csv" and detect_layout(flat_root) == "class_folders"
    listing = list_folder(csv_root, shipped("ingest", limit=2))
    assert listing.rows.groupby(["split", "label"]).size().to_dict() == {
        ("predict", ""): 2,
        **{("train", c): 2 for c in CLASSES},
    }
    flat = list_folder(flat_root, shipped("ingest"))
    assert set(flat.rows["split"]) == {"train"} and len(flat.rows) == 12 and flat.class_names == list(CLASSES)


def test_data_artifacts_are_byte_identical_whatever_the_worker_count(tmp_path):
    root = class_folder_dataset(tmp_path / "flat", per_class=20)
    outputs = []
    for workers in (1, 2):
        layout = Layout(tmp_path / f"out{workers}")
        ingest(shipped("ingest", source=str(root), workers=workers), layout)
        reader, manifest, meta = read_ingested(layout)
        result = validate(
            manifest, reader, meta["class_names"], shipped("validate", near_duplicate_distance=4), workers=workers
        )
        rows = shard_order(result.kept.assign(label_index=0))
        write_split(reader, rows, tmp_path / f"x{workers}", 24, "rgb", workers=workers)
        outputs.append(
            (
                folder_bytes(layout.ingested_shards),
                layout.ingested_manifest.read_bytes(),
                result.kept.to_csv(index=False),
                folder_bytes(tmp_path / f"x{workers}"),
            )
        )
    assert outputs[0] == outputs[1]


def test_corrupted_files_of_every_format_decode_or_raise_image_error():
    """Seeded byte flips in every format: each result is an image or an ImageError, never another exception."""
    rng = np.random.default_rng(11)
    originals = [
        _pil_bytes(Image.fromarray(_halves(40, 60)), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
    ]
    originals += [rgba_png(), deep_png(), cmyk_jpeg(), exif_rotated_jpeg()]
    outcomes = {"decoded": 0, "refused": 0}
    for original in originals:
        for _ in range(40):
            data = bytearray(original)
            for position in rng.integers(0, len(data), int(rng.integers(1, 6))):
                data[position] = int(rng.integers(0, 256))
            try:
                image = images.decode(
                    bytes(data[: int(rng.integers(len(data) // 2, len(data) + 1))]), images.MAX_PIXELS
                )
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                outcomes["decoded"] += 1
            except images.ImageError:
                outcomes["refused"] += 1
    assert outcomes["decoded"] and outcomes["refused"]  # both paths taken


def test_camera_jpeg_with_embedded_preview_is_a_jpeg():
    full, preview = Image.fromarray(_halves()), Image.fromarray(_halves(50, 100))
    mpo = _pil_bytes(full, "MPO", save_all=True, append_images=[preview])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert images.read_header(mpo).format == "JPEG" and images.decode(mpo).shape == (100, 200, 3)


def test_transparent_images_are_turned_upright_too():
    rgba = np.zeros((20, 60, 4), np.uint8)
    rgba[:, :30] = (255, 0, 0, 255)  # opaque red on the left, transparent on the right
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = images.decode(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG", exif=exif))
    assert upright.shape == (60, 20, 3)
    assert tuple(upright[5, 10]) == (255, 0, 0) and tuple(upright[-5, 10]) == (255, 255, 255)


def test_links_long_names_and_oversized_files_are_accounted_for(tmp_path):
    root = csv_dataset(tmp_path / "shapes", per_class=12, unlabelled=0)
    outside = csv_dataset(tmp_path / "elsewhere", per_class=1, unlabelled=2) / "test"
    (root / "test").symlink_to(outside)  # test/ is a link out of the dataset folder
    with pytest.raises(PipelineError, match="outside the dataset folder"):
        list_folder(root, shipped("ingest"))
    (root / "test").unlink()

    labels = root / "train" / "labels.csv"
    labels.write_text(labels.read_text() + f"{'x' * 300}.jpg,disc\n")
    big = save(root / "train" / "images" / "huge.png", RNG.integers(0, 256, (400, 400, 3), dtype=np.uint8))
    labels.write_text(labels.read_text() + f"{big.name},disc\n")
    for severity, rule in (("error", "file_size"), ("off", "readable")):
        params = {**VALIDATE, "rules": {"file_size": severity}}
        *_, result = _ingest_and_validate(root, tmp_path / severity, {"max_pack_mb": 0.2}, params)
        quarantine = result.quarantine.set_index("id")
        assert quarantine.loc["train/huge.png", "rule"] == rule  # never kept without its bytes
        assert "over ingest.max_pack_mb" in quarantine.loc["train/huge.png", "reason"]
        long_id = f"train/{'x' * 300}.jpg"
        assert (
            quarantine.loc[long_id, "rule"] == "file_missing" and "cannot look up" in quarantine.loc[long_id, "reason"]
        )
        assert result.report["rows_in"] == 38 == result.report["rows_kept"] + result.report["rows_quarantined"]


def test_repeated_names_get_ids_that_are_never_reused(tmp_path):
    root = csv_dataset(tmp_path / "shapes", per_class=2, unlabelled=0)
    labels = root / "train" / "labels.csv"
    first = labels.read_text().splitlines()[1]
    labels.write_text(labels.read_text() + f"{first}\n{first}\n")
    rows = list_folder(root, shipped("ingest")).rows
    assert rows["id"].is_unique and len(rows) == 8


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("filename\na.png\n", "has no label column"),
        ("label\ndisc\n", "has no column of image names"),
        ("", "is empty"),
    ],
)
def test_unusable_csv_is_one_clear_line_from_the_stage(repo_copy, tmp_path, csv_text, message):
    source = tmp_path / "bad"
    (source / "train").mkdir(parents=True)
    (source / "train" / "labels.csv").write_text(csv_text)
    set_params(repo_copy, ingest={"source": str(source)})
    result = run([sys.executable, "stages/ingest.py"], repo_copy, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("ingest: error:")]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_stage_scripts_on_the_hostile_dataset_fail_cleanly_with_reports(repo_copy, hostile_csv):
    set_params(
        repo_copy,
        ingest={"source": str(hostile_csv), "classes": [*CLASSES, "rare"], "csv": {"label_column": "class"}},
        validate={**VALIDATE, "rules": {"min_per_class": "error"}},
    )
    run([sys.executable, "stages/ingest.py"], repo_copy)
    result = run([sys.executable, "stages/validate.py"], repo_copy, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "validate: error: validation failed: class(es) with fewer than validate.min_per_class=10" in result.stderr
    quarantine = pd.read_csv(repo_copy / "reports" / "quarantine.csv")
    assert len(quarantine) == len(EXPECTED_CSV) + 1
    summary = (repo_copy / "reports" / "validation.md").read_text()
    assert "FAILED" in summary and "| readable | error | 4 |" in summary
    assert os.path.exists(repo_copy / "reports" / "validation_warnings.csv")
