"""Clinical content of a resource as HL7 v2 carries it (codes, values, units, times, identifiers): what a
message built from the warehouse must give back when it is read again."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipelines.backload.hl7.encode import local_name
from pipelines.backload.hl7.segments import components, maps, own_obx


def _codes(cc: Any, limit: int = 2) -> list[tuple[str, str]]:
    """The codes of a concept as (system, code), local systems by their sender's name, in a set's order:
    which code goes first is the target's choice (standard first), not content."""
    out = []
    alias = maps()["alias_system_name"]
    for c in (cc or {}).get("coding") or [] if isinstance(cc, dict) else []:
        system = c.get("system") or ""
        # The site's Millennium alias (a code-set code, read back under the alias triplet's system name)
        # is the target's addition, not the record's content.
        if c.get("code") and "/codeSet/" not in system and local_name(system) != alias:
            out.append((local_name(system) or system, c["code"]))
    return sorted(out[:limit])


def _time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if "T" not in value:
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return value


def _ids(resource: dict[str, Any]) -> list[str]:
    return sorted(str(i.get("value")) for i in resource.get("identifier") or [] if i.get("value"))


def _value(o: dict[str, Any]) -> Any:
    if "valueQuantity" in o:
        q = o["valueQuantity"]
        return ("quantity", float(q.get("value")), q.get("code") or q.get("unit"), q.get("comparator"))
    if "valueCodeableConcept" in o:
        return ("coded", _codes(o["valueCodeableConcept"]))
    for k in ("valueString", "valueInteger", "valueBoolean"):
        if k in o:
            return (k, o[k])
    if "valueDateTime" in o:
        return ("dateTime", _time(o["valueDateTime"]))
    return None


def _results(o: dict[str, Any], report_time: str | None) -> list[dict[str, Any]]:
    """An Observation as its OBX group carries it: itself (unless a panel that only groups its components),
    then each component as a result of its own with the observation's status and time (ehrlift's reader
    keeps one Observation per OBX). Without a time of its own a result has the report's (OBR-7)."""
    status, effective = o.get("status"), _time(o.get("effectiveDateTime")) or report_time
    out = []
    for item in [o] * own_obx(o) + components(o):
        out.append(
            {
                "code": _codes(item.get("code")),
                "value": _value(item),
                # A value absent for a reason travels as OBX-11 X, which reads back as cancelled.
                "status": "cancelled" if _absent(item) else status,
                "effective": effective,
                "interpretation": [c for i in item.get("interpretation") or [] for c in _codes(i, 1)],
            }
        )
    return out


def _absent(item: dict[str, Any]) -> bool:
    return _value(item) is None and bool(item.get("dataAbsentReason"))


def inline(attachment: dict[str, Any]) -> bytes | None:
    data = attachment.get("data")
    return base64.b64decode(data) if data else None


def content(
    rtype: str,
    r: dict[str, Any],
    parts: list[dict[str, Any]] | None = None,
    read: Callable[[dict[str, Any]], bytes | None] = inline,
) -> dict[str, Any]:
    """parts: a report's Observations, in order; read: an attachment's bytes."""
    if rtype == "Patient":
        names = [(n.get("family"), tuple(n.get("given") or ())) for n in r.get("name") or []]
        return {"ids": _ids(r), "names": names, "birthDate": r.get("birthDate"), "gender": r.get("gender")}
    if rtype == "DiagnosticReport":
        start = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
        return {
            "code": _codes(r.get("code")),
            "status": r.get("status"),
            "effective": _time(start),
            "results": [result for o in parts or [] for result in _results(o, _time(start))],
        }
    if rtype == "Immunization":
        dose = r.get("doseQuantity") or {}
        return {
            "ids": _ids(r),
            "vaccine": _codes(r.get("vaccineCode")),
            "status": r.get("status"),
            "reason": _codes(r.get("statusReason")),
            "occurrence": _time(r.get("occurrenceDateTime")),
            "lot": r.get("lotNumber"),
            "dose": (float(dose["value"]), dose.get("code")) if dose.get("value") is not None else None,
        }
    if rtype == "DocumentReference":
        return {
            "master": (r.get("masterIdentifier") or {}).get("value"),
            # TXA-2 is a bare code (IS), its system is the site's table: the code is what travels.
            "type": [code for _s, code in _codes(r.get("type"), 1)],
            "status": r.get("status"),
            "content": [_digest(read(c.get("attachment") or {})) for c in r.get("content") or []],
        }
    raise ValueError(f"no round-trip content for {rtype}")


def _digest(data: bytes | None) -> str | None:
    # Text travels as lines: line ends are the one thing the TX form does not keep.
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest() if data is not None else None
