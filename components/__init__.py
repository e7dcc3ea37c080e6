"""Step logic for the Self-Healing Platform model pipelines: plain, typed Python, testable without KFP."""

__version__ = "0.1.0"
