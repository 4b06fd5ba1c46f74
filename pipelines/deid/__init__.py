"""De-identified analyst views (HIPAA Safe Harbor) and the PHI access audit."""

from pipelines.deid.audit import record_access
from pipelines.deid.export import DeidResult, deidentify
from pipelines.deid.rules import Deidentifier, load_rules

__all__ = ["DeidResult", "Deidentifier", "deidentify", "load_rules", "record_access"]
