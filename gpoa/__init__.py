"""GPOA: Graph-based Prompt Optimization Agent for the Segment Anything Model.

``from gpoa import GPOAPredictor`` (:mod:`gpoa.predictor`): one-shot segmentation from Python. The
predictor is imported on first use, so that ``import gpoa.config`` and the command-line tools do not
load the models' libraries.
"""

__version__ = "0.1.0"
__all__ = ["GPOAPredictor", "Prediction", "__version__"]


def __getattr__(name: str):
    if name in ("GPOAPredictor", "Prediction"):
        from gpoa import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'gpoa' has no attribute {name!r}")
