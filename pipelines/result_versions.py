"""Result versions under one timestamp: the status rank and version times the merge orders them by."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import orjson

RANKS = Path(__file__).resolve().parents[1] / "schemas" / "result_status_rank.json"
_SAFE = re.compile(r"[A-Za-z0-9$._:/\-\[\]]+")


@cache
def ranks() -> dict:
    return orjson.loads(RANKS.read_bytes())


def is_result(rtype: str) -> bool:
    """Whether versions of this type are ordered by status and version times."""
    return rtype in ranks()["types"]


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


def version_time_sql(resource_column: str, rtype: str) -> list[str]:
    """SQL expressions (TIMESTAMPTZ or NULL), one per tie-breaker of the data file, in its order; NULL
    for other types. A time that does not parse is NULL: such a version cannot be ordered by it."""
    data = ranks()
    out = []
    for spec in data["version_times"]["order"]:
        if rtype not in data["types"]:
            out.append("CAST(NULL AS TIMESTAMPTZ)")
            continue
        if "path" in spec:
            path = _safe(spec["path"])
            out.append(f"TRY_CAST(json_extract_string({resource_column}, '{path}') AS TIMESTAMPTZ)")
        else:
            url = _safe(spec["extension"])
            out.append(
                "list_max(list_transform(list_filter("
                f"json_extract({resource_column}, '$.extension[*]'), lambda e: e->>'url' = '{url}'), "
                "lambda e: TRY_CAST(e->>'valueDateTime' AS TIMESTAMPTZ)))"
            )
    return out


def _safe(text: str) -> str:
    # The data file is reviewed like code, but a quote in it must still never reach the SQL.
    if not _SAFE.fullmatch(text):
        raise ValueError("result_status_rank.json: a version time path or url has characters not allowed")
    return text
