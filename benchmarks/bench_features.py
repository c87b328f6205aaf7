"""Time patch-feature extraction: the handcrafted default, and optionally DINOv2.

    python benchmarks/bench_features.py
    python benchmarks/bench_features.py --dinov2-checkpoint checkpoints/dinov2_vitl14_pretrain.pth \\
        --model vit_large_patch14_dinov2

Prints one line per extractor and input size, ``handcrafted_ms=…`` (resp. ``dinov2_ms=…``), the
median over ``--repeats`` runs of ``extract`` on a synthetic uint8 RGB image of 560x560 and of
1024x768 pixels, resize to the working size included. The handcrafted extractor runs on one CPU
thread; DINOv2 runs on the auto device (cuda, then mps, then cpu; ``--threads`` CPU threads).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from timing import time_ms

from gpoa.config import FeaturesConfig, resolve_device

SIZES = ((560, 560), (1024, 768))  # (width, height)


def synthetic_image(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB (height, width, 3): colour ramps, oriented stripes, blobs and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([xx / width * 180 + 40, yy / height * 160 + 50, 120 + 50 * np.sin(xx / 4.0 + yy / 9.0)],
                     axis=-1)
    blobs = (np.sin(xx / 37.0) * np.cos(yy / 23.0) > 0.6)[..., None] * np.array([60.0, -40.0, 20.0])
    return np.clip(image + blobs + rng.normal(0.0, 15.0, image.shape), 0, 255).astype(np.uint8)


def bench(label: str, extractor, images: list, repeats: int, note: str = "cpu, 1 thread",
          sync=lambda: None) -> None:
    for image in images:
        def run(image=image):
            extractor.extract(image)
            sync()

        ms = time_ms(run, repeats)
        rows, cols = extractor.grid.rows, extractor.grid.cols
        print(f"{label}_ms={ms:.1f} (image {image.shape[1]}x{image.shape[0]}, working size "
              f"{extractor.grid.working_size[0]}, grid {rows}x{cols}, {note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--working-size", type=int, default=560, help="features.working_size in pixels")
    parser.add_argument("--patch-size", type=int, default=14, help="features.patch_size in pixels")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for DINOv2 on the cpu")
    parser.add_argument("--dinov2-checkpoint", default=None, help="local DINOv2 checkpoint; also time DINOv2")
    parser.add_argument("--model", default="vit_large_patch14_dinov2",
                        help="timm model name of --dinov2-checkpoint")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    images = [synthetic_image(width, height, rng) for width, height in SIZES]

    from gpoa.features.handcrafted import HandcraftedExtractor

    cfg = FeaturesConfig(working_size=args.working_size, patch_size=args.patch_size)
    bench("handcrafted", HandcraftedExtractor(cfg), images, args.repeats)

    if args.dinov2_checkpoint:
        from gpoa.features.dinov2 import DinoV2Extractor

        torch.set_num_threads(args.threads)
        device = resolve_device("auto")
        cfg = FeaturesConfig(backend="dinov2", model=args.model, checkpoint=args.dinov2_checkpoint,
                             working_size=args.working_size, patch_size=args.patch_size)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        note = f"{args.model} on {device}" + (f", torch threads: {args.threads}" if device == "cpu" else "")
        bench("dinov2", DinoV2Extractor(cfg, device=device), images, args.repeats, note=note, sync=sync)


if __name__ == "__main__":
    main()
