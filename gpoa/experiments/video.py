"""Video benchmark: GPOA's tracker on clips, beside the per-frame predictor, the ideal prompts and the
published DAVIS 2016 rows.

    python benchmarks/bench_video.py ROOT [ROOT ...] --out DIR [--frames N] [--policy PATH] [--editor rule]
                                     [--config FILE] [--set KEY=VALUE ...] [--device NAME] [--shard I/N]

Each ROOT is a folder of clips or one clip (``image/`` + ``mask/``, frames named in time order, the
first frame's mask the annotation given; the layout of davis-dev and of ``gpoa convert davis``);
nothing is written into it. Every clip is followed by ``gpoa track``'s own code
(:func:`gpoa.stages.track.track_clips`, so ``DIR`` also holds its masks, overlay videos and per-frame
rows), and on the same frames two more prompt sources are scored:

- ``perframe``: today's predictor on each frame against the first frame alone (``predict``, same
  policy and settings: what GPOA does without what a clip adds);
- ``ideal``: prompts sampled from each frame's true mask (:func:`gpoa.inference.ideal_prompts`), the
  segmenter's ceiling with point prompts.

``--policy none`` runs both without the agent (the initial prompts are segmented); ``--editor rule``
lets the hand-made lookahead rule (:class:`gpoa.agents.greedy.LookaheadRule`, under the same gates)
edit the prompts instead of the policy: what the learned agent adds is the difference.

J and F are DAVIS's (:mod:`gpoa.metrics`: the first and the last frame are not scored; per-clip
means, then the mean over clips). ``DIR/video.csv`` has one row per clip
(:data:`gpoa.stages.track.CLIP_COLUMNS` and the perframe and ideal means), ``DIR/video.md`` the table
with the published DAVIS 2016 rows of ``configs/paper_numbers.yaml`` beside ours (theirs: all 20
validation clips and other backbones, so not directly comparable) and, where some clips are DAVIS
2016 validation clips (by name, as ``gpoa convert davis`` names them), the same methods on those
clips alone (:func:`same_clips`). The last line is machine-readable:

``clips=<n> j_mean= f_mean= jf_mean= j_recall= decay= perframe_j_mean= perframe_jf_mean= ideal_j_mean=
seconds_per_frame= peak_rss_mb=``

(J, F in [0, 1]; ``j_recall`` and ``decay`` the means of the clips' J recall and J decay;
``seconds_per_frame`` the median over every tracked frame of the wall time per frame; ``peak_rss_mb``
the largest peak resident memory of a process when it finished a clip). Clips are split over
processes like ``gpoa track``'s (``--shard I/N`` or torchrun); the process that finishes last writes
the tables, which equal one process's. Exit code 1 when a frame or clip failed (the others were
measured), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gpoa.config import load_config, resolve_device
from gpoa.distributed import rank_device
from gpoa.errors import UsageError
from gpoa.evaluation import to_csv
from gpoa.experiments.domains import DEFAULT_CONFIG, DEFAULT_POLICY, write_tables
from gpoa.experiments.published import footnotes, load_published, side_by_side
from gpoa.inference import Optimizer, decode_masks, ideal_prompts
from gpoa.predictor import GPOAPredictor
from gpoa.runtime import array_digest, seed_everything
from gpoa.stages.track import CLIP_COLUMNS, track_clips

COMPANIONS = ("perframe", "ideal")
COLUMNS = (*CLIP_COLUMNS, *(f"{name}_{metric}" for name in COMPANIONS for metric in ("j_mean", "f_mean", "jf_mean")))
#: the table of configs/paper_numbers.yaml with the published rows
PUBLISHED = "davis2016"
#: its tables with the same methods' J and F of each DAVIS 2016 val clip
PER_CLIP = {"j_mean": "davis2016-clips-j", "f_mean": "davis2016-clips-f"}


class LastImage:
    """A backend that remembers its output for the last image it saw (by content): the tracker, the
    per-frame predictor and the ideal prompts of one frame share one segmenter embedding and one
    feature grid. Every other attribute is the wrapped backend's. ``method``: ``embed`` or ``extract``."""

    def __init__(self, backend: Any, method: str):
        self._backend, self._method = backend, method
        self._key, self._value = None, None
        setattr(self, method, self._remembered)

    def _remembered(self, image: np.ndarray):
        key = array_digest(image)
        if key != self._key:
            self._key, self._value = key, getattr(self._backend, self._method)(image)
        return self._value

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def rule_editor(optimizer: Optional[Optimizer], policy: Optional[str]) -> Optimizer:
    """``optimizer`` with the hand-made lookahead rule (same gates, same candidates and observations) in
    the policy's place; UsageError when there is none (no policy, or one that does not see the lookahead)."""
    if optimizer is None or optimizer.rule is None:
        raise UsageError(f"--editor rule needs a policy that sees the lookahead (the rule reads its observations); "
                         f"'{policy}' gives none")
    return dataclasses.replace(optimizer, greedy=optimizer.rule, source="lookahead_rule")


def companions(predictor: GPOAPredictor) -> dict:
    """The prompt sources scored beside the tracker (module docstring), for ``track_clips``."""
    def perframe(first_image: np.ndarray, first_mask: np.ndarray):
        predictor.set_reference(first_image, first_mask)
        return lambda image, truth: predictor.predict(image).mask

    def ideal(first_image: np.ndarray, first_mask: np.ndarray):
        segmenter, grid, cfg = predictor.backends.segmenter, predictor.grid, predictor.cfg
        return lambda image, truth: decode_masks(segmenter, image, [ideal_prompts(truth, grid, cfg)])[0]

    return {"perframe": perframe, "ideal": ideal}


def headline(rows: list, seconds: list) -> dict:
    """The numbers of the last line (module docstring) from the clips' rows and every tracked frame's
    wall time ``seconds``."""
    def mean(key: str) -> float:
        values = [row[key] for row in rows if row.get(key) is not None and np.isfinite(row[key])]
        return float(np.mean(values)) if values else float("nan")

    return {"clips": len(rows), "j_mean": mean("j_mean"), "f_mean": mean("f_mean"), "jf_mean": mean("jf_mean"),
            "j_recall": mean("j_recall"), "decay": mean("j_decay"), "perframe_j_mean": mean("perframe_j_mean"),
            "perframe_jf_mean": mean("perframe_jf_mean"), "ideal_j_mean": mean("ideal_j_mean"),
            "seconds_per_frame": float(np.median(seconds)) if seconds else float("nan"),
            "peak_rss_mb": max((row["peak_rss_mb"] for row in rows), default=float("nan"))}


def headline_line(h: dict) -> str:
    numbers = " ".join(f"{key}={h[key]:.3f}" for key in ("j_mean", "f_mean", "jf_mean", "j_recall", "decay",
                                                           "perframe_j_mean", "perframe_jf_mean", "ideal_j_mean",
                                                           "seconds_per_frame"))
    return f"clips={h['clips']} {numbers} peak_rss_mb={h['peak_rss_mb']:.0f}"


def frame_seconds(out: Path, rows: list) -> list:
    """The wall time of every tracked frame of the clips of ``rows``, from their ``OUT/<clip>.csv``."""
    seconds = []
    for row in rows:
        with open(out / f"{row['clip']}.csv", newline="") as handle:
            seconds += [float(r["seconds"]) for r in csv.DictReader(handle) if r["seconds"]]
    return seconds


def cell(value: Optional[float], scale: float = 100.0) -> str:
    """A table cell: ``value`` times ``scale`` (fractions in, % out), "–" where there is none."""
    return "–" if value is None or not np.isfinite(value) else f"{scale * value:.1f}"


def markdown(rows: list, h: dict, policy: str, config: str, frames: Optional[int]) -> str:
    """Per clip J, F, J&F, J recall and decay of the tracker, perframe and ideal J (in %), the mean
    over the clips, the published rows, and the headline."""
    limit = f", the first {frames} frames of each clip" if frames else ", every frame"
    lines = [f"# Video benchmark\n\npolicy `{policy}`, config `{config}`{limit}; DAVIS's J and F in % (the first and "
             "last frame not scored; mean over the clip's frames, MEAN = mean over clips). perframe: the predictor on "
             "each frame against the first frame alone; ideal: prompts sampled from each frame's truth.\n",
             "| clip | frames | J | F | J&F | J recall | J decay | perframe J | perframe J&F | ideal J |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['clip']} | {row['frames']} | {cell(row['j_mean'])} | {cell(row['f_mean'])} | "
                     f"{cell(row['jf_mean'])} | {cell(row['j_recall'])} | {cell(row['j_decay'])} | "
                     f"{cell(row.get('perframe_j_mean'))} | {cell(row.get('perframe_jf_mean'))} | "
                     f"{cell(row.get('ideal_j_mean'))} |")
    lines.append(f"| **MEAN** | {sum(r['frames'] for r in rows)} | {cell(h['j_mean'])} | {cell(h['f_mean'])} | "
                 f"{cell(h['jf_mean'])} | {cell(h['j_recall'])} | {cell(h['decay'])} | {cell(h['perframe_j_mean'])} | "
                 f"{cell(h['perframe_jf_mean'])} | {cell(h['ideal_j_mean'])} |")
    ours = f"GPOA tracker, embedded default ({len(rows)} clips)"
    _, beside = side_by_side(load_published(PUBLISHED), [(ours, "j_mean", 100 * h["j_mean"]),
                                                         (ours, "f_mean", 100 * h["f_mean"])],
                             [ours], [("j_mean", "J mean"), ("f_mean", "F mean")])
    lines += ["", "Beside the published DAVIS 2016 validation rows (theirs: all 20 clips, other backbones; not "
                  "directly comparable with a mean over other clips):", "", beside]
    lines += same_clips(rows)
    return "\n".join(lines) + f"\n\n`{headline_line(h)}`\n"


def same_clips(rows: list) -> list:
    """The Markdown lines comparing ours with the published methods on the clips of ``rows`` that are
    DAVIS 2016 val clips (by name): each clip's J, then the means over those clips of J and F (in %);
    none when no clip is one of them."""
    tables = {key: load_published(name) for key, name in PER_CLIP.items()}
    shared = [row for row in rows if row["clip"] in tables["j_mean"].columns]
    if not shared:
        return []
    methods = tables["j_mean"].rows
    clips = [row["clip"] for row in shared]

    def values(table, method: str) -> list:  # the method's figure of each clip (None: not published)
        cells = table.row(method)
        return [cells[clip].value if clip in cells else None for clip in clips]

    theirs = {key: {method: values(table, method) for method in methods} for key, table in tables.items()}

    def mean(figures: list) -> str:  # over every clip, or none when one is missing
        known = [v for v in figures if v is not None and np.isfinite(v)]
        return cell(float(np.mean(known)), 1.0) if known and len(known) == len(figures) else "–"

    lines = ["", f"On the same clips ({len(shared)} of DAVIS 2016 val): J per clip and the means over these clips, "
                 "in %; the published methods' figures are the means of the DAVIS benchmark's per-frame results:",
             "", "| clip | GPOA | " + " | ".join(methods) + " |", "| --- | ---: |" + " ---: |" * len(methods)]
    for index, row in enumerate(shared):
        published = [theirs["j_mean"][method][index] for method in methods]
        lines.append(f"| {row['clip']} | {cell(row['j_mean'])} | "
                     + " | ".join(cell(value, 1.0) for value in published) + " |")
    for key, label in (("j_mean", "J"), ("f_mean", "F")):
        ours = mean([None if row[key] is None else 100 * row[key] for row in shared])
        published = [mean(theirs[key][method]) for method in methods]
        lines.append(f"| **{label} mean** | {ours} | " + " | ".join(published) + " |")
    return lines + footnotes(tables["j_mean"]) + [f"- {line}" for line in tables["f_mean"].citations]


def main(argv=None, prog: str = "bench_video.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="a folder of clips, or one clip")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (video.csv, video.md, ...)")
    parser.add_argument("--frames", type=int, metavar="N", help="only the first N frames of every clip")
    parser.add_argument("--policy", default=str(DEFAULT_POLICY), metavar="PATH",
                        help="policy checkpoint (default: the one make demo trains, checkpoints/demo/best.pt; "
                             "'none': no agent)")
    parser.add_argument("--editor", choices=("policy", "rule"), default="policy",
                        help="who edits the prompts: the policy (default) or the hand-made lookahead rule")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE", help="YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--shard", default="", metavar="I/N",
                        help="handle the I-th of N shares of the clips (torchrun: RANK / WORLD_SIZE)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    policy = None if args.policy == "none" else args.policy
    try:
        if policy is not None and not Path(policy).is_file():
            raise UsageError(f"policy '{policy}' does not exist; train one (make demo) or pass --policy PATH "
                             "(--policy none: no agent)")
        cfg = load_config(args.config, args.overrides + [f"workspace={out}", f"shard={args.shard}"])
        cfg.data = list(args.roots)
        device = rank_device(resolve_device(cfg.device if args.device == "auto" else args.device))
        seed_everything(cfg.seed)
        predictor = GPOAPredictor(cfg, policy, device)
        if args.editor == "rule":
            predictor.optimizer = rule_editor(predictor.optimizer, policy)
        backends = predictor.backends
        backends.__dict__["segmenter"] = LastImage(backends.segmenter, "embed")
        backends.__dict__["extractor"] = LastImage(backends.extractor, "extract")
        report, rows = track_clips(cfg, device, out, policy, companions(predictor), predictor, args.frames)
        if not rows:
            return report.exit_code
        h = headline(rows, frame_seconds(out, rows))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return write_tables(out / "video", to_csv(rows, COLUMNS), markdown(rows, h, args.policy, args.config, args.frames),
                        headline_line(h), report)
