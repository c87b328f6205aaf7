"""Leave-one-domain-out: what real training data adds to the generated corpus.

    python benchmarks/bench_lodo.py DOMAINS --corpus data/tasks --out DIR [--targets N]
                                    [--config FILE] [--set KEY=VALUE ...] [--only NAME ...]

For every domain of DOMAINS (a folder of ``<domain>/image`` + ``<domain>/mask`` folders) one
policy is trained on the corpus (``--corpus``, repeatable: dataset folders or folders of them,
e.g. data/tasks) plus every OTHER domain (all of its non-reference pairs are training pairs), and
that policy is measured on the held-out domain with the cross-domain benchmark's protocol (first
sorted pair the reference, at most N targets). Each domain's training run goes to
``DIR/runs/<domain>/``, its benchmark to ``DIR/<domain>/``; ``DIR/lodo.csv`` and ``DIR/lodo.md``
gather the held-out rows. The last line: ``domains=<n> mean_gain=<+x.xxx> worst_gain=<+x.xxx>
worst_domain=<name> initial_mean=<x.xxx> optimized_mean=<x.xxx>``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from gpoa.backends import Backends
from gpoa.config import load_config, resolve_device
from gpoa.errors import UsageError
from gpoa.evaluation import to_csv
from gpoa.experiments import domains as bench_domains
from gpoa.io import atomic_write_text
from gpoa.layout import is_domain
from gpoa.runtime import seed_everything
from gpoa.stages.train import BEST, train_policy
from gpoa.tasks import load_tasks


def main(argv=None, prog: str = "bench_lodo.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("domains", metavar="DOMAINS", help="folder of domain folders (<domain>/image, <domain>/mask)")
    parser.add_argument("--corpus", action="append", default=[], metavar="DIR",
                        help="training tasks besides the other domains (repeatable), e.g. data/tasks")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--targets", type=int, default=10, metavar="N")
    parser.add_argument("--config", default=str(bench_domains.DEFAULT_CONFIG), metavar="FILE")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="hold out only these domains")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out = Path(args.out)
    domains_root = Path(args.domains)
    try:
        if not domains_root.is_dir():
            raise UsageError(f"'{domains_root}' is not a folder of domains")
        domains = sorted(p for p in domains_root.iterdir() if p.is_dir() and is_domain(p))
        if len(domains) < 2:
            raise UsageError(f"'{domains_root}' holds {len(domains)} domain folder(s); leave-one-out needs two or more")
        held_out_names = args.only or [d.name for d in domains]
        rows, exit_code = [], 0
        for held_out in domains:
            if held_out.name not in held_out_names:
                continue
            run = out / "runs" / held_out.name
            cfg = load_config(args.config, args.overrides + [f"workspace={out / 'workspace'}",
                                                             f"train.checkpoints={out / 'runs'}",
                                                             f"train.run={held_out.name}", "overwrite=true"])
            device = resolve_device(cfg.device if args.device == "auto" else args.device)
            seed_everything(cfg.seed)
            if not (run / BEST).is_file():
                training = args.corpus + [str(d) for d in domains if d != held_out]
                tasks = load_tasks(cfg, Backends(cfg, device), paths=training)
                print(f"[lodo] {held_out.name}: training on {len(tasks)} tasks")
                train_policy(cfg, device, tasks)
            code = bench_domains.main([str(held_out), "--out", str(out / held_out.name), "--policy", str(run / BEST),
                                       "--targets", str(args.targets), "--config", args.config,
                                       "--device", args.device] + [f"--set={s}" for s in args.overrides])
            exit_code = max(exit_code, code)
            with open(out / held_out.name / "domains.csv") as handle:
                rows += [r for r in csv.DictReader(handle) if r["domain"] != "MEAN"]
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        row["images"] = int(row["images"])
        for key in bench_domains.COLUMNS[3:]:
            row[key] = float(row[key])
    h = bench_domains.headline(rows)
    atomic_write_text(out / "lodo.csv", to_csv(rows, bench_domains.COLUMNS))
    atomic_write_text(out / "lodo.md", bench_domains.markdown(rows, h, out / "runs" / "<domain>" / BEST,
                                                              args.config, args.targets))
    print(f"domains={h['domains']} mean_gain={h['mean_gain']:+.3f} worst_gain={h['worst_gain']:+.3f} "
          f"worst_domain={h['worst_domain']} initial_mean={h['initial_mean']:.3f} "
          f"optimized_mean={h['optimized_mean']:.3f}")
    return exit_code
