"""SAM 2.1 (Meta's ``sam2`` package) behind the segmenter contract, from a local checkpoint; nothing downloads.

The model is built by ``sam2.build_sam.build_sam2`` from the Hydra config that ships inside the
package (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``, picked by ``segmenter.model_type``:
``hiera_t``, ``hiera_s``, ``hiera_b+``, ``hiera_l``) with random weights on the CPU, then the local
``segmenter.checkpoint`` (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``) is loaded strictly with
``weights_only=True``. ``build_sam2``'s defaults are kept, among them its post-processing setting:
with a one-mask request, an unstable mask falls back to the best of the three multimask outputs,
exactly as ``SAM2ImagePredictor.predict(multimask_output=False)`` does.

``embed`` runs the image encoder once through :class:`sam2.sam2_image_predictor.SAM2ImagePredictor`
(the image is stretched to 1024 x 1024, no aspect preservation) and keeps its features; ``decode``
runs SAM 2's prompt encoder and mask decoder on batches of prompt sets against them, the body of
``SAM2ImagePredictor._predict`` for B prompt sets of one image. Sets are grouped by size like SAM's
(every set gets the mask the predictor gives it alone, up to float rounding). Masks are the
predictor's (logits > 0, bilinearly resized to the image; its optional hole filling, which needs
the CUDA extension, stays off); the score is SAM 2's predicted IoU in [0, 1].
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    load_strict,
    mask_choice,
    mask_prompt_logits,
    read_state_dict,
)

CHECKPOINT_URL = "https://github.com/facebookresearch/sam2#model-description"
MULTIMASK_CHOICES = ("single", "best", "0", "1", "2")


@dataclass(frozen=True)
class Sam2Model:
    """One SAM 2 model size: the Hydra ``config`` inside the sam2 package, the official checkpoint
    file name (``None`` for a model without one) and extra Hydra ``overrides`` of the config."""

    config: str
    checkpoint: Optional[str]
    overrides: tuple = field(default=())


#: ``segmenter.model_type`` → SAM 2.1 model (the names of SAM 2's config files)
SAM2_MODELS = {
    "hiera_t": Sam2Model("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "hiera_s": Sam2Model("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "hiera_b+": Sam2Model("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "hiera_l": Sam2Model("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}


#: the weights SAM 2.1 added to SAM 2.0 (a 2.0 checkpoint lacks exactly these)
SAM21_ONLY_KEYS = {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"}


@dataclass(frozen=True)
class Sam2Embedding:
    """One image encoded by SAM 2, as ``SAM2ImagePredictor.set_image`` leaves it.

    ``image_embed`` (1, 256, 64, 64) float tensor on the model's device: the image embedding (with
    SAM 2's "no memory" embedding added). ``high_res_feats``: the two finer feature maps the mask
    decoder reads, (1, 32, 256, 256) and (1, 64, 128, 128). ``original_size`` (H, W) of the image
    given to ``embed``. ``mask_input`` (1, 1, 256, 256) float logits or None: the mask prompt every
    decode adds (``with_mask_prompt``).
    """

    image_embed: torch.Tensor
    high_res_feats: tuple
    original_size: tuple
    mask_input: Optional[torch.Tensor] = None


class Sam2Segmenter(SizeGroupedDecoder):
    """SAM 2.1 of size ``cfg.model_type`` from ``cfg.checkpoint`` on ``device``.

    ``cfg.multimask`` picks the mask kept per prompt set: ``single`` (SAM 2's one-mask output, with
    its stability fallback), ``best`` (of the three multimask outputs, the highest predicted IoU)
    or ``0``, ``1``, ``2`` (a fixed multimask output).
    """

    def __init__(self, cfg: SegmenterConfig, device: str = "cpu"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        from sam2.utils.transforms import SAM2Transforms

        self.cfg = cfg
        check_choice("multimask", cfg.multimask, MULTIMASK_CHOICES)
        check_choice("sam_batching", cfg.sam_batching, BATCHING_CHOICES)
        self.device = torch.device(device)
        self.model = load_sam2(cfg.model_type, cfg.checkpoint).to(self.device).eval()
        with warnings.catch_warnings():  # SAM2Transforms scripts its resize with torch.jit, which torch deprecates
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            self.predictor = SAM2ImagePredictor(self.model)
            # the predictor's own prompt and mask transforms (same resolution and threshold)
            self.transforms = SAM2Transforms(resolution=self.model.image_size,
                                             mask_threshold=self.predictor.mask_threshold)

    def embed(self, image: np.ndarray) -> Sam2Embedding:
        """uint8 RGB image (H, W, 3) → its SAM 2 image embedding (one image-encoder pass)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        if not image.flags.writeable:  # torchvision's ToTensor warns about read-only arrays (cached images)
            image = image.copy()
        with torch.inference_mode():
            self.predictor.set_image(image)
            # SAM2ImagePredictor keeps its features only in this attribute (sam2 1.1.0)
            features = self.predictor._features
            embedding = Sam2Embedding(image_embed=features["image_embed"],
                                      high_res_feats=tuple(features["high_res_feats"]),
                                      original_size=tuple(image.shape[:2]))
        self.predictor.reset_predictor()
        return embedding

    def with_mask_prompt(self, embedding: Sam2Embedding, probability: np.ndarray) -> Sam2Embedding:
        """``embedding`` whose decodes are also prompted with the mask prompt ``probability`` (H, W) float
        in [0, 1] at the image's size, given to SAM 2 as its low-resolution ``mask_input`` (the image is
        stretched to the square, so is the prompt; what ``SAM2ImagePredictor.predict(mask_input=...)``
        takes). It replaces any mask prompt ``embedding`` had."""
        probability = check_mask_prompt(probability, embedding.original_size)
        low_res = self.model.sam_prompt_encoder.mask_input_size[0]
        logits = mask_prompt_logits(probability, (low_res, low_res), low_res)
        return dataclasses.replace(embedding, mask_input=torch.as_tensor(logits, device=self.device)[None, None])

    def _decode_same_size(self, embedding: Sam2Embedding,
                          prompt_sets: Sequence[PointPrompts]) -> tuple[np.ndarray, np.ndarray]:
        """G prompt sets of N > 0 points each, in one batched call → (bool (G, H, W), float32 (G,))."""
        model = self.model
        with torch.inference_mode():
            coords = torch.as_tensor(np.stack([p.points for p in prompt_sets]), dtype=torch.float, device=self.device)
            coords = self.transforms.transform_coords(coords, normalize=True, orig_hw=embedding.original_size)
            labels = torch.as_tensor(np.stack([p.labels for p in prompt_sets]), dtype=torch.int, device=self.device)
            sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=embedding.mask_input)
            low_res, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=embedding.image_embed, image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=self.cfg.multimask != "single",
                repeat_image=len(prompt_sets) > 1,  # the predictor's "batched mode": one image, G sets
                high_res_features=list(embedding.high_res_feats))
            choice = mask_choice(self.cfg.multimask, iou)
            rows = torch.arange(len(prompt_sets), device=self.device)
            logits = self.transforms.postprocess_masks(low_res[rows, choice][:, None], embedding.original_size)[:, 0]
            masks = (logits > self.predictor.mask_threshold).cpu().numpy()
            scores = iou[rows, choice].clamp(0.0, 1.0).float().cpu().numpy()
        return masks, scores


def load_sam2(model_type: str, checkpoint: str, video: bool = False) -> torch.nn.Module:
    """Build SAM 2.1 of ``model_type`` (:data:`SAM2_MODELS`) with ``sam2.build_sam.build_sam2`` (``video``:
    ``build_sam2_video_predictor``, the same weights behind SAM 2's video predictor) on the CPU and
    load the local ``checkpoint`` strictly (see :func:`gpoa.segmenters.common.load_strict`). Returns
    the model on the CPU, in eval mode."""
    check_choice("model_type", model_type, list(SAM2_MODELS), "SAM 2.1 has")
    spec = SAM2_MODELS[model_type]
    download = download_hint(model_type, spec.checkpoint, CHECKPOINT_URL)
    state = read_state_dict(checkpoint, "SAM 2", download)
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    def explain(missing: list, unexpected: list, mismatched: list) -> Optional[str]:
        if set(missing) == SAM21_ONLY_KEYS and not unexpected and not mismatched:
            return f"is a SAM 2.0 checkpoint (it lacks SAM 2.1's {', '.join(missing)}); GPOA builds SAM 2.1: {download}"
        return None

    build = build_sam2_video_predictor if video else build_sam2
    model = build(spec.config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(spec.overrides))
    return load_strict(model, state, checkpoint, "SAM 2", model_type, download, explain=explain)
