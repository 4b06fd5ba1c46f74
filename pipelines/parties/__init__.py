"""People and organizations seen by several documents: their versions merged into one resource."""

from .merge import merge_resources, merge_staged_parties

__all__ = ["merge_resources", "merge_staged_parties"]
