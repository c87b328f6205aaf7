"""Which label-free signal predicts the Dice of a decoded mask, among one-toggle edits of the initial prompts.

Every statistic of :mod:`gpoa.quality` (and an estimator fitted on other tasks) against the truth.

    python benchmarks/bench_signals.py ROOT [ROOT ...] --out DIR [--fit CORPUS ...] [--targets N]
                                       [--config FILE] [--set KEY=VALUE ...] [--device NAME]
                                       [--alpha A]

ROOT and CORPUS as in ``bench_domains.py`` (a folder of domains, one domain, a dataset folder or a
folder of them; the first sorted pair of a domain folder is the reference, at most N targets per
domain). Stage 1 runs with the config's settings (outputs under ``DIR/<domain>/``, the corpora's
under ``DIR/fit/<task>/``); nothing is written into ROOT or CORPUS. ``--fit`` takes the arguments
up to the next option: put the ROOTs first.

For every target with a truth mask: a :class:`~gpoa.envs.PromptEnv` of the config starts from the
initial prompts; the current mask and each *variant* — the prompts with one node toggled, for
every toggle its action mask allows, unshielded (the candidates the lookahead decodes) — are
decoded, and each mask gets its :data:`~gpoa.quality.QUALITY_STATISTICS` and its true Dice (a
target's ignore mask, if any, counts for neither). With ``--fit`` corpora, a
:class:`~gpoa.quality.QualityEstimator` is fitted on the corpora's variants (never on the ROOTs')
and its estimated change in Dice (0 for the current mask) is one more signal. For each signal, per
domain (means over its targets) and as the mean over domains:

- **correlation**: Spearman's rank correlation between the signal and Dice over an image's masks
  (current and variants), averaged over the images where neither is constant;
- **selection gain**: take the variant with the highest signal if it beats the current mask's,
  else stay; the Dice change in points (0–100), averaged over the images. The **oracle** row takes
  the variant with the highest true Dice if it beats the current: the most one edit can gain.

A signal that is higher for worse masks has a negative correlation and selection gain: the
statistics are read as they are, higher = better.

Writes ``DIR/signals.csv`` (columns ``domain,signal,images,correlated_images,correlation,
selection_gain``; a row per domain and signal, then the ``MEAN`` rows, means over domains),
``DIR/signals.md`` (the two tables: signals × domains) and, with ``--fit``, the estimator as
``DIR/estimator.json`` (:meth:`~gpoa.quality.QualityEstimator.to_dict`). The last line is
machine-readable:

``domains=<n> best_statistic=<name> best_correlation=<x.xx> region_agreement_gain=<+x.xx>
estimator_gain=<+x.xx> oracle_gain=<+x.xx>``

(the statistic with the highest mean correlation; gains in Dice points, means over domains;
``estimator_gain=nan`` without ``--fit``). Exit code 1 when some image failed (the others were
measured), 2 on a usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from gpoa.backends import Backends
from gpoa.config import Config, load_config, resolve_device
from gpoa.envs import EpisodeBank, PromptEnv
from gpoa.errors import InputError, UsageError
from gpoa.evaluation import MEAN_TASK, to_csv
from gpoa.experiments import domains as bench_domains
from gpoa.io import atomic_write_json, read_mask
from gpoa.metrics import dice_batch
from gpoa.quality import QUALITY_STATISTICS, MaskContext, MaskVariants, QualityEstimator, quality_statistics
from gpoa.runtime import StageReport, seed_everything
from gpoa.segmenters import mask_cells
from gpoa.stages.initial_prompts import generate_initial_prompts

COLUMNS = ("domain", "signal", "images", "correlated_images", "correlation", "selection_gain")
ESTIMATOR = "estimator"
ORACLE = "oracle"
#: more domains than this: the Markdown tables show only the mean column (the CSV has every domain)
MAX_TABLE_DOMAINS = 12
#: an image's Dice (or a signal) varying less than this over its masks is constant: no correlation
MIN_SPREAD = 1e-6


# ----- measuring -------------------------------------------------------------------------------------
def image_variants(sample, cfg: Config, segmenter, ignore: Optional[np.ndarray] = None,
                   domain: str = "") -> MaskVariants:
    """The current mask of ``sample``'s initial prompts and its one-toggle variants (module
    docstring): their statistics and true Dice. ``ignore`` (H, W) bool marks pixels that count for
    neither mask."""
    truth = np.asarray(sample.truth_mask, bool)
    if ignore is not None and np.shape(ignore) != truth.shape:
        raise ValueError(f"ignore mask of '{sample.name}' has shape {np.shape(ignore)}, its truth mask {truth.shape}")
    bank = EpisodeBank([sample], cfg, segmenter, seed=cfg.seed)
    env = PromptEnv(bank, cfg, seed=cfg.seed)
    env.reset(options={"sample": 0})
    record, graph = env.record, env.graph
    toggles = np.flatnonzero(env.action_masks(shielded=False)[:graph.num_nodes])
    variants = []
    for node in toggles:
        active = graph.active.copy()
        active[node] = not active[node]
        variants.append(record.prompts_of(active, graph.is_positive))
    current, _ = bank.start_mask(record)
    masks = current[None]
    if variants:
        decoded, _ = bank.decode_prompts(record, variants)
        masks = np.concatenate([masks, decoded])
    cells = mask_cells(masks, (sample.grid.rows, sample.grid.cols)).reshape(len(masks), -1)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        masks, truth = masks & keep, truth & keep
    return MaskVariants(quality_statistics(cells, MaskContext.of(record)), dice_batch(masks, truth),
                        domain, sample.name)


def collect(tasks: Sequence, cfg: Config, segmenter, report: StageReport, desc: str) -> list:
    """:func:`image_variants` of every target with a truth mask of ``tasks`` (stage 1 done), with a
    progress bar; an unusable image (or a task without prompt files) is reported in ``report``
    and left out."""
    sources = []
    for task in tasks:
        try:
            sources += [(task, lazy) for lazy in task.prompt_file_samples(task.layout.initial_indices, report,
                                                                         with_images=True, with_truth=True)]
        except UsageError as exc:
            report.fail(task.name, str(exc))
    images = []
    for task, lazy in tqdm(sources, desc=desc, unit="image"):
        try:
            sample = lazy.load()
            if sample.truth_mask is None:
                continue
            path = task.layout.ignore_masks.get(sample.name)
            truth = np.asarray(sample.truth_mask)
            ignore = None if path is None else read_mask(path, expected_size=(truth.shape[1], truth.shape[0]))
            images.append(image_variants(sample, cfg, segmenter, ignore, task.name))
        except (InputError, ValueError) as exc:
            report.fail(f"{task.name}/{lazy.name}", str(exc))
    return images


# ----- scoring ---------------------------------------------------------------------------------------
def signal_values(image: MaskVariants, estimator: Optional[QualityEstimator] = None) -> dict:
    """Every signal's value for each of ``image``'s masks, {name: (1 + V,)}: the statistics, the
    estimator's estimated change in Dice (0 for the current mask) when given, and the oracle (Dice)."""
    stats = np.asarray(image.statistics, dtype=np.float64)
    values = {name: stats[:, j] for j, name in enumerate(QUALITY_STATISTICS)}
    if estimator is not None:
        values[ESTIMATOR] = np.concatenate([[0.0], estimator.predict(stats[0], stats[1:])])
    values[ORACLE] = np.asarray(image.dice, dtype=np.float64)
    return values


def rank_correlation(values: np.ndarray, dice: np.ndarray) -> float:
    """Spearman's rank correlation of ``values`` (n,) with ``dice`` (n,); NaN when either is constant."""
    values, dice = np.asarray(values, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if len(dice) < 2 or np.ptp(dice) < MIN_SPREAD or np.ptp(values) < MIN_SPREAD:
        return float("nan")
    return float(np.corrcoef(rankdata(values), rankdata(dice))[0, 1])


def selection_gain(values: np.ndarray, dice: np.ndarray) -> float:
    """Dice change (a fraction) of one step by ``values`` (1 + V,): the variant (rows 1..) with the
    highest value if it beats the current mask's (row 0), else no change."""
    values, dice = np.asarray(values, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    best = 1 + int(np.argmax(values[1:]))
    return float(dice[best] - dice[0]) if values[best] > values[0] else 0.0


def signal_rows(images: Sequence[MaskVariants], estimator: Optional[QualityEstimator] = None) -> list:
    """Rows of :data:`COLUMNS` per domain (in order of appearance) and signal, then the ``MEAN``
    rows (means over domains; ``images`` the totals). Correlations as fractions, gains in Dice points."""
    per_domain: dict = {}
    for image in images:
        for name, values in signal_values(image, estimator).items():
            entry = per_domain.setdefault(image.domain, {}).setdefault(name, ([], []))
            entry[0].append(rank_correlation(values, image.dice))
            entry[1].append(100.0 * selection_gain(values, image.dice))
    rows = []
    for domain, signals in per_domain.items():
        for name, (correlations, gains) in signals.items():
            defined = [c for c in correlations if np.isfinite(c)]
            rows.append({"domain": domain, "signal": name, "images": len(gains), "correlated_images": len(defined),
                         "correlation": float(np.mean(defined)) if defined else float("nan"),
                         "selection_gain": float(np.mean(gains))})
    for name in dict.fromkeys(r["signal"] for r in rows):
        chosen = [r for r in rows if r["signal"] == name]
        correlations = [r["correlation"] for r in chosen if np.isfinite(r["correlation"])]
        rows.append({"domain": MEAN_TASK, "signal": name, "images": sum(r["images"] for r in chosen),
                     "correlated_images": sum(r["correlated_images"] for r in chosen),
                     "correlation": float(np.mean(correlations)) if correlations else float("nan"),
                     "selection_gain": float(np.mean([r["selection_gain"] for r in chosen]))})
    return rows


def headline(rows: Sequence[dict]) -> dict:
    """The numbers of the last line (module docstring)."""
    mean = {r["signal"]: r for r in rows if r["domain"] == MEAN_TASK}
    if not mean:
        raise UsageError("no target was measured; nothing to report")
    best = max(QUALITY_STATISTICS, key=lambda s: np.nan_to_num(mean[s]["correlation"], nan=-np.inf))
    return {"domains": len({r["domain"] for r in rows if r["domain"] != MEAN_TASK}), "best_statistic": best,
            "best_correlation": mean[best]["correlation"],
            "region_agreement_gain": mean["region_agreement"]["selection_gain"],
            "estimator_gain": mean[ESTIMATOR]["selection_gain"] if ESTIMATOR in mean else float("nan"),
            "oracle_gain": mean[ORACLE]["selection_gain"]}


def headline_line(h: dict) -> str:
    estimator = f"{h['estimator_gain']:+.2f}" if np.isfinite(h["estimator_gain"]) else "nan"
    return (f"domains={h['domains']} best_statistic={h['best_statistic']} best_correlation={h['best_correlation']:.2f} "
            f"region_agreement_gain={h['region_agreement_gain']:+.2f} estimator_gain={estimator} "
            f"oracle_gain={h['oracle_gain']:+.2f}")


def markdown(rows: Sequence[dict], h: dict, config: str, targets: int, fit: Sequence[str]) -> str:
    """The correlation table and the selection-gain table (signals × domains, MEAN last) and the headline."""
    domains = list(dict.fromkeys(r["domain"] for r in rows if r["domain"] != MEAN_TASK))
    columns = (domains if len(domains) <= MAX_TABLE_DOMAINS else []) + [MEAN_TASK]
    by = {(r["domain"], r["signal"]): r for r in rows}
    signals = list(dict.fromkeys(r["signal"] for r in rows))
    images = {d: by[(d, ORACLE)]["images"] for d in columns}
    fitted = (f"; the estimator is fitted on {', '.join(f'`{f}`' for f in fit)}" if fit
              else "; no estimator (no `--fit` corpus)")
    lines = [f"# Which label-free signal predicts Dice\n\nconfig `{config}`, at most {targets} targets per domain"
             f"{fitted}. Per image: the initial prompts' mask and every one-toggle variant.\n"]
    if len(columns) == 1:
        lines.append(f"{len(domains)} domains: the tables show the mean over domains (signals.csv has each).\n")
    tables = (("correlation", "Within-image Spearman correlation with Dice (mean over images; images where Dice "
                              "or the signal is constant left out)", "{:+.2f}"),
              ("selection_gain", "One-step selection gain, Dice points (the variant with the highest signal if it "
                                 "beats the current mask, else stay; oracle: by true Dice)", "{:+.2f}"))
    for key, title, fmt in tables:
        lines += [f"## {title}\n", "| signal | " + " | ".join(f"{d} ({images[d]})" for d in columns) + " |",
                  "| --- | " + " | ".join("---:" for _ in columns) + " |"]
        for signal in signals:
            cells = [fmt.format(by[(d, signal)][key]) if (d, signal) in by and np.isfinite(by[(d, signal)][key])
                     else "" for d in columns]
            lines.append(f"| {signal} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + f"\n`{headline_line(h)}`\n"


# ----- the command line ------------------------------------------------------------------------------
def main(argv=None, prog: str = "bench_signals.py") -> int:
    parser = bench_domains.roots_parser(prog, __doc__, "signals.csv, signals.md, estimator.json")
    parser.add_argument("--fit", action="extend", nargs="+", default=[], metavar="CORPUS",
                        help="fit the estimator on these tasks (e.g. data/tasks); never on a ROOT")
    parser.add_argument("--alpha", type=float, default=10.0, metavar="A",
                        help="the estimator's ridge penalty (standardised inputs; in units of rows)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = StageReport("signals")
    estimator = None
    try:
        if args.targets < 1:
            raise UsageError(f"--targets must be at least 1, got {args.targets}")
        if args.alpha < 0:
            raise UsageError(f"--alpha must be at least 0, got {args.alpha}")
        cfg = load_config(args.config, args.overrides + [f"workspace={out}"])
        device = resolve_device(cfg.device if args.device == "auto" else args.device)
        seed_everything(cfg.seed)
        backends = Backends(cfg, device)
        tasks = bench_domains.benchmark_tasks(args.roots, out, args.targets, cfg, backends)
        fit_tasks = bench_domains.benchmark_tasks(args.fit, out / "fit", args.targets, cfg, backends) if args.fit else []
        shared = ({str(t.layout.source.resolve()) for t in tasks}
                  & {str(t.layout.source.resolve()) for t in fit_tasks})
        if shared:
            raise UsageError(f"{sorted(shared)} are both measured and fitted on; the estimator must be measured on "
                             "data it was not fitted on")
        print(f"[signals] {len(tasks)} domain(s); estimator: "
              + (f"fitted on {len(fit_tasks)} task(s)" if fit_tasks else "none (no --fit)"))
        report.merge(generate_initial_prompts(cfg, device, fit_tasks + tasks))
        if fit_tasks:
            fitting = collect(fit_tasks, cfg, backends.segmenter, report, "signals: fit")
            if sum(len(image.dice) - 1 for image in fitting) < 2:
                raise UsageError(f"the corpora {args.fit} gave fewer than 2 variants to fit the estimator on")
            estimator = QualityEstimator(args.alpha).fit(fitting)
        images = collect(tasks, cfg, backends.segmenter, report, "signals: measure")
        rows = signal_rows(images, estimator)
        h = headline(rows)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if estimator is not None:
        atomic_write_json(out / "estimator.json", {"fit": list(args.fit), **estimator.to_dict()})
    return bench_domains.write_tables(out / "signals", to_csv(rows, COLUMNS),
                                      markdown(rows, h, args.config, args.targets, args.fit), headline_line(h), report)
