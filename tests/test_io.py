"""Files: images and masks of every supported mode, prompt files and atomic writes (layout: test_layout.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from gpoa.errors import InputError
from gpoa.grid import PatchGrid
from gpoa.io import (
    atomic_write_bytes,
    atomic_write_json,
    read_image,
    read_mask,
    read_prompt_file,
    write_mask,
    write_prompt_file,
)
from gpoa.prompts import PromptSet

H, W = 6, 8  # every test image is 8 pixels wide and 6 high


def gray_ramp(dtype=np.uint8, scale: float = 1.0) -> np.ndarray:
    """(H, W) values 0, 5, 10, ... times ``scale``."""
    return (np.arange(H * W).reshape(H, W) * 5 * scale).astype(dtype)


def colour() -> np.ndarray:
    """(H, W, 3) uint8 with distinct channels."""
    ramp = gray_ramp()
    return np.stack([ramp, 255 - ramp, np.full_like(ramp, 77)], axis=-1)


def as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def assert_rgb_uint8(image: np.ndarray) -> None:
    assert image.dtype == np.uint8
    assert image.shape == (H, W, 3)


def read_unchanged(path: Path) -> np.ndarray:
    """read_image, checking the file's bytes are the same afterwards (inputs are never modified)."""
    before = path.read_bytes()
    image = read_image(path)
    assert path.read_bytes() == before
    return image


# ----- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_read_rgb_lossless_formats(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    Image.fromarray(colour(), "RGB").save(path)
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    np.testing.assert_array_equal(image, colour())


def test_read_jpeg_is_close_to_the_original(tmp_path):
    path = tmp_path / "a.jpg"
    flat = np.zeros((H, W, 3), np.uint8)
    flat[...] = (200, 40, 90)
    Image.fromarray(flat, "RGB").save(path, quality=100)
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    assert np.abs(image.astype(int) - flat).max() <= 3


def test_read_gray_l(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(gray_ramp(), "L").save(path)
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    np.testing.assert_array_equal(image, as_rgb(gray_ramp()))


def test_read_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([colour(), np.zeros((H, W, 1), np.uint8)], axis=-1)  # fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    np.testing.assert_array_equal(image, colour())


def test_read_la_drops_alpha(tmp_path):
    la = np.stack([gray_ramp(), np.full((H, W), 10, np.uint8)], axis=-1)
    path = tmp_path / "a.png"
    Image.fromarray(la, "LA").save(path)
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    np.testing.assert_array_equal(image, as_rgb(gray_ramp()))


def test_read_palette_uses_palette_colours(tmp_path):
    indices = np.zeros((H, W), np.uint8)
    indices[:, 4:] = 1
    im = Image.fromarray(indices, "L").convert("P")
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    path = tmp_path / "p.png"
    im.save(path)
    assert Image.open(path).mode == "P"
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    assert image[0, 0].tolist() == [10, 20, 30]
    assert image[0, 7].tolist() == [200, 100, 50]


def test_read_one_bit(tmp_path):
    bits = np.zeros((H, W), bool)
    bits[2:4, 3:6] = True
    path = tmp_path / "b.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    np.testing.assert_array_equal(image, as_rgb(np.where(bits, 255, 0).astype(np.uint8)))


def test_read_16_bit_gray_png_divides_by_257(tmp_path):
    values = gray_ramp(np.uint16, scale=257)  # 0, 1285, 2570, ... → 0, 5, 10, ...
    values[0, 1] = 1000  # 1000 / 257 = 3.89 → 4 (not 1000 >> 8 = 3)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(image, as_rgb(expected))
    assert image[0, 1, 0] == 4


def test_read_16_bit_big_endian_tiff_divides_by_257(tmp_path):
    values = gray_ramp(np.uint16, scale=257)
    path = tmp_path / "g16be.tif"
    tifffile.imwrite(path, values, byteorder=">")
    assert Image.open(path).mode == "I;16B"
    np.testing.assert_array_equal(read_unchanged(path), as_rgb(gray_ramp()))


def test_read_32_bit_integer(tmp_path):
    small = gray_ramp(np.int32)  # within 0..255: kept as is
    path = tmp_path / "i.tif"
    Image.fromarray(small).save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(read_unchanged(path), as_rgb(gray_ramp()))
    large = np.zeros((H, W), np.int32)
    large[:, 4:] = 100_000  # beyond 255: min-max scaled
    large[0, 0] = 50_000
    Image.fromarray(large).save(path)
    image = read_unchanged(path)
    assert image[1, 0, 0] == 0 and image[0, 7, 0] == 255 and image[0, 0, 0] == 128


def test_read_float_tiff_in_unit_range_scales_by_255(tmp_path):
    values = np.zeros((H, W), np.float32)
    values[:, 4:] = 1.0
    values[0, 0] = 0.5
    path = tmp_path / "f.tif"
    Image.fromarray(values, "F").save(path)
    assert Image.open(path).mode == "F"
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    assert image[1, 0].tolist() == [0, 0, 0]
    assert image[0, 7].tolist() == [255, 255, 255]
    assert image[0, 0].tolist() == [128, 128, 128]


def test_read_float64_tiff_outside_unit_range_is_min_max_scaled(tmp_path):
    values = np.full((H, W), -2.0)
    values[:, 4:] = 6.0
    values[0, 0] = 2.0
    path = tmp_path / "f64.tif"
    tifffile.imwrite(path, values)  # Pillow cannot open float64 TIFF: tifffile reads it
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    assert image[1, 0, 0] == 0 and image[0, 7, 0] == 255 and image[0, 0, 0] == 128


def test_read_16_bit_rgb_tiff_divides_by_257(tmp_path):
    values = (colour().astype(np.uint16) * 257)
    values[0, 0] = (1000, 2000, 65535)  # 3.89 → 4, 7.78 → 8, 255 (Pillow's high byte would give 3, 7)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    image = read_unchanged(path)
    assert_rgb_uint8(image)
    expected = colour()
    expected[0, 0] = (4, 8, 255)
    np.testing.assert_array_equal(image, expected)


def test_read_16_bit_rgb_png_divides_by_257(tmp_path):
    import cv2

    values = (colour().astype(np.uint16) * 257)
    values[0, 0] = (1000, 2000, 65535)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), values[:, :, ::-1])  # OpenCV writes BGR
    image = read_unchanged(path)
    expected = colour()
    expected[0, 0] = (4, 8, 255)
    np.testing.assert_array_equal(image, expected)


def test_missing_image_is_an_input_error(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match="does not exist") as info:
        read_image(path)
    assert info.value.path == path and str(path) in str(info.value)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("name, content", [
    ("garbage.png", b"this is not an image at all"),
    ("empty.jpg", b""),
    ("garbage.tif", b"II*\x00garbage"),
])
def test_unreadable_image_is_an_input_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_truncated_png_is_an_input_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in str(info.value)


# ----- masks --------------------------------------------------------------------------------------


def expected_mask() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[1:4, 2:7] = True
    return mask


def read_mask_unchanged(path: Path, **kwargs) -> np.ndarray:
    before = path.read_bytes()
    mask = read_mask(path, **kwargs)
    assert path.read_bytes() == before
    assert mask.dtype == bool and mask.shape == (H, W)
    return mask


@pytest.mark.parametrize("foreground", [1, 255])
def test_read_gray_mask(tmp_path, foreground):
    path = tmp_path / "m.png"
    Image.fromarray(np.where(expected_mask(), foreground, 0).astype(np.uint8), "L").save(path)
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


def test_read_palette_mask_uses_indices_not_colours(tmp_path):
    indices = np.where(expected_mask(), 2, 0).astype(np.uint8)
    im = Image.fromarray(indices, "L").convert("P")
    # index 0 has a white (non-black) colour, index 2 a black one: only the index counts
    im.putpalette([255, 255, 255, 9, 9, 9, 0, 0, 0] + [0] * (256 * 3 - 9))
    path = tmp_path / "m.png"
    im.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


def test_read_rgb_mask_any_nonzero_channel(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    mask = expected_mask()
    rgb[1, 2:7] = (1, 0, 0)
    rgb[2, 2:7] = (0, 1, 0)
    rgb[3, 2:7] = (0, 0, 200)
    assert np.array_equal(rgb.any(axis=2), mask)
    path = tmp_path / "m.png"
    Image.fromarray(rgb, "RGB").save(path)
    np.testing.assert_array_equal(read_mask_unchanged(path), mask)


def test_read_rgba_mask_ignores_alpha(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not foreground
    rgba[expected_mask(), 0] = 255
    path = tmp_path / "m.png"
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


@pytest.mark.parametrize("foreground", [1, 300, 65535])
def test_read_16_bit_mask(tmp_path, foreground):
    path = tmp_path / "m.png"
    Image.fromarray(np.where(expected_mask(), foreground, 0).astype(np.uint16)).save(path)
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


def test_read_16_bit_rgb_mask_with_small_labels(tmp_path):
    values = np.zeros((H, W, 3), np.uint16)
    values[expected_mask(), 1] = 1  # a label 1 in a 16-bit channel is foreground, not rounded away
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


def test_one_bit_mask_and_write_mask_round_trip(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, expected_mask())
    stored = np.asarray(Image.open(path))
    assert set(np.unique(stored).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())
    Image.fromarray(expected_mask()).save(path)
    np.testing.assert_array_equal(read_mask_unchanged(path), expected_mask())


def test_mask_size_mismatch_names_the_file(tmp_path):
    path = tmp_path / "m.png"
    write_mask(path, expected_mask())
    assert read_mask(path, expected_size=(W, H)).shape == (H, W)
    with pytest.raises(InputError) as info:
        read_mask(path, expected_size=(H, W))
    message = str(info.value)
    assert str(path) in message and f"{W}x{H}" in message and f"{H}x{W}" in message


def test_missing_and_corrupt_masks_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "nope.png")
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError) as info:
        read_mask(path)
    assert str(path) in str(info.value)



def ringing_jpeg_mask(path: Path, mode: str) -> np.ndarray:
    """A 48x64 square mask saved as a low-quality JPEG; returns the exact mask. The file has
    compression noise: nonzero background pixels (ringing) around the object's edges."""
    exact = np.zeros((48, 64), bool)
    exact[12:36, 16:48] = True
    values = np.where(exact, 255, 0).astype(np.uint8)
    if mode == "RGB":
        values = np.stack([values, values // 2, np.zeros_like(values)], axis=-1)  # a red-brown object
    Image.fromarray(values, mode).save(path, quality=30)
    stored = np.asarray(Image.open(path))
    stored = stored.max(axis=2) if stored.ndim == 3 else stored
    assert np.count_nonzero(stored[~exact]) > 0, "the JPEG should carry noise outside the object"
    return exact


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_mask_is_thresholded_at_half_its_range(tmp_path, mode):
    path = tmp_path / "m.jpg"
    exact = ringing_jpeg_mask(path, mode)
    before = path.read_bytes()
    mask = read_mask(path)
    assert path.read_bytes() == before
    assert mask.dtype == bool and mask.shape == exact.shape
    assert not (mask & ~exact).any()  # the object does not grow into the ringing
    assert mask.sum() >= 0.95 * exact.sum()


def test_jpeg_mask_note_is_printed_once_per_process(tmp_path, capsys, monkeypatch):
    import gpoa.io

    monkeypatch.setattr(gpoa.io, "_jpeg_note_shown", False)
    path = tmp_path / "m.jpeg"
    ringing_jpeg_mask(path, "L")
    read_mask(path)
    read_mask(path)
    err = capsys.readouterr().err
    assert err.count("JPEG masks are thresholded at half their range") == 1
    write_mask(tmp_path / "m.png", expected_mask())
    read_mask(tmp_path / "m.png")
    assert capsys.readouterr().err == ""


def test_png_mask_keeps_every_nonzero_pixel(tmp_path):
    values = np.where(expected_mask(), 255, 0).astype(np.uint8)
    values[0, 0] = 3  # a faint label in a lossless mask is still foreground
    path = tmp_path / "m.png"
    Image.fromarray(values, "L").save(path)
    expected = expected_mask()
    expected[0, 0] = True
    np.testing.assert_array_equal(read_mask_unchanged(path), expected)


# ----- prompt files -----------------------------------------------------------------------------------

GRID = PatchGrid.for_working_size((560, 420), 14)  # 30 rows x 40 cols


def prompt_set(**changes) -> PromptSet:
    values = dict(image="target_image/cell.png", original_size=(640, 480), grid=GRID,
                  positive_indices=[41, 0], negative_indices=[1199], source="matching")
    values.update(changes)
    return PromptSet(**values)


def test_prompt_file_schema_and_round_trip(tmp_path):
    path = tmp_path / "initial_indices" / "cell.json"
    write_prompt_file(path, prompt_set())
    data = json.loads(path.read_text())
    assert data == {
        "image": "target_image/cell.png",
        "original_size": [640, 480],
        "grid": {"rows": 30, "cols": 40, "patch_size": 14, "working_size": [560, 420]},
        "positive_indices": [41, 0],
        "negative_indices": [1199],
        # patch centres (21, 21), (7, 7), (553, 413) scaled by 640/560 = 480/420 = 8/7
        "positive_points": [[24.0, 24.0], [8.0, 8.0]],
        "negative_points": [[632.0, 472.0]],
        "source": "matching",
    }
    back = read_prompt_file(path, expected_grid=GRID)
    assert back.image == "target_image/cell.png"
    assert back.original_size == (640, 480)
    assert back.grid == GRID
    assert back.positive_indices.tolist() == [41, 0] and back.negative_indices.tolist() == [1199]
    assert back.source == "matching"
    assert back.to_dict() == data


def test_prompt_file_non_square_original_points(tmp_path):
    path = tmp_path / "a.json"
    write_prompt_file(path, prompt_set(original_size=(333, 517), positive_indices=[0], negative_indices=[]))
    data = json.loads(path.read_text())
    assert data["positive_points"] == [[round(7 * 333 / 560, 2), round(7 * 517 / 420, 2)]]
    assert data["negative_points"] == []


def test_prompt_file_keeps_extra_keys(tmp_path):
    path = tmp_path / "a.json"
    write_prompt_file(path, prompt_set(extra={"policy": "checkpoints/run/best.pt"}))
    assert read_prompt_file(path).extra == {"policy": "checkpoints/run/best.pt"}


def test_prompt_file_from_another_grid_names_both_grids(tmp_path):
    path = tmp_path / "a.json"
    write_prompt_file(path, prompt_set())
    other = PatchGrid.square(560, 14)
    with pytest.raises(InputError) as info:
        read_prompt_file(path, expected_grid=other)
    message = str(info.value)
    assert str(path) in message
    assert "30x40" in message and "[560, 420]" in message  # the file's grid
    assert "40x40" in message and "[560, 560]" in message  # this run's grid


def write_raw(tmp_path: Path, data) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def valid_dict() -> dict:
    return prompt_set().to_dict()


@pytest.mark.parametrize("change, words", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: [1, 2, 3], "JSON object"),
    (lambda d: {k: v for k, v in d.items() if k != "negative_indices"}, "negative_indices"),
    (lambda d: {k: v for k, v in d.items() if k != "grid"}, "grid"),
    (lambda d: {**d, "positive_indices": [1200]}, "invalid prompt indices"),
    (lambda d: {**d, "negative_indices": [-1]}, "invalid prompt indices"),
    (lambda d: {**d, "positive_indices": ["a"]}, "invalid prompt indices"),
    (lambda d: {**d, "positive_indices": [3, 7], "negative_indices": [7]}, "both positive and negative"),
    (lambda d: {**d, "grid": {"rows": 30, "cols": 40, "patch_size": 14, "working_size": [561, 420]}}, "grid"),
    (lambda d: {**d, "grid": {"rows": 31, "cols": 40, "patch_size": 14, "working_size": [560, 420]}}, "grid"),
    (lambda d: {**d, "grid": "30x40"}, "grid"),
])
def test_invalid_prompt_file_is_an_input_error_naming_the_file(tmp_path, change, words):
    path = write_raw(tmp_path, change(valid_dict()))
    with pytest.raises(InputError) as info:
        read_prompt_file(path)
    assert str(path) in str(info.value)
    assert words in str(info.value)
    assert info.value.path == path


def test_missing_prompt_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_prompt_file(tmp_path / "none.json")


# ----- atomic writes --------------------------------------------------------------------------------


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "folder" / "out.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    atomic_write_json(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    atomic_write_bytes(path, b"xyz")
    assert path.read_bytes() == b"xyz"
    write_prompt_file(path, prompt_set())
    assert read_prompt_file(path).positive_indices.tolist() == [41, 0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_failed_atomic_write_keeps_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # not serialisable: fails before writing
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails while writing the temporary file
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
