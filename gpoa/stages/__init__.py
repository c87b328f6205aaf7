"""Stage functions: each top-level script parses its arguments and calls one of these.

- :func:`gpoa.stages.initial_prompts.generate_initial_prompts` — stage 1, ``Generate_initial_prompts.py``
- :func:`gpoa.stages.train.train_policy` — stage 2, ``train_GPOA.py``
- :func:`gpoa.stages.optimize.optimize_prompts` — stage 3, ``test_GPOA.py``
- :func:`gpoa.stages.segmentation.segment_and_evaluate` — stage 4, ``main_seg.py``
"""
