"""Retraction: a run's or a file's resources taken out of the warehouse, with the history kept."""

from .retract import RetractResult, retract

__all__ = ["RetractResult", "retract"]
