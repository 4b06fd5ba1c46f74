"""The reason codes a ledger or quarantine row may carry, loaded from schemas/reason_codes.json."""

from __future__ import annotations

from functools import cache

import orjson

from pipelines.common.paths import shipped


@cache
def reason_codes() -> dict[str, dict[str, str]]:
    """code -> {"outcome": ..., "description": ...}; the compliance report explains codes from here."""
    data = orjson.loads((shipped("schemas") / "reason_codes.json").read_bytes())
    return {code: entry for code, entry in data["codes"].items()}


def check_reason(code: str, outcome: str) -> str:
    """Return code if it is documented for this outcome; an undocumented code is a bug, caught in tests."""
    entry = reason_codes().get(code)
    if entry is None:
        raise ValueError(f"undocumented reason code {code!r}: add it to schemas/reason_codes.json")
    if outcome not in entry["outcome"].split("|"):
        raise ValueError(f"reason code {code!r} is documented for {entry['outcome']}, not {outcome}")
    return code
