"""What the patient-view review says about one person: findings read from the snapshot, then cards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.cds.rules import Rules
from pipelines.cds.snapshot import STANDARD_METHODS, Snapshot

REVIEWED_TYPES = ("Condition", "AllergyIntolerance", "MedicationRequest", "MedicationStatement")
_TYPE_WORDS = {
    "Condition": "problem",
    "AllergyIntolerance": "allergy",
    "MedicationRequest": "medication order",
    "MedicationStatement": "medication",
}


@dataclass
class Item:
    """One thing on the review page: a record (type, id) and what about it needs a look."""

    card_type: str
    resource_type: str | None
    label: str
    detail: str = ""
    indicator: str = "info"


@dataclass
class Findings:
    """Everything the review found for one person, grouped by card type."""

    person_id: str
    run_id: str | None = None
    total: int = 0
    sources: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    first_day: str | None = None
    last_day: str | None = None
    items: dict[str, list[Item]] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        self.items.setdefault(item.card_type, []).append(item)


_SUMMARY = """
SELECT resource_type, count(*), list(DISTINCT source_system ORDER BY source_system), min(day)::VARCHAR,
       max(day)::VARCHAR, max(run_id)
FROM chart WHERE person_id = ? GROUP BY resource_type ORDER BY resource_type
"""
_CODED_ITEMS = f"""
SELECT resource_type, id, any_value(label ORDER BY method NULLS LAST), bool_or(method = 'unmapped'),
       bool_or(method IN {STANDARD_METHODS}),
       list(DISTINCT method ORDER BY method) FILTER (WHERE method IS NOT NULL)
FROM coded WHERE person_id = ? AND active AND resource_type IN {REVIEWED_TYPES}
GROUP BY resource_type, id ORDER BY resource_type, any_value(label)
"""
_QUARANTINE = """
SELECT reason_code, resource_type, pointer FROM quarantine
WHERE person_id = ? AND coalesce(resource_type, '') NOT IN (SELECT unnest(?::VARCHAR[]))
ORDER BY reason_code, pointer, resource_type
"""
_IDENTITY = "SELECT patient_id, other_id, score, method FROM identity_review WHERE person_id = ? ORDER BY ALL"
_DUPLICATES = """
SELECT resource_type, resource_id, survivor_id, rule FROM duplicates WHERE person_id = ? ORDER BY ALL
"""


def find(snap: Snapshot, person_id: str, rules: Rules) -> Findings:
    """Read one person's review from the snapshot: five parameterized queries on person_id."""
    f = Findings(person_id)
    sources: set[str] = set()
    days: list[str] = []
    runs: list[str] = []
    for rtype, n, srcs, first, last, run in snap.rows(_SUMMARY, [person_id]):
        f.counts[rtype] = n
        f.total += n
        sources.update(s for s in srcs if s)
        days += [d for d in (first, last) if d]
        runs += [run] if run else []
    f.sources = sorted(sources)
    f.first_day, f.last_day = (min(days), max(days)) if days else (None, None)
    f.run_id = max(runs) if runs else None
    if not f.total:
        return f
    remapped = set(rules.remapped_methods)
    for rtype, _rid, label, unmapped, standard, methods in snap.rows(_CODED_ITEMS, [person_id]):
        word = _TYPE_WORDS.get(rtype, rtype)
        if unmapped and not standard:
            f.add(Item("unmapped_code", rtype, label or f"({word} without a display)", f"active {word}"))
        elif remapped.intersection(methods or ()):
            how = ", ".join(m for m in methods if m in remapped)
            f.add(
                Item("remapped_code", rtype, label or f"({word} without a display)", f"active {word}; {how}")
            )
    for reason, rtype, pointer in snap.rows(_QUARANTINE, [person_id, rules.quarantine_ignored_types]):
        kind = "conflicting_duplicate" if reason == "conflicting_duplicate" else "quarantined"
        f.add(Item(kind, rtype, f"{rtype or 'record'}: {reason}", pointer))
    for _patient, _other, score, method in snap.rows(_IDENTITY, [person_id]):
        how = f"{method or 'match'}" + (f", score {score:.2f}" if score is not None else "")
        f.add(Item("identity_review", "Patient", "another source patient may be this person", how))
    for rtype, _rid, _survivor, rule in snap.rows(_DUPLICATES, [person_id]):
        f.add(Item("duplicate_fact", rtype, f"{rtype} recorded twice", rule or ""))
    for items in f.items.values():
        for item in items:
            item.indicator = rules.indicator(item.card_type, item.resource_type)
    return f


def cards(f: Findings, rules: Rules, page_url: str | None, source: dict[str, Any]) -> list[tuple[str, dict]]:
    """(card type, card) pairs, most urgent first; none when the person has no migrated records."""
    if not f.total:
        return []
    out: list[tuple[str, dict]] = []
    links = [{"label": "Review migrated items", "url": page_url, "type": "absolute"}] if page_url else []
    summary_detail = _summary_detail(f)
    out.append(
        (
            "migration_summary",
            _card(
                rules,
                "migration_summary",
                f.total,
                summary_detail,
                rules.indicator("migration_summary", None),
                source,
                links,
                sources=len(f.sources),
            ),
        )
    )
    for card_type in rules.card_order:
        items = f.items.get(card_type)
        if not items:
            continue
        indicator = max((i.indicator for i in items), key=rules.urgency)
        lines = [f"- {_md(i.label)}" + (f" ({_md(i.detail)})" if i.detail else "") for i in items[:10]]
        if len(items) > 10:
            lines.append(f"- ... and {len(items) - 10} more on the review page")
        out.append(
            (card_type, _card(rules, card_type, len(items), "\n".join(lines), indicator, source, links))
        )
    out.sort(key=lambda pair: -rules.urgency(pair[1]["indicator"]))
    return out


def _summary_detail(f: Findings) -> str:
    counts = ", ".join(f"{t} {n}" for t, n in sorted(f.counts.items()))
    span = f"from {f.first_day} to {f.last_day}" if f.first_day else "undated"
    return (
        f"Migrated by ehrlift from {', '.join(_md(s) for s in f.sources)}: {counts}. Clinical dates {span}."
    )


def _card(
    rules: Rules, card_type: str, n: int, detail: str, indicator: str, source: dict, links: list, **extra: Any
) -> dict[str, Any]:
    summary = rules.summary(card_type, items=n, **extra)
    card = {"summary": summary, "detail": detail, "indicator": indicator, "source": dict(source)}
    card["source"]["topic"] = {
        "system": rules.topic_system,
        "code": card_type,
        "display": card_type.replace("_", " "),
    }
    if links:
        card["links"] = links
    return card


def _md(text: str) -> str:
    """Escape what GitHub-flavoured Markdown would read as markup or HTML in record text."""
    out = []
    for ch in str(text):
        out.append("\\" + ch if ch in "\\`*_{}[]<>()#+-!|" else ch)
    return "".join(out).replace("\n", " ")
