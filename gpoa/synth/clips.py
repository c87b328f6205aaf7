"""Generated clips for tracking: an object moving, turning, scaling and briefly hidden over a
background, with a look-alike beside it.

Each clip is drawn from one random generator (:func:`draw_clip`, a generator of frames, so a long
clip never sits in memory): a blotchy two-colour background that the camera pans over; the object,
a wobbly striped blob whose stripes turn with it, moving along a straight path while it turns and
grows or shrinks; a static look-alike of the same appearance elsewhere (per-frame matching cannot
tell the two apart, the previous frame's mask can); and an opaque post the object passes behind,
fully hidden for a few frames in the middle of the clip. The mask of a frame is the object's
visible part (empty while it is hidden).

:func:`write_clip` writes a clip in GPOA's clip layout (:mod:`gpoa.layout`): ``image/00000.png``, ...
and ``mask/00000.png`` for the first frame (``all_masks``: for every frame).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np

from gpoa.io import write_mask, write_png
from gpoa.synth.demo import blob_stamp, finish, random_wobble, smooth_noise

#: how far past the frame the background is drawn, for the camera's pan (pixels)
PAN_MARGIN = 24


def _colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=3).astype(np.float32)


def draw_clip(seed: int, frames: int = 12, size: tuple = (160, 120), hidden: int = 2) -> Iterator[tuple]:
    """The frames of one generated clip (module docstring), in order: ``(image uint8 (H, W, 3), mask
    bool (H, W))`` for a clip of ``frames`` frames of ``size`` (width, height), the object fully
    hidden behind the post for ``hidden`` frames in the middle (0: never). The same ``seed`` gives
    the same clip."""
    rng = np.random.default_rng([seed, 24])
    width, height = size
    canvas_shape = (height + 2 * PAN_MARGIN, width + 2 * PAN_MARGIN)
    light, dark = _colour(rng, 120, 200), _colour(rng, 30, 100)
    weight = np.clip(0.5 + 0.5 * smooth_noise(rng, canvas_shape, 9.0), 0, 1)[..., None]
    background = weight * light + (1 - weight) * dark
    background += 10 * smooth_noise(rng, canvas_shape, 2.0)[..., None]
    stripe_colours = (_colour(rng, 200, 255), _colour(rng, 0, 60))
    base_axes = np.array([0.11, 0.07]) * min(width, height) * rng.uniform(0.9, 1.1)
    wobble = random_wobble(rng, 0.15)
    period = rng.uniform(5, 8)
    start = np.array([0.18 * width, rng.uniform(0.35, 0.65) * height])
    end = np.array([0.82 * width, rng.uniform(0.35, 0.65) * height])
    spin, growth = rng.uniform(0.08, 0.16) * rng.choice([-1, 1]), rng.uniform(0.5, 0.9) / max(frames - 1, 1)
    pan = rng.uniform(-1.5, 1.5, size=2)
    lookalike = np.array([rng.uniform(0.1, 0.2) * width, (0.82 if start[1] < 0.5 * height else 0.18) * height])
    post_colour = _colour(rng, 60, 200)
    # the post covers the object wherever it is in the ``hidden`` frames of the middle of the clip
    first_hidden = (frames - hidden) // 2
    hidden_frames = range(first_hidden, first_hidden + hidden)
    if hidden > 0:
        reach = base_axes.max() * (1.0 + growth * hidden_frames[-1]) * (1.0 + np.abs(wobble[:, 0]).sum()) + 2.0
        xs = [start[0] + (end[0] - start[0]) * t / max(frames - 1, 1) for t in (hidden_frames[0], hidden_frames[-1])]
        post = slice(max(0, int(xs[0] - reach)), min(width, int(np.ceil(xs[1] + reach)) + 1))
    for t in range(frames):
        offset = np.round(PAN_MARGIN + pan * t).astype(int)
        offset = np.clip(offset, 0, 2 * PAN_MARGIN)
        image = background[offset[1]:offset[1] + height, offset[0]:offset[0] + width].copy()
        progress = t / max(frames - 1, 1)
        centre = start + (end - start) * progress
        angle = 0.3 + spin * t
        axes = base_axes * (1.0 + growth * t)
        mask = np.zeros((height, width), dtype=bool)
        for where, turn, scale, is_object in ((lookalike, 0.3, base_axes, False), (centre, angle, axes, True)):
            stamp = blob_stamp((height, width), where, scale, turn, wobble=wobble)
            ys, xs = stamp.coordinates()
            across = (xs - where[0]) * np.sin(turn) - (ys - where[1]) * np.cos(turn)
            first = np.clip(2.5 * np.sin(2 * np.pi * across / period) + 0.5, 0, 1)[..., None]
            stamp.paint(image, first * stripe_colours[0] + (1 - first) * stripe_colours[1])
            if is_object:
                stamp.add_to(mask)
        if hidden > 0:
            image[:, post] = post_colour
            mask[:, post] = False
        yield finish(image, rng, blur=0.7, grain=4.0), mask


def write_clip(folder: Union[str, Path], seed: int, frames: int = 12, size: tuple = (160, 120), hidden: int = 2,
               all_masks: bool = False) -> Path:
    """Write :func:`draw_clip`'s clip to ``folder`` in the clip layout (module docstring) → ``folder``."""
    folder = Path(folder)
    (folder / "image").mkdir(parents=True, exist_ok=True)
    for index, (image, mask) in enumerate(draw_clip(seed, frames, size, hidden)):
        write_png(folder / "image" / f"{index:05d}.png", image)
        if index == 0 or all_masks:
            write_mask(folder / "mask" / f"{index:05d}.png", mask)
    return folder
