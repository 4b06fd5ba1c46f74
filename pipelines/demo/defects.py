"""The deliberate defects planted in the demo NDJSON export: where each goes and the bytes that carry it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from pipelines.demo.fhir_r4 import patient_resource
from pipelines.demo.model import build_patient
from pipelines.demo.records import make_uid

# kind -> (expected outcome, expected reason code, description for humans)
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "invalid_encoding": (
        "quarantined",
        "invalid_encoding",
        "Patient whose family name is Latin-1 encoded (raw 0xFC)",
    ),
    "blank_line": ("skipped", "blank_line", "empty line in the middle of the file"),
    "duplicate_identical": ("skipped", "duplicate_identical", "byte-for-byte repeat of an earlier line"),
    "invalid_json": ("quarantined", "invalid_json", "JSON object with one closing brace missing"),
    "missing_resource_type": ("quarantined", "missing_resource_type", "JSON object without resourceType"),
    "conflicting_duplicate": (
        "quarantined",
        "conflicting_duplicate",
        "same resourceType, id and meta.lastUpdated as an earlier line, different content",
    ),
    "not_an_object": ("quarantined", "not_an_object", "JSON array instead of an object"),
    "truncated": ("quarantined", "invalid_json", "last line cut off mid-object, without a newline"),
}
# The family whose last file ends in a truncated line, as when an export copy is interrupted.
TRUNCATED_TYPE = "Observation"


@dataclass(frozen=True, slots=True)
class PlannedDefect:
    kind: str
    resource_type: str  # the NDJSON family (Type.NNN.ndjson) it goes into
    after: int  # planted right after this many valid lines of the family (or at its end, if it has fewer)
    source: int | None = None  # duplicates: the valid line (1-based, within the family) they repeat


def plan_defects(seed: int, patients: int) -> list[PlannedDefect]:
    """A fixed handful of defects whatever the patient count; only their positions depend on the seed."""
    rng = random.Random(f"{seed}:defects")  # noqa: S311 - reproducible test data, not secrets
    # Keep at least one valid Patient line after every Patient defect (the blank line must be in the middle).
    top = max(1, min(patients - 1, 25))
    dup_after = rng.randint(1, top)
    conflict_after = rng.randint(3, 40)
    plan = [
        PlannedDefect("invalid_encoding", "Patient", rng.randint(1, top)),
        PlannedDefect("blank_line", "Patient", rng.randint(1, top)),
        PlannedDefect("duplicate_identical", "Patient", dup_after, rng.randint(1, dup_after)),
        PlannedDefect("invalid_json", "Observation", rng.randint(2, 40)),
        PlannedDefect("missing_resource_type", "Observation", rng.randint(2, 40)),
        PlannedDefect(
            "conflicting_duplicate", "Observation", conflict_after, rng.randint(1, conflict_after - 1)
        ),
        PlannedDefect("not_an_object", "Encounter", rng.randint(1, 30)),
    ]
    order = {id(d): n for n, d in enumerate(plan)}
    return sorted(plan, key=lambda d: (d.resource_type, d.after, order[id(d)]))


def defect_line(
    kind: str, seed: int, last: dict[str, Any], source: tuple[bytes, dict[str, Any]] | None
) -> bytes:
    """The bytes of one defective line, without its newline.

    last is the latest valid resource of the family (a template); source is the earlier line
    a duplicate repeats.
    """
    fresh = dict(last, id=make_uid(seed, "defect", kind))
    if kind == "blank_line":
        return b""
    if kind == "duplicate_identical":
        assert source is not None
        return source[0]
    if kind == "conflicting_duplicate":
        assert source is not None
        line = orjson.dumps(_altered(source[1]))
        assert line != source[0]
        return line
    if kind == "invalid_encoding":
        patient = patient_resource(build_patient(seed, 0, "defect"))
        patient["name"] = [dict(patient["name"][0], family="Müller")]
        line = orjson.dumps(patient).replace("Müller".encode(), "Müller".encode("latin-1"))
        _assert_not_utf8(line)
        return line
    if kind == "missing_resource_type":
        del fresh["resourceType"]
        return orjson.dumps(fresh)
    if kind == "not_an_object":
        return orjson.dumps([fresh])
    if kind == "invalid_json":
        line = orjson.dumps(fresh)
        cut = line.index(b"}")
        return _assert_invalid_json(line[:cut] + line[cut + 1 :])
    if kind == "truncated":
        line = orjson.dumps(fresh)
        cut = len(line) // 2
        while (
            line[cut] & 0xC0 == 0x80
        ):  # never split a UTF-8 sequence: this defect is about JSON, not encoding
            cut -= 1
        return _assert_invalid_json(line[:cut])
    raise ValueError(f"unknown defect kind {kind!r}")


def _altered(resource: dict[str, Any]) -> dict[str, Any]:
    """A copy with one clinical value changed and the id and meta left as they were."""
    out = dict(resource)
    if "valueQuantity" in out:
        out["valueQuantity"] = dict(out["valueQuantity"], value=_bumped(out["valueQuantity"]["value"]))
    elif "component" in out:
        first = dict(out["component"][0])
        first["valueQuantity"] = dict(first["valueQuantity"], value=_bumped(first["valueQuantity"]["value"]))
        out["component"] = [first, *out["component"][1:]]
    else:
        out["status"] = "amended"
    return out


def _bumped(value: float) -> float:
    return value + 1 if isinstance(value, int) else round(value * 1.1 + 0.1, 2)


def _assert_invalid_json(line: bytes) -> bytes:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        line.decode("utf-8")
        return line
    raise AssertionError("defect line unexpectedly parses")


def _assert_not_utf8(line: bytes) -> None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return
    raise AssertionError("defect line unexpectedly decodes")
