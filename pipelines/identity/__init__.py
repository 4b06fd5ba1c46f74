"""Patient identity across sources (linking, person records) and de-duplication of facts; one entry point."""

from pipelines.identity.stage import identify, identify_stage

__all__ = ["identify", "identify_stage"]
