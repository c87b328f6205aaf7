"""SAM (segment-anything) behind the segmenter contract, from a local checkpoint; nothing downloads.

The model comes from ``segment_anything.sam_model_registry[model_type]`` and its weights from
``segmenter.checkpoint`` (loaded with ``weights_only=True``). ``embed`` runs the image encoder once
(through :class:`segment_anything.SamPredictor`); ``decode`` runs the prompt encoder and mask
decoder on batches of prompt sets against that embedding.

Batching: prompt sets with the same number of points share one prompt-encoder + mask-decoder
call (:func:`gpoa.segmenters.common.decode_by_size`, which says why sets are not padded into one
call), so every set gets exactly the mask ``SamPredictor.predict`` gives it alone (up to float
rounding). The checkpoint must fit the model exactly (:func:`gpoa.segmenters.common.load_strict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from gpoa.config import SegmenterConfig
from gpoa.prompts import PointPrompts
from gpoa.segmenters import check_mask_prompt
from gpoa.segmenters.common import (
    BATCHING_CHOICES,
    SizeGroupedDecoder,
    check_choice,
    download_hint,
    is_hq_key,
    load_strict,
    mask_choice,
    mask_prompt_logits,
    read_state_dict,
)

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
    after ``ResizeLongestSide`` (long side 1024), before padding to 1024 x 1024. ``mask_input``
    (1, 1, 256, 256) float logits or None: the mask prompt every decode adds (``with_mask_prompt``).
    """

    features: torch.Tensor
    original_size: tuple
    input_size: tuple
    mask_input: Optional[torch.Tensor] = None


class SamSegmenter(SizeGroupedDecoder):
    """segment-anything's SAM from ``cfg.checkpoint`` (type ``cfg.model_type``) on ``device``.

    ``cfg.multimask`` picks the mask kept per prompt set: ``single`` (SAM's one-mask output),
    ``best`` (of the three multimask outputs, the one with the highest predicted IoU) or ``0``,
    ``1``, ``2`` (a fixed multimask output). The score of a mask is its predicted IoU in [0, 1].

    HQ-SAM (:class:`gpoa.segmenters.sam_hq.SamHqSegmenter`) reuses this class: it overrides the
    loader, the predictor, the embedding and the mask-decoder call.
    """

    #: the values ``segmenter.multimask`` may take, and the words before them in the error for another
    multimask_choices: tuple = MULTIMASK_CHOICES
    multimask_lead: str = "use one of"

    def __init__(self, cfg: SegmenterConfig, device: str = "cpu"):
        self.cfg = cfg
        check_choice("multimask", cfg.multimask, self.multimask_choices, self.multimask_lead)
        check_choice("sam_batching", cfg.sam_batching, BATCHING_CHOICES)
        self.device = torch.device(device)
        self.model = self._load(cfg.model_type, cfg.checkpoint).to(self.device).eval()
        self.predictor = self._predictor(self.model)

    @staticmethod
    def _load(model_type: str, checkpoint: str) -> torch.nn.Module:
        return load_sam(model_type, checkpoint)

    @staticmethod
    def _predictor(model: torch.nn.Module):
        from segment_anything import SamPredictor

        return SamPredictor(model)

    def embed(self, image: np.ndarray) -> SamEmbedding:
        """uint8 RGB image (H, W, 3) → its SAM image embedding (one image-encoder pass)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        with torch.inference_mode():
            self.predictor.set_image(image, image_format="RGB")
            embedding = self._embedding()
        self.predictor.reset_image()
        return embedding

    def _embedding(self) -> SamEmbedding:
        """The embedding of the image the predictor holds."""
        return SamEmbedding(features=self.predictor.features, original_size=tuple(self.predictor.original_size),
                            input_size=tuple(self.predictor.input_size))

    def with_mask_prompt(self, embedding: SamEmbedding, probability: np.ndarray) -> SamEmbedding:
        """``embedding`` whose decodes are also prompted with the mask prompt ``probability`` (H, W) float
        in [0, 1] at the image's size, given to SAM as its low-resolution ``mask_input``
        (:func:`~gpoa.segmenters.common.mask_prompt_logits`; what ``SamPredictor.predict(mask_input=...)``
        takes). It replaces any mask prompt ``embedding`` had."""
        probability = check_mask_prompt(probability, embedding.original_size)
        low_res = self.model.prompt_encoder.mask_input_size[0]
        scale = low_res / self.model.image_encoder.img_size
        scaled = tuple(int(round(side * scale)) for side in embedding.input_size)
        logits = mask_prompt_logits(probability, scaled, low_res)
        return dataclasses.replace(embedding, mask_input=torch.as_tensor(logits, device=self.device)[None, None])

    def _decode_same_size(self, embedding: SamEmbedding,
                          prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """G prompt sets of N > 0 points each, in one batched call → (bool (G, H, W), float32 (G,))."""
        model = self.model
        coords = self.predictor.transform.apply_coords(np.stack([p.points for p in prompt_sets]),
                                                       embedding.original_size)
        labels = np.stack([p.labels for p in prompt_sets])
        with torch.inference_mode():
            points = (torch.as_tensor(coords, dtype=torch.float, device=self.device),
                      torch.as_tensor(labels, dtype=torch.int, device=self.device))
            sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=embedding.mask_input)
            low_res, iou = self._mask_decoder(embedding, sparse, dense, multimask_output=self.cfg.multimask != "single")
            choice = mask_choice(self.cfg.multimask, iou)
            rows = torch.arange(len(prompt_sets), device=self.device)
            logits = model.postprocess_masks(low_res[rows, choice][:, None], embedding.input_size,
                                             embedding.original_size)[:, 0]
            masks = (logits > model.mask_threshold).cpu().numpy()
            scores = iou[rows, choice].clamp(0.0, 1.0).float().cpu().numpy()
        return masks, scores

    def _mask_decoder(self, embedding: SamEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                      multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's mask decoder on G prompt embeddings → (low-res mask logits (G, C, 256, 256), IoU (G, C))."""
        model = self.model
        # the mask decoder repeats the (1, C, h, w) image embedding over the batch itself
        return model.mask_decoder(image_embeddings=embedding.features, image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=multimask_output)


def load_sam(model_type: str, checkpoint: str) -> torch.nn.Module:
    """Build ``model_type`` from segment-anything's registry and load the local ``checkpoint``.

    Accepts a raw state dict or one wrapped under ``model`` or ``state_dict``. Raises
    :class:`UsageError` for an unknown type, a missing file, an unreadable file or weights that do
    not fit the architecture (an HQ-SAM checkpoint is recognised and sent to ``sam_hq``). Returns
    the model on the CPU.
    """
    import segment_anything

    registry = segment_anything.sam_model_registry
    check_choice("model_type", model_type, sorted(registry), "segment-anything knows")
    download = download_hint(model_type, OFFICIAL_CHECKPOINTS.get(model_type), CHECKPOINT_URL)
    state = read_state_dict(checkpoint, "SAM", download)
    return load_strict(registry[model_type](checkpoint=None), state, checkpoint, "SAM", model_type, download,
                       explain=_explain_hq_checkpoint)


def _explain_hq_checkpoint(missing: list, unexpected: list, mismatched: list) -> Optional[str]:
    """An HQ-SAM checkpoint given to the SAM backend: SAM's keys plus HQ-SAM's decoder keys."""
    if unexpected and not missing and not mismatched and all(is_hq_key(k) for k in unexpected):
        return (f"is an HQ-SAM checkpoint ({len(unexpected)} HQ-SAM decoder weights, e.g. {unexpected[0]}, that "
                f"SAM does not have); set segmenter.backend=sam_hq to use it")
    return None
