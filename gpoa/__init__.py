"""GPOA: Graph-based Prompt Optimization Agent for the Segment Anything Model."""

__version__ = "0.1.0"
