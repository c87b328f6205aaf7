"""``bench_domains.py ROOT --train K``: what a labelled set of each domain teaches GPOA, on test targets it never saw.

Protocol per domain (stems sorted): the first pair is the reference, the next K pairs the labelled
set, all the rest the test targets (``--targets N`` caps them; the test set shrinks with K). A
dataset folder's reference pair(s), its first K training pairs and its targets play those parts. A
domain with fewer than K + 2 pairs (a dataset folder with fewer than K training pairs) is skipped
with one line saying so.

**No leakage**: only the reference and the K labelled pairs reach :func:`gpoa.teach.teach` (its
references, its agent's training and its calibration); the test targets reach nothing but scoring
(no task here has training pairs). Three tasks per domain score the same test targets:

- the one-shot task (outputs in ``DIR/<domain>/``): ``initial`` and ``optimized`` (the plug-and-play
  policy and gates, as without ``--train``; ``plugplay`` in the last line), with ``topk``,
  ``random_subset``, ``lookahead_rule``, ``oracle`` and ``ideal``;
- the k-shot task (``DIR/<domain>/kshot/``): the K + 1 labelled pairs as references (those whose mask
  holds the object), the same policy,
  the confidence gate off for the policy and the rule: ``initial_kshot``, ``policy_kshot``,
  ``rule_kshot``, ``oracle_kshot``;
- the taught task (``DIR/<domain>/taught/``): the policy file ``gpoa teach --init POLICY`` writes
  from the K + 1 pairs (``DIR/<domain>/taught.pt``; its agent starts from the plug-and-play
  ``--policy`` unless ``--set teach.init=...`` names another), its references and calibrated gates:
  ``initial_taught`` (its references' prompts), ``taught`` (its agent) and ``taught_rule`` (the
  hand-made ``lookahead_rule`` under the same references and gates: what the agent adds).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gpoa.backends import Backends
from gpoa.config import Config, with_overrides
from gpoa.errors import UsageError
from gpoa.inference import load_optimizer
from gpoa.layout import TaskLayout, resolve_tasks
from gpoa.tasks import Task
from gpoa.teach import labelled_paths, read_labelled_pairs, save_taught, summary_line, teach

#: the k-shot and the taught task of a domain: their outputs' subfolder and the suffix of their names
KSHOT, TAUGHT = "kshot", "taught"
#: the rows of those tasks, by stage 4's prompt-set names (sets not listed are left out)
RENAMED = {KSHOT: {"initial": "initial_kshot", "optimized": "policy_kshot", "lookahead_rule": "rule_kshot",
                   "oracle": "oracle_kshot"},
           TAUGHT: {"initial": "initial_taught", "optimized": "taught", "lookahead_rule": "taught_rule"}}
#: the prompt sets ``--train`` adds to the one-shot rows, in table order
TRAIN_SETS = ("initial_kshot", "policy_kshot", "rule_kshot", "oracle_kshot", "initial_taught", "taught", "taught_rule")


@dataclass
class TaughtDomain:
    """One domain of the protocol: its three tasks, the optimizer of each, the taught policy file and
    how long teaching took (seconds), and the labelled set's size."""

    name: str
    tasks: dict
    optimizers: dict
    policy: Path
    train_seconds: float
    labelled: int


def train_split(layout: TaskLayout, count: int) -> Optional[tuple]:
    """(reference pairs, labelled pairs, test targets [(image, mask)]) of a task under the protocol of
    the module docstring (:func:`gpoa.teach.labelled_paths`), or None when the task has too few pairs."""
    labelled, rest = labelled_paths(layout, count)
    references = len(layout.reference)
    if len(labelled) < references + count or not rest or any(mask is None for _, mask in labelled):
        return None
    return labelled[:references], labelled[references:], rest


def taught_domains(roots: list, out: Path, count: int, max_targets: int, cfg: Config, backends: Backends,
                   policy: Path) -> list:
    """Teach every domain of ``roots`` on its labelled set and build its three tasks (module
    docstring); ``policy`` is the plug-and-play policy of the one-shot and k-shot tasks. Prints one
    line per skipped domain."""
    if count < 1:
        raise UsageError(f"--train must be at least 1 (the labelled pairs after the reference), got {count}")
    shipped = load_optimizer(policy, cfg, backends.feature_key, backends.grid)
    teach_cfg = cfg if cfg.teach.init else with_overrides(cfg, [f"teach.init={policy}"])
    ungated = with_overrides(cfg, ["optimize.min_region_confidence=0"])  # the k-shot rows: the gate off
    kshot_optimizer = load_optimizer(policy, ungated, backends.feature_key, backends.grid)
    domains = []
    for layout in resolve_tasks(roots, out, None):
        split = train_split(layout, count)
        if split is None:
            print(f"[bench] {layout.name}: skipped, fewer than {count} + 2 pairs (a reference, {count} labelled, a "
                  "test target)")
            continue
        reference, labelled, test = split
        test = test[:max_targets]
        one = dataclasses.replace(
            layout, root=out / layout.name, reference=reference, train=[], targets=[image for image, _ in test],
            target_masks={image.stem: mask for image, mask in test},
            ignore_masks={image.stem: layout.ignore_masks[image.stem] for image, _ in test
                          if image.stem in layout.ignore_masks})
        cache = one.cache
        task = Task(one, backends, cfg)
        pairs, failed = read_labelled_pairs(reference + labelled, task.store)
        for name, message in failed:
            print(f"[bench] {layout.name}: labelled pair {name} left out: {message}")
        taught_path = out / layout.name / "taught.pt"
        started = time.perf_counter()
        taught = teach(pairs, teach_cfg, backends)
        save_taught(taught_path, taught, pairs, teach_cfg, backends)
        seconds = time.perf_counter() - started
        print(f"[bench] {layout.name} taught: {summary_line(taught)}")
        taught_optimizer = load_optimizer(taught_path, cfg, backends.feature_key, backends.grid)
        holding = {pair.name for pair in pairs if pair.mask.any()}  # a pair without the object is no reference
        kshot = Task(dataclasses.replace(one, name=f"{layout.name}.{KSHOT}", root=one.root / KSHOT,
                                         reference=[(image, mask) for image, mask in reference + labelled
                                                    if image.stem in holding], shared_cache=cache),
                     backends, ungated)
        without_oracle = dataclasses.replace(cfg, optimize=dataclasses.replace(cfg.optimize, oracle=False))
        taught_task = Task(dataclasses.replace(one, name=f"{layout.name}.{TAUGHT}", root=one.root / TAUGHT,
                                               shared_cache=cache), backends, without_oracle,
                           taught_reference=taught_optimizer.reference)
        domains.append(TaughtDomain(layout.name, {"": task, KSHOT: kshot, TAUGHT: taught_task},
                                    {"": shipped, KSHOT: kshot_optimizer, TAUGHT: taught_optimizer},
                                    taught_path, seconds, len(pairs)))
    if not domains:
        raise UsageError(f"no domain of {[str(r) for r in roots]} has {count} + 2 pairs; lower --train")
    return domains


def taught_summary(domains: list, summaries: dict) -> list:
    """Stage 4's summary rows of every domain's three tasks (``summaries``: task name → rows) as rows
    of the domain, the k-shot and taught tasks' prompt sets renamed (:data:`RENAMED`)."""
    rows = []
    for domain in domains:
        for kind, task in domain.tasks.items():
            for row in summaries[task.name]:
                name = row["prompt_set"] if not kind else RENAMED[kind].get(row["prompt_set"])
                if name is not None:
                    rows.append({**row, "task": domain.name, "prompt_set": name})
    return rows
