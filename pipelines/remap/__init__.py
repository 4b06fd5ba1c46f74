"""`ehrlift normalize`: re-apply the current mappings to the whole warehouse, recorded as a run."""

from pipelines.remap.apply import normalize_warehouse

__all__ = ["normalize_warehouse"]
