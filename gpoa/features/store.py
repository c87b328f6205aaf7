"""The patch-feature cache: features of an image are computed once and kept as fp16 ``.npy`` files.

Entries are keyed by the features settings (:func:`~gpoa.features.feature_cache_key`) and by the
image file's CONTENT (a SHA-256 of its bytes), not by its name: an image used by several tasks,
splits or episodes is encoded once, and an edited image is encoded again. The extractor (and its
checkpoint) is built only when an image is not cached yet, through a shared
:class:`~gpoa.backends.Backends`, so many tasks load the model once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from gpoa.features import patch_features
from gpoa.io import load_array, read_image, save_array

_DIGESTS: dict = {}  # (path, size, mtime) → digest: a file is hashed once per process unless it changes


def file_digest(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, first 24 characters."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    return _DIGESTS[key]


class FeatureStore:
    """Patch features (rows, cols, D) of image files, cached under ``cache_root/features/<key>/``."""

    def __init__(self, cache_root: Path, backends):
        self.cache_root = Path(cache_root)
        self.backends = backends
        self.key = backends.feature_key
        self.grid = backends.grid

    def path(self, image_path: Path) -> Path:
        digest = file_digest(image_path)
        return self.cache_root / "features" / self.key / digest[:2] / f"{digest}.npy"

    def features(self, image_path: Path, image: Optional[np.ndarray] = None) -> np.ndarray:
        """Float32 features (rows, cols, D) of ``image_path`` (read unless ``image`` is given), at the
        cached fp16 precision whether or not the cache existed, so every run sees the same values."""
        path = self.path(image_path)
        if path.is_file():
            try:
                cached = load_array(path)
                if cached.shape[:2] == (self.grid.rows, self.grid.cols):
                    return cached.astype(np.float32)
            except (OSError, ValueError):
                # an unreadable entry (e.g. a write interrupted by another tool) is recomputed
                pass
        if image is None:
            image = read_image(image_path)
        features = patch_features(self.backends.extractor, image)
        save_array(path, features.astype(np.float16))
        return features

    def is_cached(self, image_path: Path) -> bool:
        return self.path(image_path).is_file()
