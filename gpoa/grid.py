"""The patch grid: the one place that converts between patch indices, grid cells and pixels.

Images are resized to a *working image* of ``working_size = (width, height)`` pixels, cut into
``rows x cols`` square patches of ``patch_size`` pixels. Patch ``index = row * cols + col``
(row-major). Points are always ``(x, y)`` pixel coordinates; the centre of patch ``(row, col)`` in
the working image is ``((col + 0.5) * patch_size, (row + 0.5) * patch_size)``. The working image
maps to an original image of ``original_size = (width, height)`` by independent x and y scales,
so non-square originals are handled exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import cv2
import numpy as np

from gpoa.errors import UsageError

Size = tuple  # (width, height) in pixels


@dataclass(frozen=True)
class PatchGrid:
    rows: int
    cols: int
    patch_size: int
    working_size: Size  # (width, height) of the working image in pixels

    @classmethod
    def square(cls, working_size: int, patch_size: int) -> PatchGrid:
        """The grid of a ``working_size x working_size`` working image."""
        return cls.for_working_size((working_size, working_size), patch_size)

    @classmethod
    def for_working_size(cls, working_size: Sequence[int], patch_size: int) -> PatchGrid:
        width, height = int(working_size[0]), int(working_size[1])
        if patch_size <= 0 or width % patch_size or height % patch_size:
            raise UsageError(
                f"working size {width}x{height} is not a multiple of the patch size {patch_size}; "
                f"pick a working size divisible by {patch_size} (e.g. {patch_size * 40})"
            )
        return cls(rows=height // patch_size, cols=width // patch_size, patch_size=int(patch_size),
                   working_size=(width, height))

    # ----- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "patch_size": self.patch_size,
                "working_size": [int(self.working_size[0]), int(self.working_size[1])]}

    @classmethod
    def from_dict(cls, data: dict) -> PatchGrid:
        grid = cls.for_working_size(data["working_size"], int(data["patch_size"]))
        if (grid.rows, grid.cols) != (int(data["rows"]), int(data["cols"])):
            raise ValueError(f"grid rows/cols {data['rows']}x{data['cols']} do not match working size "
                             f"{data['working_size']} with patch size {data['patch_size']}")
        return grid

    # ----- indices and cells -----------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    def index_to_rc(self, index: Union[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Patch indices (N,) → (rows (N,), cols (N,))."""
        index = self._check_index(index)
        return index // self.cols, index % self.cols

    def rc_to_index(self, row: Union[int, np.ndarray], col: Union[int, np.ndarray]) -> np.ndarray:
        row, col = np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64)
        if np.any((row < 0) | (row >= self.rows) | (col < 0) | (col >= self.cols)):
            raise IndexError(f"cell outside the {self.rows}x{self.cols} grid")
        return row * self.cols + col

    def _check_index(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if np.any((index < 0) | (index >= self.num_patches)):
            raise IndexError(f"patch index outside 0..{self.num_patches - 1}")
        return index

    # ----- working-image pixels ----------------------------------------------------------------
    def index_to_working_xy(self, index) -> np.ndarray:
        """Patch indices (N,) → patch centres (N, 2) as (x, y) working-image pixels."""
        row, col = self.index_to_rc(index)
        return np.stack([(col + 0.5) * self.patch_size, (row + 0.5) * self.patch_size], axis=-1).astype(np.float64)

    def working_xy_to_index(self, xy) -> np.ndarray:
        """(N, 2) working-image (x, y) pixels → index of the patch containing each point (clipped to the grid)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        col = np.clip(np.floor(xy[:, 0] / self.patch_size), 0, self.cols - 1).astype(np.int64)
        row = np.clip(np.floor(xy[:, 1] / self.patch_size), 0, self.rows - 1).astype(np.int64)
        return row * self.cols + col

    # ----- original-image pixels ---------------------------------------------------------------
    def scale_to_original(self, original_size: Sequence[int]) -> np.ndarray:
        """(sx, sy): multiply working-image (x, y) by this to get original-image (x, y)."""
        return np.array([original_size[0] / self.working_size[0], original_size[1] / self.working_size[1]])

    def working_to_original(self, xy, original_size: Sequence[int]) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.scale_to_original(original_size)

    def original_to_working(self, xy, original_size: Sequence[int]) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2) / self.scale_to_original(original_size)

    def index_to_original_xy(self, index, original_size: Sequence[int]) -> np.ndarray:
        """Patch indices (N,) → patch centres (N, 2) as (x, y) pixels of the original image."""
        return self.working_to_original(self.index_to_working_xy(index), original_size)

    def original_xy_to_index(self, xy, original_size: Sequence[int]) -> np.ndarray:
        """(N, 2) original-image (x, y) pixels → patch indices."""
        return self.working_xy_to_index(self.original_to_working(xy, original_size))

    def resize_to_working(self, image: np.ndarray) -> np.ndarray:
        """uint8 image (H, W, 3), (H, W, 1) or (H, W) of any size → uint8 RGB (height, width, 3) of the
        grid's working size.

        Area averaging along an axis that shrinks, bicubic interpolation along one that grows (the two
        axes are resized separately when one shrinks and the other grows).
        """
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        image = np.ascontiguousarray(image)
        width, height = self.working_size
        in_height, in_width = image.shape[:2]
        if (in_width, in_height) == (width, height):
            return image
        if in_width >= width and in_height >= height:
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if in_width <= width and in_height <= height:
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        x_interp = cv2.INTER_AREA if in_width > width else cv2.INTER_CUBIC
        y_interp = cv2.INTER_AREA if in_height > height else cv2.INTER_CUBIC
        image = cv2.resize(image, (width, in_height), interpolation=x_interp)
        return cv2.resize(image, (width, height), interpolation=y_interp)

    # ----- masks ----------------------------------------------------------------------------
    def mask_fraction(self, mask: np.ndarray) -> np.ndarray:
        """Share of foreground pixels in each patch, (rows, cols) in [0, 1], for a mask of any size.

        The mask (H, W) of the original image is resampled onto the working image (area average)
        before the patches are averaged, so a patch's fraction is the share of its footprint in the
        original image that is foreground.
        """

        mask = np.asarray(mask, dtype=np.float32)
        width, height = self.working_size
        working = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
        return working.reshape(self.rows, self.patch_size, self.cols, self.patch_size).mean(axis=(1, 3))

    def patch_centre_pixels(self, index, original_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Patch indices (N,) → (row (N,), col (N,)) int64 of the original-image pixel under each
        patch centre, so that ``mask[row, col]`` reads an original-size mask (H, W) there."""
        width, height = int(original_size[0]), int(original_size[1])
        xy = self.index_to_original_xy(index, (width, height))
        col = np.clip(xy[:, 0].astype(np.int64), 0, width - 1)
        row = np.clip(xy[:, 1].astype(np.int64), 0, height - 1)
        return row, col

    def pixel_distance(self, a, b) -> np.ndarray:
        """Distance between patch centres in working-image pixels: (len(a), len(b))."""
        return self.normalised_distance(a, b) * float(np.hypot(*self.working_size))

    def normalised_distance(self, a, b) -> np.ndarray:
        """Physical distance between patch centres, divided by the working-image diagonal: (len(a), len(b))."""
        pa, pb = self.index_to_working_xy(a), self.index_to_working_xy(b)
        diagonal = float(np.hypot(*self.working_size))
        # in place on two (len(a), len(b)) arrays: ~10x faster than reducing an (.., .., 2) one
        distance = np.subtract.outer(pa[:, 0], pb[:, 0])
        dy = np.subtract.outer(pa[:, 1], pb[:, 1])
        distance *= distance
        dy *= dy
        distance += dy
        np.sqrt(distance, out=distance)
        distance /= diagonal
        return distance
