"""The normalization engine: one decision per distinct coding, applied to every Coding of a resource.

A decision is made once per distinct (system, code, display) or unit and then applied per occurrence by
dictionary lookup. Source codings are never changed or removed: what ehrlift derives (a remapped code, a
crosswalk target, a UCUM unit) is *added*, marked with the extensions below, so re-normalizing first strips
exactly what ehrlift added and derives it again, byte for byte.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from terminology import core
from terminology.terms import Mapping, Terminology

EXT_METHOD = "urn:ehrlift:extension:mapping-method"  # valueCode: how an added coding was obtained
EXT_DECISION = "urn:ehrlift:extension:mapping-decision"  # valueString: ops.mapping_log.decision_id
EXT_UNIT = "urn:ehrlift:extension:source-unit"  # on a Quantity: the system/code it arrived with

STANDARD_METHODS = ("exact", "crosswalk", "remap", "suggestion-approved")
# Relations that name one successor; POSSIBLY_EQUIVALENT_TO and ALTERNATIVE need a human.
_FOLLOW = ("MAP_TO", "REPLACED_BY", "SAME_AS", "RXCUI_REMAP")
_MAX_CHAIN = 32
_EQUIVALENCE_RANK = {"equivalent": 0, "equal": 1, "wider": 2, "subsumes": 2, "narrower": 3, "specializes": 3}
# Systems that are themselves normalization targets; a map is consulted for anything else.
_TARGET_SYSTEMS = frozenset({core.LOINC, core.SNOMED, core.RXNORM, core.CVX, core.UCUM})
_OWN = "urn:ehrlift:extension:"
SUGGESTION_AUTHOR = "ehrlift suggest"  # crosswalk rows written by `ehrlift mappings import`


@dataclass(frozen=True)
class Decision:
    """What normalization decided for one distinct source coding or unit; one ops.mapping_log row."""

    source_system: str | None
    source_code: str | None
    source_display: str | None
    method: str
    reason: str | None = None
    target_system: str | None = None
    target_code: str | None = None
    target_display: str | None = None
    terminology_version: str | None = None
    crosswalk_version: str | None = None
    kind: str = "coding"  # coding, unit
    decision_id: str = field(init=False)

    def __post_init__(self) -> None:
        parts = (
            self.kind,
            self.source_system,
            self.source_code,
            self.source_display,
            self.method,
            self.reason,
            self.target_system,
            self.target_code,
            self.terminology_version,
            self.crosswalk_version,
        )
        digest = hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:16]
        object.__setattr__(self, "decision_id", digest)

    @property
    def standard(self) -> bool:
        return self.method in STANDARD_METHODS

    def added_coding(self) -> dict[str, Any] | None:
        """The coding ehrlift adds beside the source one, or None when the source already is the answer."""
        if self.kind != "coding" or self.target_code is None or not self.standard:
            return None
        if (self.target_system, self.target_code) == (self.source_system, self.source_code):
            return None
        coding: dict[str, Any] = {
            "extension": [
                {"url": EXT_METHOD, "valueCode": self.method},
                {"url": EXT_DECISION, "valueString": self.decision_id},
            ],
            "system": self.target_system,
            "code": self.target_code,
        }
        if self.target_display:
            coding["display"] = self.target_display
        return coding


class Normalizer:
    """Decides and applies; counts how often each decision was applied, per data source."""

    def __init__(self, terms: Terminology, registry: core.Registry | None = None) -> None:
        self.terms = terms
        self.registry = registry or core.registry()
        self._decided: dict[tuple[str, str | None, str | None, str | None], Decision] = {}
        self._added: dict[str, dict[str, Any] | None] = {}
        self._counts: Counter[tuple[str, str]] = Counter()  # (decision_id, data source) -> occurrences
        self._plans: dict[tuple[tuple[Any, Any, Any], ...], tuple[int, list[dict[str, Any]]]] = {}
        self._plan_ids: list[tuple[str, ...]] = []
        self._plan_counts: Counter[tuple[int, str]] = Counter()
        self.decisions: dict[str, Decision] = {}
        # Bumped whenever a walk strips or adds anything: a resource whose walk left it unchanged needs no
        # serializing, comparing or rewriting.
        self.changes = 0

    # --- applying ------------------------------------------------------------------------------------

    def normalize(self, resource: dict[str, Any], data_source: str = "") -> dict[str, Any]:
        """Normalize every Coding and Quantity unit of a resource in place; returns it."""
        self._walk(resource, data_source)
        return resource

    def reapply(self, resource: dict[str, Any], data_source: str = "") -> dict[str, Any]:
        """Normalize a second parse of a resource already normalized and counted (one whose numbers must
        be kept verbatim): same decisions, but counted once."""
        counts, plan_counts = self._counts.copy(), self._plan_counts.copy()
        try:
            self._walk(resource, data_source)
        finally:
            self._counts, self._plan_counts = counts, plan_counts
        return resource

    def _walk(self, node: dict[str, Any], src: str) -> None:
        # Hot path: type() identity checks and one cached plan per distinct coding array.
        for key, value in node.items():
            kind = type(value)
            if kind is list:
                if key == "coding":
                    self._coding_array(value, src)
                    continue
                for item in value:
                    if type(item) is dict:
                        if key == "extension" and str(item.get("url", "")).startswith(_OWN):
                            continue
                        self._walk(item, src)
            elif kind is dict:
                if key == "meta":
                    continue  # lineage tags and profiles are ehrlift's own, not clinical codes
                if "value" in value and ("unit" in value or "code" in value) and "coding" not in value:
                    self._quantity(value, src)
                elif key[-6:] == "Coding" and "code" in value:
                    self._count(
                        self.decide(value.get("system"), value.get("code"), value.get("display")), src
                    )
                self._walk(value, src)

    def _coding_array(self, codings: list[Any], src: str) -> None:
        key = []
        strip = False
        for c in codings:
            if type(c) is not dict:
                continue
            if "extension" in c and _is_added(c):
                strip = True
                continue
            key.append((c.get("system"), c.get("code"), c.get("display")))
        if strip:
            self.changes += 1
            codings[:] = [c for c in codings if not (type(c) is dict and "extension" in c and _is_added(c))]
        try:
            plan_key = tuple(key)
            plan = self._plans.get(plan_key)
        except TypeError:  # a code or system that is an object or array: decided one by one as malformed
            for system, code, display in key:
                self._count(self.decide(system, code, display), src)
            return
        if plan is None:
            plan = self._plan(plan_key)
        self._plan_counts[(plan[0], src)] += 1
        if plan[1]:
            self.changes += 1
            for added in plan[1]:
                codings.append(dict(added))

    def _plan(self, key: tuple[tuple[Any, Any, Any], ...]) -> tuple[int, list[dict[str, Any]]]:
        """The decisions for one distinct coding array and the codings to add to it (each target once)."""
        present = {(system, code) for system, code, _ in key}
        decisions, adds = [], []
        for system, code, display in key:
            decision = self.decide(system, code, display)
            decisions.append(decision.decision_id)
            added = self._added.get(decision.decision_id)
            if added is not None and (added["system"], added["code"]) not in present:
                present.add((added["system"], added["code"]))
                adds.append(added)
        plan = (len(self._plan_ids), adds)
        self._plan_ids.append(tuple(decisions))
        self._plans[key] = plan
        return plan

    @property
    def counts(self) -> Counter[tuple[str, str]]:
        """(decision_id, data source) -> occurrences, over everything normalized so far."""
        out = Counter(self._counts)
        for (plan, src), n in self._plan_counts.items():
            for did in self._plan_ids[plan]:
                out[(did, src)] += n
        return out

    def _quantity(self, q: dict[str, Any], src: str) -> None:
        ext = q.get("extension")
        if ext and any(e.get("url") == EXT_UNIT for e in ext):
            self.changes += 1
            _restore_unit(q)
        system, code = q.get("system"), q.get("code")
        raw = code if code is not None else q.get("unit")
        if not isinstance(raw, str) or not raw:
            return
        decision = self.decide_unit(system, raw)
        self._count(decision, src)
        if decision.standard and (system, code) != (decision.target_system, decision.target_code):
            original: dict[str, Any] = {}
            if system is not None:
                original["system"] = system
            if code is not None:
                original["code"] = code
            if not original:
                original["display"] = raw  # the unit arrived as text only; FHIR forbids an empty Coding
            self.changes += 1
            q["system"], q["code"] = decision.target_system, decision.target_code
            q.setdefault("extension", []).append({"url": EXT_UNIT, "valueCoding": original})

    def _count(self, decision: Decision, src: str) -> None:
        self._counts[(decision.decision_id, src)] += 1

    # --- deciding ------------------------------------------------------------------------------------

    def prefetch(self, keys: Iterable[tuple[str | None, str | None]]) -> None:
        """Let the terminology fetch what a batch of new (system, code) pairs needs in one query."""
        todo = []
        for raw, code in set(keys):
            if not isinstance(raw, str) or not isinstance(code, str):
                continue
            uri = self._system(raw)[0] if raw else None
            if code:
                todo.append((uri or raw or "", code))
        if todo:
            self.terms.prefetch(todo)

    def prefetch_sets(self, systems: Iterable[str], codes: Iterable[str]) -> None:
        """Let the terminology fetch, in one query, every (system, code) pair these systems (as written
        in the resources: canonicalized here) and codes can form: a superset of what decisions will ask."""
        uris = {(self._system(raw)[0] or raw) for raw in systems if raw}
        wanted = {c for c in codes if c}
        if uris and wanted:
            self.terms.prefetch_sets(uris, wanted)

    def decide(self, raw_system: Any, code: Any, display: Any) -> Decision:
        try:
            hit = self._decided.get(("coding", raw_system, code, display))
        except TypeError:
            hit = None
        if hit is not None:
            return hit
        if not all(v is None or isinstance(v, str) for v in (raw_system, code, display)):
            # A system, code or display that is not text (a number, an object): structurally broken.
            return self._remember(
                ("coding", None, None, "\x00malformed"),
                Decision(None, None, None, "unmapped", "malformed_coding"),
            )
        key = ("coding", raw_system, code, display)
        return self._remember(key, self._decide(raw_system, code, display))

    def decide_unit(self, raw_system: str | None, unit: str) -> Decision:
        key = ("unit", raw_system, unit, None)
        hit = self._decided.get(key)
        if hit is None:
            hit = self._remember(key, self._decide_unit(raw_system, unit))
        return hit

    def _remember(self, key: tuple[str, str | None, str | None, str | None], d: Decision) -> Decision:
        self._decided[key] = d
        self.decisions[d.decision_id] = d
        self._added[d.decision_id] = d.added_coding()
        return d

    def _system(self, raw: str) -> tuple[str | None, bool]:
        """(canonical URI or None, is local)."""
        if raw.startswith(core.LOCAL_PREFIXES) or self.registry.is_local(raw):
            return None, True
        return self.registry.canonical(raw), False

    def _decide(self, raw: str | None, code: str | None, display: str | None) -> Decision:
        def out(method: str, reason: str | None = None, **kw: Any) -> Decision:
            return Decision(raw, code, display, method, reason, **kw)

        if not raw:
            return out("unmapped", "no_system")
        if not code:
            return out("unmapped", "no_code")
        uri, local = self._system(raw)
        if local:
            return self._mapped(raw, code, display, raw, local=True) or out(
                "unmapped", "local_code_not_mapped"
            )
        if uri is None:
            return self._mapped(raw, code, display, raw, local=False) or out("unmapped", "unknown_system")
        malformed = core.malformed_reason(uri, code)
        if malformed:
            return out("unmapped", f"malformed_code: {malformed}")
        version = self.terms.loaded(uri)
        if version is None:
            mapped = self._mapped(raw, code, display, uri, local=False)
            if mapped is not None:
                return mapped
            if self.registry.info(uri).standard and uri in _TARGET_SYSTEMS:
                # A well-formed code of a standard system whose (licensed) release is not loaded: it is
                # kept as the standard code it claims to be, flagged as not verified against a release.
                return out("exact", "terminology_not_loaded", target_system=uri, target_code=code)
            return out("unmapped", "terminology_not_loaded", target_system=uri)
        concept = self.terms.concept(uri, code)
        if concept is None and self.terms.is_subset(uri):
            # Only a subset of the system is loaded (e.g. the default LOINC or SNOMED CT content): a
            # well-formed code missing from it is kept as the standard code it claims to be, flagged.
            return out(
                "exact",
                "not_in_loaded_subset",
                target_system=uri,
                target_code=code,
                terminology_version=version,
            )
        if concept is None:
            return out("unmapped", "code_not_in_release", target_system=uri, terminology_version=version)
        if concept[1] != "active":
            return self._remap(raw, code, display, uri, version)
        if uri not in _TARGET_SYSTEMS:
            # NDC -> RxNorm, ICD-10-CM -> SNOMED CT where such a map is loaded; else the code stands.
            mapped = self._mapped(raw, code, display, uri, local=False, version=version)
            if mapped is not None:
                return mapped
        # A 0396 name or OID for a standard system gets a coding under its canonical URI added.
        return out(
            "exact",
            "canonical_system" if raw != uri else None,
            target_system=uri,
            target_code=code,
            target_display=concept[0],
            terminology_version=version,
        )

    def _remap(self, raw: str, code: str, display: str | None, uri: str, version: str) -> Decision:
        seen = [code]
        current = code
        while True:
            nexts = sorted({t for t, rel in self.terms.replacements(uri, current) if rel in _FOLLOW})
            if not nexts:
                reason = "inactive_no_replacement" if current == code else "replacement_inactive"
                return Decision(raw, code, display, "unmapped", reason, terminology_version=version)
            if len(nexts) > 1:
                return Decision(
                    raw, code, display, "unmapped", "ambiguous_replacement", terminology_version=version
                )
            current = nexts[0]
            if current in seen or len(seen) > _MAX_CHAIN:
                return Decision(
                    raw, code, display, "unmapped", "replacement_cycle", terminology_version=version
                )
            seen.append(current)
            concept = self.terms.concept(uri, current)
            if concept is None:
                return Decision(
                    raw, code, display, "unmapped", "replacement_not_in_release", terminology_version=version
                )
            if concept[1] == "active":
                return Decision(
                    raw,
                    code,
                    display,
                    "remap",
                    "retired" if len(seen) == 2 else f"retired, chain of {len(seen) - 1}",
                    uri,
                    current,
                    concept[0],
                    terminology_version=version,
                )

    def _mapped(
        self,
        raw: str,
        code: str,
        display: str | None,
        system: str,
        *,
        local: bool,
        version: str | None = None,
    ) -> Decision | None:
        """The best crosswalk or ConceptMap target for a code, validated against the loaded release."""
        candidates = sorted(
            self.terms.mappings(system, code),
            key=lambda m: (_EQUIVALENCE_RANK.get((m.equivalence or "").lower(), 9), m.map, m.target_code),
        )
        for m in candidates:
            if (m.equivalence or "").lower() in ("unmatched", "disjoint", "inexact-none"):
                continue
            return self._target(raw, code, display, m, version)
        return None

    def _target(self, raw: str, code: str, display: str | None, m: Mapping, version: str | None) -> Decision:
        target_uri = self.registry.canonical(m.target_system) or m.target_system
        loaded = self.terms.loaded(target_uri)
        method = "suggestion-approved" if m.author == SUGGESTION_AUTHOR else "crosswalk"
        cw = f"{m.map}@{m.map_version}" if m.map_version else m.map
        target_display = m.target_display
        if loaded is not None:
            concept = self.terms.concept(target_uri, m.target_code)
            fragment = concept is None and self.terms.is_subset(target_uri)
            if fragment and core.malformed_reason(target_uri, m.target_code) is None:
                # Only a fragment of the system is loaded: a well-formed, check-digit-valid code is
                # taken on the reviewer's word, flagged unverified (listed in the report).
                return Decision(
                    raw,
                    code,
                    display,
                    method,
                    "target_not_verified",
                    target_uri,
                    m.target_code,
                    target_display,
                    terminology_version=loaded,
                    crosswalk_version=cw,
                )
            if concept is None:
                return Decision(
                    raw,
                    code,
                    display,
                    "unmapped",
                    "crosswalk_target_not_in_release",
                    target_uri,
                    m.target_code,
                    terminology_version=loaded,
                    crosswalk_version=cw,
                )
            if concept[1] != "active":
                return Decision(
                    raw,
                    code,
                    display,
                    "unmapped",
                    "crosswalk_target_inactive",
                    target_uri,
                    m.target_code,
                    terminology_version=loaded,
                    crosswalk_version=cw,
                )
            target_display = concept[0] or target_display
        return Decision(
            raw,
            code,
            display,
            method,
            None if loaded else "target_not_verified",
            target_uri,
            m.target_code,
            target_display,
            terminology_version=loaded or version,
            crosswalk_version=cw,
        )

    def _decide_unit(self, raw: str | None, unit: str) -> Decision:
        ucum = self.terms.loaded(core.UCUM)
        if (raw is None or self.registry.canonical(raw) == core.UCUM) and self.terms.is_ucum(unit):
            return Decision(
                raw, unit, None, "exact", None, core.UCUM, unit, terminology_version=ucum, kind="unit"
            )
        hit = self.terms.unit_alias(unit)
        if hit is not None:
            target, version = hit
            return Decision(
                raw,
                unit,
                None,
                "crosswalk",
                None,
                core.UCUM,
                target,
                terminology_version=ucum,
                crosswalk_version=version,
                kind="unit",
            )
        return Decision(raw, unit, None, "unmapped", "unit_not_ucum", kind="unit")

    def log_rows(self) -> list[tuple[Any, ...]]:
        """(decision, data source, occurrences) rows, for ops.mapping_log."""
        return [(self.decisions[did], src, n) for (did, src), n in sorted(self.counts.items())]


def iter_pairs(node: Any) -> Iterator[tuple[str | None, str | None]]:
    """(system, code) of every Coding under node: what a batch of decisions will ask the terminology."""
    if isinstance(node, dict):
        if "code" in node and "system" in node:
            yield node.get("system"), node.get("code")
        for value in node.values():
            if isinstance(value, dict | list):
                yield from iter_pairs(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                yield from iter_pairs(item)


def _is_added(coding: dict[str, Any]) -> bool:
    ext = coding.get("extension")
    return bool(ext) and any(isinstance(e, dict) and e.get("url") == EXT_METHOD for e in ext)


def strip_added(node: Any) -> Any:
    """Remove everything normalization added (codings, unit rewrites), in place; returns node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "coding" and isinstance(value, list):
                value[:] = [c for c in value if not (isinstance(c, dict) and _is_added(c))]
            elif isinstance(value, dict):
                ext = value.get("extension")
                if ext and any(isinstance(e, dict) and e.get("url") == EXT_UNIT for e in ext):
                    _restore_unit(value)
                strip_added(value)
            elif isinstance(value, list):
                for item in value:
                    strip_added(item)
    return node


def _restore_unit(q: dict[str, Any]) -> None:
    ext = q["extension"]
    original = next(e for e in ext if e.get("url") == EXT_UNIT).get("valueCoding", {})
    rest = [e for e in ext if e.get("url") != EXT_UNIT]
    if rest:
        q["extension"] = rest
    else:
        del q["extension"]
    for k in ("system", "code"):
        if k in original:
            q[k] = original[k]
        else:
            q.pop(k, None)
