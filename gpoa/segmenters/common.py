"""What the SAM-family backends (``sam``, ``sam2``, ``sam_hq``) share: reading a local checkpoint
safely, loading it strictly into the model it is meant for, and decoding many point-prompt sets in
batches grouped by size.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (tensors only, no code runs) and
must fit the model exactly: a missing, unexpected or misshapen key is an error naming the file, what
is wrong and how to fix it, never a model half made of random weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from gpoa.errors import UsageError
from gpoa.prompts import PointPrompts

#: the ``segmenter.sam_batching`` modes (see :func:`decode_by_size`)
BATCHING_CHOICES = ("exact", "pad")


def check_choice(key: str, value: str, choices: Sequence[str], lead: str = "use one of") -> None:
    """Raise :class:`UsageError` unless ``value`` (of config key ``segmenter.<key>``) is one of
    ``choices``; the message lists them after ``lead``."""
    if value not in choices:
        raise UsageError(f"unknown segmenter.{key} '{value}'; {lead} {', '.join(choices)}")


#: HQ-SAM's additions to SAM's mask decoder (the HQ output token, its MLP and the feature fusion
#: layers): an HQ-SAM state dict is SAM's plus keys under these prefixes
HQ_KEY_PREFIXES = ("mask_decoder.hf_token.", "mask_decoder.hf_mlp.", "mask_decoder.compress_vit_feat.",
                   "mask_decoder.embedding_encoder.", "mask_decoder.embedding_maskfeature.")


def is_hq_key(key: str) -> bool:
    """Whether a state-dict key belongs to HQ-SAM's decoder additions (:data:`HQ_KEY_PREFIXES`)."""
    return key.startswith(HQ_KEY_PREFIXES)


def download_hint(model_type: str, official: Optional[str], url: str) -> str:
    """The fix for a missing or unusable checkpoint: which official file to get, and from where."""
    if official:
        return f"download {official} (model_type {model_type}) from {url}"
    return f"provide a checkpoint for model_type {model_type}"


def read_state_dict(checkpoint: str, label: str, download: str) -> dict:
    """The state dict of tensors in the local file ``checkpoint``, read with ``weights_only=True``.

    Accepts a raw state dict or one wrapped under ``model`` (SAM 2's official files) or
    ``state_dict``. ``label`` names the model family in errors (``SAM``, ``SAM 2``, ``HQ-SAM``),
    ``download`` says how to get a good file (:func:`download_hint`). Raises :class:`UsageError` for
    a missing file, a file torch cannot read (corrupt, truncated, or holding Python objects that a
    weights-only load refuses) and one that holds no state dict of tensors.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise UsageError(f"{label} checkpoint '{path}' does not exist; {download} and put it there, or set "
                         f"segmenter.checkpoint to its path and segmenter.model_type to its type "
                         f"(or use segmenter.backend=classical, which needs no download)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors for bad files
        text = str(exc).strip()
        unsafe = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", text)
        if unsafe:
            raise UsageError(f"{label} checkpoint '{path}' holds Python objects besides tensors ({unsafe.group(1)}), "
                             f"which GPOA does not load (torch.load with weights_only=True refused them); "
                             f"{download}, or save only the model's state_dict()") from None
        # the weights-only unpickler's own reason, else the error's first line
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = reason.group(1) if reason else (text.splitlines()[0] if text else type(exc).__name__)
        raise UsageError(f"{label} checkpoint '{path}' is corrupt or not a PyTorch weights file ({reason}); "
                         f"{download} again") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{label} checkpoint '{path}' does not hold a state dict of tensors; {download}")
    return state


#: ``explain(missing, unexpected, mismatched)``: a sentence for a recognised kind of wrong file, or None
Explain = Callable[[list, list, list], Optional[str]]


def load_strict(model: torch.nn.Module, state: Mapping, checkpoint: str, label: str, model_type: str,
                download: str, explain: Optional[Explain] = None) -> torch.nn.Module:
    """Load ``state`` into ``model`` only if every key is there with the model's shape and no key is
    left over; otherwise raise one :class:`UsageError` naming the file, counts and an example of
    each problem, and the fix. ``explain`` may recognise a kind of wrong file (an original SAM
    checkpoint given to HQ-SAM, say) and say so instead. Returns ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        recognised = explain(missing, unexpected, mismatched) if explain is not None else None
        if recognised:
            raise UsageError(f"{label} checkpoint '{checkpoint}' {recognised}")
        problems = [f"{len(found)} {what} (e.g. {found[0]})" for what, found in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched))
                    if found]
        raise UsageError(f"{label} checkpoint '{checkpoint}' is incompatible with model_type '{model_type}': "
                         f"{', '.join(problems)}; set segmenter.model_type to the type the checkpoint was made "
                         f"for, or {download}")
    model.load_state_dict(state, strict=True)
    return model


#: ``decode_same_size(prompt_sets)``: G prompt sets of N > 0 points each, decoded in one batched
#: call → (masks bool (G, H, W), scores float32 (G,))
DecodeSameSize = Callable[[Sequence[PointPrompts]], tuple]


def decode_by_size(prompt_sets: Sequence[PointPrompts], original_size: tuple, decode_same_size: DecodeSameSize,
                   batching: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """The SAM-family ``decode``: one mask per prompt set, (masks bool (B, H, W) at ``original_size``
    = (H, W), scores float32 (B,)), from ``decode_same_size`` calls on groups of equal-size sets.

    An empty prompt set is not sent to the model: its mask is empty and its score 0.

    Why by size: every SAM family pads a prompt with its "not a point" label (-1), and that label
    is a learned token, not an ignored one: padding tokens take part in the decoder's attention and
    change the masks, so a padded set's mask would depend on the other sets in its batch. Grouped
    by size (``batching="exact"``), every set gets the mask the official predictor gives it alone
    (up to float rounding). ``batching="pad"`` makes one call for all sets instead, shorter ones
    padded with -1 (``segmenter.sam_batching``).
    """
    height, width = original_size
    masks = np.zeros((len(prompt_sets), height, width), dtype=bool)
    scores = np.zeros(len(prompt_sets), dtype=np.float32)
    by_size: dict = {}
    for b, prompts in enumerate(prompt_sets):
        if len(prompts):
            by_size.setdefault(len(prompts), []).append(b)
    if batching == "pad" and len(by_size) > 1:
        # one call for every size: shorter sets are padded with the "not a point" label -1
        longest = max(by_size)
        members = sorted(b for group in by_size.values() for b in group)
        padded = [PointPrompts(np.concatenate([prompt_sets[b].points, np.zeros((longest - len(prompt_sets[b]), 2))]),
                               np.concatenate([prompt_sets[b].labels, np.full(longest - len(prompt_sets[b]), -1)]))
                  for b in members]
        masks[members], scores[members] = decode_same_size(padded)
        return masks, scores
    for members in by_size.values():
        masks[members], scores[members] = decode_same_size([prompt_sets[b] for b in members])
    return masks, scores


def mask_choice(multimask: str, iou: torch.Tensor) -> torch.Tensor:
    """Index of the kept mask per prompt set, (G,) long: ``best`` the highest predicted IoU of
    ``iou`` (G, C), ``single`` 0, otherwise the fixed index ``multimask`` (``0``, ``1``, ``2``)."""
    if multimask == "best":
        return iou.argmax(dim=1)
    index = 0 if multimask == "single" else int(multimask)
    return torch.full((iou.shape[0],), index, dtype=torch.long, device=iou.device)


#: the logit given to a pixel whose mask-prompt probability is 0 or 1: SAM's ``mask_input`` is usually its
#: own previous low-resolution output, whose confident pixels have logits of about this size
MASK_PROMPT_LOGIT = 10.0


def mask_prompt_logits(probability: np.ndarray, scaled_size: tuple, low_res: int) -> np.ndarray:
    """A mask prompt (H, W) float in [0, 1] at the image's size as a SAM-family ``mask_input``: logits
    (low_res, low_res) float32 on the model's low-resolution mask grid (a quarter of its input
    side). ``scaled_size`` (h, w) is the image's size on that grid (SAM: its long side resized to
    the input side, the rest padded; SAM 2: stretched to the square); the padding is background.
    A probability p becomes log(p / (1 - p)), held within ±:data:`MASK_PROMPT_LOGIT`."""
    height, width = int(scaled_size[0]), int(scaled_size[1])
    small = cv2.resize(np.asarray(probability, dtype=np.float32), (width, height), interpolation=cv2.INTER_AREA)
    low = np.zeros((low_res, low_res), dtype=np.float32)
    low[:height, :width] = np.clip(small, 0.0, 1.0)
    eps = 1.0 / (1.0 + np.exp(MASK_PROMPT_LOGIT))
    low = np.clip(low, eps, 1.0 - eps)
    return np.log(low / (1.0 - low)).astype(np.float32)


class SizeGroupedDecoder:
    """The ``decode`` every SAM-family backend shares: :func:`decode_by_size` over the backend's own
    ``_decode_same_size(embedding, group)`` (G prompt sets of N > 0 points each → (bool (G, H, W),
    float32 (G,))), with ``self.cfg.sam_batching``. The embedding carries ``original_size`` (H, W)."""

    def decode(self, embedding, prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """One mask per prompt set: (masks bool (B, H, W) at the original size, scores float32 (B,)).

        Points are (x, y) original-image pixels, labels 1 = positive, 0 = negative. An empty
        prompt set is not sent to the model: its mask is empty and its score 0. Sets are batched
        by size (:func:`decode_by_size`).
        """
        return decode_by_size(prompt_sets, embedding.original_size,
                              lambda group: self._decode_same_size(embedding, group), self.cfg.sam_batching)
