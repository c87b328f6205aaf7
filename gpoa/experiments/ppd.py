"""Point Prompt Defender's ablation, our numbers: ideal → attacked → defended, and initial → defended.

    python benchmarks/bench_ppd.py ROOT [ROOT ...] --run checkpoints/<ppd run> --out DIR [--targets N]
                                   [--config FILE] [--set KEY=VALUE ...]

ROOT as in ``bench_domains.py`` (a folder of domains, one domain, or dataset folders; the first
sorted pair of a domain is the reference, at most N targets). The run folder holds the defender
(``best.pt``) and its attacker (``attacker.pt``) that ``train_GPOA.py --set agent.learner=ppd``
wrote. Per target, :func:`gpoa.ablation.ablation_row` measures ideal → attacked (the attacker
acting up to ``ppd.attack_steps[1]`` steps) → defended, and initial → defended (with the config's
inference gates, as test_GPOA.py applies the defender). A target's ignore mask, if its folder has
one, is left out of every column.

Writes ``DIR/ppd_ablation.csv`` (domain, images, mean Dice of each column) and
``DIR/ppd_ablation.md`` with the paper's PASCAL VOC numbers beside ours (the paper: SAM + DINOv2;
here: the config's backends). The last line: ``ideal=… attacked=… defended=… initial=…
initial_defended=…`` (means over domains).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpoa.backends import Backends
from gpoa.config import load_config, resolve_device
from gpoa.errors import UsageError
from gpoa.evaluation import to_csv
from gpoa.experiments import domains as bench_domains
from gpoa.experiments.ablation import ABLATION_COLUMNS, load_ppd_run
from gpoa.experiments.published import footnotes, load_published, published_cells
from gpoa.io import atomic_write_text
from gpoa.runtime import StageReport, seed_everything
from gpoa.stages.initial_prompts import generate_initial_prompts

COLUMNS = ("domain", "images", *ABLATION_COLUMNS)


def main(argv=None, prog: str = "bench_ppd.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="ROOT")
    parser.add_argument("--run", required=True, metavar="DIR", help="PPD training run (best.pt + attacker.pt)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--targets", type=int, default=10, metavar="N")
    parser.add_argument("--config", default=str(bench_domains.DEFAULT_CONFIG), metavar="FILE")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out, run = Path(args.out), Path(args.run)
    try:
        cfg = load_config(args.config, args.overrides + [f"workspace={out}"])
        ppd = load_ppd_run(run, cfg)
        device = resolve_device(cfg.device if args.device == "auto" else args.device)
        seed_everything(cfg.seed)
        backends = Backends(cfg, device)
        tasks = bench_domains.benchmark_tasks(args.roots, out, args.targets, cfg, backends)
        report = generate_initial_prompts(cfg, device, tasks)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    rows, ablation = [], StageReport("ppd ablation")
    for task in tasks:
        sources = task.prompt_file_samples(task.layout.initial_indices, report, with_images=True, with_truth=True)
        progress = tqdm(sources, desc=f"ppd ablation [{task.name}]", unit="image")
        values = [row for _, row in ppd.task_rows(task, progress, backends.segmenter, ablation)]
        if values:
            rows.append({"domain": task.name, "images": len(values),
                         **{k: float(np.mean([v[k] for v in values])) for k in COLUMNS[2:]}})
    if not rows:
        print(f"{prog}: error: no target with a mask to measure", file=sys.stderr)
        return 2
    rows.append({"domain": "MEAN", "images": sum(r["images"] for r in rows),
                 **{k: float(np.mean([r[k] for r in rows])) for k in COLUMNS[2:]}})
    lines = ["# Point Prompt Defender ablation (Dice %)\n",
             "| domain | images | ideal | attacked | defended | initial | initial → defended |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['domain']} | {r['images']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in COLUMNS[2:]) + " |"
              for r in rows]
    published = load_published("ppd-ablation")  # configs/paper_numbers.yaml: † marks a figure nobody here checked
    lines += [f"| paper: {name} (SAM + DINOv2, mDSC) | | " + " | ".join(published_cells(published, name, COLUMNS[2:]))
              + " |" for name in published.rows]
    lines += footnotes(published)
    mean = rows[-1]
    headline = " ".join(f"{k}={mean[k]:.3f}" for k in COLUMNS[2:])
    atomic_write_text(out / "ppd_ablation.csv", to_csv(rows, COLUMNS))
    atomic_write_text(out / "ppd_ablation.md", "\n".join(lines) + f"\n\n`{headline}`\n")
    print("\n".join(lines))
    print(headline)
    return max(report.exit_code, ablation.exit_code)
