"""Pictures people open: prompt overlays, mask overlays and reward curves (RGB uint8 arrays / PNG files)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

POSITIVE_COLOUR = (40, 220, 60)
NEGATIVE_COLOUR = (235, 40, 40)
MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)
#: the widest frame an overlay GIF keeps (pixels; wider frames are scaled down)
GIF_WIDTH = 480


def _radius(image: np.ndarray) -> int:
    return max(3, int(round(min(image.shape[:2]) / 90)))


def draw_points(image: np.ndarray, positive_xy: np.ndarray, negative_xy: np.ndarray) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) with positive points as green and negative points as red dots.

    Points are (N, 2) (x, y) pixels of that image.
    """
    canvas = np.ascontiguousarray(image.copy())
    radius = _radius(canvas)
    for xy, colour in ((negative_xy, NEGATIVE_COLOUR), (positive_xy, POSITIVE_COLOUR)):
        for x, y in np.asarray(xy).reshape(-1, 2):
            centre = (int(round(x)), int(round(y)))
            cv2.circle(canvas, centre, radius + 1, (255, 255, 255), -1, lineType=cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, colour, -1, lineType=cv2.LINE_AA)
    return canvas


def overlay_mask(image: np.ndarray, mask: np.ndarray, positive_xy: Optional[np.ndarray] = None,
                 negative_xy: Optional[np.ndarray] = None, alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3) with ``mask`` (H, W) tinted and outlined, and the prompts on top."""
    mask = np.asarray(mask, dtype=bool)
    canvas = image.astype(np.float32)
    canvas[mask] = (1 - alpha) * canvas[mask] + alpha * MASK_COLOUR
    canvas = np.ascontiguousarray(canvas.round().astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, (255, 255, 0), 1, lineType=cv2.LINE_AA)
    if positive_xy is not None or negative_xy is not None:
        empty = np.zeros((0, 2))
        canvas = draw_points(canvas, empty if positive_xy is None else positive_xy,
                             empty if negative_xy is None else negative_xy)
    return canvas


#: overlays of larger images (masks, and stage 1's prompts) are drawn on a copy shrunk to this long side, in pixels (a screen's
#: worth: at full size a 6-megapixel overlay takes seconds to encode, and its 1-pixel outline vanishes
#: when a viewer shrinks it to fit)
OVERLAY_MAX_SIDE = 1024


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (H, W, ...) shrunk (area averaging) so that its long side is at most ``max_side`` pixels;
    ``image`` itself when it is already."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class MaskOverlays:
    """:func:`overlay_mask` of one image for many masks, drawn at display size: an image whose long side
    exceeds ``max_side`` pixels is shrunk once (area averaging) and every mask (a pixel is foreground
    where most of the pixels it covers are) and prompt is scaled to it; a smaller image is drawn at
    its own size, exactly as :func:`overlay_mask` draws it."""

    def __init__(self, image: np.ndarray, max_side: int = OVERLAY_MAX_SIDE):
        self.scale = min(1.0, max_side / max(image.shape[:2]))
        self.image = fit_within(np.asarray(image), max_side)
        self.size = self.image.shape[1::-1]  # (width, height)

    def __call__(self, mask: np.ndarray, positive_xy: Optional[np.ndarray] = None,
                 negative_xy: Optional[np.ndarray] = None) -> np.ndarray:
        """The overlay (h, w, 3) uint8 of ``mask`` (H, W) and the prompts (N, 2) (x, y) original-image pixels."""
        if self.scale < 1.0:
            shrunk = cv2.resize(np.asarray(mask, bool).view(np.uint8) * np.uint8(255), self.size,
                                interpolation=cv2.INTER_AREA)
            mask = shrunk > 127
        return overlay_mask(self.image, mask, *self._scaled(positive_xy, negative_xy))

    def points(self, positive_xy: np.ndarray, negative_xy: np.ndarray) -> np.ndarray:
        """:func:`draw_points` at display size: the prompts (N, 2) (x, y) original-image pixels on the
        (shrunk) image, (h, w, 3) uint8."""
        return draw_points(self.image, *self._scaled(positive_xy, negative_xy))

    def _scaled(self, *points: Optional[np.ndarray]) -> tuple:
        if self.scale == 1.0:
            return points
        return tuple(None if xy is None else np.asarray(xy, np.float64) * self.scale for xy in points)


def plot_curves(path: Path, steps: Sequence[float], series: dict, title: str, xlabel: str = "environment step") -> None:
    """Line plot of ``series`` (name → values aligned with ``steps``) saved as a PNG (atomically)."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpoa.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, values in series.items():
        ax.plot(steps[: len(values)], values, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


class OverlayVideo:
    """A video written one frame at a time (a clip's overlays): ``kind`` ``mp4`` (OpenCV's writer, MPEG-4
    part 2, streamed to disk) or ``gif`` (Pillow; the frames are kept, scaled down to at most
    :data:`GIF_WIDTH` pixels wide, until :meth:`close`). The file appears at ``path`` only when
    :meth:`close` has written it whole (a temporary file is renamed); :meth:`discard` drops it."""

    def __init__(self, path: Path, fps: float = 10.0, kind: str = "mp4"):
        if kind not in ("mp4", "gif"):
            raise ValueError(f"unknown video kind '{kind}'; use mp4 or gif")
        self.path, self.fps, self.kind = Path(path), float(fps), kind
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer, self._frames = None, []

    def add(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3); every frame has the first one's size."""
        if self.kind == "gif":
            height, width = frame.shape[:2]
            scale = min(1.0, GIF_WIDTH / width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            self._frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame.copy())
            return
        if self._writer is None:
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                           (width, height))
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write an MP4 video to '{self._partial}'; set track.overlay=gif")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the file and move it to ``path``."""
        if self.kind == "gif":
            from PIL import Image

            if self._frames:
                images = [Image.fromarray(frame) for frame in self._frames]
                images[0].save(self._partial, format="GIF", save_all=True, append_images=images[1:],
                               duration=int(round(1000 / self.fps)), loop=0)
            self._frames = []
        elif self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._partial.is_file():
            os.replace(self._partial, self.path)

    def discard(self) -> None:
        """Drop what was written (nothing appears at ``path``)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._frames = []
        self._partial.unlink(missing_ok=True)
