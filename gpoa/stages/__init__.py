"""Stage functions: each top-level script parses its arguments and calls one of these.

- :func:`gpoa.stages.initial_prompts.generate_initial_prompts` — stage 1
- :func:`gpoa.stages.segmentation.segment_and_evaluate` — stage 4
"""
