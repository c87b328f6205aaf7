"""SAM 2's own video path (``track.engine=sam2_video``): SAM 2.1's video predictor carries the first
frame's mask through a clip with its memory, and GPOA may correct any later frame with point prompts.

:class:`Sam2VideoEngine` drives the official API of ``sam2.sam2_video_predictor.SAM2VideoPredictor``
and nothing else: ``init_state`` on a folder of the clip's frames, ``add_new_mask`` on frame 0,
``propagate_in_video`` for the frames after it, and ``add_new_points_or_box`` on a frame that the
``corrector`` corrects, after which propagation resumes at the next frame with the correction in
SAM 2's memory. The model is built by ``sam2.build_sam.build_sam2_video_predictor`` from the same
Hydra config and the same local checkpoint as the image backend (``segmenter.model_type``,
``segmenter.checkpoint``), loaded strictly with ``weights_only=True`` by
:func:`gpoa.segmenters.sam2.load_sam2`; nothing downloads.

Frames reach SAM 2 the way its video predictor reads them: ``init_state`` takes a folder of JPEGs
named by frame index, so the frames are written to a temporary folder (``00000.jpg``, ... at JPEG
quality 100 without chroma subsampling, :func:`write_jpeg_frames`) that is deleted as soon as SAM 2
has read them (no video decoder is needed). JPEG is lossy: SAM 2 sees each frame up to a few grey
levels of difference; the corrector is given the frames as they were passed in.

SAM 2's defaults of ``build_sam2_video_predictor`` are kept (memory of 7 frames, its stability
fallback, binarised masks of clicked frames in memory, corrections stored as non-conditioning
frames) except its hole filling, which needs SAM 2's CUDA extension and is off, as in the image
backend. ``segmenter.multimask`` and ``segmenter.sam_batching`` do not apply here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from gpoa.config import Config
from gpoa.errors import InputError, UsageError
from gpoa.io import image_from_array, mask_from_array
from gpoa.segmenters import require_package

#: SAM 2's object id for the one object a clip tracks
OBJECT_ID = 1
#: the JPEG quality of the frames written for ``init_state`` (100 without chroma subsampling: the
#: closest a JPEG gets to the frame)
JPEG_QUALITY = 100

#: ``corrector(frame_index, image uint8 (H, W, 3), propagated mask bool (H, W))`` → None (keep the
#: propagated mask) or (points float (N, 2) in (x, y) pixels, labels int (N,): 1 positive, 0 negative)
Corrector = Callable[[int, np.ndarray, np.ndarray], Optional[tuple]]


def write_jpeg_frames(frames: Sequence[np.ndarray], folder: Union[str, Path]) -> None:
    """Write uint8 RGB frames (H, W, 3) into ``folder`` as ``00000.jpg``, ``00001.jpg``, ... (frame
    index order): the folder SAM 2's ``init_state`` reads."""
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(Path(folder) / f"{index:05d}.jpg", quality=JPEG_QUALITY, subsampling=0)


def check_frames(frames: Sequence[np.ndarray]) -> list:
    """The clip's frames as uint8 RGB arrays (H, W, 3) of one size; InputError naming ``frames[i]``."""
    checked = [image_from_array(frame, f"frames[{index}]") for index, frame in enumerate(frames)]
    if not checked:
        raise InputError("frames", "is empty", "pass the clip's frames in time order, the annotated one first")
    height, width = checked[0].shape[:2]
    for index, frame in enumerate(checked):
        if frame.shape[:2] != (height, width):
            raise InputError(f"frames[{index}]", f"is {frame.shape[1]}x{frame.shape[0]} pixels but frames[0] is "
                                                 f"{width}x{height}", "every frame of a clip must have one size")
    return checked


def check_correction(correction: tuple, frame_index: int, size: tuple) -> tuple:
    """A corrector's (points, labels) as float32 (N, 2) and int32 (N,) arrays, points inside the
    frame of ``size`` (width, height); ValueError naming the frame otherwise."""
    try:
        points, labels = correction
    except (TypeError, ValueError):
        raise ValueError(f"the corrector returned {type(correction).__name__} for frame {frame_index}; "
                         "return None or (points (N, 2) in (x, y) pixels, labels (N,) of 1/0)") from None
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2) if np.size(points) else np.zeros((0, 2), np.float32)
    labels = np.asarray(labels).reshape(-1)
    width, height = size
    if (len(points) != len(labels) or not np.isin(labels, (0, 1)).all() or not np.isfinite(points).all()
            or (points < 0).any() or (points[:, 0] > width).any() or (points[:, 1] > height).any()):
        raise ValueError(f"the corrector's prompts for frame {frame_index} are not N points (x, y) inside the "
                         f"{width}x{height} frame with N labels of 1/0 (points {points.tolist()}, "
                         f"labels {labels.tolist()})")
    return points, labels.astype(np.int32)


class Sam2VideoEngine:
    """SAM 2.1's video predictor on one clip at a time (see the module docstring).

    Interface (``track.engine=sam2_video``)::

        engine = Sam2VideoEngine.from_config(cfg, device)
        for frame_index, mask, logits in engine.propagate(frames, first_mask, corrector=None):
            ...

    ``propagate`` yields ``(frame_index, mask bool (H, W), logits float32 (H, W))`` for every frame,
    in frame order; ``mask = logits > 0``, the logits are SAM 2's mask scores at the frame's size.
    Frame 0's is SAM 2's output for ``first_mask`` (its own copy of the given mask, through its
    256 x 256 low-resolution mask). For each later frame, ``corrector(frame_index, image,
    propagated_mask)`` (when given) returns None to keep the propagated mask, or (points (N, 2)
    float in (x, y) pixels, labels (N,) int, 1 positive / 0 negative): those go in as prompts on
    that frame (``add_new_points_or_box``, the same object, SAM 2's previous mask of the frame as
    the decoder's mask input), the corrected mask is yielded for the frame and propagation resumes
    at the next frame with the correction in SAM 2's memory. N = 0 counts as no correction.
    """

    def __init__(self, predictor: torch.nn.Module):
        """``predictor``: a ``sam2.sam2_video_predictor.SAM2VideoPredictor`` in eval mode."""
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg: Config, device: str = "cpu") -> Sam2VideoEngine:
        """The engine of ``cfg.segmenter`` (``backend: sam2``, its ``model_type`` and local
        ``checkpoint``) on ``device``; UsageError for another backend and for a missing, unsafe or
        mismatched checkpoint (:func:`gpoa.segmenters.sam2.load_sam2`)."""
        segmenter = cfg.segmenter
        if segmenter.backend != "sam2":
            raise UsageError(f"track.engine=sam2_video runs SAM 2's video predictor and needs segmenter.backend=sam2 "
                             f"(this config has segmenter.backend={segmenter.backend}); set segmenter.backend=sam2 "
                             "with segmenter.model_type and segmenter.checkpoint (e.g. configs/sam2_dinov2.yaml), or "
                             "use the default track.engine")
        require_package("sam2")
        from gpoa.segmenters.sam2 import load_sam2

        predictor = load_sam2(segmenter.model_type, segmenter.checkpoint, video=True)
        predictor.fill_hole_area = 0  # SAM 2's hole filling needs its CUDA extension (off, as in the image backend)
        return cls(predictor.to(torch.device(device)).eval())

    def propagate(self, frames: Sequence[np.ndarray], first_mask: np.ndarray,
                  corrector: Optional[Corrector] = None) -> Iterator[tuple]:
        """Segment every frame of a clip from its first frame's mask (see the class docstring).

        ``frames``: uint8 RGB arrays (H, W, 3) of one size, in time order; ``first_mask``: frame 0's
        bool (H, W) mask of the object (not empty). InputError for frames of different sizes, a
        mask of another size or an empty one; ValueError for a corrector's malformed prompts.
        """
        frames = check_frames(frames)
        height, width = frames[0].shape[:2]
        first = mask_from_array(first_mask, "first_mask", expected_size=(width, height))
        if not first.any():
            raise InputError("first_mask", "has no foreground pixels", "the first frame's mask must show the object")
        predictor = self.predictor
        with tempfile.TemporaryDirectory(prefix="gpoa-sam2-frames-") as folder:
            write_jpeg_frames(frames, folder)
            state = predictor.init_state(folder)  # reads every frame now: the folder can go
        predictor.add_new_mask(state, 0, OBJECT_ID, first)
        start: Optional[int] = 0
        while start is not None:
            stream = predictor.propagate_in_video(state, start_frame_idx=start)
            start = None
            try:
                for frame_index, _, scores in stream:
                    logits = scores[0, 0].float().cpu().numpy()
                    correction = None
                    if corrector is not None and frame_index > 0:
                        correction = corrector(frame_index, frames[frame_index], logits > 0)
                    if correction is not None:
                        points, labels = check_correction(correction, frame_index, (width, height))
                        if len(points):
                            _, _, scores = predictor.add_new_points_or_box(state, frame_index, OBJECT_ID,
                                                                           points=points, labels=labels)
                            logits = scores[0, 0].float().cpu().numpy()
                            # propagation goes on from the next frame, the corrected one in memory
                            start = frame_index + 1 if frame_index + 1 < len(frames) else None
                    yield frame_index, logits > 0, logits
                    if start is not None:
                        break
            finally:
                stream.close()
