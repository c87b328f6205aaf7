"""Generated data: nothing to download, everything reproducible from a seed.

- :mod:`gpoa.synth.demo` — the two demo families (``gpoa demo-data``, ``python -m gpoa.demo_data``):
  a TEM-like membrane among dark distractors, striped objects among same-colour and same-texture
  distractors;
- :mod:`gpoa.synth.corpus` — a corpus of domain-randomised one-shot tasks that one policy is
  trained on (``gpoa corpus``, ``python -m gpoa.task_data``).
"""
