"""Tiny randomly initialised models of the SAM family for CPU smoke runs (``benchmarks/gpu_check.py
--small``, the tests): each family's real prompt encoder and mask decoder behind a tiny image
encoder, built by the family's own classes and loaded through GPOA's own loaders like any
checkpoint. No weights exist or download; the masks are meaningless, the code path is the real one.

- ``sam`` and ``sam_hq``: a 2-block, 64-wide ViT image encoder (16 px patches, one global-attention
  block) at ``img_size`` px (256 by default: a 16 x 16 embedding grid), SAM's (or HQ-SAM's) real
  prompt encoder and mask decoder (256 wide, as in every size).
- ``sam2``: SAM 2.1's ``hiera_t`` config with a 5-block, 16-wide Hiera trunk and a 64-wide neck,
  hence a 64-wide prompt encoder and mask decoder, and a 64-wide memory path (one memory-attention
  layer, memory encoder and mask downsampler), so the same checkpoint also builds SAM 2's video
  predictor; at SAM 2's fixed 1024 px (its image predictor assumes 1024), built by
  ``sam2.build_sam.build_sam2`` through Hydra overrides.

:func:`register_tiny_model` adds a backend's tiny model to its registry in this process only, so
``segmenter.model_type`` can name it; :func:`save_random_segmenter` saves a random model of any
registered type to a checkpoint and returns the segmenter config that loads it.
"""

from __future__ import annotations

import importlib
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from gpoa.config import SegmenterConfig
from gpoa.segmenters.sam2 import SAM2_MODELS, Sam2Model

TINY_IMG_SIZE = 256
#: the tiny model's ``segmenter.model_type`` in each backend's registry
TINY_MODEL_TYPES = {"sam": "vit_tiny_random", "sam2": "hiera_tiny_random", "sam_hq": "vit_tiny_random"}
TINY_SAM2 = Sam2Model("configs/sam2.1/sam2.1_hiera_t.yaml", None, (
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    # one global-attention block, not a pooling one (q-pooling needs a window)
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.image_encoder.neck.d_model=64",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
    # the memory path at the model's own width (64), so that SAM 2's video predictor builds and runs
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.d_model=64",
    "++model.memory_attention.layer.d_model=64",
    "++model.memory_attention.layer.dim_feedforward=256",
    "++model.memory_attention.layer.self_attention.embedding_dim=64",
    "++model.memory_attention.layer.cross_attention.embedding_dim=64",
    "++model.memory_encoder.in_dim=64",
    "++model.memory_encoder.mask_downsampler.embed_dim=64",
    "++model.memory_encoder.fuser.layer.dim=64",
))


def build_tiny_sam(checkpoint: Optional[str] = None, img_size: int = TINY_IMG_SIZE, hq: bool = False) -> torch.nn.Module:
    """A tiny SAM (``hq``: HQ-SAM) with random weights (see the module docstring). ``checkpoint``
    is there for the registries' builder signature and must be ``None``: load a checkpoint
    through GPOA's loaders."""
    if checkpoint is not None:
        raise ValueError("the tiny SAM is built with random weights; load a checkpoint through gpoa's loaders")
    if hq:
        from gpoa.segmenters.sam_hq import import_sam_hq

        modeling = import_sam_hq().modeling
    else:
        modeling = importlib.import_module("segment_anything.modeling")
    prompt_dim, patch, width = 256, 16, 64
    grid = img_size // patch
    decoder = modeling.MaskDecoderHQ if hq else modeling.MaskDecoder
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(depth=2, embed_dim=width, img_size=img_size, mlp_ratio=4,
                                               norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2,
                                               patch_size=patch, qkv_bias=True, use_rel_pos=True,
                                               global_attn_indexes=(1,), window_size=8, out_chans=prompt_dim),
        prompt_encoder=modeling.PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                              input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=decoder(num_multimask_outputs=3,
                             transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048,
                                                                    num_heads=8),
                             transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
                             **({"vit_dim": width} if hq else {})),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def _registry(backend: str) -> dict:
    """The model registry of ``backend``: segment-anything's, segment-anything-hq's or GPOA's SAM 2 table."""
    if backend == "sam":
        return importlib.import_module("segment_anything").sam_model_registry
    if backend == "sam_hq":
        from gpoa.segmenters.sam_hq import import_sam_hq

        return import_sam_hq().sam_model_registry
    if backend == "sam2":
        return SAM2_MODELS
    raise ValueError(f"no model registry for segmenter backend '{backend}'; use sam, sam2 or sam_hq")


def register_tiny_model(backend: str) -> str:
    """Make the tiny model of ``backend`` a model type of its registry (this process only) → its name."""
    model_type = TINY_MODEL_TYPES[backend]
    tiny = TINY_SAM2 if backend == "sam2" else partial(build_tiny_sam, hq=backend == "sam_hq")
    _registry(backend).setdefault(model_type, tiny)
    return model_type


def build_random(backend: str, model_type: str) -> torch.nn.Module:
    """A randomly initialised model of ``model_type`` from ``backend``'s registry, on the CPU."""
    registry = _registry(backend)
    if model_type not in registry:
        raise ValueError(f"unknown {backend} model_type '{model_type}'; known: {', '.join(sorted(registry))}")
    if backend == "sam2":
        from sam2.build_sam import build_sam2

        spec = registry[model_type]
        return build_sam2(spec.config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(spec.overrides))
    return registry[model_type](checkpoint=None)


def save_random_segmenter(backend: str, model_type: str, folder: Path, seed: Optional[int] = None) -> SegmenterConfig:
    """A randomly initialised ``backend`` model of ``model_type`` saved to ``folder`` (once; SAM 2's
    state dict wrapped under ``model`` like its official files) → the segmenter config that loads
    it (the tiny model types are registered first). ``seed`` seeds the initialisation (the global
    torch generator's state is kept)."""
    if model_type == TINY_MODEL_TYPES.get(backend):
        register_tiny_model(backend)
    path = Path(folder) / f"{backend}_{model_type}_random.pth".replace("+", "plus")
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = build_random(backend, model_type)
        state = model.state_dict()
        torch.save({"model": state} if backend == "sam2" else state, path)
        del model
    return SegmenterConfig(backend=backend, model_type=model_type, checkpoint=str(path), multimask="single")
