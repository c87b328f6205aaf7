"""Time the segmenters' two phases: ``embed`` one image, then ``decode`` batches of prompt sets.

    python benchmarks/bench_decode.py
    python benchmarks/bench_decode.py --sam-checkpoint checkpoints/sam_vit_l_0b3195.pth --sam-type vit_l

Prints one line per segmenter, ``embed_ms=… decode_ms_per_set=…`` (medians over ``--repeats``
runs), for a synthetic ``--size`` x ``--size`` image and ``--batch`` prompt sets of 10 to 40 points
each. The classical segmenter runs on the CPU; SAM on the auto device (cuda, then mps, then cpu).
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import time_ms

from gpoa.config import SegmenterConfig, resolve_device
from gpoa.prompts import PointPrompts


def synthetic_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy textured background with a few bright textured discs: (uint8 RGB (size, size, 3), bool mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.array([60.0, 70.0, 55.0]) + rng.normal(0.0, 14.0, (size, size, 3))
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, r in [(0.35, 0.4, 0.18), (0.72, 0.65, 0.12), (0.25, 0.8, 0.08)]:
        mask |= (xx - cx * size) ** 2 + (yy - cy * size) ** 2 <= (r * size) ** 2
    stripes = 20.0 * np.sin(xx / 3.0 + yy / 5.0)[..., None]
    foreground = np.array([190.0, 150.0, 110.0]) + stripes + rng.normal(0.0, 12.0, (size, size, 3))
    image[mask] = foreground[mask]
    return np.clip(image, 0, 255).astype(np.uint8), mask


def prompt_sets(mask: np.ndarray, count: int, rng: np.random.Generator) -> list[PointPrompts]:
    """``count`` prompt sets of 10 to 40 random points, labelled by ``mask`` (about half positive)."""
    inside = np.argwhere(mask)[:, ::-1] + 0.5
    outside = np.argwhere(~mask)[:, ::-1] + 0.5
    sets = []
    for _ in range(count):
        n = int(rng.integers(10, 41))
        n_pos = n // 2
        sets.append(PointPrompts.from_xy(inside[rng.integers(len(inside), size=n_pos)],
                                         outside[rng.integers(len(outside), size=n - n_pos)]))
    return sets


def bench(name: str, segmenter, image: np.ndarray, sets: list, repeats: int, sync=lambda: None) -> None:
    def embed():
        segmenter.embed(image)
        sync()

    embedding = segmenter.embed(image)

    def decode():
        segmenter.decode(embedding, sets)
        sync()

    embed_ms = time_ms(embed, repeats)
    decode_ms = time_ms(decode, repeats)
    print(f"{name}: embed_ms={embed_ms:.1f} decode_ms_per_set={decode_ms / len(sets):.2f} "
          f"(batch of {len(sets)} sets, {min(map(len, sets))}-{max(map(len, sets))} points, "
          f"image {image.shape[1]}x{image.shape[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=560, help="side of the synthetic square image in pixels")
    parser.add_argument("--batch", type=int, default=32, help="prompt sets per decode call")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sam-checkpoint", default=None, help="local SAM checkpoint; also time SAM")
    parser.add_argument("--sam-type", default="vit_l", help="SAM model type of --sam-checkpoint")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image, mask = synthetic_image(args.size, rng)
    sets = prompt_sets(mask, args.batch, rng)

    from gpoa.segmenters.classical import ClassicalSegmenter

    bench("classical (cpu)", ClassicalSegmenter(SegmenterConfig()), image, sets, args.repeats)

    if args.sam_checkpoint:
        from gpoa.segmenters.sam import SamSegmenter

        device = resolve_device("auto")
        cfg = SegmenterConfig(backend="sam", model_type=args.sam_type, checkpoint=args.sam_checkpoint)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        bench(f"sam {args.sam_type} ({device})", SamSegmenter(cfg, device=device), image, sets,
              args.repeats, sync=sync)


if __name__ == "__main__":
    main()
