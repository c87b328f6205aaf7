"""HQ-SAM (segment-anything-hq) behind the segmenter contract, from a local checkpoint; nothing downloads.

HQ-SAM is SAM with an extra output token in the mask decoder that also reads early ViT features
(the output of the image encoder's first global-attention block), for sharper masks from the same
prompts. The model comes from ``segment_anything_hq.sam_model_registry[model_type]`` (``vit_b``,
``vit_l``, ``vit_h``, ``vit_tiny``) and its weights from ``segmenter.checkpoint``, loaded strictly
with ``weights_only=True``. (segment-anything-hq's own builder loads with ``strict=False`` and
only prints what is missing, so an original SAM checkpoint would load with random HQ layers; here
it is refused with a message that says so.)

``embed`` runs the image encoder once (through :class:`segment_anything_hq.SamPredictor`) and keeps
the image embedding and the early features; ``decode`` runs the prompt encoder and the HQ mask
decoder on batches of prompt sets, grouped by size like SAM (every set gets the mask
``SamPredictor.predict`` gives it alone, up to float rounding).

HQ-SAM returns one mask per prompt set: ``segmenter.multimask=single`` is SAM's one-mask output
plus the HQ mask, ``best`` SAM's best multimask output (highest predicted IoU) plus the HQ mask;
``segmenter.hq_token_only`` keeps the HQ mask alone. The score is SAM's predicted IoU of the chosen
SAM mask, clamped to [0, 1].
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch

from gpoa.segmenters.common import check_choice, download_hint, is_hq_key, load_strict, read_state_dict
from gpoa.segmenters.sam import SamSegmenter

CHECKPOINT_URL = "https://github.com/SysCV/sam-hq#model-checkpoints"
#: the official checkpoint file of each model type in segment-anything-hq's registry
OFFICIAL_CHECKPOINTS = {
    "vit_b": "sam_hq_vit_b.pth",
    "vit_l": "sam_hq_vit_l.pth",
    "vit_h": "sam_hq_vit_h.pth",
    "vit_tiny": "sam_hq_vit_tiny.pth",
    "default": "sam_hq_vit_h.pth",
}
MULTIMASK_CHOICES = ("single", "best")


def import_sam_hq() -> ModuleType:
    """``segment_anything_hq``, imported without its import-time noise: it imports deprecated timm
    paths and re-registers timm's TinyViT names (warnings about both, nothing GPOA uses)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        return importlib.import_module("segment_anything_hq")


@dataclass(frozen=True)
class SamHqEmbedding:
    """One image encoded by HQ-SAM: SAM's embedding plus the early features HQ-SAM's decoder reads.

    ``features`` (1, 256, 64, 64): the image embedding. ``early_features`` (1, 64, 64, C): the
    image encoder's output after its first global-attention block (C = the encoder's width, 1024
    for vit_l, 160 for vit_tiny). ``original_size`` (H, W) of the image given to ``embed``;
    ``input_size`` (h, w) after ``ResizeLongestSide`` (long side 1024), before padding;
    ``mask_input`` the mask prompt's low-resolution logits or None (as :class:`SamEmbedding`'s).
    """

    features: torch.Tensor
    early_features: torch.Tensor
    original_size: tuple
    input_size: tuple
    mask_input: Optional[torch.Tensor] = None


class SamHqSegmenter(SamSegmenter):
    """segment-anything-hq's HQ-SAM from ``cfg.checkpoint`` (type ``cfg.model_type``) on ``device``.

    ``cfg.multimask``: ``single`` or ``best`` (see the module docstring); ``cfg.hq_token_only``:
    the HQ mask alone instead of SAM's mask plus the HQ mask (segment-anything-hq's default: off).
    """

    multimask_choices = MULTIMASK_CHOICES
    multimask_lead = "HQ-SAM returns one mask per prompt set: use"

    @staticmethod
    def _load(model_type: str, checkpoint: str) -> torch.nn.Module:
        return load_sam_hq(model_type, checkpoint)

    @staticmethod
    def _predictor(model: torch.nn.Module):
        return import_sam_hq().SamPredictor(model)

    def _embedding(self) -> SamHqEmbedding:
        predictor = self.predictor
        return SamHqEmbedding(features=predictor.features, original_size=tuple(predictor.original_size),
                              input_size=tuple(predictor.input_size), early_features=predictor.interm_features[0])

    def _mask_decoder(self, embedding: SamHqEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                      multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ-SAM's mask decoder on G prompt embeddings → (low-res mask logits (G, 1, 256, 256), IoU (G, 1))."""
        model = self.model
        return model.mask_decoder(image_embeddings=embedding.features, image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=multimask_output, hq_token_only=self.cfg.hq_token_only,
                                  interm_embeddings=[embedding.early_features])


def load_sam_hq(model_type: str, checkpoint: str) -> torch.nn.Module:
    """Build ``model_type`` from segment-anything-hq's registry and load the local ``checkpoint``
    strictly (see :func:`gpoa.segmenters.common.load_strict`); an original SAM checkpoint is
    recognised and refused. Returns the model on the CPU."""
    sam_hq = import_sam_hq()
    registry = sam_hq.sam_model_registry
    check_choice("model_type", model_type, sorted(registry), "segment-anything-hq knows")
    official = OFFICIAL_CHECKPOINTS.get(model_type)
    download = download_hint(model_type, official, CHECKPOINT_URL)

    def explain(missing: list, unexpected: list, mismatched: list) -> Optional[str]:
        if missing and not unexpected and not mismatched and all(is_hq_key(k) for k in missing):
            return (f"is an original SAM checkpoint, not an HQ-SAM one: it lacks the {len(missing)} HQ-SAM "
                    f"decoder weights (e.g. {missing[0]}), which would stay random; {download} for the "
                    f"sam_hq backend, or use this file with segmenter.backend=sam")
        return None

    state = read_state_dict(checkpoint, "HQ-SAM", download)
    return load_strict(registry[model_type](checkpoint=None), state, checkpoint, "HQ-SAM", model_type, download,
                       explain=explain)
