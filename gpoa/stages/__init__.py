"""Stage functions: each command (``gpoa prompts`` ... or its script) parses its arguments and calls one
of these; the per-image work of each is :mod:`gpoa.inference`, which the predictor shares.

- :func:`gpoa.stages.initial_prompts.generate_initial_prompts` — stage 1, ``gpoa prompts`` (``Generate_initial_prompts.py``)
- :func:`gpoa.stages.train.train_policy` — stage 2, ``gpoa train`` (``train_GPOA.py``)
- :func:`gpoa.stages.optimize.optimize_prompts` — stage 3, ``gpoa optimize`` (``test_GPOA.py``)
- :func:`gpoa.stages.segmentation.segment_and_evaluate` — stage 4, ``gpoa segment`` (``main_seg.py``)
"""
