"""DINOv2 patch features through timm, from a local checkpoint (never downloaded at run time).

The timm model is created at the working size (``img_size = working_size``), so its grid is the
config's patch grid. Checkpoints in Meta's original format (``dinov2_vit?14_pretrain.pth``: a
``mask_token``, 518 px position embeddings, ``mlp.w12``/``w3`` for ViT-g) and in timm's format
(``.pth``/``.pt`` or ``.safetensors``) are converted by timm's own
``vision_transformer.checkpoint_filter_fn``, which also resamples the position embeddings to the
working size; the result must then match the model exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gpoa.config import FeaturesConfig
from gpoa.errors import UsageError
from gpoa.features.keys import feature_cache_key
from gpoa.grid import PatchGrid

DOWNLOAD_PAGE = "https://github.com/facebookresearch/dinov2#pretrained-models"
#: ImageNet normalisation DINOv2 was trained with (RGB in 0..1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm model size → the letter of Meta's checkpoint file (dinov2_vit{letter}14[_reg4]_pretrain.pth)
_SIZE_LETTERS = {"small": "s", "base": "b", "large": "l", "giant": "g"}
#: keys of a wrapping dictionary (training checkpoints, Lightning, ...) that hold the weights
_WRAPPER_KEYS = ("model", "state_dict", "teacher")
_STRIP_PREFIXES = ("module.", "backbone.")


def official_checkpoint_name(model_name: str) -> Optional[str]:
    """Meta's file name for a timm DINOv2 model name, e.g. ``vit_large_patch14_dinov2`` →
    ``dinov2_vitl14_pretrain.pth``; ``None`` for models that are not DINOv2."""
    match = re.fullmatch(r"vit_(small|base|large|giant)_patch14_(reg4_)?dinov2(\..*)?", model_name)
    if match is None:
        return None
    registers = "_reg4" if match.group(2) else ""
    return f"dinov2_vit{_SIZE_LETTERS[match.group(1)]}14{registers}_pretrain.pth"


def _missing_checkpoint_message(path: Path, model_name: str) -> str:
    official = official_checkpoint_name(model_name)
    download = (f"download {official} from {DOWNLOAD_PAGE} and save it there"
                if official else f"save the weights of timm model '{model_name}' there")
    return (f"DINOv2 checkpoint '{path}' does not exist; {download}, or point features.checkpoint at "
            f"your copy (and features.model at its architecture: vit_small/base/large/giant_patch14_dinov2 "
            f"for dinov2_vits14/vitb14/vitl14/vitg14_pretrain.pth); features.backend=handcrafted needs no "
            f"download")


def _check_model_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        raise UsageError(f"unknown timm model features.model='{model_name}'; DINOv2 models are "
                         f"{', '.join(timm.list_models('*dinov2'))}")


def _create_model(cfg: FeaturesConfig) -> torch.nn.Module:
    """The timm ViT named by ``cfg.model`` at the working size, no head, its tensors on the ``meta``
    device (shapes only: the checkpoint supplies every value, so nothing is initialised in vain)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(cfg.model, pretrained=False, img_size=cfg.working_size, num_classes=0)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise UsageError(f"timm cannot build features.model='{cfg.model}' at "
                         f"features.working_size={cfg.working_size}: {exc}") from None
    if not isinstance(model, VisionTransformer):
        raise UsageError(f"features.model='{cfg.model}' is not a timm VisionTransformer; the dinov2 backend "
                         f"needs one, e.g. vit_large_patch14_dinov2")
    model_patch = tuple(model.patch_embed.patch_size)
    if model_patch != (cfg.patch_size, cfg.patch_size):
        raise UsageError(f"features.model='{cfg.model}' has {model_patch[0]}x{model_patch[1]} px patches but "
                         f"features.patch_size={cfg.patch_size}; set features.patch_size={model_patch[0]} "
                         f"(and a features.working_size divisible by it)")
    return model


def _read_state_dict(path: Path) -> dict:
    """Checkpoint file → flat {name: tensor}, unwrapped from training wrappers, prefixes stripped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the file is not a usable checkpoint
        text = str(exc)
        # torch wraps the real reason of a weights-only failure in a long explanation
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip()
        reason = reason.splitlines()[0].split(". ")[0] if reason else type(exc).__name__
        if "Unsupported global" in reason:
            raise UsageError(
                f"DINOv2 checkpoint '{path}' holds pickled Python objects besides tensors ({reason}), "
                f"which GPOA does not unpickle; save only the weights, e.g. "
                f"torch.save(checkpoint['model'], 'weights.pth'), and point features.checkpoint at "
                f"that file") from None
        raise UsageError(f"DINOv2 checkpoint '{path}' cannot be read ({reason}); it is corrupt or not a "
                         f"PyTorch (.pth/.pt) or safetensors file — download it again") from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UsageError(f"DINOv2 checkpoint '{path}' does not hold a state dict of named tensors; "
                         f"expected Meta's dinov2_*_pretrain.pth or a timm state dict")
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # Meta's training checkpoints chunk the blocks (blocks.<chunk>.<block>.*); block indices are global
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def load_dinov2_state(model: torch.nn.Module, state: dict, path: Path, model_name: str) -> None:
    """Convert a state dict read from ``path`` (Meta's or timm's format) with timm's
    ``checkpoint_filter_fn`` and load it into the timm ``model`` strictly, its tensors replacing the
    model's (``meta`` or real) ones; every value ends up float32."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    mismatch = f"DINOv2 checkpoint '{path}' does not match features.model='{model_name}'"
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:  # conversion fails on tensors of unexpected rank or size
        raise UsageError(f"{mismatch}: conversion failed ({exc}); set features.model to the checkpoint's "
                         f"architecture") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label} ({len(keys)}): {', '.join(keys[:5])}" for label, keys in
                            (("missing keys", missing), ("unexpected keys", unexpected),
                             ("wrong shapes", wrong_shape)) if keys)
        hint = official_checkpoint_name(model_name)
        raise UsageError(f"{mismatch} — {details}. Set features.model to the checkpoint's architecture"
                         + (f" ({hint} is the file for {model_name})" if hint else ""))
    model.load_state_dict(state, strict=True, assign=True)
    model.float()
    unset = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if unset:
        raise UsageError(f"features.model='{model_name}' has tensors no checkpoint sets "
                         f"({', '.join(unset[:5])}); use a vit_*_patch14_dinov2 model")


class DinoV2Extractor:
    """DINOv2 patch tokens on a square working image.

    ``extract(image)``: uint8 RGB (H, W, 3) of any size → float32 (rows, cols, D), D the model's
    embedding width (384 / 768 / 1024 / 1536 for ViT-S/B/L/g), every patch vector of unit L2 norm.
    The model stays on ``device`` (``cpu``, ``mps``, ``cuda`` or ``cuda:N``).
    """

    def __init__(self, cfg: FeaturesConfig, device: str):
        self.grid = PatchGrid.square(cfg.working_size, cfg.patch_size)
        self.cache_key = feature_cache_key(cfg)
        self.device = torch.device(device)
        _check_model_name(cfg.model)
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise UsageError(_missing_checkpoint_message(path, cfg.model))
        state = _read_state_dict(path)
        model = _create_model(cfg)
        load_dinov2_state(model, state, path, cfg.model)
        self.model = model.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def extract(self, image: np.ndarray) -> np.ndarray:
        working = self.grid.resize_to_working(image)
        with torch.inference_mode():
            x = torch.tensor(working, device=self.device).permute(2, 0, 1)[None].float() / 255.0
            x = (x - self._mean) / self._std
            tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
            patches = tokens.reshape(self.grid.rows, self.grid.cols, -1)
            patches = torch.nn.functional.normalize(patches.float(), dim=-1)
            return patches.cpu().numpy().astype(np.float32, copy=False)
