"""The compliance report: a self-contained HTML page of aggregates and record pointers (no PHI)."""

from pipelines.report.render import ReportFiles, canonical_json, write_report

__all__ = ["ReportFiles", "canonical_json", "write_report"]
