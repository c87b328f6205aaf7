"""Everything that reads or writes files: images and masks (with validation), prompt files,
atomic writes and safe loading of torch files. Which files make up a task: :mod:`gpoa.layout`.

Images: PNG, JPEG, TIFF or BMP, any size; gray, RGB, RGBA (alpha dropped), palette, 16-bit
(scaled by 1/257) or float (clipped to [0, 1] when within it, else min-max scaled); all become
uint8 RGB. Masks: any of those modes; foreground is every nonzero pixel (palette: nonzero index;
RGB: any nonzero channel), except in JPEG masks: compression noise turns background pixels nonzero
and rings around edges, so a JPEG mask's foreground is every pixel above half its range (> 127 for
8-bit; colour: the largest channel). Prefer PNG masks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from gpoa.errors import InputError, UsageError
from gpoa.grid import PatchGrid
from gpoa.prompts import PromptSet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
JPEG_MASK_NOTE = "note: JPEG masks are thresholded at half their range (compression noise)"
PathLike = Union[str, Path]


# ----- atomic writes -------------------------------------------------------------------------
def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def encode_png(array: np.ndarray, photo: bool = False) -> bytes:
    """uint8 (H, W) or (H, W, 3) RGB array → PNG bytes.

    ``photo``: for photos and overlays on them: zlib level 1 by OpenCV's encoder, 2-7x faster than the
    default (Pillow's, level 6), whose longer search finds little more in a photo's noise: overlays
    3-21 % larger on the demo and real-dev images (binary masks compress far better by default).
    """
    array = np.ascontiguousarray(array)
    if photo:
        pixels = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
        ok, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"OpenCV could not encode a {array.dtype} array of shape {array.shape} as PNG")
        return data.tobytes()
    import io as _io

    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: PathLike, array: np.ndarray, photo: bool = False) -> None:
    """:func:`encode_png` of ``array``, written atomically to ``path``."""
    atomic_write_bytes(path, encode_png(array, photo))


def write_mask(path: PathLike, mask: np.ndarray) -> None:
    """Boolean mask (H, W) → 0/255 single-channel PNG."""
    write_png(path, np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255))


def save_array(path: PathLike, array: np.ndarray) -> None:
    import io as _io

    buffer = _io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def load_array(path: PathLike) -> np.ndarray:
    return np.load(Path(path), allow_pickle=False)


# ----- images and masks -------------------------------------------------------------------------
def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "file does not exist")
    try:
        with Image.open(path) as im:
            # Pillow reads 16-bit colour (PNG, TIFF) as 8-bit RGB by keeping the high byte; read those with OpenCV
            rawmode = im.tile[0].args if im.tile else ""
            rawmode = rawmode[0] if isinstance(rawmode, tuple) else str(rawmode)
            if im.mode in ("RGB", "RGBA") and ";16" in rawmode:
                return _read_16bit_colour(path), im.mode
            return _pixels(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                array = np.asarray(tifffile.imread(path))
                if array.size:  # a corrupt file can come back as an empty array
                    return array, "tiff"
            except Exception:  # noqa: BLE001 - any tifffile failure means the file is unreadable
                pass
        raise InputError(path, f"cannot be read as an image ({exc.__class__.__name__}: {exc})",
                         "re-export it as PNG, JPEG, TIFF or BMP") from None


def _pixels(im: Image.Image) -> tuple:
    """(array, mode) of a Pillow image in its own mode (a palette image keeps its indices)."""
    im.load()
    mode = im.mode
    if mode == "P":
        return np.asarray(im), "P"
    if mode in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(im), mode
    return np.asarray(im.convert("RGB")), "RGB"


def _read_16bit_colour(path: Path) -> np.ndarray:
    """uint16 RGB(A) (H, W, 3|4) of a 16-bit colour PNG or TIFF."""
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 3:
        raise ValueError("OpenCV cannot decode this 16-bit colour image")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # any byte order (TIFF 'I;16B')
        return (array.astype(np.float64) / 257.0).round().astype(np.uint8)
    values = array.astype(np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if low >= 0.0 and high <= 1.0 and array.dtype.kind == "f":
        return (values * 255.0).round().astype(np.uint8)
    if array.dtype.kind in "iu" and low >= 0 and high <= 255:
        return values.astype(np.uint8)
    span = high - low if high > low else 1.0
    return ((values - low) / span * 255.0).round().astype(np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    """Read any supported image as uint8 RGB (H, W, 3)."""
    path = Path(path)
    array, mode = _open(path)
    if mode == "P":
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    return _rgb(array, path)


def image_from_pil(im: Image.Image, name: str) -> np.ndarray:
    """A Pillow image in memory as :func:`read_image` reads the same image from a file: uint8 RGB
    (H, W, 3). ``name`` (the argument it came from) names it in errors."""
    array = np.asarray(im.convert("RGB")) if im.mode == "P" else _pixels(im)[0]
    return _rgb(array, name)


def image_from_array(array: np.ndarray, name: str) -> np.ndarray:
    """An image array in memory, uint8 (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped) or (H, W) gray,
    as uint8 RGB (H, W, 3). Another dtype is refused (values in [0, 1] or [0, 65535] would be
    guessed): InputError naming ``name``, the argument it came from."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InputError(name, f"is an array of dtype {array.dtype}; images are uint8 RGB (H, W, 3), values 0-255",
                         "convert it first, e.g. (image * 255).round().astype(np.uint8) for values in [0, 1]")
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] in (3, 4)):
        raise InputError(name, f"is an array of shape {array.shape}; images are (H, W, 3) RGB, (H, W, 4) RGBA or "
                               "(H, W) gray", "pass one image at a time, channels last")
    return _rgb(array, name)


def _rgb(array: np.ndarray, path: Union[Path, str]) -> np.ndarray:
    """uint8 RGB (H, W, 3) of the pixel values of an image file (or in-memory image) ``path``."""
    array = _to_uint8(np.asarray(array))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, :3]
    else:
        raise InputError(path, f"has an unsupported shape {array.shape}", "save it as a gray or RGB image")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise InputError(path, f"is only {array.shape[1]}x{array.shape[0]} pixels", "use a real image")
    return np.ascontiguousarray(array)


_jpeg_note_shown = False


def _note_jpeg_threshold() -> None:
    """Say once per process that JPEG masks are thresholded (on stderr, so that outputs stay clean)."""
    global _jpeg_note_shown
    if not _jpeg_note_shown:
        _jpeg_note_shown = True
        print(JPEG_MASK_NOTE, file=sys.stderr)


def _jpeg_foreground(array: np.ndarray) -> np.ndarray:
    """Values above half the dtype's range (> 127 for uint8): JPEG noise and ringing stay background."""
    half = np.iinfo(array.dtype).max / 2.0 if array.dtype.kind in "iu" else 0.5
    return array > half


def read_mask(path: PathLike, expected_size: Optional[tuple] = None) -> np.ndarray:
    """Read a mask as bool (H, W); foreground is every nonzero pixel, in JPEG masks every pixel above
    half the range (see the module docstring).

    ``expected_size`` (width, height) is the size of the paired image; a mismatch is an error.
    """
    path = Path(path)
    array, _ = _open(path)
    return _foreground(np.asarray(array), path, expected_size, jpeg=path.suffix.lower() in JPEG_EXTENSIONS)


def mask_from_pil(im: Image.Image, name: str, expected_size: Optional[tuple] = None) -> np.ndarray:
    """A Pillow mask in memory as :func:`read_mask` reads the same PNG: bool (H, W), foreground every
    nonzero pixel. ``name`` (the argument it came from) names it in errors."""
    return _foreground(np.asarray(_pixels(im)[0]), name, expected_size, jpeg=False)


def mask_from_array(array: np.ndarray, name: str, expected_size: Optional[tuple] = None) -> np.ndarray:
    """A mask array in memory, bool or integer (H, W), foreground every nonzero pixel, as bool (H, W).
    A float array is refused (where would 0.5 go?); ``expected_size`` (width, height) is its image's
    size. InputError naming ``name``, the argument it came from."""
    array = np.asarray(array)
    if array.dtype.kind not in "biu":
        raise InputError(name, f"is an array of dtype {array.dtype}; masks are bool or integer (H, W), foreground "
                               "= nonzero", "threshold it first, e.g. mask > 0.5")
    if array.ndim != 2:
        raise InputError(name, f"is an array of shape {array.shape}; masks are (H, W)",
                         "pass one single-channel mask per image")
    return _foreground(array, name, expected_size, jpeg=False)


def _foreground(array: np.ndarray, path: Union[Path, str], expected_size: Optional[tuple], jpeg: bool) -> np.ndarray:
    """The bool (H, W) foreground of the pixel values of mask ``path`` (see :func:`read_mask`)."""
    foreground = _jpeg_foreground if jpeg else (lambda values: values != 0)
    if jpeg:
        _note_jpeg_threshold()
    if array.ndim == 3:
        array = array[:, :, :1] if array.shape[2] == 2 else array[:, :, :3]
        mask = np.any(foreground(array), axis=2)
    elif array.ndim == 2:
        mask = foreground(array)
    else:
        raise InputError(path, f"has an unsupported shape {array.shape}", "save the mask as a gray PNG")
    if expected_size is not None and (mask.shape[1], mask.shape[0]) != tuple(expected_size):
        raise InputError(path, f"is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                               f"{expected_size[0]}x{expected_size[1]}",
                         "a mask must have exactly the size of the image it belongs to")
    return mask


def image_size(image: np.ndarray) -> tuple:
    """(width, height) of an (H, W[, C]) array."""
    return int(image.shape[1]), int(image.shape[0])


# ----- prompt files -----------------------------------------------------------------------------
PROMPT_KEYS = ("image", "original_size", "grid", "positive_indices", "negative_indices")


def write_prompt_file(path: PathLike, prompt_set: PromptSet) -> None:
    atomic_write_json(path, prompt_set.to_dict())


def read_prompt_file(path: PathLike, expected_grid: Optional[PatchGrid] = None) -> PromptSet:
    """Read and validate a prompt file; ``expected_grid`` rejects files made on another grid."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "prompt file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", "regenerate it or fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(path, "prompt file must hold a JSON object")
    missing = [k for k in PROMPT_KEYS if k not in data]
    if missing:
        raise InputError(path, f"prompt file lacks the keys {missing}",
                         "see the prompt-file schema in README.md")
    try:
        grid = PatchGrid.from_dict(data["grid"])
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise InputError(path, f"has an invalid 'grid' entry ({exc})") from None
    if expected_grid is not None and grid != expected_grid:
        raise InputError(path, f"was made on a {grid.rows}x{grid.cols} grid (patch {grid.patch_size}, working size "
                               f"{list(grid.working_size)}) but this run uses {expected_grid.rows}x{expected_grid.cols} "
                               f"(patch {expected_grid.patch_size}, working size {list(expected_grid.working_size)})",
                         "regenerate the prompts with this config or run with the config they were made with")
    try:
        known = set(PROMPT_KEYS) | {"positive_points", "negative_points", "source"}
        prompt_set = PromptSet(
            image=str(data["image"]),
            original_size=tuple(data["original_size"]),
            grid=grid,
            positive_indices=np.asarray(data["positive_indices"], dtype=np.int64),
            negative_indices=np.asarray(data["negative_indices"], dtype=np.int64),
            source=str(data.get("source", "unknown")),
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (IndexError, TypeError, ValueError) as exc:
        raise InputError(path, f"has invalid prompt indices ({exc})") from None
    overlap = np.intersect1d(prompt_set.positive_indices, prompt_set.negative_indices)
    if len(overlap):
        raise InputError(path, f"patches {overlap[:5].tolist()} are both positive and negative",
                         "a patch can carry one label only")
    return prompt_set


def check_prompts_fit_image(prompt_path: PathLike, prompt_set: PromptSet, image_path: PathLike, size: tuple) -> None:
    """Raise InputError when a prompt file was made for an image of another size than ``size`` (w, h)."""
    if tuple(prompt_set.original_size) != tuple(size):
        raise InputError(prompt_path, f"was made for a {prompt_set.original_size[0]}x{prompt_set.original_size[1]} "
                                      f"image but '{image_path}' is {size[0]}x{size[1]}",
                         "regenerate the prompts for this image")
