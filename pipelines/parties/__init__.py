"""People and organizations seen by several documents: their versions merged into one resource."""

from .merge import merge_resources, merge_staged_parties, settle_party_lineage

__all__ = ["merge_resources", "merge_staged_parties", "settle_party_lineage"]
