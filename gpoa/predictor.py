"""GPOA from Python: set a reference pair once, then segment as many images as you like.

    from gpoa import GPOAPredictor

    predictor = GPOAPredictor.from_config("configs/demo.yaml", policy="checkpoints/demo/best.pt")
    predictor.set_reference(image, mask)          # or lists of images and masks (k-shot)
    result = predictor.predict(target)            # a Prediction
    result.mask                                   # (H, W) bool, empty where the object is absent
    result.present                                # False: the object is not in the image (gpoa.presence)
    result.prompts.optimized.points               # (N, 2) (x, y) pixels; .labels (N,) 1 object, 0 background
    for result in predictor.predict_many(targets): ...
    predictor.teach(images, masks, "taught.pt")   # labelled pairs of one domain → a taught policy, used from now on

Like segment-anything's ``SamPredictor``: the models are loaded once (``from_config``), the
reference is encoded once (``set_reference``), and ``predict`` runs one image. Images are uint8
arrays (H, W, 3) RGB, (H, W, 4) or (H, W) gray, Pillow images or file paths; masks are bool or
integer arrays (H, W) (foreground = nonzero), Pillow images or file paths.

``predict`` runs exactly the stages' per-image steps (:mod:`gpoa.inference`): stage 1's initial
prompts (seeded by the run seed and the image's content), stage 3's policy edit (none with
``policy=None``: the optimised prompts are the initial ones) and stage 4's decode. For the same
images, seed and policy it gives the prompts and masks that the four scripts write, the presence
decision included (a policy carries the threshold it fitted on its training corpus).

Every bad input raises one :class:`~gpoa.errors.GPOAError` that says what is wrong and how to fix
it: :class:`~gpoa.errors.InputError` for an image or mask (dtype, shape, a mask of another size than
its image, an empty reference mask, an unreadable file), :class:`~gpoa.errors.UsageError` for a
call out of order (``predict`` before ``set_reference``), a config or a policy that cannot be used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from gpoa.backends import Backends
from gpoa.config import Config, load_config, resolve_device, with_overrides
from gpoa.errors import InputError, UsageError
from gpoa.features import patch_features
from gpoa.inference import (
    decode_masks,
    load_optimizer,
    optimize_sample,
    presence_threshold,
    propose,
    reference_features,
    region_confidence,
)
from gpoa.io import (
    image_from_array,
    image_from_pil,
    image_size,
    mask_from_array,
    mask_from_pil,
    read_image,
    read_mask,
)
from gpoa.matching import ReferenceFeatures
from gpoa.placement import PatchClassifier, PatchScores, fit_patch_classifier
from gpoa.presence import mask_presence_score
from gpoa.prompts import PromptSet
from gpoa.samples import EpisodeSample
from gpoa.segmenters import with_mask_prompt
from gpoa.teach import LabelledPair, save_taught, teach

#: what an image or a mask may be given as
ImageLike = Union[np.ndarray, Image.Image, str, Path]


@dataclass(frozen=True)
class Prompts:
    """The point prompts of one prediction, each a :class:`~gpoa.prompts.PromptSet`: ``.points``
    (N, 2) float (x, y) pixels of the image, ``.labels`` (N,) int64 (1 object, 0 background),
    ``.positive_indices`` / ``.negative_indices`` patch indices; ``write_prompt_file`` saves one."""

    initial: PromptSet
    optimized: PromptSet


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``mask`` (H, W) bool at the image's size, the segmenter's mask of the
    optimised prompts, empty when the object is called absent; ``present`` whether it is (always
    True when presence is off or there is no threshold: no decision is made); ``presence_score`` the initial mask's
    presence score (:mod:`gpoa.presence`; None without a threshold); ``confidence`` in [0, 1], how
    step-like the image's match scores are on the region they predict (below
    ``optimize.min_region_confidence`` the policy keeps the initial prompts); ``prompts`` the initial
    and the optimised point prompts; ``track`` (frames of :meth:`GPOAPredictor.track` only) what the
    tracker decided on the frame, a :class:`gpoa.video.FrameInfo`."""

    mask: np.ndarray
    confidence: float
    prompts: Prompts
    present: bool = True
    presence_score: Optional[float] = None
    track: Optional[object] = None


class GPOAPredictor:
    """One-shot (or k-shot) segmentation with a fixed reference (module docstring).

    ``cfg``: the settings (:func:`gpoa.config.load_config`); ``policy``: a trained policy file, or
    None for no agent (the initial prompts are segmented); ``device``: ``cpu``, ``cuda``, ``cuda:N``
    or ``mps``. Models load when first needed and are shared by every image; ``backends``: models
    already built for ``cfg``'s features and segmenter (:class:`~gpoa.backends.Backends`, e.g. a run's
    or another predictor's), shared instead of loading them again (``device`` is then theirs).
    """

    def __init__(self, cfg: Config, policy: Optional[Union[str, Path]] = None, device: str = "cpu",
                 backends: Optional[Backends] = None):
        self.cfg = cfg
        self.backends = backends if backends is not None else Backends(cfg, device)
        self.grid = self.backends.grid
        self._reference: Optional[ReferenceFeatures] = None
        self._classifier: Optional[PatchClassifier] = None
        self.use_policy(policy)

    def use_policy(self, policy: Optional[Union[str, Path]]) -> None:
        """Edit with the policy file ``policy`` from now on (None: no agent). A taught policy (gpoa.teach)
        brings its references, which replace the reference set so far (``set_reference`` replaces them)."""
        self.optimizer = (None if policy is None else
                          load_optimizer(Path(policy), self.cfg, self.backends.feature_key, self.grid))
        # the policy's (or, without one, the config's) presence threshold; None: no target is called absent
        self.presence_threshold = (presence_threshold(self.cfg) if self.optimizer is None
                                   else self.optimizer.presence_threshold)
        if self.optimizer is not None and self.optimizer.reference is not None:
            self._reference = self.optimizer.reference
            self._classifier = fit_patch_classifier(self._reference, self.cfg.placement.regularisation)

    @classmethod
    def from_config(cls, config: Optional[Union[str, Path, Config]] = None, policy: Optional[Union[str, Path]] = None,
                    device: str = "auto", seed: Optional[int] = None, overrides: Iterable[str] = ()) -> GPOAPredictor:
        """A predictor from a YAML file (or a :class:`Config`; None: the defaults, the embedded
        backends), ``overrides`` (``"key=value"`` as ``--set`` takes them), a ``policy`` file (None: no
        agent), a ``device`` (``auto``: cuda, then mps, then cpu) and a ``seed`` (None: the config's)."""
        if isinstance(config, Config):
            cfg = with_overrides(config, list(overrides))
        else:
            cfg = load_config(config, list(overrides))
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=int(seed))
        return cls(cfg, policy, resolve_device(device))

    # ----- the reference ------------------------------------------------------------------------------
    def set_reference(self, image: Union[ImageLike, list], mask: Union[ImageLike, list]) -> None:
        """Encode the reference: one image and its mask, or lists of both (k-shot, every pair used).
        Each mask has its image's size and some foreground."""
        images, masks = (list(image), list(mask)) if isinstance(image, (list, tuple)) else ([image], [mask])
        if isinstance(mask, (list, tuple)) != isinstance(image, (list, tuple)) or len(images) != len(masks):
            raise UsageError(f"set_reference takes one image and one mask, or two lists of the same length; got "
                             f"{_count(image)} image(s) and {_count(mask)} mask(s)")
        if not images:
            raise UsageError("set_reference needs at least one reference image and its mask")
        several = len(images) > 1
        grids, binary = [], []
        for i, (reference_image, reference_mask) in enumerate(zip(images, masks)):
            suffix = f" {i}" if several else ""
            pixels = as_image(reference_image, f"reference image{suffix}")
            truth = as_mask(reference_mask, f"reference mask{suffix}", image_size(pixels))
            if not truth.any():
                raise InputError(_name(reference_mask, f"reference mask{suffix}"), "has no foreground pixels",
                                 "the reference must contain the object (foreground = nonzero pixels)")
            grids.append(patch_features(self.backends.extractor, pixels))
            binary.append(truth)
        try:
            reference = reference_features(grids, binary, self.grid, self.cfg)
        except ValueError as exc:
            raise InputError(None, f"reference: {exc}") from None
        self._reference = reference
        self._classifier = fit_patch_classifier(reference, self.cfg.placement.regularisation)

    def teach(self, images: list, masks: list, out: Union[str, Path]) -> Path:
        """Teach the predictor one domain (:mod:`gpoa.teach`): ``images`` and their ``masks`` (lists; a
        mask may be empty where the object is absent) choose the references, train the agent and
        calibrate the gates (``cfg.teach``; its ``init`` the policy to start from). Writes the policy
        file ``out`` that ``gpoa teach`` writes from the same pairs, uses it from now on and returns
        its path."""
        if not isinstance(images, (list, tuple)) or not isinstance(masks, (list, tuple)) or len(images) != len(masks):
            raise UsageError(f"teach takes two lists of the same length, images and their masks; got "
                             f"{_count(images)} image(s) and {_count(masks)} mask(s)")
        pairs = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            pixels = as_image(image, f"labelled image {i}")
            truth = as_mask(mask, f"labelled mask {i}", image_size(pixels))
            name = Path(image).stem if isinstance(image, (str, Path)) else f"pair_{i}"
            pairs.append(LabelledPair(name, pixels, truth, patch_features(self.backends.extractor, pixels)))
        taught = teach(pairs, self.cfg, self.backends)
        save_taught(Path(out), taught, pairs, self.cfg, self.backends)
        self.use_policy(out)
        return Path(out)

    # ----- prediction -----------------------------------------------------------------------------------
    def predict(self, image: ImageLike) -> Prediction:
        """Segment one image: stage 1's prompts, the policy's edit, the segmenter's mask."""
        if self._reference is None:
            raise UsageError("no reference is set: call set_reference(image, mask) before predict()")
        name = Path(image).name if isinstance(image, (str, Path)) else ""
        pixels = as_image(image, "image")
        features = patch_features(self.backends.extractor, pixels)
        reference, classifier, cfg = self._reference, self._classifier, self.cfg
        initial = propose(reference, classifier, features, pixels, self.grid, cfg, name)
        if len(initial.positive_indices) == 0:
            raise InputError(_name(image, "image"), "no reference foreground patch matched this image (with "
                                                    f"matching.mutual_nearest={cfg.matching.mutual_nearest})",
                             "use matching.method=placement, which always places a positive prompt")
        return self._segment(image, pixels, features, initial, reference, classifier)

    def _segment(self, image: ImageLike, pixels: np.ndarray, features: np.ndarray, initial: PromptSet,
                 reference: ReferenceFeatures, classifier: PatchClassifier, region_prior: Optional[np.ndarray] = None,
                 mask_prompt: Optional[np.ndarray] = None, scores: Optional[PatchScores] = None) -> Prediction:
        """Stage 3's edit of ``initial`` and stage 4's mask for one image (``pixels`` (H, W, 3), its patch
        ``features``; ``image`` as given, for its name), against ``reference``. A clip's frame adds
        the agent's ``region_prior`` (rows * cols,) and the segmenter's ``mask_prompt`` (H, W)
        (:class:`~gpoa.samples.EpisodeSample`); ``scores``: ``features`` scored against ``reference``, if known."""
        cfg, segmenter = self.cfg, self.backends.segmenter
        name = Path(image).name if isinstance(image, (str, Path)) else ""
        confidence = region_confidence(reference, classifier, features, self.grid, cfg, scores)
        optimized, embedding, present, score, decoded = initial, None, True, None, None
        if self.optimizer is not None:
            sample = EpisodeSample(Path(name).stem, self.grid, features, initial, reference, image=pixels,
                                   classifier=classifier, region_prior=region_prior, mask_prompt=mask_prompt)
            try:
                result = optimize_sample(self.optimizer, sample, segmenter, cfg.seed)
            except ValueError as exc:
                raise InputError(_name(image, "image"), str(exc)) from None
            optimized, embedding = result.policy.prompt_set, result.embedding
            present, score = result.present, result.presence_score
        if embedding is None and mask_prompt is not None:
            embedding = with_mask_prompt(segmenter, segmenter.embed(pixels), mask_prompt)
        if self.optimizer is None and self.presence_threshold is not None:
            # no policy: the same decision on the initial prompts' mask, which is also the result
            decoded = decode_masks(segmenter, pixels, [initial], embedding)[0]
            score = mask_presence_score(decoded, reference, features)
            present = score >= self.presence_threshold
        if not present:
            mask = np.zeros(pixels.shape[:2], dtype=bool)
        elif decoded is not None:
            mask = decoded
        else:
            mask = decode_masks(segmenter, pixels, [optimized], embedding)[0]
        return Prediction(mask=mask, confidence=confidence, prompts=Prompts(initial=initial, optimized=optimized),
                          present=bool(present), presence_score=score)

    def _absent(self, pixels: np.ndarray, name: str = "") -> Prediction:
        """The prediction of an image (H, W, 3) where the object is not: an empty mask, no prompts."""
        height, width = pixels.shape[:2]
        empty = PromptSet(name, (width, height), self.grid, [], [], source="absent")
        return Prediction(mask=np.zeros((height, width), dtype=bool), confidence=0.0, prompts=Prompts(empty, empty),
                          present=False)

    def predict_many(self, images: Iterable[ImageLike]) -> Iterator[Prediction]:
        """:meth:`predict` for each image, in order, one at a time (a generator)."""
        for image in images:
            yield self.predict(image)

    def track(self, frames: Iterable[ImageLike], first_mask: ImageLike) -> Iterator[Prediction]:
        """Follow the object of ``first_mask`` (the first frame's mask) through ``frames`` (a clip, in
        time order, read one at a time): one :class:`Prediction` per frame, in order (a generator).
        The first frame's is its mask as given; every other frame is segmented by :meth:`predict`'s
        per-image step with what the frames before it know (:mod:`gpoa.video`: the previous mask
        carried by optical flow, the previous points followed, the memory of accepted frames,
        occlusion and the drift guard; settings ``track``). The reference set by
        :meth:`set_reference` is not used: a clip's reference is its first frame.

        With ``track.engine=sam2_video`` SAM 2's video predictor carries the first mask and GPOA's
        points correct the frames where it disagrees with the first frame's reference
        (:func:`gpoa.video.sam2_video_track`); SAM 2 reads the whole clip at once, so the frames are
        all read first."""
        from gpoa.video import ClipTracker, sam2_video_track

        if self.cfg.track.engine == "sam2_video":
            frames = [as_image(frame, f"frame {index}") for index, frame in enumerate(frames)]
        frames = iter(frames)
        try:
            first = next(frames)
        except StopIteration:
            raise UsageError("track() got no frames; pass the clip's frames in time order, the first one "
                             "annotated by first_mask") from None
        pixels = as_image(first, "frame 0")
        truth = as_mask(first_mask, "first mask", image_size(pixels))
        if not truth.any():
            raise InputError(_name(first_mask, "first mask"), "has no foreground pixels",
                             "the first frame's mask must show the object to follow")
        tracker = ClipTracker(self, pixels, truth)
        yield Prediction(mask=truth, confidence=1.0, prompts=Prompts(tracker.first_prompts, tracker.first_prompts))
        if self.cfg.track.engine == "sam2_video":
            steps = sam2_video_track(tracker, [pixels, *frames], truth)
        else:
            steps = (tracker.step(as_image(frame, f"frame {index}"), frame) for index, frame in enumerate(frames, 1))
        for prediction, info in steps:
            yield dataclasses.replace(prediction, track=info)


def as_image(value: ImageLike, name: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) of an image given as an array, a Pillow image or a file path."""
    if isinstance(value, (str, Path)):
        return read_image(value)
    if isinstance(value, Image.Image):
        return image_from_pil(value, name)
    if isinstance(value, np.ndarray):
        return image_from_array(value, name)
    raise InputError(name, f"is of type {type(value).__name__}", "pass a uint8 array (H, W, 3), a PIL image or a file path")


def as_mask(value: ImageLike, name: str, size: tuple) -> np.ndarray:
    """bool (H, W) of a mask given as an array, a Pillow image or a file path, for an image of ``size``
    (width, height)."""
    if isinstance(value, (str, Path)):
        return read_mask(value, expected_size=size)
    if isinstance(value, Image.Image):
        return mask_from_pil(value, name, size)
    if isinstance(value, np.ndarray):
        return mask_from_array(value, name, size)
    raise InputError(name, f"is of type {type(value).__name__}", "pass a bool array (H, W), a PIL image or a file path")


def _name(value, name: str):
    """The file of an input given as a path, else the argument's name (what an error names)."""
    return value if isinstance(value, (str, Path)) else name


def _count(value) -> int:
    return len(value) if isinstance(value, (list, tuple)) else 1

