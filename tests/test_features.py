"""Patch-feature extractors: the handcrafted default's contract and behaviour, and the DINOv2
loader on tiny randomly initialised ViT-S/14 checkpoints in Meta's and timm's formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpoa.config import Config, FeaturesConfig
from gpoa.errors import UsageError
from gpoa.features import FeatureExtractor, build_feature_extractor, feature_cache_key
from gpoa.features.handcrafted import DIM, HandcraftedExtractor

# ----- handcrafted ---------------------------------------------------------------------------------


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB (height, width, 3): smooth colour gradients, stripes and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([xx / width * 200, yy / height * 200, 128 + 60 * np.sin(xx / 7.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def stripes_and_speckle(size: int = 560, seed: int = 0) -> np.ndarray:
    """Gray image as RGB: vertical stripes (period 6 px) on the left half, random speckle on the
    right half, both with the same two gray levels in equal shares (same mean and spread)."""
    rng = np.random.default_rng(seed)
    gray = np.empty((size, size), dtype=np.uint8)
    half = size // 2
    gray[:, :half] = np.where((np.arange(half) // 3) % 2 == 0, 60, 196)[None, :]
    gray[:, half:] = np.where(rng.random((size, size - half)) < 0.5, 60, 196)
    return np.repeat(gray[:, :, None], 3, axis=2)


def test_handcrafted_contract_on_non_square_input():
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=560, patch_size=14))
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.grid.rows, extractor.grid.cols) == (40, 40)
    assert extractor.cache_key == feature_cache_key(FeaturesConfig(working_size=560, patch_size=14))
    features = extractor.extract(textured_image(300, 470))
    assert features.shape == (40, 40, DIM)
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)


def test_handcrafted_is_deterministic_and_shape_does_not_depend_on_input_size():
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=280, patch_size=14))
    image = textured_image(333, 211, seed=3)
    np.testing.assert_array_equal(extractor.extract(image), extractor.extract(image.copy()))
    for height, width in [(20, 20), (100, 900), (1000, 150), (280, 280), (613, 1024)]:
        assert extractor.extract(textured_image(height, width)).shape == (20, 20, DIM)


def test_handcrafted_accepts_gray_images():
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=280, patch_size=14))
    gray = textured_image(200, 260)[:, :, 0]
    as_rgb = extractor.extract(np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(extractor.extract(gray), as_rgb)
    np.testing.assert_allclose(np.linalg.norm(as_rgb, axis=-1), 1.0, atol=1e-5)


def test_handcrafted_constant_image_gives_finite_unit_features():
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=280, patch_size=14))
    for value in (0, 128, 255):
        features = extractor.extract(np.full((90, 120, 3), value, dtype=np.uint8))
        assert np.all(np.isfinite(features))
        np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)


def test_handcrafted_same_texture_is_closer_than_other_texture_of_equal_mean():
    image = stripes_and_speckle()
    assert image[:, :280].mean() == pytest.approx(image[:, 280:].mean(), rel=0.02)
    features = HandcraftedExtractor(FeaturesConfig(working_size=560, patch_size=14)).extract(image)
    # interior patches of each half (two columns away from the border between the halves)
    stripes = features[2:38, 2:18].reshape(-1, DIM)
    speckle = features[2:38, 22:38].reshape(-1, DIM)
    across = (stripes @ speckle.T).max()
    assert (stripes @ stripes.T).min() > across
    assert (speckle @ speckle.T).min() > across


def test_handcrafted_features_are_comparable_across_images():
    """Fixed standardisation: a patch's features do not depend on the rest of its image."""
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=560, patch_size=14))
    image = stripes_and_speckle()
    other = image.copy()
    other[:, 280:] = 255  # replace the speckle half with white: the stripes' statistics stay put
    a, b = extractor.extract(image), extractor.extract(other)
    np.testing.assert_allclose(a[:, :18], b[:, :18], atol=1e-6)
    assert not np.allclose(a[:, 22:], b[:, 22:])


def test_handcrafted_separates_natural_textures():
    """Bundled scikit-image textures: every patch's nearest neighbour in another image of the
    same three textures (the other half of each photo) is mostly of its own texture."""
    import cv2
    from skimage import data

    textures = [data.brick(), data.grass(), data.gravel()]
    left = np.concatenate([cv2.resize(t[:, :256], (140, 420)) for t in textures], axis=1)
    right = np.concatenate([cv2.resize(t[:, 256:], (140, 420)) for t in textures], axis=1)
    extractor = HandcraftedExtractor(FeaturesConfig(working_size=420, patch_size=14))
    a = extractor.extract(left).reshape(-1, DIM)
    b = extractor.extract(right).reshape(-1, DIM)
    labels = np.tile(np.repeat(np.arange(3), 10), 30)
    nearest = (a @ b.T).argmax(axis=1)
    assert (labels[nearest] == labels).mean() > 0.8


def test_build_feature_extractor_default_is_handcrafted():
    extractor = build_feature_extractor(Config())
    assert isinstance(extractor, HandcraftedExtractor)


# ----- DINOv2 loader -------------------------------------------------------------------------------

MODEL = "vit_small_patch14_dinov2"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_dinov2_state(seed: int) -> dict:
    """State dict of a randomly initialised ViT-S/14 at 518 px (the resolution of Meta's files).

    Layer scales are raised from timm's 1e-5 so that every block visibly shapes the output.
    """
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False, img_size=518, num_classes=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".gamma"):
                parameter.uniform_(0.2, 0.6)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def timm_state() -> dict:
    return random_dinov2_state(seed=0)


@pytest.fixture(scope="module")
def reference_features(timm_state) -> tuple[np.ndarray, np.ndarray]:
    """(image, features (20, 20, 384)) of timm's own model at 280 px with the same weights."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(MODEL, pretrained=False, img_size=280, num_classes=0).eval()
    model.load_state_dict(checkpoint_filter_fn(dict(timm_state), model), strict=True)
    image = textured_image(280, 280, seed=7)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
    with torch.no_grad():
        tokens = model.forward_features(x)[0, model.num_prefix_tokens:]
    tokens = torch.nn.functional.normalize(tokens, dim=-1).reshape(20, 20, -1)
    return image, tokens.numpy()


def dinov2_config(checkpoint, model: str = MODEL, working_size: int = 280) -> FeaturesConfig:
    return FeaturesConfig(backend="dinov2", model=model, checkpoint=str(checkpoint),
                          working_size=working_size, patch_size=14)


def save_checkpoint(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("fmt", ["timm-pth", "meta-pth", "timm-safetensors", "wrapped-teacher"])
def test_dinov2_loads_checkpoint_formats(tmp_path, timm_state, reference_features, fmt):
    from gpoa.features.dinov2 import DinoV2Extractor

    state = dict(timm_state)
    if fmt == "meta-pth":  # Meta's dinov2_vits14_pretrain.pth also holds the (1, D) iBOT mask token
        state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if fmt == "wrapped-teacher":  # a DINOv2 training checkpoint: teacher backbone, DDP prefix, a head
        state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
        backbone = {f"module.backbone.{k}": v for k, v in state.items()}
        state = {"teacher": {**backbone, "module.dino_head.last_layer.weight": torch.zeros(8, 4)}}
    path = tmp_path / ("weights.safetensors" if fmt == "timm-safetensors" else "weights.pth")
    save_checkpoint(state, path)

    extractor = DinoV2Extractor(dinov2_config(path), device="cpu")
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.cache_key == feature_cache_key(dinov2_config(path))
    image, expected = reference_features
    features = extractor.extract(image)
    assert features.shape == (20, 20, 384)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(features, expected, atol=1e-4)


def test_dinov2_weights_are_really_used(tmp_path, reference_features):
    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / "other.pth"
    torch.save(random_dinov2_state(seed=1), path)
    image, seed0_features = reference_features
    features = DinoV2Extractor(dinov2_config(path), device="cpu").extract(image)
    similarity = (features * seed0_features).sum(-1)
    assert similarity.mean() < 0.9


def test_dinov2_missing_checkpoint_names_path_and_download(tmp_path):
    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / "checkpoints" / "dinov2_vitl14_pretrain.pth"
    with pytest.raises(UsageError) as info:
        DinoV2Extractor(dinov2_config(path, model="vit_large_patch14_dinov2"), device="cpu")
    message = str(info.value)
    assert str(path) in message
    assert "dinov2_vitl14_pretrain.pth" in message
    assert "https://github.com/facebookresearch/dinov2" in message
    assert "features.checkpoint" in message and "features.model" in message


def test_dinov2_missing_checkpoint_through_build_feature_extractor(tmp_path):
    cfg = Config()
    cfg.features = dinov2_config(tmp_path / "absent.pth", model="vit_small_patch14_dinov2")
    with pytest.raises(UsageError, match="dinov2_vits14_pretrain.pth"):
        build_feature_extractor(cfg)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_dinov2_corrupt_checkpoint(tmp_path, suffix):
    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / f"broken{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UsageError, match="corrupt"):
        DinoV2Extractor(dinov2_config(path), device="cpu")


def test_dinov2_truncated_download(tmp_path, timm_state):
    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(timm_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError, match="corrupt"):
        DinoV2Extractor(dinov2_config(path), device="cpu")


def test_dinov2_checkpoint_with_pickled_objects(tmp_path, timm_state):
    import argparse

    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / "training.pth"
    torch.save({"model": timm_state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UsageError, match="save only the weights"):
        DinoV2Extractor(dinov2_config(path), device="cpu")


def test_dinov2_checkpoint_of_another_architecture(tmp_path, timm_state):
    from gpoa.features.dinov2 import DinoV2Extractor

    state = {k: v for k, v in timm_state.items() if not k.startswith("blocks.11.")}
    state["head.weight"] = torch.zeros(10, 384)
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    with pytest.raises(UsageError) as info:
        DinoV2Extractor(dinov2_config(path), device="cpu")
    message = str(info.value)
    assert "does not match" in message
    assert "blocks.11." in message and "head.weight" in message


def test_dinov2_unknown_model_and_wrong_patch_size(tmp_path, timm_state):
    from gpoa.features.dinov2 import DinoV2Extractor

    path = tmp_path / "weights.pth"
    torch.save(timm_state, path)
    with pytest.raises(UsageError, match="unknown timm model"):
        DinoV2Extractor(dinov2_config(path, model="vit_tiny_patch14_dinov3000"), device="cpu")
    with pytest.raises(UsageError, match="patch"):
        DinoV2Extractor(dinov2_config(path, model="vit_tiny_patch16_224", working_size=224), device="cpu")
