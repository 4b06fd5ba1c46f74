"""Result versions under one timestamp: the status rank the merge orders them by (schemas/)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson

RANKS = Path(__file__).resolve().parents[1] / "schemas" / "result_status_rank.json"


@cache
def ranks() -> dict:
    return orjson.loads(RANKS.read_bytes())


def rank_sql(resource_column: str, rtype: str) -> str:
    """A SQL expression giving a resource's version rank from its JSON status; 0 for other types or
    statuses. The status codes and type names come from the data file, never from records."""
    data = ranks()
    if rtype not in data["types"]:
        return "0"
    cases = " ".join(
        f"WHEN '{code}' THEN {int(n)}" for code, n in data["rank"].items() if code.replace("-", "").isalpha()
    )
    return f"CASE json_extract_string({resource_column}, '$.status') {cases} ELSE 0 END"
