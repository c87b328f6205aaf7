"""SAM (segment-anything) behind the segmenter contract, from a local checkpoint; nothing downloads.

The model comes from ``segment_anything.sam_model_registry[model_type]`` and its weights from
``segmenter.checkpoint`` (loaded with ``weights_only=True``). ``embed`` runs the image encoder once
(through :class:`segment_anything.SamPredictor`); ``decode`` runs the prompt encoder and mask
decoder on batches of prompt sets against that embedding.

Batching: prompt sets with the same number of points share one prompt-encoder + mask-decoder
call (one call per distinct size). Sets of different sizes are not padded into one call because
SAM's "not a point" label (-1) is a learned token, not an ignored one: extra padding tokens take
part in the decoder's attention and change the masks, so a set's mask would depend on the other
sets in its batch. Grouped this way every set gets exactly the mask ``SamPredictor.predict`` gives
it alone (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpoa.config import SegmenterConfig
from gpoa.errors import UsageError
from gpoa.prompts import PointPrompts

CHECKPOINT_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
#: the official checkpoint file of each model type in segment-anything's registry
OFFICIAL_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "default": "sam_vit_h_4b8939.pth",
}
MULTIMASK_CHOICES = ("single", "best", "0", "1", "2")


@dataclass(frozen=True)
class SamEmbedding:
    """One image encoded by SAM.

    ``features`` (1, 256, 64, 64) float tensor on the model's device: the image embedding.
    ``original_size`` (H, W) of the image given to ``embed``; ``input_size`` (h, w) of the image
    after ``ResizeLongestSide`` (long side 1024), before padding to 1024 x 1024.
    """

    features: torch.Tensor
    original_size: tuple
    input_size: tuple


class SamSegmenter:
    """segment-anything's SAM from ``cfg.checkpoint`` (type ``cfg.model_type``) on ``device``.

    ``cfg.multimask`` picks the mask kept per prompt set: ``single`` (SAM's one-mask output),
    ``best`` (of the three multimask outputs, the one with the highest predicted IoU) or ``0``,
    ``1``, ``2`` (a fixed multimask output). The score of a mask is its predicted IoU in [0, 1].
    """

    def __init__(self, cfg: SegmenterConfig, device: str = "cpu"):
        from segment_anything import SamPredictor

        self.cfg = cfg
        if cfg.multimask not in MULTIMASK_CHOICES:
            raise UsageError(f"unknown segmenter.multimask '{cfg.multimask}'; use one of "
                             f"{', '.join(MULTIMASK_CHOICES)}")
        if cfg.sam_batching not in ("exact", "pad"):
            raise UsageError(f"unknown segmenter.sam_batching '{cfg.sam_batching}'; use 'exact' or 'pad'")
        self.device = torch.device(device)
        self.model = load_sam(cfg.model_type, cfg.checkpoint).to(self.device).eval()
        self.predictor = SamPredictor(self.model)

    def embed(self, image: np.ndarray) -> SamEmbedding:
        """uint8 RGB image (H, W, 3) → its SAM image embedding (one image-encoder pass)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        with torch.inference_mode():
            self.predictor.set_image(image, image_format="RGB")
            embedding = SamEmbedding(features=self.predictor.features,
                                     original_size=tuple(self.predictor.original_size),
                                     input_size=tuple(self.predictor.input_size))
        self.predictor.reset_image()
        return embedding

    def decode(self, embedding: SamEmbedding,
               prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """One mask per prompt set: (masks bool (B, H, W) at the original size, scores float32 (B,)).

        Points are (x, y) original-image pixels, labels 1 = positive, 0 = negative. An empty
        prompt set is not sent to the model: its mask is empty and its score 0.
        """
        height, width = embedding.original_size
        masks = np.zeros((len(prompt_sets), height, width), dtype=bool)
        scores = np.zeros(len(prompt_sets), dtype=np.float32)
        by_size: dict = {}
        for b, prompts in enumerate(prompt_sets):
            if len(prompts):
                by_size.setdefault(len(prompts), []).append(b)
        if self.cfg.sam_batching == "pad" and len(by_size) > 1:
            # one call for every size: shorter sets are padded with SAM's "not a point" label -1
            longest = max(by_size)
            members = sorted(b for group in by_size.values() for b in group)
            padded = [PointPrompts(np.concatenate([prompt_sets[b].points, np.zeros((longest - len(prompt_sets[b]), 2))]),
                                   np.concatenate([prompt_sets[b].labels, np.full(longest - len(prompt_sets[b]), -1)]))
                      for b in members]
            masks[members], scores[members] = self._decode_same_size(embedding, padded)
            return masks, scores
        for members in by_size.values():
            group_masks, group_scores = self._decode_same_size(embedding, [prompt_sets[b] for b in members])
            masks[members] = group_masks
            scores[members] = group_scores
        return masks, scores

    def _decode_same_size(self, embedding: SamEmbedding,
                          prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """G prompt sets of N > 0 points each, in one batched call → (bool (G, H, W), float32 (G,))."""
        model = self.model
        coords = self.predictor.transform.apply_coords(np.stack([p.points for p in prompt_sets]),
                                                       embedding.original_size)
        labels = np.stack([p.labels for p in prompt_sets])
        multimask_output = self.cfg.multimask != "single"
        with torch.inference_mode():
            points = (torch.as_tensor(coords, dtype=torch.float, device=self.device),
                      torch.as_tensor(labels, dtype=torch.int, device=self.device))
            sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
            # the mask decoder repeats the (1, C, h, w) image embedding over the batch itself
            low_res, iou = model.mask_decoder(image_embeddings=embedding.features,
                                              image_pe=model.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse,
                                              dense_prompt_embeddings=dense,
                                              multimask_output=multimask_output)
            if self.cfg.multimask == "best":
                choice = iou.argmax(dim=1)
            else:
                index = 0 if self.cfg.multimask == "single" else int(self.cfg.multimask)
                choice = torch.full((len(prompt_sets),), index, dtype=torch.long, device=self.device)
            rows = torch.arange(len(prompt_sets), device=self.device)
            logits = model.postprocess_masks(low_res[rows, choice][:, None], embedding.input_size,
                                             embedding.original_size)[:, 0]
            masks = (logits > model.mask_threshold).cpu().numpy()
            scores = iou[rows, choice].clamp(0.0, 1.0).float().cpu().numpy()
        return masks, scores


def load_sam(model_type: str, checkpoint: str) -> torch.nn.Module:
    """Build ``model_type`` from segment-anything's registry and load the local ``checkpoint``.

    Accepts a raw state dict or one wrapped under ``model`` or ``state_dict``. Raises
    :class:`UsageError` for an unknown type, a missing file, an unreadable file or weights that do
    not fit the architecture. Returns the model on the CPU.
    """
    import segment_anything

    registry = segment_anything.sam_model_registry
    if model_type not in registry:
        raise UsageError(f"unknown segmenter.model_type '{model_type}'; segment-anything knows "
                         f"{', '.join(sorted(registry))}")
    path = Path(checkpoint)
    official = OFFICIAL_CHECKPOINTS.get(model_type)
    download = (f"download {official} (model_type {model_type}) from {CHECKPOINT_URL}" if official
                else f"provide a checkpoint for model_type {model_type}")
    if not path.is_file():
        raise UsageError(f"SAM checkpoint '{path}' does not exist; {download} and put it there, or set "
                         f"segmenter.checkpoint to its path and segmenter.model_type to its type "
                         f"(or use segmenter.backend=classical, which needs no download)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"SAM checkpoint '{path}' is corrupt or not a PyTorch weights file ({reason}); "
                         f"{download} again") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"SAM checkpoint '{path}' does not hold a state dict of tensors; {download}")

    model = registry[model_type](checkpoint=None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = [f"{len(found)} {what} (e.g. {found[0]})" for what, found in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched))
                    if found]
        raise UsageError(f"SAM checkpoint '{path}' is incompatible with model_type '{model_type}': "
                         f"{', '.join(problems)}; set segmenter.model_type to the type the checkpoint was "
                         f"made for, or {download}")
    model.load_state_dict(state)
    return model
