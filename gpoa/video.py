"""Clips: one annotated frame, the whole clip. What a clip adds to the per-frame step.

Every frame is segmented by the predictor's own per-image code (:class:`gpoa.predictor.GPOAPredictor`:
initial prompts, the policy's edit, the segmenter's mask); a clip adds what the frames before it
know, in the shape of SAM 2's video predictor (one explicit state, frames streamed in order):

- **motion**: the previous frame's mask carried to this frame by dense optical flow
  (:func:`dense_flow`, OpenCV's DIS; :func:`carry_mask`). The carried mask is where the object
  most probably is: it is the segmenter's **mask prompt** (SAM's ``mask_input``;
  :func:`gpoa.segmenters.with_mask_prompt`), and, checked against the first frame (the **gate**: its
  patches that look like the first frame's object, plus what that object's match predicts next to
  it, :func:`regrowth`), it is the region the initial prompts are placed on (:func:`carried_region`,
  as placement places them on the region the match scores predict) and the agent's label-free
  yardstick (its predicted region, :class:`gpoa.samples.EpisodeSample`'s ``region_prior``): the
  agent is scored against the region its prompts were placed on;
- **prompt propagation** (SAM-PT's idea): the previous frame's optimised points carried by
  pyramidal Lucas-Kanade with a forward-backward check (:func:`track_points`); the points that
  survive and still fall where the carried mask says they should join the initial prompts, which
  the agent may keep, drop or replace;
- **memory** (:class:`ClipMemory`, the rule of XMem/Cutie's bounded stores): the first frame (the
  truth) and some earlier frames whose masks were accepted are the references the frame's patches
  are matched against (k-shot);
- **occlusion and re-entry**: where the object is gone (an empty mask, or absent by the presence
  decision) the frame's mask is empty and nothing enters memory; while it is gone, each frame is
  searched with the first frame's reference alone, as a single image is, until it is found again;
- **drift guard**: a mask that agrees neither with the carried mask nor with the region the
  first frame's reference predicts (:func:`guard_agreement`) does not enter memory;
- **the mask's edge**: with the classical segmenter, each mask given out has its edge placed at pixel
  level (``track.refine_edges``; :meth:`gpoa.segmenters.classical.ClassicalSegmenter.refine_edges`);
  the next frame is carried from the segmenter's own mask, so the edge step's errors do not pile up.

Arrays in, arrays out: images are uint8 RGB (H, W, 3), masks bool (H, W), probabilities float32
(H, W) in [0, 1], points (N, 2) float (x, y) pixels of the frame. The settings are ``track`` in
:mod:`gpoa.config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np
from scipy import ndimage

from gpoa.config import PlacementConfig, TrackConfig
from gpoa.features import patch_features
from gpoa.graph import unique_in_order
from gpoa.grid import PatchGrid
from gpoa.inference import propose, reference_features
from gpoa.metrics import dice
from gpoa.placement import (
    PatchScores,
    fit_patch_classifier,
    place_on_region,
    predicted_region,
    reference_foreground_share,
    score_patches,
)
from gpoa.prompts import PromptSet, sample_ideal_prompts
from gpoa.runtime import content_seed
from gpoa.segmenters import cell_means, mask_cells

#: cv2.DISOpticalFlow presets by ``track.flow``
FLOW_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
#: Lucas-Kanade window (pixels) and pyramid levels of the point propagation
LK_WINDOW, LK_LEVELS = 21, 3


# ----- motion -------------------------------------------------------------------------------------------
def gray(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) → uint8 gray (H, W), what the flows read."""
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def dense_flow(previous: np.ndarray, current: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Backward dense optical flow (H, W, 2) float32 between two gray frames (H, W) uint8: for every
    pixel (x, y) of ``current``, its displacement (dx, dy) to where it was in ``previous`` (DIS,
    ``preset`` one of :data:`FLOW_PRESETS`)."""
    flow = cv2.DISOpticalFlow_create(FLOW_PRESETS[preset])
    return flow.calc(current, previous, None)


def carry_mask(probability: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The previous frame's object probability (H, W) float in [0, 1] (or a bool mask) carried to the
    current frame along the backward ``flow`` (H, W, 2) of :func:`dense_flow`: float32 (H, W) in
    [0, 1], bilinear, 0 where the flow points outside the previous frame."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    carried = cv2.remap(np.asarray(probability, dtype=np.float32), xs + flow[..., 0], ys + flow[..., 1],
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return np.clip(carried, 0.0, 1.0)


def track_points(previous: np.ndarray, current: np.ndarray, points: np.ndarray,
                 max_error: float) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 2) (x, y) of the gray frame ``previous`` followed to ``current`` (both (H, W) uint8)
    by pyramidal Lucas-Kanade, and back: ``(moved (N, 2) float64, kept (N,) bool)``, a point kept
    when both passes found it, it lands inside the frame and the backward pass returns within
    ``max_error`` pixels of where it started."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)
    if len(points) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    settings = {"winSize": (LK_WINDOW, LK_WINDOW), "maxLevel": LK_LEVELS,
                "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    moved, found, _ = cv2.calcOpticalFlowPyrLK(previous, current, points, None, **settings)
    back, found_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **settings)
    error = np.linalg.norm(back.reshape(-1, 2) - points.reshape(-1, 2), axis=1)
    height, width = current.shape
    xy = moved.reshape(-1, 2).astype(np.float64)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= height - 1)
    kept = found.reshape(-1).astype(bool) & found_back.reshape(-1).astype(bool) & inside & (error <= max_error)
    return xy, kept


# ----- memory -------------------------------------------------------------------------------------------
@dataclass(eq=False)
class MemoryFrame:
    """One frame in memory: its index in the clip, patch ``features`` (rows, cols, D) and ``mask``
    (H, W) bool (the truth for the first frame, the accepted mask for the others)."""

    index: int
    features: np.ndarray
    mask: np.ndarray
    periodic: bool = False  # kept as every k-th accepted frame


@dataclass
class ClipMemory:
    """The frames a clip's patches are matched against: the first frame (always), the last ``recent``
    accepted frames and every ``every``-th accepted frame (0: none), at most ``size`` in all (the
    oldest periodic ones leave first). ``version`` counts the changes of ``frames`` (a reference
    built from the memory is rebuilt when it moves)."""

    recent: int
    every: int
    size: int
    frames: list = field(default_factory=list)
    accepted: int = 0
    version: int = 0

    def add(self, frame: MemoryFrame) -> None:
        """Write an accepted frame (the first call: the clip's first frame)."""
        if not self.frames:
            self.frames, self.version = [frame], self.version + 1
            return
        self.accepted += 1
        frame.periodic = self.every > 0 and self.accepted % self.every == 0
        held = self.frames[1:] + [frame]
        recent = held[-self.recent:] if self.recent > 0 else []
        keep = [f for f in held if f.periodic or f in recent]
        while len(keep) > self.size - 1:  # the oldest periodic frame leaves first, then the oldest recent one
            keep.remove(next((f for f in keep if f not in recent), keep[0]))
        if keep != self.frames[1:]:
            self.frames, self.version = self.frames[:1] + keep, self.version + 1


# ----- prompts on the carried mask ------------------------------------------------------------------------
def carried_region(cells: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """The patches the carried mask predicts, as :func:`gpoa.placement.place_on_region`'s pieces (N,)
    int64 (labels 1..K, largest first, 0 outside), from the share of each patch inside it ``cells``
    (N,): the patches at least half inside; a mask smaller than that gives its patches with the
    largest share (as the ideal sampler reads a tiny true mask)."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1)
    region = cells >= 0.5
    if not region.any() and cells.max() > 0:
        region = cells >= cells.max() * 0.99
    labels, count = ndimage.label(region.reshape(grid.rows, grid.cols), structure=np.ones((3, 3), bool))
    labels = labels.reshape(-1)
    size = np.bincount(labels, minlength=count + 1)[1:]
    order = np.lexsort((np.arange(count), -size))
    lookup = np.zeros(count + 1, dtype=np.int64)
    lookup[order + 1] = np.arange(1, count + 1)
    return lookup[labels]


def carried_prompts(cells: np.ndarray, grid: PatchGrid, settings: PlacementConfig, rng: np.random.Generator,
                    propagated: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
    """Initial prompts (positive (P,), negative (Q,) patch indices; at most ``settings.n_positive`` and
    ``n_negative``) of a frame whose carried mask covers each patch by ``cells`` (N,). The
    ``propagated`` prompts (positive, negative patch indices of the previous frame's points followed
    here) come first where they agree with the carried mask (a positive on a patch at least half
    inside, a negative on one it does not touch); the rest are spread over the carried region and a
    ring around it (:func:`gpoa.placement.place_on_region`; no negative on a patch the carried mask
    touches)."""
    piece = carried_region(cells, grid)
    positive, negative = place_on_region(piece, cells > 0, grid, settings, rng)
    if propagated is not None:
        moved_positive, moved_negative = (np.asarray(p, dtype=np.int64) for p in propagated)
        positive = np.concatenate([moved_positive[piece[moved_positive] > 0], positive])
        negative = np.concatenate([moved_negative[cells[moved_negative] <= 0], negative])
    positive = unique_in_order(positive)[:settings.n_positive]
    return positive, unique_in_order(negative[~np.isin(negative, positive)])[:settings.n_negative]


def regrowth(scores: PatchScores, near: np.ndarray, looks_like: np.ndarray, grid: PatchGrid, share: float,
             settings: PlacementConfig) -> np.ndarray:
    """What the first frame's reference adds to a frame's carried region, (N,) float 0/1: the object
    region its match scores ``scores`` predict (:func:`gpoa.placement.predicted_region`, sized by the
    reference's object ``share``) when only the patches ``near`` (N,) bool the previous mask may hold
    it, on the patches that look like the object (``looks_like`` (N,) bool). Parts of the object the
    carried mask lost (thin parts, a fast motion the flow missed) come back this way; look-alikes
    farther away do not."""
    piece, _, _, _ = predicted_region(scores.within(near), grid, share, settings)
    return ((piece > 0) & near & looks_like).astype(np.float64)


def search_window(mask: np.ndarray, grid: PatchGrid, radius: float, shift: tuple = (0.0, 0.0)) -> np.ndarray:
    """The patches (N,) bool within ``radius`` patches (Euclidean, centre to centre) of the patches
    that the mask (H, W) bool touches, moved by ``shift`` (dx, dy) pixels: where an object last seen
    as ``mask`` is looked for (``shift``: how far it may have moved since, at its last speed)."""
    touched = mask_cells(mask, (grid.rows, grid.cols)) > 0
    if not touched.any():
        return np.ones(grid.num_patches, dtype=bool)
    height, width = mask.shape
    offset = (round(shift[1] * grid.rows / height), round(shift[0] * grid.cols / width))
    touched = ndimage.shift(touched, offset, order=0, mode="constant", cval=False)
    if not touched.any():  # moved out of the frame: look everywhere
        return np.ones(grid.num_patches, dtype=bool)
    return (ndimage.distance_transform_edt(~touched) <= radius).reshape(-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) pixel centroid of a non-empty mask (H, W) bool."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def guard_agreement(mask: np.ndarray, carried: Optional[np.ndarray], reference_region: np.ndarray,
                    grid_shape: tuple) -> float:
    """The drift guard's measure of a frame's ``mask`` (H, W) bool: its best agreement (Dice) with the
    ``carried`` mask (H, W) float (None: no carried mask) and, on the patch grid of ``grid_shape``
    (rows, cols), with the ``reference_region`` (rows * cols,) bool the first frame's reference
    predicts."""
    agreements = [dice(mask_cells(mask, grid_shape).reshape(-1) >= 0.5, reference_region)]
    if carried is not None:
        agreements.append(dice(mask, carried >= 0.5))
    return float(max(agreements))


# ----- the tracker ---------------------------------------------------------------------------------------
@dataclass
class FrameInfo:
    """What the tracker decided on one frame, beside its :class:`~gpoa.predictor.Prediction`:
    ``carried`` whether a carried mask guided it (False: searched with the first frame's reference),
    ``propagated`` how many of the previous frame's points were followed here, ``agreement`` the
    drift guard's measure (nan on the first frame), ``remembered`` whether the mask entered memory;
    with ``track.engine=sam2_video``, ``agreement`` is that of SAM 2's propagated mask with the first
    frame's reference and ``corrected`` whether GPOA's points corrected it."""

    index: int
    carried: bool = False
    propagated: int = 0
    agreement: float = float("nan")
    remembered: bool = False
    corrected: bool = False  # track.engine=sam2_video: GPOA's points went in on this frame


class ClipTracker:
    """The state of one clip (SAM 2's ``inference_state``): the memory, the previous frame and its
    mask and points. Built by :meth:`gpoa.predictor.GPOAPredictor.track` from the first frame and
    its mask; :meth:`step` segments each next frame, in order.

    ``predictor``: the :class:`~gpoa.predictor.GPOAPredictor` whose backends, policy and per-image
    step (``_segment``) every frame uses; ``settings`` its config's ``track`` section.
    """

    def __init__(self, predictor: Any, first_image: np.ndarray, first_mask: np.ndarray):
        self.predictor, self.cfg = predictor, predictor.cfg
        self.settings: TrackConfig = predictor.cfg.track
        self.grid: PatchGrid = predictor.grid
        features = patch_features(predictor.backends.extractor, first_image)
        self.memory = ClipMemory(self.settings.memory_recent, self.settings.memory_every, self.settings.memory_size)
        self.memory.add(MemoryFrame(0, features, first_mask))
        self.first_reference, self.first_classifier = self._reference([self.memory.frames[0]])
        self.first_share = reference_foreground_share(self.first_reference)
        self._memory_version, self._memory_reference = self.memory.version, (self.first_reference,
                                                                             self.first_classifier)
        self.index = 0
        self.previous_gray = gray(first_image)
        self.previous_mask = np.asarray(first_mask, dtype=bool)
        # the first frame's prompts: read off its true mask, as the ideal sampler does
        rng = np.random.default_rng(content_seed(self.cfg.seed, "track-first", first_image))
        positive, negative = sample_ideal_prompts(self.grid, self.previous_mask, self.cfg.placement.n_positive,
                                                  self.cfg.placement.n_negative, rng)
        width, height = first_mask.shape[1], first_mask.shape[0]
        self.first_prompts = PromptSet("", (width, height), self.grid, positive, negative, source="first frame")
        self.previous_prompts: Optional[PromptSet] = self.first_prompts
        # the last mask that held the object, its frame, how many frames since, and its speed (dx, dy) per frame
        self.last_seen, self.seen_at, self.unseen = self.previous_mask, 0, 0
        self.velocity = np.zeros(2)

    def _reference(self, frames: Sequence[MemoryFrame]) -> tuple:
        reference = reference_features([f.features for f in frames], [f.mask for f in frames], self.grid, self.cfg)
        return reference, fit_patch_classifier(reference, self.cfg.placement.regularisation)

    def memory_reference(self) -> tuple:
        """(ReferenceFeatures, PatchClassifier) of the frames in memory, rebuilt when the memory moved."""
        if self.memory.version != self._memory_version:
            self._memory_reference = self._reference(self.memory.frames)
            self._memory_version = self.memory.version
        return self._memory_reference

    def step(self, image: np.ndarray, source: Any = "") -> tuple:
        """Segment the next frame ``image`` (H, W, 3) uint8 (``source``: the frame as given, for its name
        in errors) → ``(Prediction, FrameInfo)``."""
        predictor, grid, settings = self.predictor, self.grid, self.settings
        self.index += 1
        info = FrameInfo(self.index)
        features = patch_features(predictor.backends.extractor, image)
        current = gray(image)
        if current.shape != self.previous_gray.shape:
            raise ValueError(f"frame {self.index} is {current.shape[1]}x{current.shape[0]} but the clip's frames are "
                             f"{self.previous_gray.shape[1]}x{self.previous_gray.shape[0]}")
        carried = None
        if self.previous_mask.any():
            flow = dense_flow(self.previous_gray, current, settings.flow)
            carried = carry_mask(self.previous_mask, flow)
            if carried.max() < 0.5:
                carried = None
        width, height = image.shape[1], image.shape[0]
        name = getattr(source, "name", "") if not isinstance(source, str) else source
        reference, classifier = self.memory_reference()
        first_scores = score_patches(self.first_reference, features, self.first_classifier)
        # patches that look like the first frame's object: closer to its foreground than to its background
        looks_like = first_scores.margin > 0
        cells = None if carried is None else cell_means(carried, (grid.rows, grid.cols)).reshape(-1)
        prompt_cells = cells
        if cells is not None and settings.gate:
            prompt_cells = cells * looks_like
            if not (prompt_cells >= 0.5).any():  # nothing where the carried mask says looks like the object
                cells = None
            elif settings.regrow_radius > 0:
                near = search_window(self.previous_mask, grid, settings.regrow_radius)
                prompt_cells = np.maximum(prompt_cells, regrowth(first_scores, near, looks_like, grid,
                                                                 self.first_share, self.cfg.placement))
        if cells is not None:
            propagated = None
            if settings.propagate_points and self.previous_prompts is not None:
                propagated, info.propagated = self._propagate(current, (width, height))
            rng = np.random.default_rng(content_seed(self.cfg.seed, "placement", image))
            positive, negative = carried_prompts(prompt_cells, grid, self.cfg.placement, rng, propagated)
            initial = PromptSet(name, (width, height), grid, positive, negative, source="track")
            # agent's yardstick: the gated region the prompts sit on; mask prompt: the whole carried mask
            prediction = predictor._segment(source, image, features, initial, reference, classifier,
                                            region_prior=prompt_cells,
                                            mask_prompt=carried if settings.mask_prompt else None,
                                            scores=first_scores if reference is self.first_reference else None)
            info.carried = True
        else:  # lost, hidden or drifted: searched for near where it was last seen
            shift = self.velocity * (self.index - self.seen_at)
            window = search_window(self.last_seen, grid, settings.search_radius * (self.unseen + 1), tuple(shift))
            if (window & looks_like).any():
                initial = propose(self.first_reference, self.first_classifier, features, image, grid, self.cfg, name,
                                  window=window)
                prediction = predictor._segment(source, image, features, initial, self.first_reference,
                                                self.first_classifier, scores=first_scores)
            else:  # nothing near it looks like the object: it is hidden (or gone)
                prediction = predictor._absent(image, name)
        mask = prediction.mask
        piece, _, _, _ = predicted_region(first_scores, grid, self.first_share, self.cfg.placement)
        if mask.any():
            info.agreement = guard_agreement(mask, carried, piece > 0, (grid.rows, grid.cols))
            if info.agreement >= settings.guard:
                self.memory.add(MemoryFrame(self.index, features, mask))
                info.remembered = True
            now = centroid(mask)
            if self.index - self.seen_at > 0:
                self.velocity = (now - centroid(self.last_seen)) / (self.index - self.seen_at)
            self.last_seen, self.seen_at, self.unseen = mask, self.index, 0
        else:
            self.unseen += 1
        self.previous_gray, self.previous_mask = current, mask
        self.previous_prompts = prediction.prompts.optimized if mask.any() else None
        refine = getattr(predictor.backends.segmenter, "refine_edges", None)
        if settings.refine_edges and refine is not None and mask.any():  # the mask given out, not the one carried
            prediction = dataclasses.replace(prediction, mask=refine(image, mask))
        return prediction, info

    def _propagate(self, current: np.ndarray, size: tuple) -> tuple:
        """The previous frame's optimised prompts followed to ``current``: ((positive, negative) patch
        indices of the points kept, how many were kept)."""
        prompts = self.previous_prompts
        points, labels = prompts.points, prompts.labels
        moved, kept = track_points(self.previous_gray, current, points, self.settings.point_error)
        indices = self.grid.original_xy_to_index(moved[kept], size) if kept.any() else np.zeros(0, np.int64)
        kept_labels = labels[kept]
        return (indices[kept_labels == 1], indices[kept_labels == 0]), int(kept.sum())


# ----- SAM 2's video predictor with GPOA's corrections ----------------------------------------------------
def sam2_video_track(tracker: ClipTracker, frames: Sequence[np.ndarray], first_mask: np.ndarray):
    """``track.engine=sam2_video``: SAM 2's video predictor carries ``first_mask`` through ``frames`` (uint8
    RGB (H, W, 3) arrays, all of them: SAM 2 reads the whole clip at once;
    :class:`gpoa.segmenters.sam2_video.Sam2VideoEngine`), and GPOA corrects it: on a frame where the
    propagated mask and the first frame's reference disagree (:func:`guard_agreement` with the
    region the reference's match predicts below ``track.guard``), the predictor's optimised points of
    that frame (its per-image step against the first frame, as a single image) go in as prompts and
    propagation continues from them. Yields ``(Prediction, FrameInfo)`` per frame after the first,
    in order (the prompts: the correction's, or none)."""
    from gpoa.segmenters.sam2_video import Sam2VideoEngine

    predictor = tracker.predictor
    engine = Sam2VideoEngine.from_config(predictor.cfg, predictor.backends.device)
    cfg, grid, extractor = predictor.cfg, predictor.grid, predictor.backends.extractor
    reference, classifier, share = tracker.first_reference, tracker.first_classifier, tracker.first_share
    decided: dict = {}

    def corrector(index: int, image: np.ndarray, propagated: np.ndarray) -> Optional[tuple]:
        features = patch_features(extractor, image)
        scores = score_patches(reference, features, classifier)
        piece, _, _, _ = predicted_region(scores, grid, share, cfg.placement)
        info = FrameInfo(index, agreement=guard_agreement(propagated, None, piece > 0, (grid.rows, grid.cols)))
        prediction = None
        if info.agreement < cfg.track.guard:
            initial = propose(reference, classifier, features, image, grid, cfg)
            prediction = predictor._segment(image, image, features, initial, reference, classifier, scores=scores)
            info.corrected = prediction.present and len(prediction.prompts.optimized.labels) > 0
        decided[index] = (prediction, info)
        if not info.corrected:
            return None
        optimized = prediction.prompts.optimized
        return optimized.points, optimized.labels

    for index, mask, _ in engine.propagate(frames, first_mask, corrector):
        if index == 0:
            continue
        prediction, info = decided.pop(index)
        if info.corrected:
            prediction = dataclasses.replace(prediction, mask=mask)
        else:
            prediction = dataclasses.replace(predictor._absent(frames[index]), mask=mask, present=bool(mask.any()),
                                             confidence=float("nan"))
        yield prediction, info
