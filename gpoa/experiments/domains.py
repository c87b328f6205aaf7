"""Cross-domain benchmark: one policy, many one-shot domains, every prompt set side by side.

    python benchmarks/bench_domains.py ROOT [ROOT ...] --out DIR [--policy PATH] [--targets N]
                                       [--config FILE] [--set KEY=VALUE ...] [--device NAME]
                                       [--reference K]

Each ROOT is a folder of domains (``<domain>/image/<stem>.*`` + ``<domain>/mask/<stem>.png``, the
layout of real-dev), one such domain, or a dataset folder in the stages' layout (e.g.
``data/demo/membrane``, used with its own reference and targets), or a folder of dataset
folders. Protocol per domain: sort the stems; the first pair is the reference, the others are the
targets (at most N). ``--reference K`` makes the K-th stem of every domain folder the reference
instead (the others, in order, are the targets): how much the numbers depend on which pair is the
one shot. Nothing is written into ROOT: every output goes to ``DIR/<domain>/``.

It runs the stages' own code (stage 1, stage 3 with the oracle, stage 4) with the models loaded
once (``--shard i/N`` or torchrun splits every domain's targets over processes; the one that
finishes last writes the tables, identical to one process's), and writes ``DIR/domains.csv`` (columns ``domain,prompt_set,images,dice_mean,dice_std,
iou_mean,hd95_mean``; a row per domain and prompt set — initial, optimized, topk, random_subset,
lookahead_rule (when the policy sees the lookahead), oracle, ideal — then the ``MEAN`` rows, means over domains) and ``DIR/domains.md``. Its last line
is machine-readable:

``domains=<n> mean_gain=<+x.xxx> worst_gain=<+x.xxx> worst_domain=<name> gain_vs_topk=<+x.xxx>
initial_mean=<x.xxx> optimized_mean=<x.xxx> oracle_mean=<x.xxx>``

(gains: optimized − initial Dice per domain, then averaged; Dice as a fraction). Exit code 1 when
some image failed (the others were measured), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from gpoa.backends import Backends
from gpoa.config import load_config, resolve_device
from gpoa.distributed import rank_device
from gpoa.errors import UsageError
from gpoa.evaluation import MEAN_TASK, mean_over_tasks, to_csv
from gpoa.io import atomic_write_text
from gpoa.layout import resolve_tasks
from gpoa.runtime import RunContext, StageReport, is_fresh, seed_everything
from gpoa.stages.initial_prompts import generate_initial_prompts
from gpoa.stages.optimize import optimize_prompts
from gpoa.stages.segmentation import segment_and_evaluate
from gpoa.tasks import Task

ROOT = Path(__file__).resolve().parents[2]  # the repository: its configs/ and checkpoints/

PROMPT_SETS = ("initial", "optimized", "topk", "random_subset", "lookahead_rule", "oracle", "ideal")
COLUMNS = ("domain", "prompt_set", "images", "dice_mean", "dice_std", "iou_mean", "hd95_mean")
DEFAULT_POLICY = ROOT / "checkpoints" / "demo" / "best.pt"
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"


def benchmark_tasks(roots: list, out: Path, max_targets: int, cfg, backends: Backends, reference: int = 0) -> list:
    """The tasks of ``roots`` with every output under ``out/<task>``, at most ``max_targets`` targets
    and the ``reference``-th pair of each domain folder as its reference."""
    tasks = []
    for layout in resolve_tasks(roots, out, max_targets, reference_index=reference):
        targets = layout.targets[:max_targets]
        layout = dataclasses.replace(layout, root=out / layout.name, targets=targets,
                                     target_masks={p.stem: layout.target_masks[p.stem] for p in targets
                                                   if p.stem in layout.target_masks})
        tasks.append(Task(layout, backends, cfg))
    return tasks


def domain_rows(summary: list) -> list:
    """Stage 4's summary rows → rows of ``COLUMNS`` in the benchmark's prompt-set order, MEAN last."""
    per_task = [s for s in summary if s["task"] != MEAN_TASK]
    ordered = [s for domain in dict.fromkeys(s["task"] for s in per_task) for name in PROMPT_SETS
               for s in per_task if s["task"] == domain and s["prompt_set"] == name]
    return [{"domain": s["task"], **{k: s[k] for k in COLUMNS[1:]}}
            for s in ordered + mean_over_tasks(per_task, PROMPT_SETS)]


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

    return {"domains": len(domains), "mean_gain": float(np.mean(list(gains.values()))),
            "worst_gain": gains[worst], "worst_domain": worst,
            "gain_vs_topk": float(np.mean(vs_topk)) if vs_topk else float("nan"),
            "initial_mean": mean("initial"), "optimized_mean": mean("optimized"), "oracle_mean": mean("oracle"),
            "gains": gains}


def headline_line(h: dict) -> str:
    return (f"domains={h['domains']} mean_gain={h['mean_gain']:+.3f} worst_gain={h['worst_gain']:+.3f} "
            f"worst_domain={h['worst_domain']} gain_vs_topk={h['gain_vs_topk']:+.3f} "
            f"initial_mean={h['initial_mean']:.3f} optimized_mean={h['optimized_mean']:.3f} "
            f"oracle_mean={h['oracle_mean']:.3f}")


def markdown(rows: list, h: dict, policy: Path, config: str, targets: int, reference: int = 0) -> str:
    """Dice (%) per domain (rows) and prompt set (columns), the gain, and the headline."""
    present = [name for name in PROMPT_SETS if any(r["prompt_set"] == name for r in rows)]
    by = {(r["domain"], r["prompt_set"]): r for r in rows}
    lines = [f"# Cross-domain benchmark\n\npolicy `{policy}`, config `{config}`, at most {targets} targets per "
             "domain" + (f", reference: pair {reference} of each domain (stems sorted)" if reference else "")
             + "; Dice in % (mean over targets; MEAN = mean over domains), gain = optimized − initial.\n",
             "| domain | targets | " + " | ".join(present) + " | gain |",
             "| --- | ---: | " + " | ".join("---:" for _ in present) + " | ---: |"]
    for domain in dict.fromkeys(r["domain"] for r in rows):
        cells = [f"{100 * by[(domain, n)]['dice_mean']:.1f}" if (domain, n) in by else "" for n in present]
        images = by.get((domain, "initial"), next(r for r in rows if r["domain"] == domain))["images"]
        gain = (by[(domain, "optimized")]["dice_mean"] - by[(domain, "initial")]["dice_mean"]
                if (domain, "optimized") in by and (domain, "initial") in by else float("nan"))
        lines.append(f"| {domain} | {images} | " + " | ".join(cells) + f" | {100 * gain:+.1f} |")
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
        tasks = benchmark_tasks(args.roots, out, args.targets, cfg, backends, args.reference)
        print(f"[bench] {len(tasks)} domain(s): {', '.join(t.name for t in tasks)}; policy {args.policy}")
        report = StageReport("bench")
        report.merge(generate_initial_prompts(cfg, device, tasks))
        report.merge(optimize_prompts(cfg, device, tasks))
        report.merge(segment_and_evaluate(cfg, device, tasks)[0])
        # every task's merged summary (complete once every shard has finished its part; one older
        # than a part of this run is an earlier run's)
        context = RunContext.from_settings(cfg.shard)
        summaries = [task.layout.results / "summary.json" for task in tasks]
        if not all(is_fresh(path, *(task.layout.results / name for name in context.part_names("metrics.json")))
                   for path, task in zip(summaries, tasks)):
            print(f"[bench] shard {context.rank}/{context.world} done; domains.csv is written by the shard that "
                  "finishes last")
            return report.exit_code
        rows = domain_rows([row for path in summaries for row in json.loads(path.read_text())])
        h = headline(rows)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return write_tables(out / "domains", to_csv(rows, COLUMNS),
                        markdown(rows, h, Path(args.policy), args.config, args.targets, args.reference),
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
