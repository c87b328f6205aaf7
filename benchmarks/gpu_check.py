"""A GPU check in one call: how fast and how memory-hungry the paper's models are on this machine.

    python benchmarks/gpu_check.py                                   # CPU laptop: --small, well under a minute
    python benchmarks/gpu_check.py --device cuda --out gpu.json      # a lent GPU: real sizes
    python benchmarks/gpu_check.py --device cuda --real --out gpu.json   # + the pipeline on DINOv2 and each SAM
    python benchmarks/gpu_check.py --device cuda --segmenters sam2,sam_hq  # only SAM 2 and HQ-SAM

No weights are needed: every model is RANDOMLY INITIALISED at its real size, saved to a temporary
checkpoint and loaded through the project's own loaders and wrappers
(:class:`gpoa.features.dinov2.DinoV2Extractor`, the ``sam``, ``sam2`` and ``sam_hq`` segmenters, built by
``build_feature_extractor`` / ``build_segmenter`` as the stages build them), so what is timed is
the project's code path. Random weights cost exactly what trained ones cost; the masks they give are
meaningless, which does not matter here.

Models. Default (real sizes): DINOv2 ViT-L/14 (timm ``vit_large_patch14_dinov2``) at 560 px, SAM
``vit_h`` and ``vit_l`` (segment-anything's registry), SAM 2.1 ``hiera_l`` and ``hiera_t`` (the
``sam2`` package) and HQ-SAM ``vit_l`` (segment-anything-hq), all at 1024 px. ``--segmenters``
picks the backends (default ``sam,sam2,sam_hq``; one whose package is not installed gives a
"skipped" row). ``--small`` (the CPU smoke test; on by default when the device is the CPU):
DINOv2 ViT-S/14 at 112 px and each backend's tiny model (:mod:`gpoa.segmenters.tiny`: the real
prompt encoder and mask decoder behind a tiny image encoder; SAM and HQ-SAM at 256 px, SAM 2 at
its fixed 1024 px with a 64-wide decoder), 1 and 8 prompt sets, 1 repeat.

What each number means. Every time is the median over ``--repeats`` calls after one warm-up call
(``benchmarks/timing.py``), the device synchronised, in seconds per image:

- ``features``: ``DinoV2Extractor.extract`` of one image (resize to the working size, ViT forward,
  L2 normalisation, copy to the host) — the backbone's share of stage 1's cost per image.
- ``sam embed`` (``sam2 embed``, ``sam_hq embed``): the segmenter's ``embed`` of one image (the
  image encoder, once per image).
- ``sam decode`` (``sam2 decode``, ``sam_hq decode``): one ``decode`` call against that embedding with ``batch`` prompt
  sets of 16 points (8 positive, 8 negative) — one prompt-encoder + mask-decoder pass, masks
  upsampled to the image and copied to the host. This is the batched call the training
  environments make (``gpoa/envs/vec_env.py``: one decode per image with every environment's
  prompt set). Divide by ``batch`` for the cost of one prompt set.
- ``pipeline N ...``: one pass of stage N (1 initial prompts, 2 training with a tiny
  ``train.total_steps``, 3 optimisation, 4 segmentation and evaluation) over a small generated
  demo dataset (``gpoa.demo_data``, the membrane family) with ``configs/demo.yaml``: the stage's
  wall time divided by the images it handled (``batch``: targets for stages 1, 3 and 4, training
  images for stage 2; model loading included, as in a real run); the note gives the stage's total.
  Run with the embedded backends (handcrafted features, classical segmenter: CPU code, only the
  policy network uses the GPU) and, with ``--real``, once more per segmenter backend with the
  random DINOv2 and that backend's paper-size model: SAM ``vit_l``, SAM 2.1 ``hiera_l``, HQ-SAM
  ``vit_l`` (the backends of ``configs/sam_dinov2.yaml``, ``configs/sam2_dinov2.yaml`` and
  ``configs/samhq_dinov2.yaml``; with ``--small`` the tiny models).
  ``--train-steps`` sets stage 2's budget, ``--skip-pipeline`` leaves the pass out.

Precision: ``fp32``, then the same calls inside ``torch.autocast`` — bf16 on CUDA when the GPU
supports it, else fp16; bf16 on the CPU; fp16 on MPS. A dtype autocast refuses on this device gives
a row saying so. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` for that row (the
counter is reset before it; loaded weights included); on the CPU the process's peak resident set
size so far (``resource.getrusage``: it never goes down, so it bounds every row above it); on MPS
the driver's allocated memory after the row (MPS keeps no peak). A row that runs out of device
memory reads ``OOM`` and the check goes on; the cache is emptied between models.

The Markdown table goes to stdout, after a header line (torch version, device, settings); progress
and the stages' own output go to stderr. ``--out FILE.json`` also writes every number. Exit code 0
when every row was measured (OOM and unsupported-dtype rows included), 1 when a row failed with
another error (its note says which), 2 for a usage error.

On a lent GPU with little device time: the real-size run builds, saves and reloads about 5 GB of
random weights (SAM vit_h and vit_l, DINOv2 ViT-L) and about 2.5 GB more for SAM 2.1 hiera_l and
hiera_t and HQ-SAM vit_l (typically a minute in all) before the timings, which take a few seconds
each; ``--skip-pipeline`` saves the passes' minute or two each, ``--segmenters`` leaves backends out.
``--threads 1`` steadies CPU timings on a machine other work keeps busy.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from timing import time_ms

from gpoa.config import Config, FeaturesConfig, load_config, resolve_device
from gpoa.errors import UsageError
from gpoa.features import FeatureExtractor, build_feature_extractor
from gpoa.io import atomic_write_json
from gpoa.prompts import PointPrompts
from gpoa.segmenters import OPTIONAL_PACKAGES, Segmenter, build_segmenter
from gpoa.segmenters.tiny import TINY_MODEL_TYPES, save_random_segmenter

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
#: the segmenter backends the check can time, and their models at real sizes (the first of each is the
#: one the --real pipeline runs: the paper's size)
SEGMENTER_MODELS = {"sam": ("vit_l", "vit_h"), "sam2": ("hiera_l", "hiera_t"), "sam_hq": ("vit_l",)}
POINTS_PER_SET = 16  # 8 positive + 8 negative, the demo config's initial prompt count
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----- settings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What one check measures; ``small`` picks the tiny models of the CPU smoke test."""

    device: str
    small: bool
    repeats: int
    segmenters: tuple
    segmenter_models: tuple
    dinov2_model: str
    dinov2_size: int
    decode_batches: tuple
    pipeline: bool
    real_pipeline: bool
    train_steps: int

    @property
    def pipeline_segmenters(self) -> tuple:
        """(backend, model_type) of each --real pipeline pass: the first model of each backend."""
        first: dict = {}
        for backend, model_type in self.segmenter_models:
            first.setdefault(backend, model_type)
        return tuple(first.items())

    @property
    def missing(self) -> tuple:
        """The requested backends whose package is not installed (they get a "skipped" row)."""
        models = {backend for backend, _ in self.segmenter_models}
        return tuple(backend for backend in self.segmenters if backend not in models)


def installed(backend: str) -> bool:
    """Whether the package of segmenter ``backend`` can be imported here."""
    import importlib.util

    package = OPTIONAL_PACKAGES[backend][0] if backend in OPTIONAL_PACKAGES else "segment_anything"
    return importlib.util.find_spec(package) is not None


def resolve_settings(device: str, small: Optional[bool] = None, repeats: Optional[int] = None,
                     pipeline: bool = True, real: bool = False, train_steps: Optional[int] = None,
                     segmenters: Sequence[str] = tuple(SEGMENTER_MODELS)) -> Settings:
    """The check's settings for ``device`` (``auto`` resolved: cuda → mps → cpu). ``small`` defaults
    to on for the CPU and off elsewhere; ``repeats`` to 1 when small, else 5. ``segmenters``: the
    backends to time (of :data:`SEGMENTER_MODELS`); those not installed are listed in ``missing``."""
    unknown = [backend for backend in segmenters if backend not in SEGMENTER_MODELS]
    if unknown or not segmenters:
        raise UsageError(f"--segmenters takes a comma-separated list of {', '.join(SEGMENTER_MODELS)}, got "
                         f"'{','.join(segmenters)}'")
    device = resolve_device(device)
    small = device == "cpu" if small is None else small
    repeats = (1 if small else 5) if repeats is None else repeats
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    train_steps = (24 if small else 96) if train_steps is None else train_steps
    if train_steps < 1:
        raise UsageError(f"--train-steps must be at least 1, got {train_steps}")
    segmenters = tuple(dict.fromkeys(segmenters))
    models = tuple((backend, model_type) for backend in segmenters if installed(backend)
                   for model_type in ((TINY_MODEL_TYPES[backend],) if small else SEGMENTER_MODELS[backend]))
    return Settings(device=device, small=small, repeats=repeats, segmenters=segmenters, segmenter_models=models,
                    dinov2_model="vit_small_patch14_dinov2" if small else "vit_large_patch14_dinov2",
                    dinov2_size=112 if small else 560,
                    decode_batches=(1, 8) if small else (1, 8, 32, 128),
                    pipeline=pipeline, real_pipeline=real, train_steps=train_steps)


def device_type(device: str) -> str:
    """``cuda:1`` → ``cuda``: the device type autocast and the memory counters take."""
    return torch.device(device).type


def autocast_dtype(device: str) -> torch.dtype:
    """The reduced precision tried on ``device``: bf16 on CUDA if supported else fp16, fp16 on MPS, bf16 elsewhere."""
    kind = device_type(device)
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.bfloat16


def precision_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bf16`` (the table's precision column)."""
    return PRECISION_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def autocast_refusal(device: str, dtype: torch.dtype) -> Optional[str]:
    """Why ``torch.autocast(device, dtype)`` does not work here, or ``None`` when it does (torch
    disables an unsupported combination with a warning instead of failing)."""
    kind = device_type(device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast(kind, dtype=dtype):
                enabled = torch.is_autocast_enabled(kind)
    except (RuntimeError, ValueError, TypeError) as exc:
        return f"{precision_name(dtype)} autocast is not supported on {kind}: {_first_line(exc)}"
    if not enabled:
        reason = next((_first_line(w.message) for w in caught), "autocast stayed disabled")
        return f"{precision_name(dtype)} autocast is not supported on {kind}: {reason}"
    return None


def precision_context(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``fp32``: nothing; otherwise ``torch.autocast`` to ``dtype`` on the device's type."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=dtype)


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so wall time covers it."""
    kind = device_type(device)
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def device_name(device: str) -> str:
    kind = device_type(device)
    if kind == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    if kind == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)"


def free_memory(device: str) -> None:
    """Drop what the last model left behind: Python garbage, then the device's cached blocks."""
    gc.collect()
    kind = device_type(device)
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps":
        torch.mps.empty_cache()


class MemoryMeter:
    """Peak memory of a row: CUDA's max allocated since :meth:`reset`; the process's peak RSS on the
    CPU (never reset: a bound over everything so far); the MPS driver's memory after the row."""

    def __init__(self, device: str):
        self.device, self.type = device, device_type(device)
        self.kind = {"cuda": "cuda max allocated", "mps": "mps driver allocated"}.get(self.type,
                                                                                        "process peak RSS")

    def reset(self) -> None:
        if self.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> Optional[int]:
        if self.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.type == "mps":
            return int(torch.mps.driver_allocated_memory())
        try:
            import resource
        except ImportError:  # Windows
            return None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


# ----- rows and the table -------------------------------------------------------------------------
@dataclass
class Row:
    """One measurement. ``seconds_per_image`` is ``None`` when it could not be taken (``note`` says why)."""

    component: str
    model: str
    precision: str
    batch: int
    seconds_per_image: Optional[float]
    peak_memory_bytes: Optional[int]
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.note.startswith("error")


def format_bytes(count: Optional[int]) -> str:
    """``1536`` → ``1.5 KiB``; ``None`` → ``-``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: Optional[float]) -> str:
    """Four significant digits, or ``-`` for a row that was not measured."""
    return "-" if seconds is None else f"{seconds:.4g}"


def format_table(rows: Sequence[Row], memory_kind: str) -> str:
    """The rows as a Markdown table: component, model, precision, batch, seconds/image, peak memory, note."""
    header = ["component", "model", "precision", "batch", "seconds/image", f"peak memory ({memory_kind})", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 3 + ["---"]) + "|"]
    for row in rows:
        cells = [row.component, row.model, row.precision, str(row.batch), format_seconds(row.seconds_per_image),
                 format_bytes(row.peak_memory_bytes), row.note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header_line(settings: Settings) -> str:
    decode = "/".join(str(b) for b in settings.decode_batches)
    return (f"gpoa gpu check: torch {torch.__version__} | device {settings.device} ({device_name(settings.device)}) "
            f"| {'small' if settings.small else 'real sizes'}: "
            f"{', '.join(f'{backend} {model}' for backend, model in settings.segmenter_models) or 'no segmenter'}, "
            f"DINOv2 {settings.dinov2_model} @ {settings.dinov2_size} px, decode batches {decode}, "
            f"{settings.repeats} repeat(s) | pipeline: "
            + (("embedded" + (" + real" if settings.real_pipeline else "")
                + f", {settings.train_steps} training steps") if settings.pipeline else "skipped"))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the RuntimeError the CPU and MPS allocators raise."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def describe_error(exc: BaseException) -> str:
    """A row's note for an error other than running out of memory; the traceback goes to stderr."""
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return f"error: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(message: object) -> str:
    text = str(message).strip()
    return text.splitlines()[0] if text else type(message).__name__


# ----- random real-size models behind the project's loaders ---------------------------------------
def save_random_dinov2(model_name: str, size: int, folder: Path) -> FeaturesConfig:
    """A randomly initialised timm DINOv2 ``model_name`` at ``size`` px saved to ``folder`` → the
    features config that loads it (through gpoa's checkpoint conversion, as a real one would be)."""
    import timm

    path = folder / f"{model_name}_{size}_random.pth"
    if not path.is_file():
        model = timm.create_model(model_name, pretrained=False, img_size=size, num_classes=0)
        torch.save(model.state_dict(), path)
        del model
    return FeaturesConfig(backend="dinov2", model=model_name, checkpoint=str(path), working_size=size, patch_size=14)


def sample_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One generated demo image (objects family, 400-560 x 300-420 px) and its object mask."""
    from gpoa.synth.demo import make_objects_image

    return make_objects_image(np.random.default_rng(seed))


def random_prompt_sets(mask: np.ndarray, count: int, seed: int = 0) -> list:
    """``count`` prompt sets of 8 positive points inside ``mask`` and 8 negative ones outside it."""
    rng = np.random.default_rng(seed)
    inside = np.argwhere(mask)[:, ::-1] + 0.5
    outside = np.argwhere(~mask)[:, ::-1] + 0.5
    half = POINTS_PER_SET // 2
    return [PointPrompts.from_xy(inside[rng.integers(len(inside), size=half)],
                                 outside[rng.integers(len(outside), size=half)]) for _ in range(count)]


# ----- the measurements ---------------------------------------------------------------------------
class Check:
    """Runs every measurement of ``settings``, appending to :attr:`rows` (and echoing each to stderr)."""

    def __init__(self, settings: Settings, workdir: Path):
        self.settings, self.workdir = settings, workdir
        self.device = settings.device
        self.meter = MemoryMeter(self.device)
        self.rows: list = []
        self.reduced = autocast_dtype(self.device)
        self.refusal = autocast_refusal(self.device, self.reduced)
        self.image, self.mask = sample_image()

    @property
    def precisions(self) -> tuple:
        return (torch.float32, self.reduced)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"[gpu_check] {row.component} | {row.model} | {row.precision} | batch {row.batch}: "
              f"{format_seconds(row.seconds_per_image)} s/image, {format_bytes(row.peak_memory_bytes)}"
              + (f" ({row.note})" if row.note else ""), file=sys.stderr, flush=True)
        return row

    def measure(self, component: str, model: str, precision: str, batch: int, call: Callable[[], object],
                per_call: int = 1) -> bool:
        """Time ``call`` (median of the repeats, device synchronised) and add its row: seconds per
        call divided by ``per_call`` images. Out of memory and other errors become the row's note."""
        def synchronized() -> None:
            call()
            synchronize(self.device)

        self.meter.reset()
        try:
            seconds = time_ms(synchronized, self.settings.repeats) / 1e3 / per_call
        except Exception as exc:  # report, keep checking the other rows
            out_of_memory = is_out_of_memory(exc)
            self.add(Row(component, model, precision, batch, None, self.meter.peak() if out_of_memory else None,
                         "OOM" if out_of_memory else describe_error(exc)))
            free_memory(self.device)
            return False
        self.add(Row(component, model, precision, batch, seconds, self.meter.peak()))
        return True

    def load(self, component: str, model: str, build: Callable[[], object]) -> Optional[object]:
        """``build()`` (a model loaded onto the device), or ``None`` with an OOM / error row."""
        try:
            return build()
        except Exception as exc:  # report, keep checking the other models
            if is_out_of_memory(exc):
                self.add(Row(component, model, "fp32", 1, None, self.meter.peak(), "OOM while loading the model"))
            else:
                self.add(Row(component, model, "fp32", 1, None, None,
                             describe_error(exc).replace("error:", "error while loading:", 1)))
        free_memory(self.device)
        return None

    def features(self) -> None:
        """DINOv2 extraction of one image, in each precision."""
        settings = self.settings
        label = f"{settings.dinov2_model} @ {settings.dinov2_size}px"
        extractor = self.load("features", label, lambda: build_feature_extractor(
            Config(features=save_random_dinov2(settings.dinov2_model, settings.dinov2_size, self.workdir)),
            device=self.device))
        if extractor is not None:
            for dtype in self.precisions:
                self.time_features(extractor, label, dtype)
        del extractor
        free_memory(self.device)

    def time_features(self, extractor: FeatureExtractor, label: str, dtype: torch.dtype) -> None:
        precision = precision_name(dtype)
        if dtype != torch.float32 and self.refusal:
            self.add(Row("features", label, precision, 1, None, None, self.refusal))
            return

        def extract() -> None:
            with precision_context(self.device, dtype):
                extractor.extract(self.image)

        self.measure("features", label, precision, 1, extract)

    def segmenter(self, backend: str, model_type: str) -> None:
        """A segmenter's image embedding of one image, then batched decodes against it, in each precision."""
        label = f"{backend} {model_type}"
        segmenter = self.load(f"{backend} embed", label, lambda: build_segmenter(
            Config(segmenter=save_random_segmenter(backend, model_type, self.workdir)), device=self.device))
        if segmenter is not None:
            for dtype in self.precisions:
                self.time_segmenter(segmenter, backend, label, dtype)
                free_memory(self.device)
        del segmenter
        free_memory(self.device)

    def time_segmenter(self, segmenter: Segmenter, backend: str, label: str, dtype: torch.dtype) -> None:
        precision = precision_name(dtype)
        embed_row, decode_row = f"{backend} embed", f"{backend} decode"
        if dtype != torch.float32 and self.refusal:
            for component in (embed_row, decode_row):
                self.add(Row(component, label, precision, 1, None, None, self.refusal))
            return

        kept: dict = {}  # the last embedding the timed calls made, for the decodes

        def embed() -> None:
            with precision_context(self.device, dtype):
                kept["embedding"] = segmenter.embed(self.image)

        if not self.measure(embed_row, label, precision, 1, embed):
            for batch in self.settings.decode_batches:
                self.add(Row(decode_row, label, precision, batch, None, None, "skipped: no embedding"))
            return
        embedding = kept.pop("embedding")
        sets = random_prompt_sets(self.mask, max(self.settings.decode_batches))
        for batch in self.settings.decode_batches:
            def decode(batch_sets: list = sets[:batch]) -> None:
                with precision_context(self.device, dtype):
                    segmenter.decode(embedding, batch_sets)

            self.measure(decode_row, label, precision, batch, decode)

    def not_installed(self, backend: str) -> None:
        """The row of a requested backend whose package is not installed (not a failure)."""
        package, install = OPTIONAL_PACKAGES[backend]
        self.add(Row(f"{backend} embed", backend, "fp32", 1, None, None,
                     f"skipped: the package '{package}' is not installed ({install})"))

    def pipeline(self, segmenter: Optional[tuple] = None) -> None:
        """Stages 1-4 once over a generated demo dataset: the embedded backends, or the random
        DINOv2 and ``segmenter`` = (backend, model_type) checkpoints. A stage that fails ends the
        pass (the next ones need its outputs); its row and the skipped ones say so."""
        from gpoa.runtime import seed_everything
        from gpoa.stages.initial_prompts import generate_initial_prompts
        from gpoa.stages.optimize import optimize_prompts
        from gpoa.stages.segmentation import segment_and_evaluate
        from gpoa.stages.train import train_policy

        settings = self.settings
        n_train, n_targets = (3, 2) if settings.small else (6, 6)
        label = (f"{settings.dinov2_model} + {' '.join(segmenter)}" if segmenter else "handcrafted + classical")
        stages = (("pipeline 1 initial prompts", generate_initial_prompts, n_targets),
                  ("pipeline 2 train", train_policy, n_train),
                  ("pipeline 3 optimize", optimize_prompts, n_targets),
                  ("pipeline 4 segmentation", segment_and_evaluate, n_targets))

        def give_up(index: int, note: str) -> None:
            self.add(Row(stages[index][0], label, "fp32", stages[index][2], None, None, note))
            for later, _, count in stages[index + 1:]:
                self.add(Row(later, label, "fp32", count, None, None, "skipped: an earlier step failed"))

        try:
            cfg = self.pipeline_config(segmenter, n_train, n_targets)
        except Exception as exc:  # report, keep the rows of the other measurements
            give_up(0, describe_error(exc).replace("error:", "error while preparing the pass:", 1))
            return
        seed_everything(cfg.seed)
        threads = torch.get_num_threads()  # training sets train.cpu_threads for the whole process
        try:
            for index, (component, stage, count) in enumerate(stages):
                self.meter.reset()
                started = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        result = stage(cfg, self.device)
                    synchronize(self.device)
                except Exception as exc:  # report, keep the rows of the other measurements
                    give_up(index, "OOM" if is_out_of_memory(exc) else describe_error(exc))
                    return
                elapsed = time.perf_counter() - started
                report = result[0] if isinstance(result, tuple) else result
                note = f"{elapsed:.2f} s for the stage" + (f", {settings.train_steps} steps"
                                                            if stage is train_policy else "")
                if report.failed:
                    note = f"error: {len(report.failed)} image(s) failed ({_first_line(report.failed[0][1])}); {note}"
                self.add(Row(component, label, "fp32", count, elapsed / count, self.meter.peak(), note))
        finally:
            torch.set_num_threads(threads)
            free_memory(self.device)

    def pipeline_config(self, segmenter: Optional[tuple], n_train: int, n_targets: int) -> Config:
        """``configs/demo.yaml`` on a freshly generated membrane dataset, with a tiny training budget,
        every output in the scratch folder and (``segmenter`` = (backend, model_type)) the random
        DINOv2 and segmenter checkpoints."""
        from gpoa.synth.demo import write_demo_dataset

        settings = self.settings
        root = self.workdir / f"pipeline_{segmenter[0] if segmenter else 'embedded'}"
        overrides = [f"workspace={root / 'workspace'}", f"train.checkpoints={root / 'checkpoints'}",
                     "train.run=gpu_check", f"train.total_steps={settings.train_steps}",
                     f"train.eval_every={settings.train_steps}", "train.parallel_envs=4",
                     f"dqn.learning_starts={min(32, settings.train_steps)}", "dqn.batch_size=16"]
        if segmenter:
            features = save_random_dinov2(settings.dinov2_model, settings.dinov2_size, self.workdir)
            random_segmenter = save_random_segmenter(*segmenter, self.workdir)
            overrides += [f"features.{key}={value}" for key, value in asdict(features).items()]
            overrides += [f"segmenter.{key}={getattr(random_segmenter, key)}"
                          for key in ("backend", "model_type", "checkpoint", "multimask")]
        cfg = load_config(DEMO_CONFIG, overrides)
        with contextlib.redirect_stdout(sys.stderr):
            folders = write_demo_dataset(root / "data", seed=0, n_train=n_train, n_targets=n_targets,
                                         families=["membrane"])
        cfg.data = [str(folder) for folder in folders]  # as the command line does: never split at commas
        return cfg

    def run(self) -> list:
        settings = self.settings
        self.features()
        for backend, model_type in settings.segmenter_models:
            self.segmenter(backend, model_type)
        for backend in settings.missing:
            self.not_installed(backend)
        if settings.pipeline:
            self.pipeline()
            if settings.real_pipeline:
                for segmenter in settings.pipeline_segmenters:
                    self.pipeline(segmenter)
        return self.rows


def report_dict(settings: Settings, rows: Sequence[Row], memory_kind: str, header: str) -> dict:
    """Everything the check found, for ``--out``: the header, the settings and every row."""
    return {"header": header, "torch": torch.__version__, "device": settings.device,
            "device_name": device_name(settings.device), "memory_kind": memory_kind,
            "settings": asdict(settings), "rows": [asdict(row) for row in rows]}


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for the random checkpoints and the generated dataset, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="gpoa_gpu_check_") as folder:
        yield Path(folder)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0],
                                     epilog="See the module docstring for what each number means.")
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny models, 1/8 prompt sets, 1 repeat (default: on for the CPU, off elsewhere)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row, median taken (default 1 with --small, else 5)")
    parser.add_argument("--out", type=Path, metavar="FILE.json", help="also write the numbers as JSON")
    parser.add_argument("--skip-pipeline", action="store_true", help="do not run the four-stage pass")
    parser.add_argument("--real", action="store_true",
                        help="also run the four-stage pass with the random DINOv2 and each segmenter's checkpoint")
    parser.add_argument("--segmenters", default=",".join(SEGMENTER_MODELS), metavar="LIST",
                        help=f"comma-separated segmenter backends to time (default {','.join(SEGMENTER_MODELS)})")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: torch's own choice); 1 is steadier on a busy machine")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="train.total_steps of the pipeline's stage 2 (default 24 with --small, else 96)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        settings = resolve_settings(args.device, small=args.small, repeats=args.repeats,
                                    pipeline=not args.skip_pipeline, real=args.real, train_steps=args.train_steps,
                                    segmenters=[name.strip() for name in args.segmenters.split(",") if name.strip()])
    except UsageError as exc:
        print(f"gpu_check.py: error: {exc}", file=sys.stderr)
        return 2
    if args.threads < 0:
        print(f"gpu_check.py: error: --threads must be 0 (torch's default) or more, got {args.threads}",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    header = header_line(settings)
    print(header, file=sys.stderr, flush=True)
    with scratch_folder() as workdir:
        check = Check(settings, workdir)
        rows = check.run()
    print(header)
    print()
    print(format_table(rows, check.meter.kind))
    if args.out is not None:
        atomic_write_json(args.out, report_dict(settings, rows, check.meter.kind, header))
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
