#!/usr/bin/env python
"""GPOA from Python in a few lines, on the demo data (run ``make demo`` first; under a minute on a CPU).

    python examples/quickstart.py [--data data/demo/membrane] [--policy checkpoints/demo/best.pt]
                                  [--targets 5] [--out quickstart.png]

Sets the family's reference pair, segments its first targets with the trained policy, prints each
one's Dice against its mask (where it has one) and writes the first target's mask and optimised
prompts over the image to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpoa import GPOAPredictor
from gpoa.io import read_image, read_mask, write_png
from gpoa.layout import list_images
from gpoa.metrics import dice
from gpoa.viz import overlay_mask

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo" / "membrane",
                        help="a dataset folder (reference_image/, reference_mask/, target_image/, target_mask/)")
    parser.add_argument("--policy", type=Path, default=ROOT / "checkpoints" / "demo" / "best.pt",
                        help="a trained policy (make demo trains checkpoints/demo/best.pt)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--targets", type=int, default=5, help="how many targets to segment (default 5)")
    parser.add_argument("--out", type=Path, default=Path("quickstart.png"), help="the overlay PNG to write")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    references, targets = list_images(args.data / "reference_image"), list_images(args.data / "target_image")
    if not references or not targets or not args.policy.is_file():
        print(f"quickstart.py: error: needs the demo data ({args.data}) and a trained policy ({args.policy}); "
              "run `make demo` first", file=sys.stderr)
        return 2

    predictor = GPOAPredictor.from_config(args.config, policy=args.policy, device=args.device)
    predictor.set_reference(references[0], args.data / "reference_mask" / references[0].name)
    targets = targets[:args.targets]
    for index, (path, result) in enumerate(zip(targets, predictor.predict_many(targets))):
        mask_path = args.data / "target_mask" / path.name
        score = f"Dice {dice(result.mask, read_mask(mask_path)):.3f}" if mask_path.is_file() else "no mask"
        initial, optimized = result.prompts.initial, result.prompts.optimized
        print(f"{path.name}: {score}, confidence {result.confidence:.2f}, prompts "
              f"{len(initial.positive_indices)}+{len(initial.negative_indices)} -> "
              f"{len(optimized.positive_indices)}+{len(optimized.negative_indices)}")
        if index == 0:
            write_png(args.out, overlay_mask(read_image(path), result.mask, optimized.positive_points,
                                             optimized.negative_points))
    print(f"overlay of {targets[0].name}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
