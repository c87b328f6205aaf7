"""Accuracy experiments (the speed benchmarks live in ``benchmarks/``): each runs the stages' own
code over data it is given and writes a table.

- :mod:`gpoa.experiments.domains` — one policy over many one-shot domains, every prompt set side by
  side (``benchmarks/bench_domains.py``);
- :mod:`gpoa.experiments.lodo` — leave-one-domain-out training (``benchmarks/bench_lodo.py``);
- :mod:`gpoa.experiments.ablation` and :mod:`gpoa.experiments.ppd` — Point Prompt Defender's
  ablation (``benchmarks/bench_ppd.py``);
- :mod:`gpoa.experiments.signals` — which label-free statistic of a mask (:mod:`gpoa.quality`)
  predicts its Dice among one-toggle edits (``benchmarks/bench_signals.py``);
- :mod:`gpoa.experiments.reproduce` — the papers' tables (``reproduce.py``, ``gpoa reproduce``).
"""
