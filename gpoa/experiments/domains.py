"""Cross-domain benchmark: one policy, many one-shot domains, every prompt set side by side.

    python benchmarks/bench_domains.py ROOT [ROOT ...] --out DIR [--policy PATH] [--targets N]
                                       [--config FILE] [--set KEY=VALUE ...] [--device NAME]
                                       [--reference K | --shots K] [--absent N]

Each ROOT is a folder of domains (``<domain>/image/<stem>.*`` + ``<domain>/mask/<stem>.png``, the
layout of real-dev), one such domain, or a dataset folder in the stages' layout (e.g.
``data/demo/membrane``, used with its own reference and targets), or a folder of dataset
folders. Protocol per domain: sort the stems; the first pair is the reference, the others are the
targets (at most N). ``--reference K`` makes the K-th stem of every domain folder the reference
instead (the others, in order, are the targets): how much the numbers depend on which pair is the
one shot. ``--shots K`` (1 to 5) makes the first K pairs of every domain folder its references
(k-shot) and the pairs after the first 5 its targets, so K = 1..5 score the same targets.
``--absent N`` adds to every domain N images drawn (fixed seed) from the targets of the other
domains given, with an empty truth mask: the per-domain rows and means stay over the domain's own
targets, and the last line says how many of the added images got an empty mask
(``absent_empty_share``) and how many of the domains' own targets kept a non-empty one
(``present_kept_share``), both for the optimised prompts (:mod:`gpoa.presence`). Nothing is
written into ROOT: every output goes to ``DIR/<domain>/``.

It runs the stages' own code (stage 1, stage 3 with the oracle, stage 4) with the models loaded
once (``--shard i/N`` or torchrun splits every domain's targets over processes; the one that
finishes last writes the tables, identical to one process's), and writes ``DIR/domains.csv`` (columns ``domain,prompt_set,images,dice_mean,dice_std,
iou_mean,hd95_mean``; a row per domain and prompt set — initial, optimized, topk, random_subset,
lookahead_rule (when the policy sees the lookahead), oracle, ideal — then the ``MEAN`` rows, means over domains) and ``DIR/domains.md``. Its last line
is machine-readable:

``domains=<n> mean_gain=<+x.xxx> worst_gain=<+x.xxx> worst_domain=<name> gain_vs_topk=<+x.xxx>
initial_mean=<x.xxx> optimized_mean=<x.xxx> oracle_mean=<x.xxx> rule_mean=<x.xxx> capture=<x.xxx>``

and, with ``--absent``, `` absent_empty_share=<x.xxx> present_kept_share=<x.xxx>``
(gains: optimized − initial Dice per domain, then averaged; Dice as a fraction; ``rule_mean`` the
mean of the hand-made ``lookahead_rule``; ``capture`` = (optimized_mean − initial_mean) /
(oracle_mean − initial_mean), the share of the gain the greedy oracle reaches over the same
candidates that the policy takes; ``domains.md`` has it per domain). Exit code 1 when some image
failed (the others were measured), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from gpoa.backends import Backends
from gpoa.config import load_config, resolve_device
from gpoa.distributed import rank_device
from gpoa.errors import UsageError
from gpoa.evaluation import MEAN_TASK, mean_over_tasks, summarise, to_csv
from gpoa.experiments.taught import TRAIN_SETS, taught_domains, taught_summary
from gpoa.features.store import file_digest
from gpoa.io import atomic_write_text, image_size, read_image, write_mask
from gpoa.layout import TaskLayout, resolve_tasks
from gpoa.runtime import RunContext, StageReport, is_fresh, seed_everything, stable_seed
from gpoa.stages.initial_prompts import generate_initial_prompts
from gpoa.stages.optimize import optimize_prompts, optimize_task
from gpoa.stages.segmentation import segment_and_evaluate
from gpoa.tasks import Task

ROOT = Path(__file__).resolve().parents[2]  # the repository: its configs/ and checkpoints/

PROMPT_SETS = ("initial", "optimized", "topk", "random_subset", "lookahead_rule", "oracle", "ideal")
COLUMNS = ("domain", "prompt_set", "images", "dice_mean", "dice_std", "iou_mean", "hd95_mean")
DEFAULT_POLICY = ROOT / "checkpoints" / "demo" / "best.pt"
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"


#: with --shots, the targets are the pairs after this many, whatever K
SHOT_POOL = 5
#: the folder of a task's output that holds the images added by --absent (links) and their empty masks
ABSENT = "absent"


def benchmark_tasks(roots: list, out: Path, max_targets: int, cfg, backends: Backends, reference: int = 0,
                    shots: int = 0, absent: int = 0) -> list:
    """The tasks of ``roots`` with every output under ``out/<task>``, at most ``max_targets`` targets
    and the ``reference``-th pair of each domain folder as its reference; with ``shots`` K > 0 the
    first K pairs as references and the pairs after the first :data:`SHOT_POOL` as targets; with
    ``absent`` N > 0, N images of the other tasks' targets added to each task's (see
    :func:`add_absent_targets`)."""
    if shots and reference:
        raise UsageError("--shots takes the first K pairs as the references and --reference picks one; use one of them")
    if shots and not 1 <= shots <= SHOT_POOL:
        raise UsageError(f"--shots must be 1 to {SHOT_POOL} (the targets are the pairs after the first {SHOT_POOL}), "
                         f"got {shots}")
    tasks = []
    for layout in resolve_tasks(roots, out, None if shots else max_targets, reference_index=reference):
        if shots:
            layout = k_shot_layout(layout, shots)
        targets = layout.targets[:max_targets]
        layout = dataclasses.replace(layout, root=out / layout.name, targets=targets,
                                     target_masks={p.stem: layout.target_masks[p.stem] for p in targets
                                                   if p.stem in layout.target_masks})
        tasks.append(Task(layout, backends, cfg))
    if absent:
        tasks = add_absent_targets(tasks, absent, cfg.seed)
    return tasks


def k_shot_layout(layout: TaskLayout, shots: int) -> TaskLayout:
    """A domain folder's task with its first ``shots`` pairs (stems sorted) as references and the
    pairs after the first :data:`SHOT_POOL` as targets (the same targets for every K)."""
    if layout.kind != "domain":
        raise UsageError(f"--shots K picks the references of a domain folder (image/ + mask/), but '{layout.source}' "
                         "is a dataset folder with its own reference_image/; leave it out")
    pairs = layout.reference + [(p, layout.target_masks[p.stem]) for p in layout.targets]
    if len(pairs) <= SHOT_POOL:
        raise UsageError(f"domain '{layout.source}' has {len(pairs)} pairs; --shots needs more than {SHOT_POOL} (the "
                         f"first {SHOT_POOL} are the reference pool, the others the targets)")
    targets = [image for image, _ in pairs[SHOT_POOL:]]
    return dataclasses.replace(layout, reference=pairs[:shots], targets=targets,
                               target_masks={p.stem: mask for p, mask in pairs[SHOT_POOL:]},
                               train=pairs[shots:SHOT_POOL],
                               ignore_masks={p.stem: layout.ignore_masks[p.stem] for p in targets
                                             if p.stem in layout.ignore_masks})


def add_absent_targets(tasks: list, count: int, seed: int) -> list:
    """Each task with ``count`` more targets: images drawn (a generator seeded by ``seed`` and the content
    of the task's reference image, never a name) from the other tasks' targets (ordered by content), each linked into ``<task output>/absent/image/`` as
    ``absent__<task>__<stem>`` with an empty truth mask in ``absent/mask/``. The inputs are never
    written to. Stems of the added targets start with ``absent__``."""
    if len(tasks) < 2:
        raise UsageError("--absent draws images from the other domains given; give at least two domains")
    pool = sorted(((task.name, path) for task in tasks for path in task.layout.targets),
                  key=lambda item: file_digest(item[1]))
    result = []
    for task in tasks:
        others = [item for item in pool if item[0] != task.name]
        rng = np.random.default_rng(stable_seed(seed, "absent", file_digest(task.layout.reference[0][0])))
        chosen = [others[i] for i in sorted(rng.choice(len(others), size=min(count, len(others)), replace=False))]
        folder = task.layout.root / ABSENT
        targets, masks = list(task.layout.targets), dict(task.layout.target_masks)
        for source, path in chosen:
            stem = f"{ABSENT}__{source}__{path.stem}"
            link = folder / "image" / f"{stem}{path.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(path.resolve())
            mask = folder / "mask" / f"{stem}.png"
            width, height = image_size(read_image(path))
            write_mask(mask, np.zeros((height, width), dtype=bool))
            targets.append(link)
            masks[stem] = mask
        result.append(Task(dataclasses.replace(task.layout, targets=targets, target_masks=masks), task.backends,
                           task.cfg))
    return result


def is_absent(stem: str) -> bool:
    """Whether a target stem is one that :func:`add_absent_targets` added."""
    return stem.startswith(f"{ABSENT}__")


def domain_rows(summary: list, order: tuple = PROMPT_SETS) -> list:
    """Stage 4's summary rows → rows of ``COLUMNS`` in the benchmark's prompt-set ``order``, MEAN last."""
    per_task = [s for s in summary if s["task"] != MEAN_TASK]
    ordered = [s for domain in dict.fromkeys(s["task"] for s in per_task) for name in order
               for s in per_task if s["task"] == domain and s["prompt_set"] == name]
    return [{"domain": s["task"], **{k: s[k] for k in COLUMNS[1:]}}
            for s in ordered + mean_over_tasks(per_task, order)]


def present_summary(tasks: list) -> list:
    """Stage 4's summary rows of every task, recomputed over its own targets only (the ones
    :func:`add_absent_targets` added left out), from the full-precision ``metrics.json``."""
    summary = []
    for task in tasks:
        rows = json.loads((task.layout.results / "metrics.json").read_text())
        own = [row for row in rows if not is_absent(row["image"])]
        summary += summarise(own, list(dict.fromkeys(row["prompt_set"] for row in rows)))
    return summary


def presence_shares(tasks: list, prompt_set: str = "optimized") -> dict:
    """``absent_empty_share`` (added images whose ``prompt_set`` mask is empty) and
    ``present_kept_share`` (own targets whose mask is not), over every task's ``metrics.json``."""
    rows = [row for task in tasks for row in json.loads((task.layout.results / "metrics.json").read_text())
            if row["prompt_set"] == prompt_set]
    absent = [row["prediction_area"] == 0 for row in rows if is_absent(row["image"])]
    kept = [row["prediction_area"] > 0 for row in rows if not is_absent(row["image"])]
    return {"absent_empty_share": float(np.mean(absent)) if absent else float("nan"),
            "present_kept_share": float(np.mean(kept)) if kept else float("nan")}


def capture(optimized: float, initial: float, oracle: float) -> float:
    """The share of the oracle's reachable gain that the policy takes: (optimized − initial) /
    (oracle − initial); nan when the oracle gains nothing."""
    reach = oracle - initial
    return (optimized - initial) / reach if reach > 1e-9 else float("nan")


def headline(rows: list) -> dict:
    """The numbers of the last line (module docstring)."""
    by = {(r["domain"], r["prompt_set"]): r["dice_mean"] for r in rows}
    domains = [d for d in dict.fromkeys(r["domain"] for r in rows) if d != MEAN_TASK
               and (d, "initial") in by and (d, "optimized") in by]
    if not domains:
        raise UsageError("no domain has both initial and optimized results; nothing to compare")
    gains = {d: by[(d, "optimized")] - by[(d, "initial")] for d in domains}
    worst = min(domains, key=lambda d: gains[d])
    vs_topk = [by[(d, "optimized")] - by[(d, "topk")] for d in domains if (d, "topk") in by]

    def mean(name):
        values = [by[(d, name)] for d in domains if (d, name) in by]
        return float(np.mean(values)) if values else float("nan")

    initial, optimized, oracle = mean("initial"), mean("optimized"), mean("oracle")
    return {"domains": len(domains), "mean_gain": float(np.mean(list(gains.values()))),
            "worst_gain": gains[worst], "worst_domain": worst,
            "gain_vs_topk": float(np.mean(vs_topk)) if vs_topk else float("nan"),
            "initial_mean": initial, "optimized_mean": optimized, "oracle_mean": oracle,
            "rule_mean": mean("lookahead_rule"), "capture": capture(optimized, initial, oracle), "gains": gains}


def taught_headline(rows: list, domains: list) -> dict:
    """The numbers ``--train`` adds to the last line: means over the domains of ``taught``,
    ``taught_rule``, ``rule_kshot``, ``plugplay`` (the one-shot ``optimized`` row), ``initial_kshot``
    and ``oracle_kshot``; ``taught_capture`` = (taught − initial_kshot) / (oracle_kshot − initial_kshot)
    over those means; ``train_seconds``, the longest teaching of one domain."""
    by = {(r["domain"], r["prompt_set"]): r["dice_mean"] for r in rows}
    names = [d.name for d in domains]

    def mean(name):
        values = [by[(d, name)] for d in names if (d, name) in by]
        return float(np.mean(values)) if values else float("nan")

    h = {f"{key}_mean": mean(name) for key, name in (("taught", "taught"), ("taught_rule", "taught_rule"),
                                                     ("rule_kshot", "rule_kshot"), ("plugplay", "optimized"),
                                                     ("initial_kshot", "initial_kshot"),
                                                     ("oracle_kshot", "oracle_kshot"))}
    h["taught_capture"] = capture(h["taught_mean"], h["initial_kshot_mean"], h["oracle_kshot_mean"])
    h["train_seconds"] = max(d.train_seconds for d in domains)
    return h


def headline_line(h: dict) -> str:
    line = (f"domains={h['domains']} mean_gain={h['mean_gain']:+.3f} worst_gain={h['worst_gain']:+.3f} "
            f"worst_domain={h['worst_domain']} gain_vs_topk={h['gain_vs_topk']:+.3f} "
            f"initial_mean={h['initial_mean']:.3f} optimized_mean={h['optimized_mean']:.3f} "
            f"oracle_mean={h['oracle_mean']:.3f} rule_mean={h['rule_mean']:.3f} capture={h['capture']:.3f}")
    if "absent_empty_share" in h:
        line += f" absent_empty_share={h['absent_empty_share']:.3f} present_kept_share={h['present_kept_share']:.3f}"
    if "taught_mean" in h:
        line += "".join(f" {key}={h[key]:.3f}" for key in ("taught_mean", "taught_rule_mean", "rule_kshot_mean",
                                                          "plugplay_mean", "initial_kshot_mean", "oracle_kshot_mean",
                                                          "taught_capture"))
        line += f" train_seconds={h['train_seconds']:.0f}"
    return line


def markdown(rows: list, h: dict, policy: Path, config: str, targets: int, reference: int = 0, shots: int = 0,
             absent: int = 0, taught: Optional[list] = None) -> str:
    """Dice (%) per domain (rows) and prompt set (columns), the gain, the capture, and the headline;
    with ``taught`` (``--train``'s domains) the taught capture and the teaching time per domain too."""
    present = [name for name in PROMPT_SETS + TRAIN_SETS if any(r["prompt_set"] == name for r in rows)]
    by = {(r["domain"], r["prompt_set"]): r for r in rows}
    setting = (f", reference: pair {reference} of each domain (stems sorted)" if reference else "") \
        + (f", {shots}-shot: the first {shots} pairs are the references, the targets those after the first "
           f"{SHOT_POOL}" if shots else "") \
        + (f", {absent} images of the other domains added to each as targets without the object (the rows are "
           "over the domain's own targets)" if absent else "") \
        + (f", {taught[0].labelled - 1} labelled pairs after the reference taught each domain "
           "(`gpoa teach`; targets = the test targets, the pairs after those; optimized = plugplay; taught capture "
           "= (taught − initial_kshot) / (oracle_kshot − initial_kshot); teach s = its training time)" if taught
           else "")
    lines = [f"# Cross-domain benchmark\n\npolicy `{policy}`, config `{config}`, at most {targets} targets per "
             f"domain{setting}; Dice in % (mean over targets; MEAN = mean over domains), gain = optimized − "
             "initial, capture = gain / (oracle − initial).\n",
             "| domain | targets | " + " | ".join(present) + " | gain | capture |"
             + (" taught capture | teach s |" if taught else ""),
             "| --- | ---: | " + " | ".join("---:" for _ in present) + " | ---: | ---: |"
             + (" ---: | ---: |" if taught else "")]
    seconds = {d.name: d.train_seconds for d in taught or []}
    for domain in dict.fromkeys(r["domain"] for r in rows):
        cells = [f"{100 * by[(domain, n)]['dice_mean']:.1f}" if (domain, n) in by else "" for n in present]
        images = by.get((domain, "initial"), next(r for r in rows if r["domain"] == domain))["images"]
        dice = {n: by[(domain, n)]["dice_mean"] for n in ("initial", "optimized", "oracle") if (domain, n) in by}
        gain = dice["optimized"] - dice["initial"] if {"initial", "optimized"} <= dice.keys() else float("nan")
        share = capture(dice["optimized"], dice["initial"], dice["oracle"]) if len(dice) == 3 else float("nan")
        line = (f"| {domain} | {images} | " + " | ".join(cells) + f" | {100 * gain:+.1f} | "
                + ("–" if np.isnan(share) else f"{share:.2f}") + " |")
        if taught:
            kshot = {n: by[(domain, n)]["dice_mean"] for n in ("taught", "initial_kshot", "oracle_kshot")
                     if (domain, n) in by}
            share = capture(kshot["taught"], kshot["initial_kshot"], kshot["oracle_kshot"]) if len(kshot) == 3 \
                else float("nan")
            line += (" –" if np.isnan(share) else f" {share:.2f}") + " | " \
                + (f"{seconds[domain]:.0f}" if domain in seconds else "–") + " |"
        lines.append(line)
    return "\n".join(lines) + f"\n\n`{headline_line(h)}`\n"


def roots_parser(prog: str, doc: str, outputs: str) -> argparse.ArgumentParser:
    """The command line an experiment over ROOTs shares: ``roots``, ``--out`` (help: ``outputs``),
    ``--targets``, ``--config``, ``--set`` and ``--device``; ``doc`` its module docstring."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="ROOT", help="folder of domains, a domain, or a dataset folder")
    parser.add_argument("--out", required=True, metavar="DIR", help=f"output folder ({outputs})")
    parser.add_argument("--targets", type=int, default=10, metavar="N", help="at most N targets per domain")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE", help="YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps")
    return parser


def main(argv=None, prog: str = "bench_domains.py") -> int:
    parser = roots_parser(prog, __doc__, "domains.csv, domains.md, ...")
    parser.add_argument("--policy", default=str(DEFAULT_POLICY), metavar="PATH",
                        help="policy checkpoint (default: the one make demo trains, checkpoints/demo/best.pt)")
    parser.add_argument("--reference", type=int, default=0, metavar="K",
                        help="the K-th pair of each domain folder (stems sorted, from 0) is the reference")
    parser.add_argument("--shots", type=int, default=0, metavar="K",
                        help=f"k-shot: the first K pairs (1 to {SHOT_POOL}) are the references, the pairs after the "
                             f"first {SHOT_POOL} the targets")
    parser.add_argument("--absent", type=int, default=0, metavar="N",
                        help="add N images of the other domains to each domain's targets, with empty truth masks")
    parser.add_argument("--train", type=int, default=0, metavar="K",
                        help="teach each domain on its K labelled pairs after the reference (gpoa teach) and score "
                             "the taught rows on the pairs after those (gpoa/experiments/taught.py)")
    parser.add_argument("--shard", default="", metavar="I/N",
                        help="handle the I-th of N shares of every domain's targets (torchrun: RANK / WORLD_SIZE)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.targets < 1:
            raise UsageError(f"--targets must be at least 1, got {args.targets}")
        cfg = load_config(args.config, args.overrides + [f"workspace={out}", f"optimize.policy={args.policy}",
                                                         "optimize.oracle=true", f"shard={args.shard}"])
        device = rank_device(resolve_device(cfg.device if args.device == "auto" else args.device))
        seed_everything(cfg.seed)
        backends = Backends(cfg, device)
        if args.absent < 0:
            raise UsageError(f"--absent must be 0 or more, got {args.absent}")
        if args.train and (args.shots or args.absent or args.reference):
            raise UsageError("--train K takes the first pair as the reference and the next K as the labelled set; "
                             "leave out --shots, --absent and --reference")
        report, taught = StageReport("bench"), None
        context = RunContext.from_settings(cfg.shard)
        if args.train:
            taught = taught_domains(args.roots, out, args.train, args.targets, cfg, backends, Path(args.policy))
            tasks = [task for domain in taught for task in domain.tasks.values()]
            print(f"[bench] {len(taught)} domain(s) taught: {', '.join(d.name for d in taught)}; policy {args.policy}")
            report.merge(generate_initial_prompts(cfg, device, tasks))
            for domain in taught:
                for kind, task in domain.tasks.items():
                    optimize_task(task, backends, domain.optimizers[kind], report, context)
        else:
            tasks = benchmark_tasks(args.roots, out, args.targets, cfg, backends, args.reference, args.shots,
                                    args.absent)
            print(f"[bench] {len(tasks)} domain(s): {', '.join(t.name for t in tasks)}; policy {args.policy}")
            report.merge(generate_initial_prompts(cfg, device, tasks))
            report.merge(optimize_prompts(cfg, device, tasks))
        report.merge(segment_and_evaluate(cfg, device, tasks)[0])
        # every task's merged summary (complete once every shard has finished its part; one older
        # than a part of this run is an earlier run's)
        summaries = [task.layout.results / "summary.json" for task in tasks]
        if not all(is_fresh(path, *(task.layout.results / name for name in context.part_names("metrics.json")))
                   for path, task in zip(summaries, tasks)):
            print(f"[bench] shard {context.rank}/{context.world} done; domains.csv is written by the shard that "
                  "finishes last")
            return report.exit_code
        if args.absent:
            rows = domain_rows(present_summary(tasks))
            h = {**headline(rows), **presence_shares(tasks)}
        elif taught:
            rows = domain_rows(taught_summary(taught, {task.name: json.loads(path.read_text())
                                                       for task, path in zip(tasks, summaries)}),
                               PROMPT_SETS + TRAIN_SETS)
            h = {**headline(rows), **taught_headline(rows, taught)}
        else:
            rows = domain_rows([row for path in summaries for row in json.loads(path.read_text())])
            h = headline(rows)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return write_tables(out / "domains", to_csv(rows, COLUMNS),
                        markdown(rows, h, Path(args.policy), args.config, args.targets, args.reference,
                                  args.shots, args.absent, taught),
                        headline_line(h), report)


def write_tables(stem: Path, csv_text: str, table: str, line: str, report: StageReport) -> int:
    """Write ``<stem>.csv`` and the Markdown ``table`` as ``<stem>.md`` (atomically), print the table,
    ``report``'s failures (stderr) and the machine-readable ``line`` last; returns the exit code."""
    atomic_write_text(stem.with_suffix(".csv"), csv_text)
    atomic_write_text(stem.with_suffix(".md"), table)
    print("\n" + table)
    if report.failed:
        print(report.summary(), file=sys.stderr)
    print(line)
    return report.exit_code
