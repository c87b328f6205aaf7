"""Time stage 4 on a photo-sized image: decode and score every prompt set of one target.

    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --width 1024 --height 768 --repeats 5

Writes a generated dermoscopy-like target (``--width`` x ``--height``, default 3024 x 2016, a
6-megapixel photo: skin, an irregular blotchy lesion, hairs, JPEG) with its truth mask and
``--sets`` - 1 prompt sets (placed off the truth at several qualities: good, partial, sparse,
flooding the background) into a temporary dataset folder, and runs stage 4
(:func:`gpoa.stages.segmentation.segment_task`, masks and overlays written, the ``ideal`` set
added) on it with the embedded default segmenter. Prints the median over ``--repeats`` runs,
``eval_seconds_per_image=… eval_cpu_seconds_per_image=…`` (wall and process CPU time), and the
same steps timed one by one (reading, embedding, decoding, writing the masks and overlays,
scoring; a ninth generated set stands in for ``ideal``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gpoa.backends import Backends  # noqa: E402
from gpoa.config import Config  # noqa: E402
from gpoa.evaluation import image_rows  # noqa: E402
from gpoa.inference import decode_masks  # noqa: E402
from gpoa.io import image_size, read_image, read_mask, write_mask, write_png, write_prompt_file  # noqa: E402
from gpoa.prompts import PromptSet, sample_ideal_prompts  # noqa: E402
from gpoa.runtime import StageReport  # noqa: E402
from gpoa.stages.segmentation import segment_task  # noqa: E402
from gpoa.tasks import load_tasks  # noqa: E402
from gpoa.viz import MaskOverlays  # noqa: E402


def lesion_image(width: int, height: int, rng: np.random.Generator) -> tuple:
    """A generated dermoscopy-like photo: (uint8 RGB (height, width, 3), truth mask bool (height, width)).

    Blotchy skin under uneven light, an irregular lesion (an outline from random harmonics, about 15 %
    of the image) whose pigment varies from dark brown to almost skin, a dozen hairs, sensor noise.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, side = 0.52 * width, 0.47 * height, min(width, height)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = 0.27 * side * (1.0 + sum(rng.uniform(0.04, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                                      for k in range(2, 7)))
    mask = np.hypot(xx - cx, yy - cy) <= radius
    light = 1.0 - 0.25 * ((xx - 0.3 * width) ** 2 + (yy - 0.2 * height) ** 2) / float(width * width)

    def blotches(cell: int) -> np.ndarray:  # smooth noise, (height, width) float32, std about 1
        coarse = cv2.GaussianBlur(rng.normal(0.0, 1.0, (height // cell, width // cell)).astype(np.float32), (0, 0), 2.0)
        return cv2.resize(coarse / coarse.std(), (width, height), interpolation=cv2.INTER_CUBIC)

    skin = np.array([222.0, 170.0, 150.0], np.float32) + 14.0 * blotches(32)[..., None]
    # the lesion's pigment varies from dark brown to almost skin (regression zones)
    pigment = np.clip(0.65 + 0.35 * blotches(16), 0.1, 1.0)[..., None]
    lesion = skin - pigment * np.array([120.0, 100.0, 90.0], np.float32)
    image = skin
    image[mask] = lesion[mask]
    image *= light[..., None]
    canvas = np.ascontiguousarray(image)
    for _ in range(12):
        start = rng.uniform([0, 0], [width, height])
        end = start + rng.normal(0.0, 0.4 * side, 2)
        cv2.line(canvas, tuple(int(v) for v in start), tuple(int(v) for v in end), (50.0, 35.0, 30.0),
                 int(rng.integers(3, 7)), lineType=cv2.LINE_AA)
    canvas += rng.normal(0.0, 6.0, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def prompt_sets(grid, truth: np.ndarray, size: tuple, rng: np.random.Generator) -> dict:
    """Nine prompt sets of several qualities read off ``truth`` (H, W) bool: name → PromptSet on
    ``grid``; ``size`` is the image's (width, height)."""
    outside = np.flatnonzero(grid.mask_fraction(truth).reshape(-1) <= 0.0)
    sets = {}

    def add(name, positive, negative):
        sets[name] = PromptSet(f"{name}.jpg", size, grid, positive, negative, source=name)

    for name, (n_pos, n_neg) in {"initial": (8, 8), "optimized": (7, 9), "topk": (6, 6), "random_subset": (5, 6),
                                 "rule": (8, 6), "oracle": (9, 8), "sparse": (1, 0)}.items():
        add(name, *sample_ideal_prompts(grid, truth, n_pos, n_neg, rng))
    positive, negative = sets["initial"].positive_indices, sets["initial"].negative_indices
    add("flood", np.r_[positive, rng.choice(outside, 2, replace=False)], negative[:4])  # positives on the skin
    rows, cols = grid.index_to_rc(positive)
    add("shifted", grid.rc_to_index(rows, np.minimum(cols + 6, grid.cols - 1)), negative)  # half off the lesion
    return sets


def write_task(root: Path, width: int, height: int, n_sets: int, grid) -> list:
    """A dataset folder at ``root``: a small reference pair, one generated target ``lesion.jpg`` with
    its mask, and ``n_sets`` - 1 prompt folders for it (stage 4 adds ``ideal``). Returns the first
    ``n_sets`` of :func:`prompt_sets` (those written, and the next in place of ``ideal``)."""
    rng = np.random.default_rng(0)
    image, truth = lesion_image(width, height, rng)
    reference, reference_mask = lesion_image(640, 427, rng)
    for folder, name, array in (("reference_image", "ref.png", reference), ("reference_mask", "ref.png", reference_mask),
                                ("target_image", "lesion.jpg", image), ("target_mask", "lesion.png", truth)):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if array.dtype == bool:
            write_mask(path, array)
        else:
            quality = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
            cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR), quality)
    sets = [dataclasses.replace(s, image="lesion.jpg")
            for s in prompt_sets(grid, truth, (width, height), rng).values()][:n_sets]
    for prompt_set in sets[:-1]:
        write_prompt_file(root / f"{prompt_set.source}_indices" / "lesion.json", prompt_set)
    return sets


def timed(fn, repeats: int) -> tuple:
    """Median (wall seconds, process CPU seconds) of ``fn()`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3024, help="target image width in pixels")
    parser.add_argument("--height", type=int, default=2016, help="target image height in pixels")
    parser.add_argument("--sets", type=int, default=9, choices=range(1, 10),
                        help="prompt sets per image, the ideal set included")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lesions"
        cfg = dataclasses.replace(Config(), data=[str(root)], overwrite=True)
        backends = Backends(cfg, "cpu")
        sets = write_task(root, args.width, args.height, args.sets, backends.grid)
        task = load_tasks(cfg, backends)[0]
        out = root / "results"

        def stage():
            report = StageReport("segmentation")
            segment_task(task, backends, [], out, report)
            if report.failed:
                raise RuntimeError(f"stage 4 failed: {report.failed}")

        stage()  # warm-up: imports, first allocations
        wall, cpu = timed(stage, args.repeats)

        # the same work step by step
        segmenter = backends.segmenter
        image_path = task.layout.targets[0]
        image = read_image(image_path)
        truth = read_mask(task.layout.target_mask("lesion"), expected_size=image_size(image))
        embedding = segmenter.embed(image)
        masks = decode_masks(segmenter, image, sets, embedding)
        steps = {
            "read": lambda: (read_image(image_path), read_mask(task.layout.target_mask("lesion"))),
            "embed": lambda: segmenter.embed(image),
            "decode": lambda: decode_masks(segmenter, image, sets, embedding),
            "write_masks": lambda: [write_mask(Path(tmp) / "m.png", m) for m in masks],
            "overlays": lambda: [write_png(Path(tmp) / "o.png", overlays(m, s.positive_points, s.negative_points),
                                           photo=True)
                                 for overlays in [MaskOverlays(image)] for m, s in zip(masks, sets)],
            "score": lambda: image_rows("t", "lesion", dict(zip(map(str, range(len(masks))), masks)), truth),
        }
        breakdown = {name: timed(fn, args.repeats) for name, fn in steps.items()}
    print(f"stage 4 on one {args.width}x{args.height} image, {args.sets} prompt sets, classical segmenter "
          f"(median of {args.repeats}):")
    for name, (step_wall, step_cpu) in breakdown.items():
        print(f"  {name}: {step_wall:.3f} s wall, {step_cpu:.3f} s cpu")
    print(f"eval_seconds_per_image={wall:.2f} eval_cpu_seconds_per_image={cpu:.2f}")


if __name__ == "__main__":
    main()
