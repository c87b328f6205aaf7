"""``gpoa track``: one annotated frame, the whole clip. Every clip of ``--data`` is followed by
:meth:`gpoa.predictor.GPOAPredictor.track` (:mod:`gpoa.video`), its frames read one at a time.

A clip is a folder ``image/`` + ``mask/`` whose frames, sorted by name, are in time order; only the
first frame needs its mask (:mod:`gpoa.layout`). Nothing is written into it. In ``OUT`` (``--out``,
default the workspace):

- ``OUT/<clip>/<frame>.png``: every frame's mask (0/255, the frame's size): DAVIS's results layout,
  so ``OUT`` can be given to the DAVIS toolkit as it is;
- ``OUT/<clip>.mp4`` (``track.overlay=gif``: ``.gif``; ``none``: no video): the frames with the
  mask and the optimised prompts drawn;
- ``OUT/<clip>.csv``: one row per frame (:data:`FRAME_COLUMNS`; J and F where the frame has a mask);
- ``OUT/track.csv`` and ``OUT/track.md``: one row per clip (:data:`CLIP_COLUMNS`), DAVIS's J and F
  over the scored frames (:func:`gpoa.metrics.scored_frames`, those with a mask), where a clip has
  masks beyond its first frame; ``OUT/config.yaml``.

A clip whose ``OUT/<clip>.json`` (its row, written last) was made with the same settings is kept
(resume); any other is tracked again from its first frame. A frame that cannot be read is
reported and skipped (the next frame is followed from the last one read); a clip that fails is
reported and the others go on (exit code 1). Clips are split over processes (``--shard I/N`` or
torchrun; a clip is never split): each writes its clips' rows to ``track.part-I-of-N.json`` and
the process that finds every part of this run merges them into the tables one process writes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gpoa.config import Config, config_to_dict, save_config
from gpoa.errors import GPOAError, UsageError
from gpoa.evaluation import to_csv
from gpoa.features.store import file_digest
from gpoa.io import atomic_write_json, atomic_write_text, image_size, read_image, read_mask, write_mask
from gpoa.layout import TaskLayout, resolve_tasks
from gpoa.metrics import boundary_f, clip_statistics, jaccard, scored_frames
from gpoa.predictor import GPOAPredictor
from gpoa.runtime import RunContext, StageReport
from gpoa.viz import OverlayVideo, overlay_mask

FRAME_COLUMNS = ("frame", "present", "carried", "propagated", "agreement", "remembered", "seconds", "j", "f")
CLIP_COLUMNS = ("clip", "frames", "scored", "j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay",
                "jf_mean", "seconds_per_frame", "peak_rss_mb")
#: frames per second of the overlay videos
OVERLAY_FPS = 10.0

#: a companion: given the clip's first frame and its mask, a function that segments each next frame
#: ((image (H, W, 3) uint8, its true mask (H, W) bool) → mask (H, W) bool; called on the scored frames only,
#: after the tracker's step) — how a benchmark scores other prompt sources on the same frames
Companion = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def clip_settings(cfg: Config, policy: Optional[str]) -> dict:
    """What a clip's outputs depend on: every setting but where data and outputs live, and the policy
    file's content."""
    settings = config_to_dict(cfg)
    for key in ("data", "workspace", "shard", "overwrite", "device"):
        settings.pop(key, None)
    return {"config": settings, "policy": file_digest(Path(policy)) if policy else None}


def read_frames(layout: TaskLayout, report: StageReport, pending: deque) -> Iterator[np.ndarray]:
    """The clip's frames as arrays, in order: each readable frame's (path, image, truth or None, void or
    None; void: the pixels the metrics leave out, DAVIS's void label in ``ignore/``) is appended to
    ``pending`` before it is yielded; an unreadable frame (or mask) is reported and skipped.
    The first frame's problems are raised (nothing can be followed without it)."""
    frames = [image for image, _ in layout.reference] + list(layout.targets)
    for index, path in enumerate(frames):
        mask_path = layout.reference[0][1] if index == 0 else layout.target_mask(path.stem)
        void_path = layout.ignore_masks.get(path.stem)
        try:
            image = read_image(path)
            truth = None if mask_path is None else read_mask(mask_path, expected_size=image_size(image))
            void = None if void_path is None else read_mask(void_path, expected_size=image_size(image))
        except GPOAError as exc:
            if index == 0:
                raise
            report.fail(f"{layout.name}/{path.stem}", str(exc))
            continue
        pending.append((path, image, truth, void))
        yield image


def track_clip(predictor: GPOAPredictor, layout: TaskLayout, out: Path, report: StageReport,
               companions: Optional[dict] = None, progress: bool = True) -> dict:
    """Follow one clip and write its outputs (module docstring) → its row: :data:`CLIP_COLUMNS`, plus
    ``<name>_j_mean``, ``<name>_f_mean`` and ``<name>_jf_mean`` for each of ``companions`` (name →
    :data:`Companion`), scored on the same frames. ``seconds_per_frame`` is the median wall time of
    the tracker's frames (the first frame, given, and the companions not counted); ``peak_rss_mb`` the
    process's peak resident memory when the clip is done."""
    settings = predictor.cfg.track
    pending: deque = deque()
    frames = read_frames(layout, report, pending)
    first_image = next(frames)
    _, _, first_mask, _ = pending[0]
    following = {name: make(first_image, first_mask) for name, make in (companions or {}).items()}
    folder = out / layout.name
    video = (None if settings.overlay == "none" else
             OverlayVideo(out / f"{layout.name}.{settings.overlay}", OVERLAY_FPS, settings.overlay))
    rows, scores, seconds = [], {name: ([], []) for name in ["track", *following]}, []
    count = len(layout.targets) + 1
    started = time.perf_counter()
    try:
        stream = predictor.track(_chain(first_image, frames), first_mask)
        for index, prediction in enumerate(tqdm(stream, total=count, desc=f"track [{layout.name}]", unit="frame",
                                                disable=not progress)):
            path, image, truth, void = pending.popleft()
            if index:
                seconds.append(time.perf_counter() - started)
            write_mask(folder / f"{path.stem}.png", prediction.mask)
            if video is not None:
                optimized = prediction.prompts.optimized
                video.add(overlay_mask(image, prediction.mask, optimized.positive_points, optimized.negative_points))
            info = prediction.track
            row = {"frame": path.stem, "present": prediction.present, "carried": info.carried if info else "",
                   "propagated": info.propagated if info else "",
                   "agreement": "" if info is None or np.isnan(info.agreement) else round(info.agreement, 4),
                   "remembered": info.remembered if info else "", "seconds": round(seconds[-1], 4) if index else "",
                   "j": "", "f": ""}
            frame_number = layout_index(layout, path)
            if truth is not None and frame_number in scored_frames(count):
                for name, mask in [("track", prediction.mask)] + [(n, segment(image, truth)) for n, segment in
                                                                 following.items()]:
                    scores[name][0].append(jaccard(mask, truth, void))
                    scores[name][1].append(boundary_f(mask, truth, void=void))
                row["j"], row["f"] = round(scores["track"][0][-1], 4), round(scores["track"][1][-1], 4)
            rows.append(row)
            started = time.perf_counter()
    except BaseException:
        if video is not None:
            video.discard()
        raise
    if video is not None:
        video.close()
    atomic_write_text(out / f"{layout.name}.csv", to_csv(rows, FRAME_COLUMNS))
    j, f = (clip_statistics(values) for values in scores["track"])
    result = {"clip": layout.name, "frames": count, "scored": len(scores["track"][0]),
              "j_mean": j["mean"], "j_recall": j["recall"], "j_decay": j["decay"],
              "f_mean": f["mean"], "f_recall": f["recall"], "f_decay": f["decay"],
              "jf_mean": (j["mean"] + f["mean"]) / 2, "seconds_per_frame": float(np.median(seconds)) if seconds
              else float("nan"), "peak_rss_mb": peak_rss_mb()}
    for name in following:
        j_values, f_values = scores[name]
        j_mean = float(np.mean(j_values)) if j_values else float("nan")
        f_mean = float(np.mean(f_values)) if f_values else float("nan")
        result.update({f"{name}_j_mean": j_mean, f"{name}_f_mean": f_mean, f"{name}_jf_mean": (j_mean + f_mean) / 2})
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def layout_index(layout: TaskLayout, path: Path) -> int:
    """The position of frame ``path`` in its clip (the first frame is 0)."""
    if path == layout.reference[0][0]:
        return 0
    return layout.targets.index(path) + 1


def _chain(first: np.ndarray, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def track_clips(cfg: Config, device: str = "cpu", out: Optional[Path] = None, policy: Optional[str] = None,
                companions: Optional[dict] = None, predictor: Optional[GPOAPredictor] = None,
                max_frames: Optional[int] = None) -> tuple:
    """``gpoa track`` over every clip of ``cfg.data`` → ``(StageReport, rows)``: the rows of every clip
    in clip order once every process's part is there ([] in a process that is not the last),
    written to ``out`` (default ``cfg.workspace``) as the module docstring says. ``policy``: a policy
    file (None: no agent); ``companions``: more prompt sources scored on the same frames
    (:func:`track_clip`); ``max_frames``: follow only the first N frames of every clip."""
    out = Path(out if out is not None else cfg.workspace)
    layouts = resolve_tasks(cfg.data, out, clips=True)
    if max_frames is not None:
        if max_frames < 2:
            raise UsageError(f"a clip needs at least 2 frames to follow (the first is given), got {max_frames}")
        layouts = [dataclasses.replace(layout, targets=layout.targets[:max_frames - 1]) for layout in layouts]
    if predictor is None:
        predictor = GPOAPredictor(cfg, policy, device)
    context = RunContext.from_settings(cfg.shard)
    report = StageReport("track")
    settings = clip_settings(cfg, policy)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = []
    for layout in context.mine(layouts):
        stamp = out / f"{layout.name}.json"
        frames = [p.stem for p in [layout.reference[0][0], *layout.targets]]
        fingerprint = {"settings": settings, "frames": frames, "companions": sorted(companions or {})}
        if not cfg.overwrite and stamp.is_file():
            kept = json.loads(stamp.read_text())
            if kept.get("fingerprint") == fingerprint:
                report.skipped.append((layout.name, "tracked by an earlier run"))
                rows.append(kept["row"])
                continue
        try:
            row = track_clip(predictor, layout, out, report, companions)
        except (GPOAError, ValueError, OSError) as exc:
            report.fail(layout.name, str(exc))
            continue
        atomic_write_json(stamp, {"fingerprint": fingerprint, "row": row})
        report.done.append(layout.name)
        rows.append(row)
    names = [layout.name for layout in layouts]
    if context.world > 1:
        # a part of an earlier run (other clips, settings or frame limit) is never merged with this run's
        run = {"clips": names, "settings": settings, "max_frames": max_frames}
        atomic_write_json(out / context.part_name("track.json"), {**run, "rows": rows})
        parts = [out / name for name in context.part_names("track.json")]
        data = [json.loads(p.read_text()) for p in parts if p.is_file()]
        if len(data) < len(parts) or any({key: d.get(key) for key in run} != run for d in data):
            print(f"[track] shard {context.rank}/{context.world} done; the tables are written by the shard that "
                  "finishes last")
            return report, []
        rows = [row for d in data for row in d["rows"]]
    position = {name: i for i, name in enumerate(names)}
    rows = sorted(rows, key=lambda row: position[row["clip"]])
    write_track_tables(out, rows)
    return report, rows


def write_track_tables(out: Path, rows: list) -> None:
    """``OUT/track.csv`` and ``OUT/track.md`` of the clips' rows (in the order given)."""
    columns = list(CLIP_COLUMNS) + [k for k in (rows[0] if rows else {}) if k not in CLIP_COLUMNS]
    atomic_write_text(out / "track.csv", to_csv(rows, columns))
    buffer = io.StringIO()
    lines = ["| clip | frames | scored | J | F | J&F | J recall | J decay | s/frame |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['clip']} | {row['frames']} | {row['scored']} | {_percent(row['j_mean'])} | "
                     f"{_percent(row['f_mean'])} | {_percent(row['jf_mean'])} | {_percent(row['j_recall'])} | "
                     f"{_percent(row['j_decay'])} | {row['seconds_per_frame']:.2f} |")
    buffer.write("# Tracking results (J, F, J&F, recall and decay in %)\n\n" + "\n".join(lines) + "\n")
    atomic_write_text(out / "track.md", buffer.getvalue())


def _percent(value: float) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}"

