"""HL7 v2 message types without clinical content: skipped, not quarantined (maps/no_clinical_content.csv)."""

from __future__ import annotations

import csv
from functools import cache

from pipelines.convert.hl7v2.vocab import MAPS

NO_CLINICAL_CONTENT = "hl7_no_clinical_content"


@cache
def no_clinical_content() -> frozenset[tuple[str, str]]:
    """(message code, trigger event) pairs; event "*" stands for any event, including none."""
    with (MAPS / "no_clinical_content.csv").open(encoding="utf-8", newline="") as f:
        return frozenset((row["message_code"], row["trigger_event"]) for row in csv.DictReader(f))


def carries_no_clinical_content(code: str, event: str) -> bool:
    """True when the type is listed as query, acknowledgment or answer without clinical groups.

    RSP^K11 is listed for its answers without an immunization group; one that has such a group is
    converted (the mapper decides), so callers ask this only once no mapper took the message.
    """
    table = no_clinical_content()
    return (code, event) in table or (code, "*") in table
