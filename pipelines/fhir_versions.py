"""Telling FHIR releases apart from content: explicit markers first, then structural signals.

A resource's candidates are the releases (DSTU2 "1.0", STU3 "3.0", R4 "4.0") its shape is possible in;
each signal narrows them. A file's release is the one its explicit markers name, else the release most
of its sampled resources can only be. Units that cannot be in the file's release are quarantined.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import ijson
import orjson

from pipelines.intake import jsondepth
from pipelines.intake.jsonfile import open_json

ALL = frozenset({"1.0", "3.0", "4.0"})
R2, R3, R4 = frozenset({"1.0"}), frozenset({"3.0"}), frozenset({"4.0"})
R2_R3, R3_R4, R2_R4 = frozenset({"1.0", "3.0"}), frozenset({"3.0", "4.0"}), frozenset({"1.0", "4.0"})
NAMES = {"1.0": "DSTU2 (1.0.2)", "3.0": "STU3 (3.0.x)", "4.0": "R4 (4.0.x)"}
SAMPLE_RESOURCES = 200

_PROFILE_RELEASE = re.compile(r"^https?://hl7\.org/fhir/(DSTU2|1\.0|STU3|3\.0|R4|4\.0|R5|5\.0|R4B|4\.3)/")
_PROFILE_NAMES = {"DSTU2": "1.0", "STU3": "3.0", "R4": "4.0", "R5": "5.0", "R4B": "4.3"}
UNSUPPORTED = "unsupported"  # an explicit marker naming a release ehrlift does not read


def release_of(version: str) -> str:
    """ "1.0.2" -> "1.0"; "4.0.1" -> "4.0"; any other -> UNSUPPORTED (0.x drafts, R4B, R5)."""
    major_minor = ".".join(version.split(".")[:2])
    return major_minor if major_minor in ALL else UNSUPPORTED


def explicit_release(obj: dict[str, Any]) -> str | None:
    """A release the resource names itself: fhirVersion, or a profile under a release's own URL."""
    version = obj.get("fhirVersion")
    if isinstance(version, str):
        return release_of(version)
    meta = obj.get("meta")
    for profile in meta.get("profile", []) if isinstance(meta, dict) else []:
        m = _PROFILE_RELEASE.match(profile) if isinstance(profile, str) else None
        if m:
            name = m.group(1)
            return release_of(_PROFILE_NAMES.get(name, name))
    return None


@cache
def _type_candidates() -> dict[str, frozenset[str]]:
    from pipelines.convert.fhir.upgrade.base import resource_types

    out: dict[str, frozenset[str]] = {}
    for releases, types in resource_types()["only_in"].items():
        for rtype in types:
            out[rtype] = frozenset(releases.split("|"))
    return out


class Test:
    """A test on an element's value, and the regex its JSON text must match for the test to pass.

    The regex lets a set-based reader (DuckDB over NDJSON text) find the lines worth a full check: a
    match is only a hint (it may sit in a nested object), but no line passing the test can miss it.
    """

    __slots__ = ("check", "text")

    def __init__(self, check: Callable[[Any], bool], text: str) -> None:
        self.check, self.text = check, text

    def __call__(self, value: Any) -> bool:
        return self.check(value)


_VALUE_START = {dict: r"\{", list: r"\[", str: '"'}


def _is(kind: type) -> Test:
    return Test(lambda v: isinstance(v, kind), _VALUE_START[kind])


def _one_of(*codes: str) -> Test:
    return Test(lambda v: v in codes, '"(' + "|".join(map(re.escape, codes)) + ')"')


def _list_with(key: str) -> Test:
    """A list holding an object with this key (the text test looks for the key anywhere)."""
    return Test(
        lambda v: isinstance(v, list) and any(key in p for p in v if isinstance(p, dict)),
        "@" + _key(key),
    )


def _dict_with(key: str) -> Test:
    return Test(lambda v: isinstance(v, dict) and key in v, "@" + _key(key))


def _key(name: str) -> str:
    return '"' + re.escape(name) + r'"\s*:\s*'


def _family_list_check(names: Any) -> bool:
    return any(isinstance(n, dict) and isinstance(n.get("family"), list) for n in _items(names))


def _family_str_check(names: Any) -> bool:
    return any(isinstance(n, dict) and isinstance(n.get("family"), str) for n in _items(names))


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


_PRESENT = Test(lambda v: v is not None, "")
_family_list = Test(_family_list_check, "@" + _key("family") + r"\[")
_family_str = Test(_family_str_check, "@" + _key("family") + '"')

# (element, test on its value, releases the resource can then be in), per resource type.
SIGNALS: dict[str, list[tuple[str, Test, frozenset[str]]]] = {
    "Patient": [
        ("careProvider", _PRESENT, R2),
        ("generalPractitioner", _PRESENT, R3_R4),
        ("name", _family_list, R2),
        ("name", _family_str, R3_R4),
        ("animal", _PRESENT, R2_R3),
    ],
    "Practitioner": [
        ("name", _is(dict), R2),
        ("name", _is(list), R3_R4),
        ("practitionerRole", _PRESENT, R2),
    ],
    "Encounter": [
        ("patient", _PRESENT, R2),
        ("class", _is(str), R2),
        ("class", _is(dict), R3_R4),
        ("subject", _PRESENT, R3_R4),
        ("indication", _PRESENT, R2),
        ("reason", _PRESENT, R2_R3),
        ("incomingReferral", _PRESENT, R3),
        ("reasonCode", _PRESENT, R4),
        ("basedOn", _PRESENT, R4),
    ],
    "Condition": [
        ("patient", _PRESENT, R2),
        ("dateRecorded", _PRESENT, R2),
        ("notes", _PRESENT, R2),
        ("clinicalStatus", _is(str), R2_R3),
        ("verificationStatus", _is(str), R2_R3),
        ("clinicalStatus", _is(dict), R4),
        ("verificationStatus", _is(dict), R4),
        ("category", _is(dict), R2),
        ("category", _is(list), R3_R4),
        ("subject", _PRESENT, R3_R4),
        ("assertedDate", _PRESENT, R3),
        ("context", _PRESENT, R3),
        ("recordedDate", _PRESENT, R4),
    ],
    "AllergyIntolerance": [
        ("substance", _PRESENT, R2),
        ("status", _PRESENT, R2),
        ("reporter", _PRESENT, R2),
        ("lastOccurence", _PRESENT, R2),
        ("onset", _PRESENT, R2),
        ("category", _is(str), R2),
        ("category", _is(list), R3_R4),
        ("criticality", _one_of("CRITL", "CRITH", "CRITU"), R2),
        ("code", _PRESENT, R3_R4),
        ("clinicalStatus", _is(str), R3),
        ("verificationStatus", _is(str), R3),
        ("assertedDate", _PRESENT, R3),
        ("clinicalStatus", _is(dict), R4),
        ("verificationStatus", _is(dict), R4),
    ],
    "Observation": [
        ("category", _is(dict), R2),
        ("category", _is(list), R3_R4),
        ("comments", _PRESENT, R2),
        ("comment", _PRESENT, R3),
        ("context", _PRESENT, R3),
        ("encounter", _PRESENT, R2_R4),
        ("related", _PRESENT, R2_R3),
        ("hasMember", _PRESENT, R4),
        ("derivedFrom", _PRESENT, R4),
        ("note", _PRESENT, R4),
        ("interpretation", _is(dict), R2_R3),
        ("interpretation", _is(list), R4),
        ("basedOn", _PRESENT, R3_R4),
    ],
    "DiagnosticReport": [
        ("performer", _is(dict), R2),
        ("performer", _list_with("actor"), R3),
        ("performer", _list_with("reference"), R4),
        ("request", _PRESENT, R2),
        ("context", _PRESENT, R3),
        ("encounter", _PRESENT, R2_R4),
        ("category", _is(dict), R2_R3),
        ("category", _is(list), R4),
        ("codedDiagnosis", _PRESENT, R2_R3),
        ("conclusionCode", _PRESENT, R4),
        ("image", _PRESENT, R2_R3),
        ("media", _PRESENT, R4),
    ],
    "Procedure": [
        ("notPerformed", _PRESENT, R2),
        ("reasonNotPerformed", _PRESENT, R2),
        ("reasonCodeableConcept", _PRESENT, R2),
        ("request", _PRESENT, R2),
        ("notes", _PRESENT, R2),
        ("notDone", _PRESENT, R3),
        ("notDoneReason", _PRESENT, R3),
        ("context", _PRESENT, R3),
        ("definition", _PRESENT, R3),
        ("encounter", _PRESENT, R2_R4),
        ("status", _one_of("aborted", "suspended"), R2_R3),
        ("status", _one_of("not-done", "stopped", "on-hold"), R4),
        ("statusReason", _PRESENT, R4),
    ],
    "Immunization": [
        ("wasNotGiven", _PRESENT, R2),
        ("reported", _PRESENT, R2),
        ("requester", _PRESENT, R2),
        ("performer", _is(dict), R2),
        ("notGiven", _PRESENT, R3),
        ("practitioner", _PRESENT, R3),
        ("date", _PRESENT, R2_R3),
        ("explanation", _PRESENT, R2_R3),
        ("vaccinationProtocol", _PRESENT, R2_R3),
        ("occurrenceDateTime", _PRESENT, R4),
        ("occurrenceString", _PRESENT, R4),
        ("performer", _is(list), R4),
        ("protocolApplied", _PRESENT, R4),
    ],
    "MedicationStatement": [
        ("patient", _PRESENT, R2),
        ("wasNotTaken", _PRESENT, R2),
        ("reasonForUseCodeableConcept", _PRESENT, R2),
        ("reasonForUseReference", _PRESENT, R2),
        ("supportingInformation", _PRESENT, R2),
        ("taken", _PRESENT, R3),
        ("reasonNotTaken", _PRESENT, R2_R3),
        ("subject", _PRESENT, R3_R4),
        ("statusReason", _PRESENT, R4),
    ],
    "MedicationDispense": [
        ("patient", _PRESENT, R2),
        ("dispenser", _PRESENT, R2),
        ("identifier", _is(dict), R2),
        ("notDone", _PRESENT, R3),
        ("subject", _PRESENT, R3_R4),
        ("statusReasonCodeableConcept", _PRESENT, R4),
    ],
    "MedicationRequest": [
        ("requester", _dict_with("agent"), R3),
        ("requester", _dict_with("reference"), R4),
        ("context", _PRESENT, R3),
        ("definition", _PRESENT, R3),
        ("encounter", _PRESENT, R4),
        ("category", _is(dict), R3),
        ("category", _is(list), R4),
    ],
    "Medication": [
        ("product", _PRESENT, R2),
        ("isBrand", _PRESENT, R2_R3),
        ("package", _PRESENT, R2_R3),
        ("form", _PRESENT, R3_R4),
        ("amount", _PRESENT, R4),
        ("batch", _PRESENT, R4),
    ],
    "Goal": [
        ("description", _is(str), R2),
        ("description", _is(dict), R3_R4),
        ("author", _PRESENT, R2),
        ("targetDate", _PRESENT, R2),
        ("targetQuantity", _PRESENT, R2),
        ("outcome", _PRESENT, R2),
        ("status", _PRESENT, R2_R3),
        ("expressedBy", _PRESENT, R3_R4),
        ("lifecycleStatus", _PRESENT, R4),
    ],
    "CarePlan": [
        ("participant", _PRESENT, R2),
        ("modified", _PRESENT, R2),
        ("support", _PRESENT, R2),
        ("relatedPlan", _PRESENT, R2),
        ("status", _one_of("proposed"), R2),
        ("context", _PRESENT, R2_R3),
        ("intent", _PRESENT, R3_R4),
        ("encounter", _PRESENT, R4),
        ("instantiatesCanonical", _PRESENT, R4),
    ],
    "DocumentReference": [
        ("class", _PRESENT, R2_R3),
        ("created", _PRESENT, R2_R3),
        ("indexed", _PRESENT, R2_R3),
        ("docStatus", _is(dict), R2),
        ("docStatus", _is(str), R3_R4),
        ("category", _PRESENT, R4),
        ("date", _PRESENT, R4),
    ],
    "Organization": [("type", _is(dict), R2), ("type", _is(list), R3_R4)],
    "Location": [("type", _is(dict), R2_R3), ("type", _is(list), R4)],
}


def candidates(obj: Any) -> frozenset[str]:
    """The releases a resource can be in; empty when its signals contradict each other."""
    if not isinstance(obj, dict):
        return ALL
    explicit = explicit_release(obj)
    if explicit is not None:
        return frozenset({explicit}) if explicit in ALL else frozenset()
    rtype = obj.get("resourceType")
    found = _type_candidates().get(rtype, ALL) if isinstance(rtype, str) else ALL
    for element, test, releases in SIGNALS.get(rtype, ()) if isinstance(rtype, str) else ():
        value = obj.get(element)
        if value is not None and test(value):
            found = found & releases
    return found


def conflict(obj: dict[str, Any], release: str) -> str | None:
    """Why a resource cannot be in `release`, in words naming only structure; None when it can.

    An explicit marker (fhirVersion, a release's profile URL) or a type the release lacks is named as
    such; otherwise its shape is.
    """
    rtype = obj.get("resourceType")
    explicit = explicit_release(obj)
    if explicit is not None:
        if explicit == release:
            return None
        named = NAMES.get(explicit, "a release other than DSTU2, STU3 or R4")
        return f"{rtype} names {named} in its fhirVersion or profile"
    type_releases = _type_candidates().get(rtype) if isinstance(rtype, str) else None
    if type_releases is not None and release not in type_releases:
        return f"resource type {rtype} does not exist in {NAMES[release]}"
    found = candidates(obj)
    if release in found:
        return None
    if not found:
        return f"{rtype} shape contradicts itself"
    return f"{rtype} shape can only be {' or '.join(NAMES[r] for r in sorted(found))}"


@cache
def not_in_release_patterns(release: str) -> tuple[frozenset[str], tuple[str, ...], dict[str, str]]:
    """What finds, on a resource's JSON text, every resource that may not be in `release`.

    (types the release lacks, regexes for explicit markers of other releases, a regex per resource
    type for its shape signals that exclude the release). A text matching none of them is certainly
    possible in the release; one that matches is only worth a full check by candidates(). The markers
    are two regexes, not one alternation: each keeps its literal prefix, which RE2 scans for fast.
    """
    types = frozenset(t for t, releases in _type_candidates().items() if release not in releases)
    others = [n for n, r in _PROFILE_NAMES.items() if r != release] + [
        re.escape(r) for r in sorted(set(_PROFILE_NAMES.values())) if r != release
    ]
    markers = (r'"fhirVersion"\s*:', r"hl7\.org\\?/fhir\\?/(" + "|".join(others) + r")\\?/")
    per_type: dict[str, str] = {}
    for rtype, signals in SIGNALS.items():
        texts = []
        for element, test, releases in signals:
            if release in releases:
                continue
            text = test.text[1:] if test.text.startswith("@") else _key(element) + test.text
            texts.append(text)
        if texts:
            per_type[rtype] = "|".join(dict.fromkeys(texts))
    return types, markers, per_type


def file_release(resources: Iterable[Any], explicit: str | None = None) -> str:
    """The release of a file from its explicit marker or its sampled resources; R4 when nothing tells."""
    if explicit is not None:
        return explicit
    decided: Counter[str] = Counter()
    possible: Counter[str] = Counter()
    for obj in resources:
        if isinstance(obj, dict):
            marker = explicit_release(obj)
            if marker == UNSUPPORTED:
                return UNSUPPORTED
        found = candidates(obj)
        if len(found) == 1:
            decided[next(iter(found))] += 1
        elif found != ALL:
            possible.update(found)
    # Ties go to the older release: an old export carrying a few R4-shaped lines is still old.
    if decided:
        return max(decided, key=lambda r: (decided[r], -float(r)))
    if possible:
        # No unit decides: the release most units can be in; R4 (the default) wins ties, else the older.
        return max(possible, key=lambda r: (possible[r], r == "4.0", -float(r)))
    return "4.0"


def sniff_ndjson(head: bytes) -> tuple[str, bool]:
    """(release, mixed) from the complete lines of an NDJSON file's first bytes."""
    lines = head.split(b"\n")[:-1] or head.split(b"\n")[:1]
    objs = []
    for line in lines[:SAMPLE_RESOURCES]:
        try:
            objs.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return _sample(objs)


def sniff_bundle(path: Path) -> tuple[str, bool]:
    """(release, mixed) from a Bundle's own markers and its first entries, read streaming."""
    explicit: str | None = None
    objs: list[Any] = []
    try:
        with open_json(path) as fh:
            for prefix, event, value in jsondepth.parse(fh):
                if prefix == "meta.profile.item" and event == "string":
                    explicit = explicit or explicit_release({"meta": {"profile": [value]}})
                elif prefix == "entry" and event == "start_array":
                    break
        with open_json(path) as fh:
            for entry in jsondepth.items(fh, "entry.item"):
                objs.append(entry.get("resource") if isinstance(entry, dict) else None)
                if len(objs) >= SAMPLE_RESOURCES:
                    break
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError):
        pass  # the converter reports the broken file; detection goes by what it read
    if explicit is not None:
        return explicit, False
    return _sample(objs)


def sniff_resource(obj: Any) -> tuple[str, bool]:
    """(release, False) for a file holding one resource."""
    return _sample([obj])


def _sample(objs: list[Any]) -> tuple[str, bool]:
    release = file_release(objs)
    if release == UNSUPPORTED:
        return release, False
    mixed = any(release not in candidates(o) for o in objs if isinstance(o, dict))
    return release, mixed
