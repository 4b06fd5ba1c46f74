"""One C-CDA document's conversion: ids, narrative references, emitted resources, entry accounting."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lxml import etree

from pipelines.common.unit import Converted, stage_dict
from pipelines.convert.ccda.datatypes import NS, child, clean, id_key, local, template_ids, ts
from pipelines.convert.fhir.prepare import warehouse_id

log = logging.getLogger(__name__)

CCDA_TEMPLATE_PREFIX = "2.16.840.1.113883.10.20."
_WITH_ID = etree.XPath("descendant::h:text/descendant-or-self::*[@ID]", namespaces={"h": NS[1:-1]})
_PARTIES = frozenset({"Practitioner", "PractitionerRole", "Organization", "Patient", "Location", "Device"})


class EntrySkipped(Exception):
    """Raised by an entry mapper: the entry holds nothing convertible, for a reason (no record values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Section:
    family: str
    name: str
    element: Any


class Doc:
    """The state of one document's conversion, shared by the header and every section mapper."""

    def __init__(self, root: Any, doc_type: str, source_system: str, unit_key: str) -> None:
        self.root = root
        self.doc_type = doc_type
        self.source_system = source_system
        self.unit_key = unit_key
        self.doc_key = id_key(root) or unit_key
        eff = child(root, "effectiveTime")
        stamp = ts(eff.get("value")) if eff is not None else None
        # meta.lastUpdated is an instant: only a document time with a zone can say which copy is newer.
        self.last_updated = stamp if stamp and "T" in stamp else None
        self.date = stamp
        self.out: dict[tuple[str, str], dict[str, Any]] = {}
        self.found: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self.unconsumed: Counter[str] = Counter()
        # (section, entry kind) -> [found, converted], for the warehouse's per-section accounting.
        self.by_section: dict[tuple[str, str], list[int]] = {}
        self._narrative: dict[str, Any] | None = None
        # Header parties already converted, by their element's bytes (see practitioners.practitioner).
        self.parties: dict[bytes, dict[str, str] | None] = {}
        self._tree = root.getroottree()
        self.patient_ref: dict[str, str] = {}
        self.patient: dict[str, Any] | None = None
        self.encounter_ref: dict[str, str] | None = None
        # Every (type, id) kept, in order: the Composition's sections list what their entries made.
        self.emitted: list[tuple[str, str]] = []

    # --- ids and emitting ---------------------------------------------------------------------------

    def position_key(self, el: Any) -> str:
        return f"{self.doc_key}#{self._tree.getpath(el)}"

    def rid(self, rtype: str, el: Any, key: str | None = None) -> str:
        """A resource id from the element's own <id> (so the same entry in two documents is one resource),
        or from the document and the element's position in it."""
        key = key or id_key(el) or self.position_key(el)
        return warehouse_id(self.source_system, rtype, key)

    def emit(self, resource: dict[str, Any], el: Any = None) -> dict[str, str]:
        """Keep a resource; a reused <id> with different content (copy-paste ids) gets a positional id."""
        rtype, rid = resource["resourceType"], resource["id"]
        if self.last_updated:
            # meta goes right after the type and id, lastUpdated first within it.
            meta = resource.pop("meta", None)
            stamped = {
                "resourceType": rtype,
                "id": rid,
                "meta": {"lastUpdated": self.last_updated, **meta}
                if meta
                else {"lastUpdated": self.last_updated},
            }
            stamped.update(resource)
            resource = stamped
        key = (rtype, rid)
        held = self.out.get(key)
        if held is not None and held != resource:
            if el is None or resource["resourceType"] in _PARTIES:
                # Parties and places recur across the document with more or less detail: the fuller stays.
                if len(resource) > len(held):
                    self.out[key] = resource
                return {"reference": f"{key[0]}/{key[1]}"}
            resource["id"] = warehouse_id(self.source_system, key[0], self.position_key(el))
            key = (key[0], resource["id"])
        self.out[key] = resource
        self.emitted.append(key)
        return {"reference": f"{key[0]}/{key[1]}"}

    # --- narrative -----------------------------------------------------------------------------------

    def narrative(self, ref: str) -> str | None:
        if self._narrative is None:
            # Anchors live in narratives: one compiled XPath hands back just the elements with an ID at
            # or under any <text>, in document order (the first of a repeated ID wins); text is read when
            # asked.
            self._narrative = {}
            for node in _WITH_ID(self.root):
                nid = node.get("ID")
                if nid:
                    self._narrative.setdefault(nid, node)
        node = self._narrative.get(ref.lstrip("#"))
        if node is None:
            return None
        if not isinstance(node, str):
            node = clean("".join(node.itertext())) or ""
            self._narrative[ref.lstrip("#")] = node
        return node or None

    def text_of(self, el: Any) -> str | None:
        """An ED/ST/originalText: its own text, else the narrative its <reference value="#id"> points at."""
        if el is None:
            return None
        if not len(el):
            return clean(el.text)
        ref = child(el, "reference")
        own = clean(el.text) if len(el) == 0 or ref is not None else clean("".join(el.itertext()))
        if own:
            return own
        if ref is not None and (ref.get("value") or "").startswith("#"):
            return self.narrative(ref.get("value"))
        return None

    # --- accounting ----------------------------------------------------------------------------------

    def run_entry(
        self, mapper: Any, stmt: Any, section: Section, item: str, label: str | None = None
    ) -> None:
        """Run one entry's mapper and count it; label is section_label(section.element) when the caller
        already has it (a section's entries share it)."""
        self.found[item] += 1
        key = (label or section_label(section.element), item)
        counts = self.by_section.setdefault(key, [0, 0])
        counts[0] += 1
        if mapper is None:
            self.unconsumed[item] += 1
            return
        try:
            mapper(self, stmt, section)
        except EntrySkipped as s:
            self.unconsumed[f"{item} ({s.reason})"] += 1
            return
        except Exception as exc:  # one entry's defect must not cost the document its other entries
            log.error("C-CDA entry mapper failed on %s: %s", item, type(exc).__name__)
            self.unconsumed[f"{item} (converter_error)"] += 1
            return
        self.converted[item] += 1
        counts[1] += 1

    def count_nested(self, label: str, item: str, converted: bool, reason: str) -> None:
        """An item inside an entry (a policy in a Coverage Activity), counted as entries are: found, and
        converted or not consumed for a reason (no record values)."""
        self.found[item] += 1
        counts = self.by_section.setdefault((label, item), [0, 0])
        counts[0] += 1
        if converted:
            self.converted[item] += 1
            counts[1] += 1
        else:
            self.unconsumed[f"{item} ({reason})"] += 1

    def finish(self) -> Converted:
        resources = [stage_dict(r) for r in self.out.values()]
        items = {key: (found, converted) for key, (found, converted) in sorted(self.by_section.items())}
        return Converted(
            resources=resources, container=self.doc_type, unconsumed=dict(self.unconsumed), items=items
        )


def section_label(section: Any) -> str:
    """Which section entries sat in: its C-CDA templateId, else its code, else the element name."""
    ids = template_ids(section)
    ccda = [t for t in ids if t.startswith(CCDA_TEMPLATE_PREFIX)]
    if ccda or ids:
        return (ccda or ids)[0]
    code = child(section, "code")
    if code is not None and code.get("code"):
        return f"{code.get('code')} (section code)"
    return "section (no templateId)"


def entry_label(stmt: Any, ids: list[str] | None = None) -> str:
    """How an entry is counted: its C-CDA templateId (the most specific), or its element name; ids are
    template_ids(stmt) when the caller already has them."""
    ids = template_ids(stmt) if ids is None else ids
    ccda = [t for t in ids if t.startswith(CCDA_TEMPLATE_PREFIX)]
    if ccda:
        return ccda[0]
    if ids:
        return ids[0]
    return f"{local(stmt)} (no templateId)"


def statement_of(entry: Any) -> Any:
    """The clinical statement an <entry> (or entryRelationship/component) wraps."""
    for el in entry:
        if (
            isinstance(el.tag, str)
            and el.tag.startswith(NS)
            and local(el) not in ("sequenceNumber", "seperatableInd")
        ):
            return el
    return None
