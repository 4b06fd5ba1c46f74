"""Field-by-field agreement of upgraded DSTU2 Bundles with a parallel R4 export of the same patients.

Parallel exports (a source system serving both releases) rarely share resource ids, so resources are
paired by a natural key per type (code and date, say) and compared on the fields both releases carry:
identity, subject, codes, dates, values and status. A field counts only where both sides carry it; a
repeating identifier counts over the identifier systems both sides carry. R4 elements DSTU2 has no
counterpart for, which the upgrade fills from HL7's map, are counted apart as derived.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipelines.common.unit import Quarantine
from pipelines.convert.fhir.upgrade import upgrade

Resource = dict[str, Any]


def _codes(cc: Any) -> tuple | None:
    if isinstance(cc, list):
        found = tuple(sorted({c for item in cc for c in (_codes(item) or ())}))
        return found or None
    if not isinstance(cc, dict):
        return None
    codings = cc.get("coding") if "coding" in cc else [cc] if "code" in cc else []
    found = tuple(sorted((c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)))
    return found or None


def _code_only(cc: Any) -> tuple | None:
    """Codes without their system: where releases spell one code system differently (v2-0074 vs LAB)."""
    found = _codes(cc)
    return tuple(sorted({c for _, c in found})) if found else None


def _first(r: Resource, *names: str) -> Any:
    for name in names:
        if r.get(name) is not None:
            return r[name]
    return None


def _start(r: Resource, stem: str) -> Any:
    value = _first(r, f"{stem}DateTime", f"{stem}Date", stem)
    if value is None and isinstance(r.get(f"{stem}Period"), dict):
        value = r[f"{stem}Period"].get("start")
    return value


def _end(r: Resource, stem: str) -> Any:
    period = r.get(f"{stem}Period") or (r.get(stem) if isinstance(r.get(stem), dict) else None)
    return period.get("end") if isinstance(period, dict) else None


def _value(r: Resource) -> Any:
    q = r.get("valueQuantity")
    if isinstance(q, dict):
        return ("Quantity", Decimal(str(q.get("value"))).normalize(), q.get("code") or q.get("unit"))
    if r.get("valueCodeableConcept") is not None:
        return ("CodeableConcept", _codes(r["valueCodeableConcept"]))
    for kind in ("String", "Boolean", "Integer", "DateTime", "Time"):
        if f"value{kind}" in r:
            return (kind, r[f"value{kind}"])
    return None


def _components(r: Resource) -> Any:
    comps = r.get("component")
    if not isinstance(comps, list):
        return None
    return tuple(sorted((str(_codes(c.get("code"))), str(_value(c))) for c in comps if isinstance(c, dict)))


def _identity(r: Resource) -> Any:
    ids = r.get("identifier")
    items = ids if isinstance(ids, list) else [ids] if isinstance(ids, dict) else []
    found = tuple(sorted((i.get("system"), i.get("value")) for i in items if isinstance(i, dict)))
    return found or None


def _status_code(cc: Any) -> Any:
    found = _codes(cc)
    return found[0][1] if found else cc if isinstance(cc, str) else None


def _name(r: Resource) -> Any:
    names = r.get("name")
    items = names if isinstance(names, list) else [names] if isinstance(names, dict) else []
    out = [(n.get("family"), tuple(n.get("given", []))) for n in items if isinstance(n, dict)]
    return tuple(out) or (names if isinstance(names, str) else None)


Getter = Callable[[Resource], Any]
_SUBJECT: Getter = lambda r: _first(r, "subject", "patient")  # noqa: E731
_ENCOUNTER: Getter = lambda r: r.get("encounter")  # noqa: E731

# Per type: the natural key that pairs resources, and the compared fields as (group, name, getter).
# Getters returning a Reference are compared by what the reference points at.
KEYS: dict[str, Getter] = {
    "Patient": lambda r: "patient",
    "Organization": lambda r: r.get("id"),
    "Practitioner": lambda r: r.get("id"),
    "Encounter": lambda r: (_start(r, "period"), _codes(r.get("type"))),
    "Condition": lambda r: (_codes(r.get("code")), _start(r, "onset")),
    "Observation": lambda r: (_codes(r.get("code")), _start(r, "effective")),
    "MedicationRequest": lambda r: (_codes(r.get("medicationCodeableConcept")), r.get("authoredOn")),
    "Immunization": lambda r: (_codes(r.get("vaccineCode")), _first(r, "occurrenceDateTime", "date")),
    "Procedure": lambda r: (_codes(r.get("code")), _start(r, "performed")),
    "DiagnosticReport": lambda r: (_codes(r.get("code")), _start(r, "effective")),
    "CarePlan": lambda r: (_codes(r.get("category")), _start(r, "period")),
    "AllergyIntolerance": lambda r: (_codes(r.get("code")),),
}
FIELDS: dict[str, list[tuple[str, str, Getter]]] = {
    "Patient": [
        ("identity", "identifier", _identity),
        ("values", "name", _name),
        ("codes", "gender", lambda r: r.get("gender")),
        ("dates", "birthDate", lambda r: r.get("birthDate")),
        ("dates", "deceased", lambda r: r.get("deceasedDateTime")),
    ],
    "Organization": [
        ("identity", "identifier", _identity),
        ("values", "name", lambda r: r.get("name")),
        ("codes", "type", lambda r: _code_only(r.get("type"))),
    ],
    "Practitioner": [("identity", "identifier", _identity), ("values", "name", _name)],
    "Encounter": [
        ("subject", "subject", _SUBJECT),
        ("codes", "class", lambda r: _code_only(r.get("class"))),
        ("codes", "type", lambda r: _codes(r.get("type"))),
        ("codes", "reason", lambda r: _codes(_first(r, "reasonCode"))),
        ("dates", "period.start", lambda r: _start(r, "period")),
        ("dates", "period.end", lambda r: _end(r, "period")),
        ("status", "status", lambda r: r.get("status")),
        ("values", "serviceProvider", lambda r: r.get("serviceProvider")),
    ],
    "Condition": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "code", lambda r: _codes(r.get("code"))),
        ("dates", "onset", lambda r: _start(r, "onset")),
        ("dates", "abatement", lambda r: _start(r, "abatement")),
        ("status", "clinicalStatus", lambda r: _status_code(r.get("clinicalStatus"))),
        ("status", "verificationStatus", lambda r: _status_code(r.get("verificationStatus"))),
    ],
    "Observation": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "code", lambda r: _codes(r.get("code"))),
        ("codes", "category", lambda r: _code_only(r.get("category"))),
        ("dates", "effective", lambda r: _start(r, "effective")),
        ("dates", "issued", lambda r: r.get("issued")),
        ("values", "value", _value),
        ("values", "component", _components),
        ("status", "status", lambda r: r.get("status")),
    ],
    "MedicationRequest": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "medication", lambda r: _codes(r.get("medicationCodeableConcept"))),
        ("dates", "authoredOn", lambda r: r.get("authoredOn")),
        ("status", "status", lambda r: r.get("status")),
        ("values", "reasonReference", lambda r: (r.get("reasonReference") or [None])[0]),
    ],
    "Immunization": [
        ("subject", "patient", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "vaccineCode", lambda r: _codes(r.get("vaccineCode"))),
        ("dates", "occurrence", lambda r: r.get("occurrenceDateTime")),
        ("status", "status", lambda r: r.get("status")),
        ("values", "primarySource", lambda r: r.get("primarySource")),
    ],
    "Procedure": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "code", lambda r: _codes(r.get("code"))),
        ("dates", "performed.start", lambda r: _start(r, "performed")),
        ("dates", "performed.end", lambda r: _end(r, "performed")),
        ("status", "status", lambda r: r.get("status")),
    ],
    "DiagnosticReport": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "code", lambda r: _codes(r.get("code"))),
        ("codes", "category", lambda r: _code_only(r.get("category"))),
        ("dates", "effective", lambda r: _start(r, "effective")),
        ("dates", "issued", lambda r: r.get("issued")),
        ("status", "status", lambda r: r.get("status")),
        ("values", "result", lambda r: r.get("result")),
    ],
    "CarePlan": [
        ("subject", "subject", _SUBJECT),
        ("subject", "encounter", _ENCOUNTER),
        ("codes", "category", lambda r: _codes(r.get("category"))),
        (
            "codes",
            "activity",
            lambda r: _codes([a.get("detail", {}).get("code") for a in r.get("activity", [])]),
        ),
        ("dates", "period.start", lambda r: _start(r, "period")),
        ("dates", "period.end", lambda r: _end(r, "period")),
        ("status", "status", lambda r: r.get("status")),
    ],
    "AllergyIntolerance": [
        ("subject", "patient", _SUBJECT),
        ("codes", "code", lambda r: _codes(r.get("code"))),
        ("codes", "category", lambda r: tuple(r.get("category") or ()) or None),
        ("status", "criticality", lambda r: r.get("criticality")),
        ("status", "clinicalStatus", lambda r: _status_code(r.get("clinicalStatus"))),
        ("status", "verificationStatus", lambda r: _status_code(r.get("verificationStatus"))),
        ("status", "type", lambda r: r.get("type")),
    ],
}

# R4 elements with no DSTU2 counterpart (MedicationOrder and CarePlan have no intent): the upgrade sets
# them from HL7's map, so agreement there measures the map against the R4 writer, not preserved content.
DERIVED: dict[str, list[tuple[str, str, Getter]]] = {
    "MedicationRequest": [("status", "intent", lambda r: r.get("intent"))],
    "CarePlan": [("status", "intent", lambda r: r.get("intent"))],
}


def _shared_identifiers(mine: Any, yours: Any) -> tuple[Any, Any]:
    """Both sides' (system, value) pairs restricted to the systems both carry; (None, None) if none."""
    common = {s for s, _ in mine} & {s for s, _ in yours}
    if not common:
        return None, None
    return tuple(i for i in mine if i[0] in common), tuple(i for i in yours if i[0] in common)


@dataclass
class Agreement:
    """Counts per (resource type, field group, field): fields both sides carry, and those that agree."""

    both: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    agree: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    paired: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unpaired: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    quarantined: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    derived_both: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    derived_agree: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))

    def rate(self, keys: Iterable[tuple[str, str, str]] | None = None) -> float:
        keys = list(self.both) if keys is None else list(keys)
        both = sum(self.both[k] for k in keys)
        return sum(self.agree[k] for k in keys) / both if both else 1.0

    def table(self) -> list[tuple[str, str, int, int, float]]:
        """(type, group, fields both carry, agreeing, rate) rows, by type and group."""
        groups: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
        for key in self.both:
            groups[key[:2]].append(key)
        return [
            (rtype, group, sum(self.both[k] for k in ks), sum(self.agree[k] for k in ks), self.rate(ks))
            for (rtype, group), ks in sorted(groups.items())
        ]


class _Side:
    """One Bundle's resources by fullUrl, with each resource's natural key (to resolve references)."""

    def __init__(self, entries: list[tuple[str | None, Resource]]) -> None:
        self.by_url: dict[str, Resource] = {}
        self.by_type: dict[str, list[Resource]] = defaultdict(list)
        for url, r in entries:
            if url:
                self.by_url[url] = r
            if isinstance(r.get("id"), str):
                self.by_url[f"{r['resourceType']}/{r['id']}"] = r
            self.by_type[r["resourceType"]].append(r)

    def resolve(self, value: Any) -> Any:
        """A reference becomes (type, natural key) of its target, so both sides compare."""
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            target = self.by_url.get(value["reference"])
            if target is None:
                return ("unresolved", value["reference"])
            key = KEYS.get(target["resourceType"])
            return (target["resourceType"], str(key(target)) if key else target.get("id"))
        if isinstance(value, list) and value and all(isinstance(v, dict) and "reference" in v for v in value):
            return tuple(sorted(str(self.resolve(v)) for v in value))
        return value


def upgraded_entries(bundle: Resource, agreement: Agreement) -> list[tuple[str | None, Resource]]:
    out = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        try:
            upgraded = upgrade(resource, "1.0")
        except Quarantine:
            agreement.quarantined[resource.get("resourceType", "?")] += 1
            continue
        out.append((entry.get("fullUrl"), upgraded[0]))
        out.extend((None, extra) for extra in upgraded[1:])
    return out


def compare_bundles(dstu2: Resource, r4: Resource, agreement: Agreement) -> None:
    """Upgrade a DSTU2 Bundle and add its field agreement with the R4 Bundle of the same patient."""
    left = _Side(upgraded_entries(dstu2, agreement))
    right = _Side([(e.get("fullUrl"), e["resource"]) for e in r4.get("entry", []) if "resource" in e])
    for rtype, key in KEYS.items():
        theirs: dict[str, list[Resource]] = defaultdict(list)
        for r in right.by_type.get(rtype, []):
            theirs[str(key(r))].append(r)
        for r in left.by_type.get(rtype, []):
            candidates = theirs.get(str(key(r)))
            if not candidates:
                agreement.unpaired[rtype] += 1
                continue
            other = candidates.pop(0)
            agreement.paired[rtype] += 1
            for group, name, getter in FIELDS[rtype]:
                mine, yours = left.resolve(getter(r)), right.resolve(getter(other))
                if getter is _identity and mine is not None and yours is not None:
                    mine, yours = _shared_identifiers(mine, yours)
                if mine is None or yours is None:
                    continue
                agreement.both[(rtype, group, name)] += 1
                agreement.agree[(rtype, group, name)] += int(mine == yours)
            for group, name, getter in DERIVED.get(rtype, ()):
                mine, yours = getter(r), getter(other)
                if mine is not None and yours is not None:
                    agreement.derived_both[(rtype, group, name)] += 1
                    agreement.derived_agree[(rtype, group, name)] += int(mine == yours)
