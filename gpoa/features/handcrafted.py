"""Handcrafted patch features: the embedded default, no download, ~tens of ms per image on one core.

Every patch of the working image is described by its colour and texture:

===============  ====  ==================================================================
group            dims  what
===============  ====  ==================================================================
lab_mean           3   mean CIE L*, a*, b* (L* in 0..100, a*/b* in about -128..127)
lab_std            3   standard deviation of L*, a*, b* inside the patch
energy             3   mean gradient magnitude of L* (L* units per pixel), mean absolute
                       fine band (L* minus its Gaussian blur, sigma 1 px) and coarse band
                       (difference of Gaussians, sigma 1 px and 3 px)
structure          2   orientation coherence of the structure tensor (0: isotropic,
                       1: one orientation) and skewness of L*
extremes           2   share of dark (L* < 25) and bright (L* > 75) pixels
orientation        8   gradient-orientation histogram, unsigned (0..180 deg), magnitude
                       weighted, soft-binned, divided by the patch's gradient mass plus a
                       floor so that flat patches have an empty histogram
===============  ====  ==================================================================

These 21 *local* descriptors are followed by the same 21 averaged over the 3x3 patch
neighbourhood (*context*: patches at the image border average their existing neighbours), and a
constant last dimension. The magnitudes (lab_std, energy) are compressed with ``log1p``; every
dimension is standardised with FIXED constants (:data:`DESCRIPTOR_OFFSET`,
:data:`DESCRIPTOR_SCALE`), never with statistics of the image at hand, so features of different
images are comparable, then weighted per group (:data:`DESCRIPTOR_WEIGHT`). The constant dimension
keeps nearly-zero vectors (average-looking, flat patches) from turning into arbitrary directions
when each vector is L2-normalised: two such patches stay similar.
"""

from __future__ import annotations

import cv2
import numpy as np

from gpoa.config import FeaturesConfig
from gpoa.features.keys import feature_cache_key
from gpoa.grid import PatchGrid

ORIENTATION_BINS = 8
#: L* thresholds of the dark and bright pixel shares
DARK_L, BRIGHT_L = 25.0, 75.0
#: Gaussian scales (working-image pixels) of the fine and coarse texture bands
FINE_SIGMA, COARSE_SIGMA = 1.0, 3.0
#: L* units (per pixel): the noise floor of magnitudes before ``log1p`` compression
MAGNITUDE_FLOOR = 1.0
#: gradient mass (L* units per pixel, per pixel) a patch needs before its histogram counts fully
ORIENTATION_FLOOR = 1.0
#: structure-tensor energy floor ((L* units per pixel)^2) below which coherence tends to 0
COHERENCE_FLOOR = 1.0
#: value of the constant last dimension, relative to standardised descriptors of unit spread
BIAS = 1.0

# Fixed standardisation constants, one per local descriptor: (value - offset) / scale. Colour
# offsets are neutral mid-grey; the other offsets and scales are the mean and standard deviation
# measured once over scikit-image's bundled sample images at 560 px (after ``log1p``), rounded.
DESCRIPTOR_OFFSET = np.array(
    [50.0, 0.0, 0.0,  # lab_mean
     1.4, 0.3, 0.3,  # lab_std (log1p)
     0.9, 0.6, 0.8,  # energy (log1p)
     0.3, 0.0,  # structure
     0.15, 0.15]  # extremes
    + [0.06] * ORIENTATION_BINS,  # orientation
    dtype=np.float32,
)
DESCRIPTOR_SCALE = np.array(
    [25.0, 15.0, 15.0,
     1.0, 0.7, 0.7,
     0.7, 0.55, 0.7,
     0.3, 1.3,
     0.35, 0.35]
    + [0.07] * ORIENTATION_BINS,
    dtype=np.float32,
)
# Weight of each local descriptor after standardisation: a group's weight w is spread over its n
# dimensions as w / sqrt(n), so its share of the squared norm does not grow with n (the 8
# histogram bins do not outvote the 3 colour means).
_GROUP_SIZES = {"lab_mean": 3, "lab_std": 3, "energy": 3, "structure": 2, "extremes": 2,
                "orientation": ORIENTATION_BINS}
_GROUP_WEIGHTS = {"lab_mean": 1.6, "lab_std": 1.4, "energy": 1.6, "structure": 1.2, "extremes": 0.8,
                  "orientation": 1.2}
DESCRIPTOR_WEIGHT = np.concatenate(
    [np.full(n, _GROUP_WEIGHTS[g] / np.sqrt(n), dtype=np.float32) for g, n in _GROUP_SIZES.items()]
)
NUM_LOCAL = DESCRIPTOR_OFFSET.size
#: feature dimension D: local descriptors, their 3x3 context, the constant dimension
DIM = 2 * NUM_LOCAL + 1


def _patch_mean(maps: np.ndarray, patch_size: int) -> np.ndarray:
    """Per-pixel maps (H, W, C) → their mean over each patch, (rows, cols, C) float32."""
    height, width, channels = maps.shape
    rows, cols = height // patch_size, width // patch_size
    sums = maps.reshape(rows, patch_size, width * channels).sum(axis=1, dtype=np.float32)
    sums = sums.reshape(rows, cols, patch_size, channels).sum(axis=2)
    return sums / np.float32(patch_size * patch_size)


def _neighbourhood_mean(values: np.ndarray) -> np.ndarray:
    """(rows, cols, C) → mean over each cell's 3x3 neighbourhood, counting only cells inside the grid."""
    rows, cols, _ = values.shape
    padded = np.pad(values, ((1, 1), (1, 1), (0, 0)))
    count = np.pad(np.ones((rows, cols, 1), dtype=values.dtype), ((1, 1), (1, 1), (0, 0)))
    total = np.zeros_like(values)
    n = np.zeros((rows, cols, 1), dtype=values.dtype)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy:dy + rows, dx:dx + cols]
            n += count[dy:dy + rows, dx:dx + cols]
    return total / n


def _orientation_maps(magnitude: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Gradient magnitude (H, W) and direction (H, W, radians in 0..2pi) → per-pixel soft votes
    (H, W, ORIENTATION_BINS) float32: each pixel's magnitude split linearly between the two nearest
    unsigned-orientation bins (bin k is centred on (k + 0.5) * 180 / ORIENTATION_BINS degrees)."""
    height, width = magnitude.shape
    # positions along a circle of 2 * ORIENTATION_BINS half-bins; "& (bins - 1)" folds 180..360 deg
    # onto 0..180 deg and -1 onto the last bin (ORIENTATION_BINS is a power of two)
    position = angle * np.float32(ORIENTATION_BINS / np.pi) - np.float32(0.5)
    lower = np.floor(position)
    upper_vote = magnitude * (position - lower)
    lower_vote = magnitude - upper_vote
    lower = lower.astype(np.int64) & (ORIENTATION_BINS - 1)
    upper = (lower + 1) & (ORIENTATION_BINS - 1)
    pixel = np.arange(height * width, dtype=np.int64).reshape(height, width) * ORIENTATION_BINS
    votes = np.zeros(height * width * ORIENTATION_BINS, dtype=np.float32)
    votes[pixel + lower] = lower_vote
    votes[pixel + upper] = upper_vote
    return votes.reshape(height, width, ORIENTATION_BINS)


def local_descriptors(working: np.ndarray, patch_size: int) -> np.ndarray:
    """uint8 RGB working image (H, W, 3), H and W multiples of ``patch_size`` → the raw local
    descriptors of the module table, (rows, cols, 21) float32, before standardisation."""
    height, width = working.shape[:2]
    rows, cols, p = height // patch_size, width // patch_size, patch_size
    lab = cv2.cvtColor(working.astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_RGB2LAB)
    lightness = np.ascontiguousarray(lab[:, :, 0])

    # first-order structure: Sobel gradients in L* units per pixel
    gx = cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    # band-pass energies at two scales
    blur_fine = cv2.GaussianBlur(lightness, (0, 0), FINE_SIGMA, borderType=cv2.BORDER_REFLECT)
    blur_coarse = cv2.GaussianBlur(lightness, (0, 0), COARSE_SIGMA, borderType=cv2.BORDER_REFLECT)

    first = _patch_mean(np.concatenate(
        [lab,
         np.stack([magnitude,
                   np.abs(lightness - blur_fine),
                   np.abs(blur_fine - blur_coarse),
                   gx * gx, gy * gy, gx * gy,
                   (lightness < DARK_L).astype(np.float32),
                   (lightness > BRIGHT_L).astype(np.float32)], axis=-1),
         _orientation_maps(magnitude, angle)],
        axis=-1,
    ), p)
    lab_mean = first[..., 0:3]
    energy = first[..., 3:6]
    jxx, jyy, jxy = first[..., 6], first[..., 7], first[..., 8]
    extremes = first[..., 9:11]
    histogram = first[..., 11:]

    # centred moments of L*, a*, b* per patch (centring first avoids float32 cancellation)
    centred = (lab.reshape(rows, p, cols, p, 3) - lab_mean[:, None, :, None, :]).reshape(height, width, 3)
    second = _patch_mean(np.concatenate([centred * centred, centred[..., :1] ** 3], axis=-1), p)
    variance = second[..., 0:3]
    lab_std = np.sqrt(variance)
    skewness = second[..., 3] / (variance[..., 0] + np.float32(MAGNITUDE_FLOOR**2)) ** 1.5

    # structure-tensor coherence: |(Jxx - Jyy, 2 Jxy)| / (Jxx + Jyy), 1 for parallel stripes
    coherence = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy) / (jxx + jyy + np.float32(COHERENCE_FLOOR))

    # the histogram as a distribution over orientations; a floor on the gradient mass (per pixel)
    # keeps the noise of flat patches from looking like a strong orientation
    histogram = histogram / (histogram.sum(axis=-1, keepdims=True) + np.float32(ORIENTATION_FLOOR))

    return np.concatenate(
        [lab_mean, lab_std, energy, coherence[..., None], skewness[..., None], extremes, histogram],
        axis=-1,
    ).astype(np.float32)


def standardise(descriptors: np.ndarray) -> np.ndarray:
    """Raw local descriptors (..., 21) → compressed, standardised and weighted (..., 21) float32,
    with the fixed module constants only."""
    values = descriptors.astype(np.float32, copy=True)
    values[..., 3:9] = np.log1p(values[..., 3:9] / np.float32(MAGNITUDE_FLOOR))
    return (values - DESCRIPTOR_OFFSET) / DESCRIPTOR_SCALE * DESCRIPTOR_WEIGHT


class HandcraftedExtractor:
    """Colour + texture patch features of :data:`DIM` dimensions on a square working image.

    ``extract(image)``: uint8 RGB (H, W, 3) of any size (gray (H, W) is accepted too) → float32
    (rows, cols, DIM), every patch vector of unit L2 norm.
    """

    def __init__(self, cfg: FeaturesConfig):
        self.grid = PatchGrid.square(cfg.working_size, cfg.patch_size)
        self.cache_key = feature_cache_key(cfg)

    def extract(self, image: np.ndarray) -> np.ndarray:
        working = self.grid.resize_to_working(image)
        local = standardise(local_descriptors(working, self.grid.patch_size))
        context = _neighbourhood_mean(local)
        bias = np.full(local.shape[:2] + (1,), BIAS, dtype=np.float32)
        features = np.concatenate([local, context, bias], axis=-1)
        features /= np.linalg.norm(features, axis=-1, keepdims=True)
        return features.astype(np.float32, copy=False)
