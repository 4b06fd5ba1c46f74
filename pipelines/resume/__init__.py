"""Resuming after a killed run: per-run stage watermarks, the run lock, orphaned runs marked interrupted."""

from pipelines.resume.marks import RESUMED_STAGES, mark_stage, pending_runs, run_filter
from pipelines.resume.owner import mark_orphans, record_owner, run_lock

__all__ = [
    "RESUMED_STAGES",
    "mark_orphans",
    "mark_stage",
    "pending_runs",
    "record_owner",
    "run_filter",
    "run_lock",
]
